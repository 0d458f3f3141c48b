"""What the frontend hands the built-in guest driver: the vCPU thread's view of its VM.

A real guest driver reaches its device through config-space and BAR accesses that trap to the VMM,
reads and writes its own RAM directly, allocates pages from its kernel, and sleeps until an
interrupt.  :class:`GuestEnv` is exactly that, injected, so the same driver runs on the frontend's
shared-memory channel (``vm.py``) and on the in-process harness (``guest.testing``):

- ``port``: an :class:`~vgpusim.qemu_frontend.core.regions.MmioPort`; ``read/write(region,
  offset, size[, value])`` with region :data:`REGION_BAR0` (registers + GTT window),
  :data:`REGION_BAR2` (aperture) or :data:`REGION_CONFIG`; 1/2/4/8-byte naturally aligned accesses.
- ``ram`` + ``regions``: the whole guest RAM segment and the GPA -> segment-offset layout;
- ``alloc``: the guest's page allocator (contiguous GPA runs);
- ``wait_irq(timeout)``: block up to ``timeout`` seconds; True once an interrupt (MSI or INTx)
  arrived since the previous call, False on timeout;
- ``clock``: monotonic seconds (the harness passes a simulated clock tied to ``wait_irq``).

The driver runs in one vCPU thread: nothing here is asynchronous, and the env is not shared
between threads.

Glossary:
- GPA: guest-physical address (= IOVA, no vIOMMU).
- segment offset: where a GPA's byte lives in the RAM segment (``memory.gpa_to_offset``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from vgpusim.qemu_frontend.core.memory import PageAllocator, Region, gpa_to_offset
from vgpusim.qemu_frontend.core.regions import REGION_CONFIG, MmioPort

REGION_BAR0: Final = 0
REGION_BAR2: Final = 2
__all__ = ["REGION_BAR0", "REGION_BAR2", "REGION_CONFIG", "Clock", "GuestEnv", "SystemClock"]


class Clock(Protocol):
    """Monotonic time in seconds."""

    def monotonic(self) -> float: ...


class SystemClock:
    """The host's monotonic clock (what the frontend uses)."""

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class GuestEnv:
    """Everything the guest driver touches (see the module docstring)."""

    port: MmioPort
    ram: memoryview
    regions: tuple[Region, ...]
    alloc: PageAllocator
    wait_irq: Callable[[float], bool]
    clock: Clock = field(default_factory=SystemClock)

    def ram_view(self, gpa: int, size: int) -> memoryview:
        """A writable view of ``[gpa, gpa + size)``, which must lie inside one RAM region."""
        offset = gpa_to_offset(self.regions, gpa, size)
        return self.ram[offset : offset + size]

    def read_ram(self, gpa: int, size: int) -> bytes:
        """Copy ``size`` bytes of guest RAM at ``gpa``."""
        return bytes(self.ram_view(gpa, size))

    def write_ram(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` into guest RAM at ``gpa`` (a CPU store, not a device access)."""
        self.ram_view(gpa, len(data))[:] = data

    def zero_ram(self, gpa: int, size: int) -> None:
        """Clear ``size`` bytes at ``gpa`` (a freshly allocated page is zeroed by the guest kernel)."""
        view = self.ram_view(gpa, size)
        view[:] = bytes(size)

    def read_u32(self, gpa: int) -> int:
        """The little-endian dword at ``gpa``."""
        return int.from_bytes(self.ram_view(gpa, 4), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        """Store a little-endian dword at ``gpa``."""
        self.ram_view(gpa, 4)[:] = (value & 0xFFFF_FFFF).to_bytes(4, "little")
