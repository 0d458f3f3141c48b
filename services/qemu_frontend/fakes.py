"""In-memory peers of the frontend for tests: iommu_type2, vgpu_bus, gfx_host, and a scripted guest.

The fakes implement the ops tables of :mod:`.clients` and fail the way the real services do (same
domain classes and reasons).  The gfx_host (:mod:`.fakes_gfx`) serves each opened vGPU over a
**real** shared-memory channel handed over by a real broker socket, so attach, register traps and
the interrupt path run exactly as against gfx_host.  :func:`fake_frontend` starts a
:class:`~vgpusim.qemu_frontend.frontend.Frontend` on them; :mod:`.fakes_grpc` serves them over gRPC.

:func:`scripted_launcher` is a guest driver for tests: it rings the doorbell and waits for the
interrupt ``params["batches"]`` times (0: until stopped); SMOKE runs one batch, IDLE none.

Glossary:
- revoke: :meth:`FakeBus.request_release` sends the owner the REQ interrupt, as a remove would.
- drop: :meth:`FakeIommu.drop` ends an owner's KeepAlive, as a restarting mapper would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgpusim.common.errors import AlreadyExists, Busy, NotFound, PermissionDenied, VgpusimError, WrongState
from vgpusim.qemu_frontend.clients import ChannelTicket, OwnershipEvent, ReleaseRequest
from vgpusim.qemu_frontend.config import FrontendConfig
from vgpusim.qemu_frontend.core.memory import Region
from vgpusim.qemu_frontend.fakes_gfx import DOORBELL, FakeGfxHost, FakeVgpu
from vgpusim.qemu_frontend.frontend import Frontend
from vgpusim.qemu_frontend.guest.env import GuestEnv
from vgpusim.qemu_frontend.metrics import FrontendMetrics
from vgpusim.qemu_frontend.vcpu import GuestLauncher, GuestProgram, Workload

__all__ = [
    "FakeBus",
    "FakeGfxHost",
    "FakeIommu",
    "FakePeers",
    "FakeVgpu",
    "fake_frontend",
    "scripted_launcher",
]


@dataclass
class FakeContainer:
    owner: str
    hardware: bool
    segments: dict[str, int] = field(default_factory=dict)
    mappings: list[tuple[str, Region]] = field(default_factory=list)


class FakeIommu:
    """iommu_type2: containers, segments, mappings, and owners held by a KeepAlive."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.held: dict[str, asyncio.Event] = {}
        self.holds = 0  # KeepAlive streams opened so far
        self.fail: dict[str, VgpusimError] = {}  # operation name -> error its next call raises
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()

    def _check(self, op: str) -> None:
        error = self.fail.pop(op, None)
        if error is not None:
            raise error

    async def wait_holds(self, count: int) -> None:
        """Return once ``count`` KeepAlive streams were opened in all."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.holds >= count)

    def _get(self, container_id: str) -> FakeContainer:
        if container_id not in self.containers:
            raise NotFound(f"no container {container_id}", reason="UNKNOWN_CONTAINER")
        return self.containers[container_id]

    async def create_container(self, owner: str, *, hardware: bool, memlock_limit_bytes: int) -> str:
        self._check("create_container")
        cid = f"ctr-{next(self._ids)}"
        self.containers[cid] = FakeContainer(owner, hardware)
        return cid

    async def destroy_container(self, container_id: str) -> int:
        self._check("destroy_container")
        ctr = self._get(container_id)
        del self.containers[container_id]
        return sum(r.size for _, r in ctr.mappings)

    async def register_segment(self, container_id: str, segment: str, size: int) -> None:
        self._check("register_segment")
        ctr = self._get(container_id)
        if segment in ctr.segments:
            raise AlreadyExists(f"segment {segment} registered", reason="SEGMENT_EXISTS")
        ctr.segments[segment] = size

    async def unregister_segment(self, container_id: str, segment: str) -> None:
        self._check("unregister_segment")
        ctr = self._get(container_id)
        if any(name == segment for name, _ in ctr.mappings):
            raise WrongState(f"segment {segment} is mapped", reason="SEGMENT_IN_USE")
        ctr.segments.pop(segment)

    async def map_ram(self, container_id: str, segment: str, regions: Sequence[Region]) -> int:
        self._check("map_ram")
        ctr = self._get(container_id)
        if segment not in ctr.segments:
            raise NotFound(f"segment {segment} not registered", reason="UNKNOWN_SEGMENT")
        ctr.mappings.extend((segment, r) for r in regions)
        return len(regions)

    async def unmap_all(self, container_id: str) -> int:
        self._check("unmap_all")
        ctr = self._get(container_id)
        size = sum(r.size for _, r in ctr.mappings)
        ctr.mappings.clear()
        return size

    async def hold_owner(self, owner: str, on_ready: Callable[[], None]) -> None:
        dropped = self.held[owner] = asyncio.Event()
        async with self._changed:
            self.holds += 1
            self._changed.notify_all()
        on_ready()
        try:
            await dropped.wait()
        finally:
            del self.held[owner]
            for cid in [c for c, ctr in self.containers.items() if ctr.owner == owner]:
                del self.containers[cid]

    def drop(self, owner: str) -> None:
        """End ``owner``'s KeepAlive as a restarting mapper would (its containers go)."""
        self.held[owner].set()


class FakeBus:
    """vgpu_bus: devices with one owner each, the vendor ops of a :class:`FakeGfxHost`, REQ streams."""

    def __init__(self, host: FakeGfxHost) -> None:
        self.host = host
        self.owners: dict[str, str | None] = {}
        self._watchers: dict[str, list[asyncio.Queue[ReleaseRequest]]] = {}
        self.closed: list[str] = []  # devices closed
        self.close_calls: list[str] = []  # every CloseDevice, failed ones too
        self._changed = asyncio.Condition()

    async def wait_close_calls(self, count: int) -> None:
        """Return once CloseDevice was called ``count`` times in all."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.close_calls) >= count)

    def add(self, uuid: str) -> FakeVgpu:
        self.owners[uuid] = None
        return self.host.add(uuid)

    def _known(self, uuid: str) -> None:
        if uuid not in self.owners:
            raise NotFound(f"no device {uuid}", reason="UNKNOWN_DEVICE")

    async def open_device(self, uuid: str, owner: str, container_id: str) -> ChannelTicket:
        self._known(uuid)
        holder = self.owners[uuid]
        if holder is not None:
            raise Busy(f"{uuid} is in use by {holder}", reason="DEVICE_IN_USE", metadata={"owner": holder})
        ticket = self.host.open(uuid)
        self.owners[uuid] = owner
        return ticket

    async def close_device(self, uuid: str, owner: str) -> None:
        async with self._changed:
            self.close_calls.append(uuid)
            self._changed.notify_all()
        self._known(uuid)
        holder = self.owners[uuid]
        if holder is None:
            raise WrongState(f"{uuid} is not open", reason="DEVICE_NOT_OPEN")
        if holder != owner:
            raise PermissionDenied(f"{uuid} is held by {holder}", reason="NOT_OWNER")
        self.host.release(uuid)
        self.owners[uuid] = None
        self.closed.append(uuid)

    async def watch_ownership(self, owner: str) -> AsyncGenerator[OwnershipEvent, None]:
        queue: asyncio.Queue[ReleaseRequest] = asyncio.Queue()
        self._watchers.setdefault(owner, []).append(queue)
        try:
            yield None
            while True:
                yield await queue.get()
        finally:
            self._watchers[owner].remove(queue)

    def request_release(self, uuid: str, count: int = 1) -> None:
        """The REQ interrupt for ``uuid``'s owner."""
        owner = self.owners[uuid]
        for queue in self._watchers.get(owner or "", []):
            queue.put_nowait(ReleaseRequest(uuid, count))


class FakePeers:
    """The three fakes together (a :class:`~vgpusim.qemu_frontend.frontend.Peers`)."""

    def __init__(self, run_dir: Path, shm_dir: Path) -> None:
        self.iommu = FakeIommu()
        self.gfx = FakeGfxHost(run_dir, shm_dir)
        self.bus = FakeBus(self.gfx)


class ScriptedGuest:
    """A guest driver for tests: doorbell, wait for the interrupt, repeat; counts what it did."""

    def __init__(self, env: GuestEnv, batches: int) -> None:
        self.env = env
        self.batches = batches
        self.stats = _Counters()

    def run(self, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set() and (self.batches == 0 or i < self.batches):
            self.env.port.write(0, DOORBELL, 4, i)
            self.stats.commands_submitted += 1
            if self.env.wait_irq(5.0):
                self.stats.interrupts_received += 1
            elif not stop.is_set():
                raise WrongState("no interrupt for the batch", reason="GUEST_IRQ_TIMEOUT")
            i += 1


@dataclass
class _Counters:
    commands_submitted: int = 0
    interrupts_received: int = 0


def scripted_launcher(env: GuestEnv, workload: Workload, params: Mapping[str, str]) -> GuestProgram:
    """Launch :class:`ScriptedGuest`: SMOKE runs one batch, IDLE none until stopped, others ``batches``."""
    batches = {Workload.SMOKE: 1, Workload.IDLE: 0}.get(workload, int(params.get("batches", "0")))
    if workload is Workload.IDLE:
        return _Idle()
    return ScriptedGuest(env, batches)


class _Idle:
    def __init__(self) -> None:
        self.stats = _Counters()

    def run(self, stop: threading.Event) -> None:
        stop.wait()


@contextlib.asynccontextmanager
async def fake_frontend(
    state_dir: Path,
    *,
    launcher: GuestLauncher = scripted_launcher,
    metrics: FrontendMetrics | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Frontend, FakePeers]]:
    """A started :class:`Frontend` on :class:`FakePeers` in ``state_dir`` (``settings``: config fields)."""
    config = FrontendConfig(state_dir=state_dir, metrics_port=-1, **settings)
    config.paths.ensure_dirs()
    shm_dir = state_dir / "shm"
    shm_dir.mkdir(exist_ok=True)
    peers = FakePeers(config.paths.run_dir, shm_dir)
    await peers.gfx.start()
    frontend = Frontend(
        config,
        peers,
        shm_dir=shm_dir,
        metrics=metrics or FrontendMetrics(),
        owner="fe-test",
        launcher=launcher,
    )
    try:
        await frontend.start(5.0)
        yield frontend, peers
    finally:
        try:
            await frontend.close()
        finally:
            await peers.gfx.stop()
