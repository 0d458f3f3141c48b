"""The BAR0 register layout of a vGPU (constants) and its register file with write effects.

BAR0 is ``[0, MMIO_SIZE)`` registers, then the GTT window at ``GTT_OFFSET`` (see ``gtt``).  The
full table is in ``services/gfx_host/README.md``; in short (all registers 32-bit, little-endian,
naturally aligned 1/2/4/8-byte accesses; 64-bit values are LO/HI pairs):

- ``SCRATCH`` (RW, no effect), for tests;
- interrupts: ``INT_STATUS`` (RO latched events), ``INT_MASK`` (RW, 1 = masked, reset all-ones),
  ``INT_ACK`` (write-1-to-clear status, reads 0), ``INT_ENABLE`` (RW, events that latch);
- per engine (``ENGINE_BASE[e] + RING_*``): start LO/HI (graphics address), size (bytes), ctl
  (bit0 enable), head (RO while enabled: the GPU advances it), tail (write = doorbell),
  seqno (RO, last completed), status (RO: IDLE, HUNG);
- ``GDRST`` (write: bit0 full reset, bit 1+e engine e; reads 0);
- display plane: ctl (bit0 enable), format (DRM fourcc), stride, width, height, base LO/HI
  (writing base LO is the flip: it raises ``INT_FLIP_DONE``);
- ``PVINFO_BASE`` page (RO but ``PV_DISPLAY_READY``): magic, version, vGPU ID, engine mask,
  low/high GM base/size, fence base/count, display resolution, GM total.  Reading the magic
  sets ``pv_notified``; enabling a ring before that puts the vGPU in failsafe
  ``UNSUPPORTED_GUEST`` (GVT-g does the same for execlist enable).

Glossary:
- write effect: what the service must do after a guest write (ring a doorbell, reset engines,
  re-query the plane, apply GTT updates, send an MSI, enter failsafe).
- event bits: ``INT_COMPLETE(e)`` (bit e), ``INT_ERROR(e)`` (bit 8 + e), ``INT_FLIP_DONE`` (bit 16).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.models import ENGINE_NAMES
from vgpusim.gfx_host.core.resources import Extent

MIB: Final = 1 << 20
PAGE_SIZE: Final = 4096
MMIO_SIZE: Final = 2 * MIB  # register space of BAR0
GTT_OFFSET: Final = 8 * MIB  # GTT window of BAR0
GTT_ENTRY_SIZE: Final = 8
MAX_RING_SIZE: Final = 2 * MIB  # GVT shadow ring: 512 x 4 KiB

SCRATCH: Final = 0x00100

INT_STATUS: Final = 0x44000
INT_MASK: Final = 0x44004
INT_ACK: Final = 0x44008
INT_ENABLE: Final = 0x4400C
INT_FLIP_DONE: Final = 1 << 16

GDRST: Final = 0x0941C
GDRST_FULL: Final = 1 << 0

RING_START_LO: Final = 0x00
RING_START_HI: Final = 0x04
RING_SIZE: Final = 0x08
RING_CTL: Final = 0x0C
RING_HEAD: Final = 0x10
RING_TAIL: Final = 0x14
RING_SEQNO: Final = 0x18
RING_STATUS: Final = 0x1C
RING_HWS_LO: Final = 0x20  # hardware status page (STORE_SEQNO target), graphics address
RING_HWS_HI: Final = 0x24
RING_CTL_ENABLE: Final = 1 << 0
RING_STATUS_IDLE: Final = 1 << 0
RING_STATUS_HUNG: Final = 1 << 1

PLANE_CTL: Final = 0x70180
PLANE_FORMAT: Final = 0x70184
PLANE_STRIDE: Final = 0x70188
PLANE_WIDTH: Final = 0x7018C
PLANE_HEIGHT: Final = 0x70190
PLANE_BASE_LO: Final = 0x70198  # 8-byte aligned: one 64-bit write flips
PLANE_BASE_HI: Final = 0x7019C
PLANE_CTL_ENABLE: Final = 1 << 0

PVINFO_BASE: Final = 0x78000
PVINFO_SIZE: Final = 0x1000
PVINFO_MAGIC_VALUE: Final = 0x4776544776544776  # 'vGTvGTvG', as GVT-g's VGT_MAGIC
PVINFO_VERSION_VALUE: Final = 0x0000_0001  # major 1 (low u16), minor 0 (high u16)
PV_MAGIC_LO: Final = PVINFO_BASE + 0x00
PV_MAGIC_HI: Final = PVINFO_BASE + 0x04
PV_VERSION: Final = PVINFO_BASE + 0x08
PV_DISPLAY_READY: Final = PVINFO_BASE + 0x0C
PV_VGPU_ID: Final = PVINFO_BASE + 0x10
PV_ENGINE_MASK: Final = PVINFO_BASE + 0x14
PV_LOW_GM_BASE: Final = PVINFO_BASE + 0x18  # u64 (LO, HI)
PV_LOW_GM_SIZE: Final = PVINFO_BASE + 0x20  # u64
PV_HIGH_GM_BASE: Final = PVINFO_BASE + 0x28  # u64
PV_HIGH_GM_SIZE: Final = PVINFO_BASE + 0x30  # u64
PV_FENCE_BASE: Final = PVINFO_BASE + 0x38
PV_FENCE_COUNT: Final = PVINFO_BASE + 0x3C
PV_DISPLAY_WIDTH: Final = PVINFO_BASE + 0x40
PV_DISPLAY_HEIGHT: Final = PVINFO_BASE + 0x44
PV_GM_TOTAL: Final = PVINFO_BASE + 0x48  # u64


class Engine(enum.IntEnum):
    """Engines a model may have; the value is the index used in masks and event bits."""

    RCS = 0  # render / compute
    BCS = 1  # blitter / copy
    VCS = 2  # video

    @classmethod
    def from_name(cls, name: str) -> Engine:
        """``"rcs"`` -> ``Engine.RCS`` (the names of ``models.ENGINE_NAMES``)."""
        return cls(ENGINE_NAMES.index(name))


ENGINE_BASE: Final = {Engine.RCS: 0x02000, Engine.BCS: 0x22000, Engine.VCS: 0x12000}


def ring_reg(engine: Engine, reg: int) -> int:
    """BAR0 offset of ring register ``reg`` (``RING_*``) of ``engine``."""
    return ENGINE_BASE[engine] + reg


def int_complete(engine: Engine) -> int:
    """The completion event bit of ``engine``."""
    return 1 << engine


def int_error(engine: Engine) -> int:
    """The error event bit of ``engine`` (command fault)."""
    return 1 << (8 + engine)


def gdrst_bit(engine: Engine) -> int:
    """The ``GDRST`` bit that resets ``engine``."""
    return 1 << (1 + engine)


def bar0_size(gm_size: int) -> int:
    """BAR0 size: registers + a GTT window covering ``gm_size`` bytes of GM, as a power of two."""
    need = GTT_OFFSET + gm_size // PAGE_SIZE * GTT_ENTRY_SIZE
    return 1 << (need - 1).bit_length()


class FailsafeReason(enum.Enum):
    """Why a vGPU is in failsafe (GVT_FAILSAFE_*); only a DMLR clears it."""

    UNSUPPORTED_GUEST = "UNSUPPORTED_GUEST"
    INSUFFICIENT_RESOURCE = "INSUFFICIENT_RESOURCE"
    GUEST_ERROR = "GUEST_ERROR"


@dataclass(frozen=True, slots=True)
class WriteEffect:
    """What a guest MMIO write asks of the service; falsy when nothing."""

    doorbells: frozenset[Engine] = frozenset()
    resets: frozenset[Engine] = frozenset()
    plane_changed: bool = False
    gtt_updated: bool = False
    irq: bool = False
    failsafe: FailsafeReason | None = None

    def __bool__(self) -> bool:
        return bool(self.doorbells or self.resets or self.plane_changed or self.gtt_updated or self.irq) or (
            self.failsafe is not None
        )

    def merge(self, other: WriteEffect) -> WriteEffect:
        """Both effects (the first failsafe reason wins)."""
        if not other:
            return self
        if not self:
            return other
        return WriteEffect(
            self.doorbells | other.doorbells,
            self.resets | other.resets,
            self.plane_changed or other.plane_changed,
            self.gtt_updated or other.gtt_updated,
            self.irq or other.irq,
            self.failsafe or other.failsafe,
        )


NO_EFFECT: Final = WriteEffect()
GTT_UPDATED: Final = WriteEffect(gtt_updated=True)


@dataclass(frozen=True, slots=True)
class PvInfo:
    """What the PVINFO page tells the guest about its partition."""

    vgpu_id: int
    low_gm: Extent
    high_gm: Extent
    fences: Extent
    display_width: int
    display_height: int
    gm_total: int
    engines: tuple[Engine, ...]


@dataclass(frozen=True, slots=True)
class RingState:
    """A snapshot of one engine's ring registers."""

    engine: Engine
    start: int
    size: int
    head: int
    tail: int
    enabled: bool
    seqno: int
    hung: bool
    hws: int = 0


@dataclass(frozen=True, slots=True)
class PlaneRegs:
    """A snapshot of the display plane registers."""

    enabled: bool
    drm_format: int
    width: int
    height: int
    stride: int
    base: int


@dataclass(frozen=True, slots=True)
class RegisterStatistics:
    """Counters of a register file."""

    reads_total: int
    writes_total: int
    unhandled_total: int
    doorbells_total: int
    irqs_total: int
    engine_resets_total: int
    pv_notified: bool


def check_access(offset: int, size: int, limit: int) -> None:
    """Reject an access that is not 1/2/4/8 bytes, naturally aligned, inside ``[0, limit)``."""
    if size not in (1, 2, 4, 8) or offset % size or not 0 <= offset <= limit - size:
        raise InvalidArgument(
            f"bad MMIO access of {size} bytes at {offset:#x}",
            reason="MMIO_BAD_ACCESS",
            metadata={"offset": hex(offset), "size": str(size)},
        )
