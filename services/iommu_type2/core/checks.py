"""Argument validation in the kernel's order (kernel-mdev §2.2, §2.3, §2.6), before any state is read.

Each ``check_*`` raises the first error type1 would return for the same arguments, so a request
that is wrong in several ways gets the same errno as from the kernel (a misaligned *and*
overlapping map is ``EINVAL``, not ``EEXIST``: alignment is checked here, overlap later by the
container). The checks that need container state (overlap, entry limit, dirty tracking on,
bisecting, pins) follow in ``container.py`` in the order each docstring below lists.

Glossary:
- u64 check: the kernel's "none of our __u64 fields overflow"; here: an int in ``0..2**64-1``.
- ffs: index of the lowest set bit (``__ffs``), the page shift of a page-size bitmap.
"""

from __future__ import annotations

from collections.abc import Mapping

from vgpusim.iommu_type2.core import reasons
from vgpusim.iommu_type2.core.dirty import bitmap_bytes
from vgpusim.iommu_type2.core.model import (
    MAX_DIRTY_BITMAP_SIZE,
    PAGE_MASK,
    PAGE_SIZE,
    U64_MAX,
    DmaMapping,
)

_NAME_MAX = 255


def check_u64(name: str, value: int) -> None:
    """``VALUE_OUT_OF_RANGE`` unless ``value`` is an int in ``0..2**64-1``."""
    if not 0 <= value <= U64_MAX:
        raise reasons.value_out_of_range(name, value)


def check_name(what: str, value: str) -> None:
    """``BAD_NAME`` unless ``value`` is 1-255 printable characters without whitespace."""
    if not 0 < len(value) <= _NAME_MAX or not value.isprintable() or any(c.isspace() for c in value):
        raise reasons.bad_name(what, value)


def _ffs(value: int) -> int:
    return (value & -value).bit_length() - 1


def check_map(request: DmaMapping, segment_sizes: Mapping[str, int]) -> None:
    """``MAP_DMA`` argument checks, in order: u64 fields, prot, zero size, alignment of
    size/iova/offset, IOVA wrap, segment wrap, segment registered, range inside the segment.

    The container then checks, in order: overlap (EEXIST), ``dma_avail`` (ENOSPC), memlock in
    hardware mode (ENOMEM).
    """
    check_u64("iova", request.iova)
    check_u64("size", request.size)
    check_u64("offset", request.offset)
    if not (request.prot.read or request.prot.write):
        raise reasons.bad_prot()
    if request.size == 0:
        raise reasons.zero_size()
    for name, value in (("size", request.size), ("iova", request.iova), ("offset", request.offset)):
        if value & PAGE_MASK:
            raise reasons.misaligned(name, value)
    if request.iova + request.size - 1 > U64_MAX:
        raise reasons.wrap("iova", request.iova, request.size)
    if request.offset + request.size - 1 > U64_MAX:
        raise reasons.wrap("offset", request.offset, request.size)
    segment_size = segment_sizes.get(request.segment)
    if segment_size is None:
        raise reasons.unknown_segment_arg(request.segment)
    if request.offset + request.size > segment_size:
        raise reasons.outside_segment(request.segment, request.offset, request.size, segment_size)


def map_ok(request: DmaMapping, segment_sizes: Mapping[str, int]) -> bool:
    """True if :func:`check_map` would pass: one expression for the common case (batches)."""
    iova, size, offset = request.iova, request.size, request.offset
    return (
        iova >= 0
        and size > 0
        and offset >= 0
        and not (iova | size | offset) & PAGE_MASK
        and iova + size <= U64_MAX + 1
        and offset + size <= segment_sizes.get(request.segment, -1)
        and (request.prot.read or request.prot.write)
    )


def _check_bitmap_pages(size: int, pgsize: int) -> int:
    """``verify_bitmap_size(size >> __ffs(pgsize))``; returns the page count."""
    if pgsize == 0:
        raise reasons.bad_pgsize(pgsize)  # __ffs(0) is undefined in the kernel
    npages = size >> _ffs(pgsize)
    if npages == 0 or bitmap_bytes(npages) > MAX_DIRTY_BITMAP_SIZE:
        raise reasons.bad_bitmap_size(npages)
    return npages


def check_unmap(iova: int, size: int, unmap_all: bool, dirty_pgsize: int) -> None:
    """``UNMAP_DMA`` argument checks, in order: u64 fields, dirty bitmap with unmap-all, bitmap
    size, iova alignment, unmap-all needing iova 0 and size 0 (or else: zero size, size
    alignment, wrap).

    The container then checks, in order: dirty tracking on and pgsize 4096 (when a bitmap is
    asked for), whole cover (BISECT), then notifies pinning devices.
    """
    check_u64("iova", iova)
    check_u64("size", size)
    check_u64("dirty_pgsize", dirty_pgsize)
    if dirty_pgsize and unmap_all:
        raise reasons.bad_flags("a dirty bitmap cannot be combined with unmap-all")
    if dirty_pgsize:
        _check_bitmap_pages(size, dirty_pgsize)
    if iova & PAGE_MASK:
        raise reasons.misaligned("iova", iova)
    if unmap_all:
        if iova or size:
            raise reasons.bad_unmap_all(iova, size)
        return
    if size == 0:
        raise reasons.zero_size()
    if size & PAGE_MASK:
        raise reasons.misaligned("size", size)
    if iova + size - 1 > U64_MAX:
        raise reasons.wrap("iova", iova, size)


def check_dirty_range(iova: int, size: int, pgsize: int) -> int:
    """``DIRTY_PAGES`` ``GET_BITMAP`` argument checks, in order: u64 fields, wrap, bitmap size,
    pgsize equal to 4096, iova alignment, zero size / size alignment. Returns the page count.

    The container then checks, in order: tracking on, whole cover (BISECT).
    """
    check_u64("iova", iova)
    check_u64("size", size)
    check_u64("pgsize", pgsize)
    if size and iova + size > U64_MAX:  # range.iova + range.size < range.iova in u64
        raise reasons.wrap("iova", iova, size)
    npages = _check_bitmap_pages(size, pgsize)
    if pgsize != PAGE_SIZE:
        raise reasons.bad_pgsize(pgsize)
    if iova & PAGE_MASK:
        raise reasons.misaligned("iova", iova)
    if size & PAGE_MASK:
        raise reasons.misaligned("size", size)
    return npages


def check_dma_length(length: int, limit: int) -> None:
    """``BAD_LENGTH`` unless ``0 < length <= limit`` (vfio_dma_rw: ``len <= 0`` is EINVAL)."""
    if not 0 < length <= limit:
        raise reasons.bad_length(length, limit)
