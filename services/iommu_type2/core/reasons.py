"""The mapper's error catalogue: one constructor per failure, so a reason always comes with the
same class, errno and metadata keys (the servicer needs nothing from here: errors carry it all).

Addresses in messages and metadata are hexadecimal; metadata keys are lower_snake_case.

Glossary:
- reason: the ``ErrorInfo.reason`` string, e.g. ``OVERLAP`` or ``UNMAP_PINS_OUTSTANDING``.
- holder: a device that still holds pins in a range being unmapped.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping

from vgpusim.common.errors import (
    AlreadyExists,
    Busy,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TimedOut,
    TooBig,
    WrongState,
)


def _h(value: int) -> str:
    return f"{value:#x}"


def value_out_of_range(name: str, value: int) -> InvalidArgument:
    """``VALUE_OUT_OF_RANGE`` (EINVAL): a field is not a u64 (the kernel's "__u64 overflow" check)."""
    return InvalidArgument(
        f"{name}={value} is not an unsigned 64-bit value",
        reason="VALUE_OUT_OF_RANGE",
        metadata={"field": name, "value": str(value)},
    )


def bad_prot() -> InvalidArgument:
    """``BAD_PROT`` (EINVAL): a mapping needs READ, WRITE or both."""
    return InvalidArgument("a mapping needs READ and/or WRITE protection", reason="BAD_PROT")


def zero_size(what: str = "size") -> InvalidArgument:
    """``ZERO_SIZE`` (EINVAL)."""
    return InvalidArgument(f"{what} must not be 0", reason="ZERO_SIZE", metadata={"field": what})


def misaligned(name: str, value: int, pgsize: int = 4096) -> InvalidArgument:
    """``MISALIGNED`` (EINVAL): not a multiple of the smallest page size."""
    return InvalidArgument(
        f"{name}={_h(value)} is not aligned to {pgsize} bytes",
        reason="MISALIGNED",
        metadata={"field": name, "value": _h(value)},
    )


def wrap(name: str, start: int, size: int) -> InvalidArgument:
    """``WRAP`` (EINVAL): ``start + size`` passes the end of the 64-bit space."""
    return InvalidArgument(
        f"{name} range {_h(start)}+{_h(size)} wraps around 2**64",
        reason="WRAP",
        metadata={"field": name, "start": _h(start), "size": _h(size)},
    )


def unknown_segment_arg(segment: str) -> InvalidArgument:
    """``UNKNOWN_SEGMENT`` (EINVAL): a mapping names a segment the container has not registered."""
    return InvalidArgument(
        f"segment {segment!r} is not registered", reason="UNKNOWN_SEGMENT", metadata={"segment": segment}
    )


def unknown_segment(segment: str) -> NotFound:
    """``UNKNOWN_SEGMENT`` (ENOENT): unregistering a segment the container does not have."""
    return NotFound(
        f"segment {segment!r} is not registered",
        reason="UNKNOWN_SEGMENT",
        errno=errno.ENOENT,
        metadata={"segment": segment},
    )


def outside_segment(segment: str, offset: int, size: int, segment_size: int) -> InvalidArgument:
    """``OUTSIDE_SEGMENT`` (EINVAL): the segment range of a mapping passes the segment's end."""
    return InvalidArgument(
        f"segment range {_h(offset)}+{_h(size)} is outside {segment!r} ({_h(segment_size)} bytes)",
        reason="OUTSIDE_SEGMENT",
        metadata={"segment": segment, "offset": _h(offset), "size": _h(size)},
    )


def overlap(iova: int, size: int, existing_iova: int, existing_size: int) -> AlreadyExists:
    """``OVERLAP`` (EEXIST): the new mapping overlaps an existing one (v2 never merges or splits)."""
    return AlreadyExists(
        f"{_h(iova)}+{_h(size)} overlaps the mapping {_h(existing_iova)}+{_h(existing_size)}",
        reason="OVERLAP",
        metadata={"iova": _h(iova), "existing_iova": _h(existing_iova), "existing_size": _h(existing_size)},
    )


def dma_entry_limit(limit: int) -> Exhausted:
    """``DMA_ENTRY_LIMIT`` (ENOSPC): the container has ``dma_entry_limit`` mappings already."""
    return Exhausted(
        f"the container already has {limit} mappings (dma_entry_limit)",
        reason="DMA_ENTRY_LIMIT",
        metadata={"limit": str(limit)},
    )


def memlock_exceeded(used: int, wanted: int, limit: int) -> Exhausted:
    """``MEMLOCK_EXCEEDED`` (ENOMEM): the pages would pass the container's memlock limit."""
    return Exhausted(
        f"locking {wanted} more bytes would exceed the memlock limit ({used} of {limit} bytes used)",
        reason="MEMLOCK_EXCEEDED",
        errno=errno.ENOMEM,
        metadata={"used_bytes": str(used), "wanted_bytes": str(wanted), "limit_bytes": str(limit)},
    )


def bad_flags(message: str) -> InvalidArgument:
    """``BAD_FLAGS`` (EINVAL): a combination the ioctl refuses (e.g. dirty bitmap with unmap-all)."""
    return InvalidArgument(message, reason="BAD_FLAGS")


def bad_bitmap_size(npages: int) -> InvalidArgument:
    """``BAD_BITMAP_SIZE`` (EINVAL): ``verify_bitmap_size`` failed (no page, or above 256 MiB)."""
    return InvalidArgument(
        f"a dirty bitmap of {npages} pages is empty or larger than 268435456 bytes",
        reason="BAD_BITMAP_SIZE",
        metadata={"npages": str(npages)},
    )


def bad_unmap_all(iova: int, size: int) -> InvalidArgument:
    """``BAD_UNMAP_ALL`` (EINVAL): unmap-all needs iova 0 and size 0."""
    return InvalidArgument(
        f"unmap-all needs iova 0 and size 0, not {_h(iova)}+{_h(size)}", reason="BAD_UNMAP_ALL"
    )


def bad_pgsize(pgsize: int) -> InvalidArgument:
    """``BAD_PGSIZE`` (EINVAL): dirty bitmaps use exactly the smallest page size (4096)."""
    return InvalidArgument(
        f"dirty bitmap page size must be 4096, not {pgsize}",
        reason="BAD_PGSIZE",
        metadata={"pgsize": str(pgsize)},
    )


def dirty_tracking_off() -> InvalidArgument:
    """``DIRTY_TRACKING_OFF`` (EINVAL): a bitmap was asked for while tracking is stopped."""
    return InvalidArgument("dirty page tracking is not started", reason="DIRTY_TRACKING_OFF")


def bisect(iova: int, size: int, map_iova: int, map_size: int) -> InvalidArgument:
    """``BISECT`` (EINVAL): the range cuts the mapping ``map_iova+map_size``; nothing was done."""
    return InvalidArgument(
        f"{_h(iova)}+{_h(size)} only partly covers the mapping {_h(map_iova)}+{_h(map_size)}",
        reason="BISECT",
        metadata={
            "iova": _h(iova),
            "size": _h(size),
            "mapping_iova": _h(map_iova),
            "mapping_size": _h(map_size),
        },
    )


def pins_outstanding(
    iova: int, size: int, rounds: int, holders: Mapping[str, Iterable[tuple[int, int]]]
) -> WrongState:
    """``UNMAP_PINS_OUTSTANDING`` (EDEADLK, as iommufd): devices kept pins after every round.

    ``holders`` maps each device to its pinned IOVA runs ``(iova, npages)``; metadata carries
    ``devices`` (comma separated) and ``pages`` (``dev:0x1000/3,0x9000/1 dev2:...``, 16 runs
    per device at most).
    """
    described = []
    for device, runs in sorted(holders.items()):
        listed = list(runs)
        text = ",".join(f"{_h(start)}/{count}" for start, count in listed[:16])
        if len(listed) > 16:
            text += f",...(+{len(listed) - 16} runs)"
        described.append(f"{device}:{text}")
    return WrongState(
        f"unmap of {_h(iova)}+{_h(size)} gave up after {rounds} notification rounds: "
        f"pages still pinned by {'; '.join(described)}",
        reason="UNMAP_PINS_OUTSTANDING",
        errno=errno.EDEADLK,
        metadata={
            "iova": _h(iova),
            "size": _h(size),
            "rounds": str(rounds),
            "devices": ",".join(sorted(holders)),
            "pages": " ".join(described),
        },
    )


def notify_timeout(devices: Iterable[str], iova: int, size: int, timeout_s: float) -> TimedOut:
    """``UNMAP_NOTIFY_TIMEOUT`` (ETIMEDOUT): devices did not answer ``notify_unmap`` in time."""
    names = sorted(devices)
    return TimedOut(
        f"device(s) {', '.join(names)} did not answer the unmap notification of "
        f"{_h(iova)}+{_h(size)} within {timeout_s:g} s",
        reason="UNMAP_NOTIFY_TIMEOUT",
        metadata={"devices": ",".join(names), "iova": _h(iova), "size": _h(size)},
    )


def zero_npage() -> InvalidArgument:
    """``ZERO_NPAGE`` (EINVAL): ``vfio_pin_pages`` with npage 0."""
    return InvalidArgument("npage must not be 0", reason="ZERO_NPAGE")


def too_many_pages(npage: int, limit: int) -> TooBig:
    """``TOO_MANY_PAGES`` (E2BIG): more than ``VFIO_PIN_PAGES_MAX_ENTRIES`` pages in one call."""
    return TooBig(
        f"npage={npage} is above the limit of {limit} pages per call",
        reason="TOO_MANY_PAGES",
        metadata={"npage": str(npage), "limit": str(limit)},
    )


def device_not_attached_arg(device: str, container_id: str) -> InvalidArgument:
    """``DEVICE_NOT_ATTACHED`` (EINVAL): pin/DMA by a device that is not in the container."""
    return InvalidArgument(
        f"device {device} is not attached to container {container_id}",
        reason="DEVICE_NOT_ATTACHED",
        metadata={"device": device, "container_id": container_id},
    )


def device_not_attached(device: str, container_id: str) -> NotFound:
    """``DEVICE_NOT_ATTACHED`` (ENODEV): detach/unpin/watch of a device not in the container."""
    return NotFound(
        f"device {device} is not attached to container {container_id}",
        reason="DEVICE_NOT_ATTACHED",
        metadata={"device": device, "container_id": container_id},
    )


def no_unmap_listener(device: str) -> InvalidArgument:
    """``NO_UNMAP_LISTENER`` (EINVAL): a device must watch unmap events before it may pin."""
    return InvalidArgument(
        f"device {device} is not registered for unmap notification; it may not pin",
        reason="NO_UNMAP_LISTENER",
        metadata={"device": device},
    )


def not_mapped(iova: int) -> InvalidArgument:
    """``NOT_MAPPED`` (EINVAL): a pinned page is not inside any mapping."""
    return InvalidArgument(f"iova {_h(iova)} is not mapped", reason="NOT_MAPPED", metadata={"iova": _h(iova)})


def prot_mismatch(iova: int, have: str, need: str) -> PermissionDenied:
    """``PROT_MISMATCH`` (EPERM): the mapping's protection lacks what the access needs."""
    return PermissionDenied(
        f"iova {_h(iova)} is mapped {have}, the access needs {need}",
        reason="PROT_MISMATCH",
        metadata={"iova": _h(iova), "mapping_prot": have, "needed_prot": need},
    )


def unmap_in_progress(iova: int) -> Busy:
    """``UNMAP_IN_PROGRESS`` (EBUSY): new pins into a range being unmapped are refused."""
    return Busy(
        f"iova {_h(iova)} is being unmapped; no new pins",
        reason="UNMAP_IN_PROGRESS",
        metadata={"iova": _h(iova)},
    )


def dma_fault(iova: int, access_iova: int, access_size: int) -> InvalidArgument:
    """``DMA_FAULT`` (EINVAL): the access ``access_iova+access_size`` reaches unmapped ``iova``."""
    return InvalidArgument(
        f"DMA to unmapped iova {_h(iova)} (access {_h(access_iova)}+{_h(access_size)})",
        reason="DMA_FAULT",
        metadata={"iova": _h(iova), "access_iova": _h(access_iova), "access_size": _h(access_size)},
    )


def bad_length(length: int, limit: int) -> InvalidArgument:
    """``BAD_LENGTH`` (EINVAL): a DMA read/write of 0 bytes or of more than ``limit``."""
    return InvalidArgument(
        f"DMA length {length} must be in 1..{limit}", reason="BAD_LENGTH", metadata={"length": str(length)}
    )


def unknown_container(container_id: str) -> NotFound:
    """``UNKNOWN_CONTAINER`` (ENODEV)."""
    return NotFound(
        f"no container {container_id!r}", reason="UNKNOWN_CONTAINER", metadata={"container_id": container_id}
    )


def bad_name(what: str, value: str) -> InvalidArgument:
    """``BAD_NAME`` (EINVAL): an owner, device or segment name that is empty, too long or not printable."""
    return InvalidArgument(
        f"{what} name {value[:80]!r} must be 1-255 printable characters without spaces",
        reason="BAD_NAME",
        metadata={"field": what},
    )


def bad_mode(value: object) -> InvalidArgument:
    """``BAD_MODE`` (EINVAL): the IOMMU mode is unspecified or unknown."""
    return InvalidArgument(
        f"IOMMU mode must be EMULATED (1) or HARDWARE (2), not {value!r}",
        reason="BAD_MODE",
        metadata={"mode": str(value)},
    )


def device_attached(device: str, container_id: str) -> AlreadyExists:
    """``DEVICE_ATTACHED`` (EEXIST): the device is attached (here or to another container)."""
    return AlreadyExists(
        f"device {device} is already attached to container {container_id}",
        reason="DEVICE_ATTACHED",
        metadata={"device": device, "container_id": container_id},
    )


def already_watching(device: str) -> AlreadyExists:
    """``ALREADY_WATCHING`` (EEXIST): the device has an unmap listener already."""
    return AlreadyExists(
        f"device {device} is already registered for unmap notification",
        reason="ALREADY_WATCHING",
        metadata={"device": device},
    )


def segment_registered(segment: str) -> AlreadyExists:
    """``SEGMENT_REGISTERED`` (EEXIST)."""
    return AlreadyExists(
        f"segment {segment!r} is already registered",
        reason="SEGMENT_REGISTERED",
        metadata={"segment": segment},
    )


def segment_too_small(segment: str, size: int, actual: int) -> InvalidArgument:
    """``SEGMENT_TOO_SMALL`` (EINVAL): registering more bytes than the segment has."""
    return InvalidArgument(
        f"segment {segment!r} has {actual} bytes, fewer than the {size} registered",
        reason="SEGMENT_TOO_SMALL",
        metadata={"segment": segment, "size": str(size), "actual_size": str(actual)},
    )


def segment_in_use(segment: str, mappings: int) -> WrongState:
    """``SEGMENT_IN_USE`` (EBUSY): the segment still backs mappings."""
    return WrongState(
        f"segment {segment!r} still backs {mappings} mapping(s)",
        reason="SEGMENT_IN_USE",
        errno=errno.EBUSY,
        metadata={"segment": segment, "mappings": str(mappings)},
    )


def container_gone(container_id: str) -> NotFound:
    """``UNKNOWN_CONTAINER`` (ENODEV): the container was destroyed while the call waited."""
    return NotFound(
        f"container {container_id!r} was destroyed",
        reason="UNKNOWN_CONTAINER",
        metadata={"container_id": container_id},
    )
