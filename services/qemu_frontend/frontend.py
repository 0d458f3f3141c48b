"""The frontend service object: its VMs, their vGPUs and guests, and its two owner streams.

:class:`Frontend` is what the servicer calls.  It keeps the table of VMs (:mod:`.vm`), checks
names and memory limits, serialises the operations of one VM under that VM's lock, and holds,
for its whole life, the two streams of its *owner* id:

- ``iommu_type2.KeepAlive(owner)``: every container of the frontend lives as long as this stream,
  so a crashed frontend leaves no mappings behind;
- ``vgpu_bus.WatchOwnership(owner)``: on ``ReleaseRequested(uuid)`` (the REQ interrupt, sent when
  someone removes the device or unregisters its parent) the frontend hot-unplugs the vGPU: stops
  the guest and detaches it, which closes it on the bus.  A device whose channel ends on its own
  (gfx_host released it or died) is detached the same way.

Both streams are reconnected with a capped backoff if the peer restarts.  Their tasks, and the
tasks handling release requests, belong to one ``TaskGroup`` that :meth:`Frontend.close` cancels
after destroying every VM.

Glossary:
- owner: ``qemu_frontend-<pid>-<4 hex>`` (the random part keeps ids unique across restarts of a
  container, where the pid is always the same).
- hot-unplug: detaching a vGPU without being asked by a client (release request, lost channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from vgpusim.common.errors import (
    AlreadyExists,
    Exhausted,
    InvalidArgument,
    NotFound,
    TimedOut,
    VgpusimError,
    WrongState,
)
from vgpusim.common.logs import get_logger
from vgpusim.qemu_frontend.clients import BusPeer, GfxPeer, IommuPeer
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.core.memory import ram_layout
from vgpusim.qemu_frontend.devices import AttachedDevice, attach_device
from vgpusim.qemu_frontend.metrics import FrontendMetrics, FrontendStatistics
from vgpusim.qemu_frontend.vcpu import GuestLauncher, GuestStatus, Workload, builtin_launcher
from vgpusim.qemu_frontend.vm import Vm, VmInfo, new_vm_id

__all__ = ["Frontend", "Peers", "make_owner_id"]

_log = get_logger("vgpusim.qemu_frontend")
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
NAME_MAX = 64


class Peers(Protocol):
    """The three peers (:class:`~.clients.GrpcPeers`, or the fakes of :mod:`.fakes`)."""

    @property
    def iommu(self) -> IommuPeer: ...

    @property
    def bus(self) -> BusPeer: ...

    @property
    def gfx(self) -> GfxPeer: ...


def make_owner_id() -> str:
    return f"qemu_frontend-{os.getpid()}-{secrets.token_hex(2)}"


def _check_name(name: str) -> str:
    if not 0 < len(name) <= NAME_MAX or not name.isprintable() or name != name.strip():
        raise InvalidArgument(
            f"VM name {name[:NAME_MAX]!r} must be 1-{NAME_MAX} printable characters",
            reason="BAD_VM_NAME",
        )
    return name


async def _reconnecting(what: str, connect: Callable[[], Awaitable[None]], ready: asyncio.Event) -> None:
    """Run ``connect`` (one stream's life) again and again, backing off while it fails."""
    delay = BACKOFF_MIN_S
    while True:
        was_ready = ready.is_set()
        try:
            await connect()
            _log.warning("%s stream ended; reconnecting", what)
        except VgpusimError as exc:
            _log.warning("%s stream failed: %s", what, exc, extra={"reason": exc.reason})
        delay = BACKOFF_MIN_S if ready.is_set() and not was_ready else min(delay * 2, BACKOFF_MAX_S)
        await asyncio.sleep(delay)  # reconnect backoff while the peer restarts


class Frontend:
    """VMs, vGPUs and guests of one frontend process (see the module doc)."""

    def __init__(
        self,
        config: FrontendConfig,
        peers: Peers,
        *,
        shm_dir: Path,
        metrics: FrontendMetrics,
        owner: str | None = None,
        launcher: GuestLauncher = builtin_launcher,
    ) -> None:
        self.config = config
        self.peers = peers
        self.shm_dir = shm_dir
        self.metrics = metrics
        self.owner = owner or make_owner_id()
        self.launcher = launcher
        self._vms: dict[str, Vm] = {}
        self._names: set[str] = set()
        self._reserved_bytes = 0
        self._attaching: dict[str, Vm] = {}
        self._releasing: set[str] = set()
        self._retired_commands = 0
        self._streams: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.bind(self.statistics)

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Open the KeepAlive and WatchOwnership streams; return once both are up."""
        self._loop = asyncio.get_running_loop()
        lease, watching = asyncio.Event(), asyncio.Event()
        self._streams = asyncio.create_task(self._run_streams(lease, watching), name="frontend-owner-streams")
        try:
            async with asyncio.timeout(timeout):
                await lease.wait()
                await watching.wait()
        except TimeoutError:
            missing = [n for n, e in (("KeepAlive", lease), ("WatchOwnership", watching)) if not e.is_set()]
            raise TimedOut(
                f"{' and '.join(missing)} of {self.owner} not established within {timeout:g} s",
                reason="OWNER_STREAMS_TIMEOUT",
                metadata={"owner": self.owner},
            ) from None
        _log.info("owner streams up", extra={"owner": self.owner})

    async def close(self) -> None:
        """Destroy every VM, then end the owner streams and their tasks."""
        for vm in list(self._vms.values()):
            with contextlib.suppress(NotFound):
                await self.destroy_vm(vm.vm_id)
        if self._streams is not None:
            self._streams.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._streams
            self._streams = None

    async def _run_streams(self, lease: asyncio.Event, watching: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(_reconnecting("KeepAlive", lambda: self._keep_alive(lease), lease))
            tg.create_task(_reconnecting("WatchOwnership", lambda: self._watch_ownership(watching), watching))

    async def _keep_alive(self, ready: asyncio.Event) -> None:
        await self.peers.iommu.hold_owner(self.owner, ready.set)
        if self._vms:
            _log.error("iommu_type2 dropped the containers of VMs %s", sorted(self._vms))

    async def _watch_ownership(self, ready: asyncio.Event) -> None:
        async with contextlib.aclosing(self.peers.bus.watch_ownership(self.owner)) as events:
            async for event in events:
                if event is None:
                    ready.set()
                else:
                    _log.info("release requested", extra={"uuid": event.uuid, "count": event.count})
                    self._spawn(self._release(event.uuid, "release requested"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(coro)

    def _lost_callback(self, uuid: str) -> Callable[[str], None]:
        """What a device's IRQ thread calls (in its thread) when the channel ends under it."""
        loop = self._loop or asyncio.get_running_loop()

        def lost(reason: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                loop.call_soon_threadsafe(self._spawn, self._release(uuid, f"channel lost: {reason}"))

        return lost

    async def _release(self, uuid: str, why: str) -> None:
        """Hot-unplug ``uuid``; a device the bus says we hold but no VM has is closed on the bus."""
        if uuid in self._releasing:
            return
        self._releasing.add(uuid)
        try:
            vm = self._attaching.get(uuid) or next(
                (v for v in self._vms.values() if v.device is not None and v.device.uuid == uuid), None
            )
            if vm is None:
                with contextlib.suppress(VgpusimError):
                    await self.peers.bus.close_device(uuid, self.owner)
                return
            async with vm.lock:
                if not vm.destroyed and vm.device is not None and vm.device.uuid == uuid:
                    _log.warning("hot-unplugging %s from %s: %s", uuid, vm.vm_id, why)
                    await vm.detach(self.config.guest_stop_timeout_s)
        finally:
            self._releasing.discard(uuid)

    def statistics(self) -> FrontendStatistics:
        commands = self._retired_commands + sum(vm.guest_commands() for vm in self._vms.values())
        return FrontendStatistics(vms=len(self._vms), guest_commands=commands)

    # ---- VMs --------------------------------------------------------------------------------

    def vm(self, vm_id: str) -> Vm:
        """The VM ``vm_id``; NotFound (``UNKNOWN_VM``) otherwise."""
        vm = self._vms.get(vm_id)
        if vm is None:
            raise NotFound(f"no VM {vm_id!r}", reason="UNKNOWN_VM", metadata={"vm_id": vm_id})
        return vm

    def get_vm(self, vm_id: str) -> VmInfo:
        return self.vm(vm_id).info()

    def list_vms(self) -> list[VmInfo]:
        return [vm.info() for vm in self._vms.values()]

    async def create_vm(self, name: str, memory_bytes: int, hardware_iommu: bool) -> VmInfo:
        """CreateVm. Errors: InvalidArgument (``BAD_MEMORY_SIZE``, ``BAD_VM_NAME``), AlreadyExists
        (``VM_EXISTS``), Exhausted (``GUEST_MEMORY_EXHAUSTED``, shared memory), iommu_type2's."""
        vm_id = new_vm_id()
        name = _check_name(name or vm_id)
        ram_layout(memory_bytes)
        limit, total = self.config.max_vm_memory_bytes, self.config.max_total_memory_bytes
        if memory_bytes > limit:
            raise InvalidArgument(
                f"guest memory {memory_bytes} bytes is above this frontend's limit of {limit}",
                reason="BAD_MEMORY_SIZE",
                metadata={"memory_bytes": str(memory_bytes), "limit_bytes": str(limit)},
            )
        if name in self._names:
            raise AlreadyExists(f"a VM named {name!r} exists", reason="VM_EXISTS", metadata={"name": name})
        if self._reserved_bytes + memory_bytes > total:
            raise Exhausted(
                f"{memory_bytes} more bytes of guest RAM would exceed this frontend's {total}",
                reason="GUEST_MEMORY_EXHAUSTED",
                metadata={"limit_bytes": str(total), "reserved_bytes": str(self._reserved_bytes)},
            )
        self._names.add(name)
        self._reserved_bytes += memory_bytes
        try:
            vm = await Vm.create(
                self.peers.iommu,
                vm_id=vm_id,
                name=name,
                memory_bytes=memory_bytes,
                hardware_iommu=hardware_iommu,
                owner=self.owner,
                shm_dir=self.shm_dir,
                memlock_limit_bytes=self.config.memlock_limit_bytes,
                prealloc=self.config.prealloc_ram,
            )
        except BaseException:
            self._names.discard(name)
            self._reserved_bytes -= memory_bytes
            raise
        self._vms[vm_id] = vm
        _log.info("VM created", extra={"vm_id": vm_id, "vm_name": name, "container": vm.container_id})
        return vm.info()

    async def destroy_vm(self, vm_id: str) -> None:
        """DestroyVm. Errors: NotFound (``UNKNOWN_VM``)."""
        vm = self.vm(vm_id)
        async with vm.lock:
            if vm.destroyed:
                raise NotFound(f"no VM {vm_id!r}", reason="UNKNOWN_VM", metadata={"vm_id": vm_id})
            del self._vms[vm_id]
            try:
                await vm.destroy(self.config.guest_stop_timeout_s)
            finally:
                self._retired_commands += vm.retired_commands
                self._names.discard(vm.name)
                self._reserved_bytes -= vm.memory_bytes

    @contextlib.asynccontextmanager
    async def _locked(self, vm_id: str) -> AsyncIterator[Vm]:
        """The VM ``vm_id`` with its lock held; NotFound (``UNKNOWN_VM``) if gone meanwhile."""
        vm = self.vm(vm_id)
        async with vm.lock:
            if vm.destroyed:
                raise NotFound(f"no VM {vm_id!r}", reason="UNKNOWN_VM", metadata={"vm_id": vm_id})
            yield vm

    # ---- vGPUs ------------------------------------------------------------------------------

    async def attach_device(self, vm_id: str, uuid: str) -> VmInfo:
        """AttachDevice. Errors: NotFound (``UNKNOWN_VM``; the bus's ``UNKNOWN_DEVICE``), WrongState
        (``VM_HAS_VGPU``), Busy (the bus's ``DEVICE_IN_USE``), the channel's."""
        uuid = uuid.lower()
        async with self._locked(vm_id) as vm:
            if vm.device is not None:
                raise WrongState(
                    f"VM {vm_id} has a vGPU already ({vm.device.uuid}): one vGPU per VM",
                    reason="VM_HAS_VGPU",
                    metadata={"vm_id": vm_id, "uuid": vm.device.uuid},
                )
            self._attaching[uuid] = vm
            try:
                vm.device, vm.detach_stack = await attach_device(
                    bus=self.peers.bus,
                    gfx=self.peers.gfx,
                    uuid=uuid,
                    owner=self.owner,
                    container_id=vm.container_id,
                    shm_dir=self.shm_dir,
                    metrics=self.metrics,
                    queue_size=self.config.irq_queue_size,
                    timeout=self.config.peer_timeout_s,
                    on_lost=self._lost_callback(uuid),
                )
            finally:
                self._attaching.pop(uuid, None)
            _log.info("vGPU attached", extra={"vm_id": vm_id, "uuid": uuid})
            return vm.info()

    async def detach_device(self, vm_id: str, uuid: str) -> None:
        """DetachDevice. Errors: NotFound (``UNKNOWN_VM``, ``NOT_ATTACHED``)."""
        async with self._locked(vm_id) as vm:
            vm.attached(uuid)
            await vm.detach(self.config.guest_stop_timeout_s)

    def device(self, vm_id: str, uuid: str) -> AttachedDevice:
        """The vGPU ``uuid`` of VM ``vm_id``. Errors: NotFound (``UNKNOWN_VM``, ``NOT_ATTACHED``)."""
        return self.vm(vm_id).attached(uuid)

    def primary_device(self, vm_id: str) -> AttachedDevice:
        """The VM's vGPU. Errors: NotFound (``UNKNOWN_VM``, ``NOT_ATTACHED``)."""
        vm = self.vm(vm_id)
        if vm.device is None:
            raise NotFound(f"VM {vm_id} has no vGPU", reason="NOT_ATTACHED", metadata={"vm_id": vm_id})
        return vm.attached(vm.device.uuid)

    # ---- the guest --------------------------------------------------------------------------

    async def start_guest(self, vm_id: str, workload: Workload, params: Mapping[str, str]) -> GuestStatus:
        """StartGuest. Errors: NotFound (``UNKNOWN_VM``), WrongState (``NO_VGPU``, ``GUEST_RUNNING``)."""
        async with self._locked(vm_id) as vm:
            return vm.start_guest(self.launcher, workload, params)

    async def stop_guest(self, vm_id: str) -> GuestStatus:
        """StopGuest. Errors: NotFound (``UNKNOWN_VM``), WrongState (``GUEST_STUCK``)."""
        async with self._locked(vm_id) as vm:
            return await vm.stop_guest(self.config.guest_stop_timeout_s)

    def guest_status(self, vm_id: str) -> GuestStatus:
        return self.vm(vm_id).guest_status()
