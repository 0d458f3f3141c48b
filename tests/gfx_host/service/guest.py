"""The frontend's side of a vGPU in the gfx_host service tests: broker hand-over and a tiny guest driver.

Everything here blocks (a vCPU thread's view of the device): run it off the event loop with
``asyncio.to_thread``, since gfx_host's trap thread calls back into the loop (GTT pins) and the
broker and the fake iommu_type2 are served by that loop.

Guest RAM layout (IOVA = guest-physical = offset in the RAM segment; mapped in 1 MiB chunks so
that one chunk can be unmapped alone):

| what | IOVA | graphics address (GM) |
|---|---|---|
| ring (one page) | ``RING_IOVA`` | ``low_gm_base + RING_GM_OFFSET`` |
| hardware status page | ``HWS_IOVA`` | ``low_gm_base + HWS_GM_OFFSET`` |
| data page | ``DATA_IOVA`` | ``low_gm_base + DATA_GM_OFFSET`` |

Glossary:
- GM: graphics memory address, translated by the vGPU's GTT into guest frames.
"""

from __future__ import annotations

import socket
from pathlib import Path

from vgpusim.common.fastpath import GuestPort
from vgpusim.common.shm.channel import attach_channel
from vgpusim.common.shm.handover import recv_fds, send_fds
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.gtt import GTT_PRESENT, PAGE_SHIFT, PAGE_SIZE
from vgpusim.gfx_host.core.pci import MSI_CAP, PCI_MSI_FLAGS, PCI_MSI_FLAGS_ENABLE
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.gfx_host.core.vgpu import REGION_BAR0, REGION_CONFIG

MIB = 1 << 20
RAM_SIZE = 16 * MIB
CHUNK = MIB
RING_IOVA, HWS_IOVA, DATA_IOVA = 1 * MIB, 2 * MIB, 3 * MIB
RING_GM_OFFSET, HWS_GM_OFFSET, DATA_GM_OFFSET = 0x0000, 0x1000, 0x2000
RING_SIZE = PAGE_SIZE
HANDOVER_TIMEOUT_S = 5.0


def connect(broker: Path, token: str, shm_dir: Path) -> GuestPort:
    """Present ``token`` to the broker and attach the channel it hands over (the peer end)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(broker))
        send_fds(sock, token.encode(), [], timeout=HANDOVER_TIMEOUT_S)
        payload, fds = recv_fds(sock, timeout=HANDOVER_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise
    return GuestPort(attach_channel(shm_dir, payload, fds, peer=sock))


def pte(iova: int) -> int:
    """A present GTT entry mapping the guest page at ``iova``."""
    return (iova >> PAGE_SHIFT) << PAGE_SHIFT | GTT_PRESENT


class GuestDriver:
    """Register-level guest driver of one vGPU (RCS ring) over a :class:`GuestPort`.

    ``base`` moves its ring, status and data pages up in guest RAM (two vGPUs in one VM).
    """

    def __init__(
        self, port: GuestPort, ram: memoryview, engine: Engine = Engine.RCS, *, base: int = 0
    ) -> None:
        self.port = port
        self.ram = ram
        self.engine = engine
        self.ring_iova, self.hws_iova, self.data_iova = RING_IOVA + base, HWS_IOVA + base, DATA_IOVA + base
        self.gm_base = 0
        self.tail = 0

    # ---- register access ----------------------------------------------------------------------

    def read(self, offset: int, size: int = 4) -> int:
        return self.port.read(REGION_BAR0, offset, size)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.port.write(REGION_BAR0, offset, size, value)

    def ring_reg(self, reg: int) -> int:
        return self.read(r.ring_reg(self.engine, reg))

    # ---- bring-up -----------------------------------------------------------------------------

    def probe(self) -> int:
        """Read the PVINFO magic (the guest learns it runs on a vGPU) and the low GM base."""
        magic = self.read(r.PV_MAGIC_LO, 8)
        self.gm_base = self.read(r.PV_LOW_GM_BASE, 8)
        return magic

    def map_gtt(self, gm: int, iova: int) -> None:
        self.write(r.GTT_OFFSET + (gm >> PAGE_SHIFT) * 8, pte(iova), 8)

    def enable_msi(self) -> None:
        self.port.write(REGION_CONFIG, MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE)

    def enable_completion_irq(self) -> None:
        bit = r.int_complete(self.engine)
        self.write(r.INT_ENABLE, bit)
        self.write(r.INT_MASK, 0xFFFF_FFFF & ~bit)

    def start_ring(self) -> None:
        """GTT for ring, status page and data page; then START/SIZE/HWS and CTL enable."""
        self.map_gtt(self.gm(RING_GM_OFFSET), self.ring_iova)
        self.map_gtt(self.gm(HWS_GM_OFFSET), self.hws_iova)
        self.map_gtt(self.gm(DATA_GM_OFFSET), self.data_iova)
        base = r.ENGINE_BASE[self.engine]
        self.write(base + r.RING_START_LO, self.gm(RING_GM_OFFSET), 8)
        self.write(base + r.RING_SIZE, RING_SIZE)
        self.write(base + r.RING_HWS_LO, self.gm(HWS_GM_OFFSET), 8)
        self.write(base + r.RING_CTL, r.RING_CTL_ENABLE)

    def bring_up(self) -> None:
        """The whole driver load: probe, MSI, interrupts, ring."""
        self.probe()
        self.enable_msi()
        self.enable_completion_irq()
        self.start_ring()

    def gm(self, offset: int) -> int:
        """The graphics address ``offset`` bytes into the vGPU's low GM."""
        return self.gm_base + offset

    # ---- submission ---------------------------------------------------------------------------

    def submit(self, commands: bytes) -> int:
        """Copy ``commands`` (padded to a qword) into the ring in guest RAM and ring the doorbell."""
        data = commands + bytes(-len(commands) % 8)
        if self.tail + len(data) >= RING_SIZE:
            raise AssertionError("the test ring does not wrap")
        self.ram[self.ring_iova + self.tail : self.ring_iova + self.tail + len(data)] = data
        self.tail += len(data)
        self.write(r.ring_reg(self.engine, r.RING_TAIL), self.tail)
        return self.tail

    def ram_dword(self, iova: int) -> int:
        return int.from_bytes(self.ram[iova : iova + 4], "little")
