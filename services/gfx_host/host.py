"""The gfx_host service object: vendor ops for the bus, and the host's own operations.

:class:`HostService` ties the pure core (GPU models, vGPU device models) to the world: the
iommu_type2 container a vGPU is opened in (attach, pins, unmap events), the shared-memory channel
the frontend gets through the broker, and the per-parent GPU threads of :mod:`.runtime`.

Open (``open_device`` of the mdev driver) in order, unwound in reverse on failure: attach to the
container, register for unmap events, open the device model with a pinner, create the channel,
start the trap thread, offer the channel to the broker.  Release is the exact reverse.

Glossary:
- vendor ops: create/remove/open/release/available_instances, as vgpu_bus calls them.
- DMLR: the device-model-level reset of VFIO_DEVICE_RESET.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from vgpusim.common.errors import InvalidArgument, NotFound, TimedOut, Unavailable, WrongState
from vgpusim.common.fastpath import CHANNEL_SPEC, HostPort
from vgpusim.common.logs import get_logger
from vgpusim.common.shm.channel import create_channel
from vgpusim.gfx_host.broker import ChannelBroker
from vgpusim.gfx_host.clients import IommuClient, SegmentCache, UnmapHandler
from vgpusim.gfx_host.core.engine.scheduler import SchedPolicy
from vgpusim.gfx_host.core.gmem import GttGraphicsMemory
from vgpusim.gfx_host.core.gpu import GfxHost, PhysicalGpu
from vgpusim.gfx_host.core.vgpu import Vgpu, VgpuState
from vgpusim.gfx_host.runtime import DeviceRuntime, ParentRuntime

_log = get_logger("vgpusim.gfx_host.host")
APPLY_TIMEOUT_S = 30.0


@dataclass
class OpenDevice:
    """What an open vGPU holds, unwound by ``stack`` on release."""

    vgpu: Vgpu
    container: str
    runtime: DeviceRuntime
    stack: AsyncExitStack
    watch: asyncio.Task[None] | None = None
    token: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class HostService:
    """gfx_host's operations over the core, the iommu_type2 client and the GPU threads."""

    def __init__(
        self,
        host: GfxHost,
        iommu: IommuClient,
        memory: SegmentCache,
        broker: ChannelBroker,
        shm_dir: Path,
        *,
        watchdog_us: int = 50_000,
    ) -> None:
        self.host = host
        self.iommu = iommu
        self.memory = memory
        self.broker = broker
        self.shm_dir = shm_dir
        self.parents = {gpu.parent: ParentRuntime(gpu, watchdog_us=watchdog_us) for gpu in host.gpus()}
        self.open: dict[str, OpenDevice] = {}  # by canonical UUID
        self._opening: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for parent in self.parents.values():
            parent.start()

    async def stop(self) -> None:
        for uuid in list(self.open):
            with contextlib.suppress(Exception):
                await self.release(uuid)
        for parent in self.parents.values():
            await asyncio.to_thread(parent.stop)
        self.memory.close()

    # ---- vendor ops --------------------------------------------------------------------------

    def gpu(self, parent: str) -> PhysicalGpu:
        return self.host.gpu(parent)

    def create(self, uuid: str, parent: str, type_id: str) -> Vgpu:
        gpu = self.host.gpu(parent)
        _check_type(gpu, type_id)
        return gpu.create_vgpu(uuid, type_id)

    def remove(self, uuid: str) -> None:
        vgpu = self.host.find_vgpu(uuid)
        if vgpu.state is VgpuState.OPEN:
            raise WrongState(
                f"vGPU {vgpu.uuid} is open: release it first",
                reason="VGPU_OPEN",
                metadata={"uuid": vgpu.uuid},
            )
        self.host.gpu(vgpu.parent).remove_vgpu(vgpu.uuid)

    def available(self, parent: str, type_id: str) -> int:
        gpu = self.host.gpu(parent)
        _check_type(gpu, type_id)
        return gpu.available_instances(type_id)

    async def open_device(self, uuid: str, container: str) -> str:
        """Open ``uuid`` in ``container``; the broker token of its channel."""
        vgpu = self.host.find_vgpu(uuid)
        uuid = vgpu.uuid  # canonical: the key of ``open`` and the iommu_type2 device name
        if uuid in self.open or uuid in self._opening:
            raise Unavailable(f"vGPU {uuid} is already open", reason="VGPU_OPEN", metadata={"uuid": uuid})
        parent = self.parents[vgpu.parent]
        self._opening.add(uuid)
        try:
            token = await self._open(vgpu, parent, container)
        finally:
            self._opening.discard(uuid)
        _log.info("vGPU opened", extra={"vgpu": uuid, "container": container})
        return token

    async def _open(self, vgpu: Vgpu, parent: ParentRuntime, container: str) -> str:
        uuid = vgpu.uuid
        async with AsyncExitStack() as stack:
            await self.iommu.attach(container, uuid)
            stack.push_async_callback(self._detach_quietly, container, uuid)
            registered = asyncio.Event()
            watch = asyncio.create_task(
                self.iommu.watch_unmap(container, uuid, self._unmap_handler(uuid), registered),
                name=f"unmap-{uuid[:8]}",
            )
            stack.push_async_callback(_cancel, watch)
            await _wait_registered(watch, registered)
            vgpu.open(container, self.iommu.pinner(container, uuid), self.memory)
            stack.push_async_callback(vgpu.release)
            end = create_channel(self.shm_dir, f"chan-{uuid}", CHANNEL_SPEC)
            stack.callback(end.close)
            port = HostPort(end)
            memory = GttGraphicsMemory(vgpu.gtt, self.memory, vgpu.partition)
            # off the loop: it takes the GPU's lock, which a loop task may hold across pin RPCs
            runtime = await asyncio.to_thread(
                DeviceRuntime,
                parent,
                vgpu,
                port,
                memory,
                apply_gtt=lambda: self._apply_gtt(uuid),
                weight=vgpu.vgpu_type.weight,
            )
            stack.push_async_callback(asyncio.to_thread, runtime.stop)
            token = self.broker.offer(end)
            stack.callback(self.broker.withdraw, end)
            self.open[uuid] = OpenDevice(vgpu, container, runtime, stack.pop_all(), watch, token)
        return token

    async def release(self, uuid: str) -> None:
        uuid = self.host.find_vgpu(uuid).uuid  # NotFound for an unknown UUID
        device = self.open.pop(uuid, None)
        if device is None:
            raise WrongState(f"vGPU {uuid} is not open", reason="NOT_OPEN", metadata={"uuid": uuid})
        parent = self.parents[device.vgpu.parent]
        async with parent.hold():
            pass  # let an executing workload finish before the runtime goes
        await device.stack.aclose()
        _log.info("vGPU released", extra={"vgpu": uuid})

    async def _detach_quietly(self, container: str, uuid: str) -> None:
        with contextlib.suppress(NotFound, Unavailable):
            await self.iommu.detach(container, uuid)

    # ---- GTT shadow <-> iommu_type2 ----------------------------------------------------------

    def _unmap_handler(self, uuid: str) -> UnmapHandler:
        async def handler(iova: int, size: int) -> None:
            device = self.open.get(uuid)
            vgpu = device.vgpu if device else self.host.find_vgpu(uuid)
            async with self.parents[vgpu.parent].hold():
                await vgpu.gtt.unmap_notify(iova, size)

        return handler

    def _apply_gtt(self, uuid: str) -> None:
        """From a trap thread: pin the pending GTT entries (in the loop) and wait for it.

        Errors: TimedOut (``GTT_APPLY_TIMED_OUT``) after :data:`APPLY_TIMEOUT_S`; the update goes
        on in the loop (cancelling it would lose the entries it took).
        """
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._apply_gtt_async(uuid), self._loop)
        try:
            future.result(timeout=APPLY_TIMEOUT_S)
        except TimeoutError:
            raise TimedOut(
                f"GTT update of {uuid} not applied within {APPLY_TIMEOUT_S} s", reason="GTT_APPLY_TIMED_OUT"
            ) from None

    async def _apply_gtt_async(self, uuid: str) -> None:
        device = self.open.get(uuid)
        if device is None:
            return
        async with self.parents[device.vgpu.parent].hold():
            await device.vgpu.gtt.apply_pending()

    # ---- host operations ---------------------------------------------------------------------

    async def reset(self, uuid: str) -> None:
        uuid = self.host.find_vgpu(uuid).uuid
        device = self.open.get(uuid)
        if device is None:
            raise WrongState(f"vGPU {uuid} is not open", reason="NOT_OPEN", metadata={"uuid": uuid})
        async with self.parents[device.vgpu.parent].hold():
            device.runtime.reset_engines()
            await device.vgpu.reset()

    async def set_scheduler(
        self, parent: str, policy: SchedPolicy | None, weights: Sequence[tuple[str, int]] = ()
    ) -> None:
        """Change ``parent``'s arbiter policy (None: unchanged) and weights of its open vGPUs.

        All or nothing: every vGPU is checked first.  Errors: NotFound (``PARENT_NOT_FOUND``,
        ``DEVICE_NOT_FOUND``: not a vGPU of this parent, ``VGPU_NOT_SCHEDULED``: not open),
        InvalidArgument (``INVALID_WEIGHT``).
        """
        gpu = self.host.gpu(parent)
        changes = [(gpu.get_vgpu(uuid).vgpu_id, weight) for uuid, weight in weights]
        runtime = self.parents[parent]
        async with runtime.hold():
            scheduler = runtime.runner.scheduler
            scheduled = {v.vgpu_id for v in scheduler.statistics().vgpus}
            for (uuid, _), (vgpu_id, _) in zip(weights, changes, strict=True):
                if vgpu_id not in scheduled:
                    raise NotFound(f"vGPU {uuid} is not open", reason="VGPU_NOT_SCHEDULED")
            for vgpu_id, weight in changes:
                scheduler.set_weight(vgpu_id, weight)
            if policy is not None:
                scheduler.set_policy(policy)

    def vgpu_state(self, uuid: str) -> tuple[Vgpu, OpenDevice | None]:
        vgpu = self.host.find_vgpu(uuid)
        return vgpu, self.open.get(vgpu.uuid) if vgpu.state is VgpuState.OPEN else None


def _check_type(gpu: PhysicalGpu, type_id: str) -> None:
    """InvalidArgument ``UNKNOWN_TYPE`` (the vendor-ops contract) if ``gpu`` has no such type."""
    try:
        gpu.model.find_type(type_id)
    except NotFound as exc:
        meta = {k: v for k, v in exc.metadata.items() if k != "errno"}
        raise InvalidArgument(exc.message, reason="UNKNOWN_TYPE", metadata=meta) from None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _wait_registered(watch: asyncio.Task[None], registered: asyncio.Event) -> None:
    """Wait until the unmap watch is live (or fails: its error is raised)."""
    waiter = asyncio.create_task(registered.wait())
    try:
        async with asyncio.timeout(10):
            done, _ = await asyncio.wait({watch, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if watch in done:
        watch.result()  # raises the registration error
        raise Unavailable("the unmap watch ended before it was registered", reason="UNMAP_WATCH_FAILED")
