"""The error catalogue: each reason comes with its class, errno and metadata."""

from __future__ import annotations

import pytest

from vgpusim.common.errors import (
    AlreadyExists,
    Busy,
    Exhausted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TimedOut,
    TooBig,
    VgpusimError,
    WrongState,
)
from vgpusim.iommu_type2.core import reasons

CASES: list[tuple[VgpusimError, type[VgpusimError], str, str]] = [
    (reasons.overlap(0, 4096, 0, 8192), AlreadyExists, "OVERLAP", "EEXIST"),
    (reasons.dma_entry_limit(65535), Exhausted, "DMA_ENTRY_LIMIT", "ENOSPC"),
    (reasons.memlock_exceeded(0, 4096, 4096), Exhausted, "MEMLOCK_EXCEEDED", "ENOMEM"),
    (reasons.bisect(0, 4096, 0, 8192), InvalidArgument, "BISECT", "EINVAL"),
    (reasons.too_many_pages(513, 512), TooBig, "TOO_MANY_PAGES", "E2BIG"),
    (reasons.prot_mismatch(0, "R", "RW"), PermissionDenied, "PROT_MISMATCH", "EPERM"),
    (reasons.unmap_in_progress(0), Busy, "UNMAP_IN_PROGRESS", "EBUSY"),
    (reasons.notify_timeout(["b", "a"], 0, 4096, 1.5), TimedOut, "UNMAP_NOTIFY_TIMEOUT", "ETIMEDOUT"),
    (
        reasons.pins_outstanding(0, 4096, 11, {"d": [(0, 1)]}),
        WrongState,
        "UNMAP_PINS_OUTSTANDING",
        "EDEADLOCK",
    ),
    (reasons.unknown_container("x"), NotFound, "UNKNOWN_CONTAINER", "ENODEV"),
    (reasons.unknown_segment("s"), NotFound, "UNKNOWN_SEGMENT", "ENOENT"),
    (reasons.unknown_segment_arg("s"), InvalidArgument, "UNKNOWN_SEGMENT", "EINVAL"),
    (reasons.segment_in_use("s", 2), WrongState, "SEGMENT_IN_USE", "EBUSY"),
    (reasons.device_not_attached("d", "c"), NotFound, "DEVICE_NOT_ATTACHED", "ENODEV"),
    (reasons.device_not_attached_arg("d", "c"), InvalidArgument, "DEVICE_NOT_ATTACHED", "EINVAL"),
    (reasons.no_unmap_listener("d"), InvalidArgument, "NO_UNMAP_LISTENER", "EINVAL"),
    (reasons.dma_fault(8192, 4096, 8192), InvalidArgument, "DMA_FAULT", "EINVAL"),
    (reasons.device_attached("d", "c"), AlreadyExists, "DEVICE_ATTACHED", "EEXIST"),
]


@pytest.mark.parametrize(("error", "cls", "reason", "errno"), CASES)
def test_reason_class_and_errno(
    error: VgpusimError, cls: type[VgpusimError], reason: str, errno: str
) -> None:
    assert type(error) is cls
    assert (error.reason, error.metadata["errno"]) == (reason, errno)
    assert all(key.islower() or "_" in key for key in error.metadata)


def test_notify_timeout_names_the_devices_sorted() -> None:
    error = reasons.notify_timeout(["b", "a"], 0x1000, 0x2000, 0.25)
    assert error.metadata["devices"] == "a,b"
    assert "a, b" in error.message and "0.25 s" in error.message


def test_pins_outstanding_lists_devices_and_pages_bounded() -> None:
    holders = {"dev-b": [(0x1000, 2)], "dev-a": [(i * 0x2000, 1) for i in range(20)]}
    error = reasons.pins_outstanding(0, 0x100000, 11, holders)
    assert error.metadata["devices"] == "dev-a,dev-b"
    assert error.metadata["rounds"] == "11"
    assert error.metadata["pages"].startswith("dev-a:0x0/1,0x2000/1,")
    assert "...(+4 runs)" in error.metadata["pages"]
    assert error.metadata["pages"].endswith("dev-b:0x1000/2")
