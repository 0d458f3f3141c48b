"""Dirty page tracking (``VFIO_IOMMU_DIRTY_PAGES`` START / STOP / GET_BITMAP, kernel-mdev §2.6),
and the page bitmaps it (and pinning) works on.

Tracking: while it is on, every mapping has a bitmap; START allocates them pre-populated with
every currently pinned page, maps made while tracking get their own, STOP frees them all. Pages
become dirty when pinned and when written through ``DmaWrite`` or a write ``translate``. A
report (GET_BITMAP, or UNMAP with a bitmap) ORs the mappings' bitmaps into one bitmap of the
requested range; after GET_BITMAP each reported mapping's bitmap is cleared and re-populated
with its still-pinned pages, so a pinned page is dirty in every round until it is unpinned.

Bitmap layout: bit *i* covers page *i* (the page at ``base + i * 4096``). Bits are packed
least-significant first, eight per byte, which is exactly the byte image of the kernel's
little-endian ``u64`` words; a bitmap handed to a caller is padded to whole ``u64`` words
(``DIRTY_BITMAP_BYTES``). Per-mapping bitmaps are ``bytearray`` of ``ceil(npages / 8)`` bytes
whose bits past ``npages`` are always 0.

Glossary:
- round: one GET_BITMAP of a range (a migration pre-copy iteration).
- populate: set the bits of the pages that are pinned right now.
- word: 64 bits, 8 bytes; the granularity of a bitmap given to a caller.
- run: ``(first, count)``, ``count`` consecutive pages starting at ``first``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vgpusim.iommu_type2.core.mappings import Mapping
from vgpusim.iommu_type2.core.model import PAGE_SHIFT

# -- page bitmaps -------------------------------------------------------------------------------


def bitmap_bytes(npages: int) -> int:
    """``DIRTY_BITMAP_BYTES(npages)``: bytes of a caller's bitmap, whole u64 words."""
    return ((npages + 63) // 64) * 8


def new_bitmap(npages: int) -> bytearray:
    """A zeroed per-mapping bitmap of ``npages`` bits."""
    return bytearray((npages + 7) // 8)


def set_bits(buf: bytearray, first: int, count: int) -> None:
    """Set ``count`` bits from bit ``first`` (whole bytes in one slice assignment)."""
    if count <= 0:
        return
    last = first + count - 1
    first_byte, last_byte = first >> 3, last >> 3
    if first_byte == last_byte:
        buf[first_byte] |= ((1 << count) - 1) << (first & 7)
        return
    buf[first_byte] |= (0xFF << (first & 7)) & 0xFF
    if last_byte > first_byte + 1:
        buf[first_byte + 1 : last_byte] = b"\xff" * (last_byte - first_byte - 1)
    buf[last_byte] |= (1 << ((last & 7) + 1)) - 1


def set_pages(buf: bytearray, pages: Iterable[int]) -> None:
    """Set the bit of every page index in ``pages``."""
    for page in pages:
        buf[page >> 3] |= 1 << (page & 7)


def clear(buf: bytearray) -> None:
    """Zero every bit."""
    buf[:] = bytes(len(buf))


def compose(npages: int, parts: Iterable[tuple[int, bytearray]]) -> tuple[bytes, int]:
    """A caller's bitmap of ``npages`` pages from ``(bit_offset, bitmap)`` parts, and its popcount.

    Parts are OR-ed in at their offset (a mapping's bitmap at the mapping's page offset in the
    range); pages covered by no part stay 0.
    """
    acc = 0
    for offset, bits in parts:
        acc |= int.from_bytes(bits, "little") << offset
    return acc.to_bytes(bitmap_bytes(npages), "little"), acc.bit_count()


def runs(pages: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Coalesce sorted page indexes into ``(first, count)`` runs."""
    first = prev = -2
    for page in pages:
        if page != prev + 1:
            if first >= 0:
                yield first, prev - first + 1
            first = page
        prev = page
    if first >= 0:
        yield first, prev - first + 1


# -- tracking -----------------------------------------------------------------------------------


class DirtyTracker:
    """The tracking switch of one container and the bitmap operations on its mappings."""

    __slots__ = ("enabled", "reported_pages_total")

    def __init__(self) -> None:
        self.enabled = False
        self.reported_pages_total = 0

    def start(self, mappings: Iterable[Mapping]) -> None:
        """Turn tracking on (a no-op when on): a bitmap per mapping holding its pinned pages."""
        if self.enabled:
            return
        for mapping in mappings:
            self.attach(mapping, force=True)
        self.enabled = True

    def stop(self, mappings: Iterable[Mapping]) -> None:
        """Turn tracking off (a no-op when off) and free the bitmaps."""
        if not self.enabled:
            return
        self.enabled = False
        for mapping in mappings:
            mapping.dirty = None

    def attach(self, mapping: Mapping, *, force: bool = False) -> None:
        """Give a new mapping its bitmap if tracking is on (``force``: during START)."""
        if self.enabled or force:
            mapping.dirty = new_bitmap(mapping.npages)
            set_pages(mapping.dirty, mapping.pins)

    @staticmethod
    def mark(mapping: Mapping, first_page: int, count: int) -> None:
        """Mark pages ``first_page .. first_page + count - 1`` of ``mapping`` dirty (if tracking)."""
        if mapping.dirty is not None:
            set_bits(mapping.dirty, first_page, count)

    def report(self, mappings: Iterable[Mapping], iova: int, npages: int, *, repopulate: bool) -> bytes:
        """The bitmap of ``npages`` pages from ``iova`` over ``mappings`` (all inside the range).

        With ``repopulate`` (GET_BITMAP) each mapping's bitmap is then reset to its pinned pages.
        """
        listed = [m for m in mappings if m.dirty is not None]
        data, count = compose(npages, (((m.iova - iova) >> PAGE_SHIFT, m.dirty) for m in listed if m.dirty))
        self.reported_pages_total += count
        if repopulate:
            for mapping in listed:
                assert mapping.dirty is not None
                clear(mapping.dirty)
                set_pages(mapping.dirty, mapping.pins)
        return data
