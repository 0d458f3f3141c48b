"""The guest's half of the GTT: graphics-memory ranges backed by guest pages, and address helpers.

A guest driver decides where its objects live in graphics memory (GM) and maps each 4 KiB GM page
to a guest-physical page by writing the page's GTT entry through BAR0 (8 bytes at
``GTT_OFFSET + 8 * (gm >> 12)``: bit 0 PRESENT, bits 12..51 the guest frame).  The host shadows
those entries lazily (before the next doorbell is audited), pinning the guest pages.

:class:`GuestGtt` hands out page-aligned GM ranges from the vGPU's own low GM range (a bump
allocator; buffers live as long as the driver), backs each with a contiguous run of freshly zeroed
guest pages from the guest's :class:`~vgpusim.qemu_frontend.core.memory.PageAllocator`, and writes
one GTT entry per page.  Because each :class:`GmBuffer` is contiguous in both spaces,
``gm <-> gpa`` is an offset inside the buffer.

Glossary:
- GM: graphics memory (the GPU's address space); low GM: the vGPU's aperture slice.
- GTT entry: ``gpa & PFN_MASK | PRESENT``; an entry outside the partition is ignored by the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vgpusim.common.errors import Exhausted, InvalidArgument, NotFound
from vgpusim.gfx_host.core.gtt import GTT_PFN_MASK, GTT_PRESENT
from vgpusim.gfx_host.core.registers import GTT_ENTRY_SIZE, GTT_OFFSET
from vgpusim.qemu_frontend.guest.env import REGION_BAR0, GuestEnv
from vgpusim.qemu_frontend.guest.probe import GmRange

PAGE: Final = 4096


def gtt_entry_offset(gm: int) -> int:
    """BAR0 offset of the GTT entry that maps the GM page containing ``gm``."""
    return GTT_OFFSET + (gm // PAGE) * GTT_ENTRY_SIZE


def gtt_entry(gpa: int, *, present: bool = True) -> int:
    """The 8-byte GTT entry value mapping the guest page at ``gpa``."""
    return (gpa & GTT_PFN_MASK) | (GTT_PRESENT if present else 0)


@dataclass(frozen=True, slots=True)
class GmBuffer:
    """``size`` bytes mapped at GM address ``gm``, backed by guest RAM at ``gpa`` (both contiguous)."""

    name: str
    gm: int
    gpa: int
    size: int

    @property
    def gm_end(self) -> int:
        return self.gm + self.size

    def gm_at(self, offset: int) -> int:
        """GM address of byte ``offset`` of the buffer."""
        if not 0 <= offset < self.size:
            raise InvalidArgument(f"offset {offset:#x} outside buffer {self.name} ({self.size:#x} bytes)")
        return self.gm + offset

    def gpa_at(self, offset: int) -> int:
        """Guest-physical address of byte ``offset`` of the buffer."""
        if not 0 <= offset < self.size:
            raise InvalidArgument(f"offset {offset:#x} outside buffer {self.name} ({self.size:#x} bytes)")
        return self.gpa + offset


class GuestGtt:
    """Allocates GM in ``space`` (the vGPU's low GM) and maps guest pages there."""

    def __init__(self, env: GuestEnv, space: GmRange) -> None:
        self._env = env
        self._space = space
        self._next = space.base
        self._buffers: list[GmBuffer] = []
        self.entries_written = 0

    @property
    def buffers(self) -> tuple[GmBuffer, ...]:
        """Every buffer mapped so far, in GM order."""
        return tuple(self._buffers)

    @property
    def free_bytes(self) -> int:
        """GM left in the space."""
        return self._space.end - self._next

    def map_buffer(self, name: str, size: int) -> GmBuffer:
        """A new zeroed buffer of ``size`` bytes (rounded up to pages) mapped into GM.

        Errors: InvalidArgument (size <= 0), Exhausted (GM_EXHAUSTED, or GUEST_RAM_EXHAUSTED from
        the page allocator; nothing is allocated then).
        """
        if size <= 0:
            raise InvalidArgument(f"buffer {name} of {size} bytes", reason="BAD_BUFFER_SIZE")
        size = -(-size // PAGE) * PAGE
        if size > self.free_bytes:
            raise Exhausted(
                f"no {size} bytes of graphics memory left for {name} ({self.free_bytes} free)",
                reason="GM_EXHAUSTED",
                metadata={"requested": str(size), "free": str(self.free_bytes)},
            )
        gpa = self._env.alloc.alloc(size)
        self._env.zero_ram(gpa, size)
        buffer = GmBuffer(name, self._next, gpa, size)
        for page in range(0, size, PAGE):
            self.write_entry(buffer.gm + page, gpa + page)
        self._next += size
        self._buffers.append(buffer)
        return buffer

    def write_entry(self, gm: int, gpa: int, *, present: bool = True) -> None:
        """Write the GTT entry of the GM page at ``gm`` (one 8-byte BAR0 write)."""
        self._env.port.write(REGION_BAR0, gtt_entry_offset(gm), 8, gtt_entry(gpa, present=present))
        self.entries_written += 1

    def read_entry(self, gm: int) -> int:
        """Read back the GTT entry of the GM page at ``gm`` (0 if the host ignored it)."""
        return self._env.port.read(REGION_BAR0, gtt_entry_offset(gm), 8)

    def find(self, gm: int) -> GmBuffer:
        """The buffer containing GM address ``gm``; NotFound (GM_NOT_MAPPED) otherwise."""
        for buffer in self._buffers:
            if buffer.gm <= gm < buffer.gm_end:
                return buffer
        raise NotFound(f"GM address {gm:#x} is not mapped by this driver", reason="GM_NOT_MAPPED")

    def gm_to_gpa(self, gm: int) -> int:
        """The guest-physical address behind GM address ``gm``."""
        buffer = self.find(gm)
        return buffer.gpa + (gm - buffer.gm)

    def gpa_to_gm(self, gpa: int) -> int:
        """The GM address at which guest page ``gpa`` is mapped; NotFound (GPA_NOT_MAPPED) otherwise."""
        for buffer in self._buffers:
            if buffer.gpa <= gpa < buffer.gpa + buffer.size:
                return buffer.gm + (gpa - buffer.gpa)
        raise NotFound(f"GPA {gpa:#x} is not mapped into graphics memory", reason="GPA_NOT_MAPPED")
