"""In-memory fakes of the mapper's ops tables, for tests here and in the services built on it.

- :class:`InMemorySegmentStore`: segments are ``bytearray`` objects held in a dict.
- :class:`UnpinningListener`: a device's unmap callback that unpins what the device holds in the
  notified range, optionally ignoring the first calls (a late vendor), forever (a broken vendor)
  or never returning (a hung vendor). It records every call.

Glossary:
- well-behaved listener: one that unpins on the first call (``ignore_calls=0``).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Protocol

from vgpusim.common.errors import AlreadyExists, InvalidArgument, NotFound
from vgpusim.iommu_type2.core.model import PAGE_SIZE, PIN_PAGES_MAX

__all__ = ["InMemorySegmentStore", "UnpinningListener"]


class InMemorySegmentStore:
    """A :class:`~.ops.SegmentStore` keeping each segment in a ``bytearray``."""

    def __init__(self) -> None:
        self._segments: dict[str, bytearray] = {}

    def create(self, name: str, size: int) -> memoryview:
        """Create a zero-filled segment of ``size`` bytes; returns its view."""
        if name in self._segments:
            raise AlreadyExists(f"segment {name!r} exists", reason="SEGMENT_EXISTS")
        if size <= 0:
            raise InvalidArgument(f"segment size {size} must be positive", reason="BAD_SEGMENT_SIZE")
        self._segments[name] = bytearray(size)
        return memoryview(self._segments[name])

    def view(self, name: str) -> memoryview:
        """The segment's bytes; ``NotFound`` (``SEGMENT_MISSING``) if it was never created."""
        try:
            return memoryview(self._segments[name])
        except KeyError:
            raise NotFound(
                f"no segment {name!r}",
                reason="SEGMENT_MISSING",
                errno=errno.ENOENT,
                metadata={"segment": name},
            ) from None

    def remove(self, name: str) -> None:
        """Forget a segment (views already handed out stay valid)."""
        self._segments.pop(name, None)


class _Pins(Protocol):
    """The two container methods a vendor's unmap callback uses."""

    def pinned_runs(self, device: str, iova: int = 0, size: int = 1 << 64) -> tuple[tuple[int, int], ...]: ...

    def unpin_pages(self, device: str, iova: int, npage: int) -> int: ...


class UnpinningListener:
    """An :class:`~.ops.UnmapListener` for ``device`` of ``pins`` (a ``Container``).

    Each call is recorded in :attr:`calls`. The first ``ignore_calls`` calls return without
    unpinning (``None`` = never unpin); with ``hang`` the call never returns (until cancelled).
    """

    def __init__(self, pins: _Pins, device: str, *, ignore_calls: int | None = 0, hang: bool = False) -> None:
        self.pins = pins
        self.device = device
        self.ignore_calls = ignore_calls
        self.hang = hang
        self.calls: list[tuple[int, int]] = []
        self.unpinned_pages = 0
        """Pages whose last reference this listener dropped."""

    async def notify_unmap(self, iova: int, size: int) -> None:
        self.calls.append((iova, size))
        if self.hang:
            await asyncio.Event().wait()
        if self.ignore_calls is None or len(self.calls) <= self.ignore_calls:
            return
        # Each pass drops one reference per pinned page; repeat until nothing is left.
        while runs := self.pins.pinned_runs(self.device, iova, size):
            for start, count in runs:
                for done in range(0, count, PIN_PAGES_MAX):
                    step = min(PIN_PAGES_MAX, count - done)
                    self.unpinned_pages += self.pins.unpin_pages(self.device, start + done * PAGE_SIZE, step)
