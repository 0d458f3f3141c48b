"""The guest driver's records: its configuration, its statistics, its failsafe error, the display mode.

Glossary:
- mode: the framebuffers' (width, height, stride); XRGB8888, 4 bytes per pixel, rows 64-byte aligned.
- failsafe: the host stopped executing for the vGPU after a guest error; only a device reset helps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import InvalidArgument, WrongState
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.display import MAX_SURFACE_SIZE
from vgpusim.qemu_frontend.guest.gtt import PAGE
from vgpusim.qemu_frontend.guest.probe import MSI_VECTOR, VgpuInfo

KIB: Final = 1024
DEFAULT_RESOLUTION: Final = (1024, 768)


class DeviceFailsafe(WrongState):
    """The vGPU no longer executes anything (the host's failsafe after a guest error)."""

    default_reason = "VGPU_FAILSAFE"


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Sizes and timeouts of the driver (defaults are what the workloads use)."""

    ring_size: int = 16 * KIB  # per engine, a page multiple
    batch_size: int = 64 * KIB  # per batch buffer
    batches: int = 4  # batch buffers in the pool
    scratch_size: int = 64 * KIB  # small data buffer (SMOKE's store target, results)
    framebuffers: int = 2  # double buffering; 0 = no display
    resolution: tuple[int, int] | None = None  # None: PVINFO's, halved until it fits 36 MiB
    timeout_s: float = 2.0  # no seqno progress for this long = a hang
    poll_s: float = 0.05  # longest single sleep in wait_irq before checking RING_STATUS
    msi_vector: int = MSI_VECTOR

    def __post_init__(self) -> None:
        if self.ring_size % PAGE or not PAGE <= self.ring_size <= r.MAX_RING_SIZE:
            raise InvalidArgument(f"ring size {self.ring_size} must be a page multiple up to 2 MiB")
        if self.batches < 1 or self.batch_size < PAGE or self.scratch_size < PAGE or self.framebuffers < 0:
            raise InvalidArgument("batches >= 1, batch/scratch sizes >= 4 KiB, framebuffers >= 0")
        if self.timeout_s <= 0 or self.poll_s <= 0:
            raise InvalidArgument("timeouts must be positive")


@dataclass(frozen=True, slots=True)
class DriverStatistics:
    """What the driver counted so far."""

    submissions: int  # doorbells
    commands_submitted: int  # commands in the submitted payloads (seqno/interrupt excluded)
    interrupts_received: int  # wait_irq wake-ups
    flips: int  # FLIP_DONE events
    errors: int  # INT_ERROR events
    hangs_detected: int
    resets: int  # engine resets that took
    lost_requests: int
    first_irq_latency_us: float | None  # first doorbell -> first interrupt


def display_mode(info: VgpuInfo, resolution: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(width, height, stride) for ``resolution`` or PVINFO's, halved until one surface fits 36 MiB."""
    width, height = resolution or (info.display_width, info.display_height)
    if width <= 0 or height <= 0:
        width, height = DEFAULT_RESOLUTION
    while _stride(width) * height > MAX_SURFACE_SIZE:
        width, height = width // 2, height // 2
    return width, height, _stride(width)


def _stride(width: int) -> int:
    return (width * 4 + 63) // 64 * 64
