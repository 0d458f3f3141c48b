"""The fake gfx_host of :mod:`.fakes`: vGPUs served over real shared-memory channels and a real broker.

:class:`FakeGfxHost` implements the frontend's ``GfxPeer`` plus the vendor open/release that
:class:`~.fakes.FakeBus` calls.  Each opened vGPU gets a channel created as gfx_host creates it,
handed over by a broker socket (token, ``SCM_RIGHTS``) and served by a trap thread, so attach,
register traps and the interrupt path run exactly as against gfx_host.  Its device model:

- a byte-addressed register file: reads return the bytes last written (0 otherwise);
- a write of a ring tail register (a doorbell) posts an MSI, like a completed batch;
- :meth:`FakeGfxHost.raise_irq` posts any interrupt; :attr:`FakeVgpu.plane`/``framebuffer`` set
  the display that QueryGfxPlane and GetFramebuffer report.

Glossary:
- release: the vendor's close: the broker connection is shut down (the trap thread ends with
  ``PeerGone``, as gfx_host's does), then the channel is closed and unlinked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgpusim.common.errors import NotFound, VgpusimError, WrongState
from vgpusim.common.fastpath import CHANNEL_SPEC, OP_READ, HostPort, Trap
from vgpusim.common.shm.channel import ChannelEnd, create_channel
from vgpusim.common.shm.handover import recv_fds_async, send_fds_async
from vgpusim.qemu_frontend.clients import ChannelTicket, Framebuffer, Plane
from vgpusim.qemu_frontend.core.irqs import IRQ_MSI
from vgpusim.qemu_frontend.core.regions import DEVICE_PCI, DEVICE_RESET, DeviceDescription, RegionInfo
from vgpusim.qemu_frontend.devices import DOORBELL_OFFSETS

__all__ = ["DOORBELL", "FAKE_DESCRIPTION", "FakeGfxHost", "FakeVgpu"]

DOORBELL = min(DOORBELL_OFFSETS)
FAKE_DESCRIPTION = DeviceDescription(
    flags=DEVICE_RESET | DEVICE_PCI,
    regions=(
        RegionInfo(0, 3, 16 << 20),
        RegionInfo(2, 15, 256 << 20, sparse_areas=((0, 64 << 20),)),
        RegionInfo(7, 3, 4096),
    ),
    num_irqs=5,
)


@dataclass
class FakeVgpu:
    """One vGPU of :class:`FakeGfxHost`; ``registers`` maps (region, byte offset) to a byte."""

    uuid: str
    registers: dict[tuple[int, int], int] = field(default_factory=dict)
    plane: Plane = field(default_factory=Plane)
    framebuffer: bytes = b""
    resets: int = 0
    port: HostPort | None = None
    conn: socket.socket | None = None
    thread: threading.Thread | None = None
    writes: list[Trap] = field(default_factory=list)

    def serve(self) -> None:
        """The trap thread: answer reads, store writes, ring doorbells; ends when the peer hangs up."""
        assert self.port is not None
        traps = self.port.traps
        try:
            while True:
                traps.wait_readable(timeout=None)
                for trap in self.port.next_traps():
                    self._handle(trap)
        except VgpusimError:
            return

    def _handle(self, trap: Trap) -> None:
        assert self.port is not None
        if trap.op == OP_READ:
            data = bytes(self.registers.get((trap.region, trap.offset + i), 0) for i in range(trap.size))
            self.port.reply(trap.seq, 0, int.from_bytes(data, "little"))
            return
        self.writes.append(trap)
        for i, byte in enumerate(trap.value.to_bytes(trap.size, "little")):
            self.registers[(trap.region, trap.offset + i)] = byte
        if trap.region == 0 and trap.offset == DOORBELL:
            self.port.raise_irq(IRQ_MSI, 0, time.monotonic_ns())


class FakeGfxHost:
    """gfx_host: vGPUs with a real channel broker (:meth:`start` it, :meth:`stop` it) and the host API."""

    def __init__(self, run_dir: Path, shm_dir: Path) -> None:
        self.broker_path = run_dir / f"fake-broker-{secrets.token_hex(3)}.sock"
        self.shm_dir = shm_dir
        self.vgpus: dict[str, FakeVgpu] = {}
        self._offers: dict[str, tuple[FakeVgpu, ChannelEnd]] = {}
        self._open: dict[str, ChannelEnd] = {}
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None

    def add(self, uuid: str) -> FakeVgpu:
        self.vgpus[uuid] = FakeVgpu(uuid)
        return self.vgpus[uuid]

    def _vgpu(self, uuid: str) -> FakeVgpu:
        if uuid not in self.vgpus:
            raise NotFound(f"no vGPU {uuid}", reason="UNKNOWN_VGPU")
        return self.vgpus[uuid]

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.broker_path))
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self._accept = asyncio.create_task(self._serve_broker(sock), name="fake-broker")

    async def stop(self) -> None:
        for uuid in list(self._open):
            self.release(uuid)
        if self._accept is not None:
            self._accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept
        if self._sock is not None:
            self._sock.close()
            self.broker_path.unlink(missing_ok=True)

    async def _serve_broker(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            conn.setblocking(False)
            payload, fds = await recv_fds_async(conn, 0, timeout=5.0)
            for fd in fds:
                os.close(fd)
            offer = self._offers.pop(payload.decode(), None)
            if offer is None:
                conn.close()
                continue
            vgpu, end = offer
            data, channel_fds = end.export()
            await send_fds_async(conn, data, channel_fds, timeout=5.0)
            end.watch_peer(conn)
            vgpu.conn = conn
            vgpu.thread = threading.Thread(target=vgpu.serve, name=f"fake-trap-{vgpu.uuid[:8]}", daemon=True)
            vgpu.thread.start()

    def open(self, uuid: str) -> ChannelTicket:
        """The vendor open: a channel offered to the broker."""
        vgpu = self._vgpu(uuid)
        end = create_channel(self.shm_dir, f"chan-{uuid}", CHANNEL_SPEC)
        vgpu.port = HostPort(end)
        self._open[uuid] = end
        token = secrets.token_hex(8)
        self._offers[token] = (vgpu, end)
        return ChannelTicket(str(self.broker_path), token)

    def release(self, uuid: str) -> None:
        """The vendor release: hang up the channel and join the trap thread."""
        end = self._open.pop(uuid)
        vgpu = self.vgpus[uuid]
        if vgpu.conn is not None:
            with contextlib.suppress(OSError):
                vgpu.conn.shutdown(socket.SHUT_RDWR)
        if vgpu.thread is not None:
            vgpu.thread.join(5.0)
        end.close()
        vgpu.port = vgpu.conn = vgpu.thread = None

    def raise_irq(self, uuid: str, index: int, vector: int = 0) -> None:
        port = self.vgpus[uuid].port
        assert port is not None, "vGPU not open"
        port.raise_irq(index, vector, time.monotonic_ns())

    # ---- GfxPeer ----------------------------------------------------------------------------

    async def describe_device(self, uuid: str) -> DeviceDescription:
        self._vgpu(uuid)
        return FAKE_DESCRIPTION

    async def reset_vgpu(self, uuid: str) -> None:
        vgpu = self._vgpu(uuid)
        if uuid not in self._open:
            raise WrongState(f"vGPU {uuid} is not open", reason="NOT_OPEN")
        vgpu.resets += 1

    async def query_plane(self, uuid: str, plane_type: int) -> Plane:
        vgpu = self._vgpu(uuid)
        return vgpu.plane if plane_type == 1 else Plane()

    async def get_framebuffer(self, uuid: str, dmabuf_id: int) -> Framebuffer:
        vgpu = self._vgpu(uuid)
        if dmabuf_id == 0 or dmabuf_id != vgpu.plane.dmabuf_id:
            raise NotFound(f"no dmabuf {dmabuf_id}", reason="UNKNOWN_DMABUF")
        return Framebuffer(vgpu.plane, vgpu.framebuffer)
