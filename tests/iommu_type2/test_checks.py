"""Argument checks in the kernel's order (kernel-mdev §2.2, §2.3, §2.6): class, reason and errno."""

from __future__ import annotations

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, RAM, RAM_SIZE
from vgpusim.common.errors import InvalidArgument, TooBig, VgpusimError
from vgpusim.iommu_type2.core import PROT_NONE, PROT_READ, PROT_RW, DmaMapping
from vgpusim.iommu_type2.core.checks import (
    check_dirty_range,
    check_dma_length,
    check_map,
    check_name,
    check_u64,
    check_unmap,
    map_ok,
)

SIZES = {RAM: RAM_SIZE}
U64 = 1 << 64


def _reason(error: pytest.ExceptionInfo[VgpusimError]) -> tuple[type[VgpusimError], str, str]:
    return type(error.value), error.value.reason, error.value.metadata["errno"]


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        # each row is wrong in its named way *and* in every later way, so the order shows
        (DmaMapping(-PAGE, 0, "nope", 1, PROT_NONE), "VALUE_OUT_OF_RANGE"),
        (DmaMapping(0, U64, RAM, 0, PROT_RW), "VALUE_OUT_OF_RANGE"),
        (DmaMapping(0, 0, RAM, 1, PROT_NONE), "BAD_PROT"),
        (DmaMapping(1, 0, "nope", 1, PROT_READ), "ZERO_SIZE"),
        (DmaMapping(1, PAGE, "nope", 0, PROT_READ), "MISALIGNED"),
        (DmaMapping(0, PAGE + 1, "nope", 0, PROT_READ), "MISALIGNED"),
        (DmaMapping(0, PAGE, "nope", 7, PROT_READ), "MISALIGNED"),
        (DmaMapping(U64 - PAGE, 2 * PAGE, "nope", 0, PROT_READ), "WRAP"),
        (DmaMapping(0, 2 * PAGE, "nope", U64 - PAGE, PROT_READ), "WRAP"),
        (DmaMapping(0, PAGE, "nope", RAM_SIZE, PROT_READ), "UNKNOWN_SEGMENT"),
        (DmaMapping(0, 2 * PAGE, RAM, RAM_SIZE - PAGE, PROT_READ), "OUTSIDE_SEGMENT"),
    ],
)
def test_map_checks_in_kernel_order(request_: DmaMapping, reason: str) -> None:
    assert not map_ok(request_, SIZES)
    with pytest.raises(InvalidArgument) as error:
        check_map(request_, SIZES)
    assert _reason(error) == (InvalidArgument, reason, "EINVAL")


@pytest.mark.parametrize(
    "request_",
    [
        DmaMapping(0, PAGE, RAM, 0, PROT_READ),
        DmaMapping(U64 - PAGE, PAGE, RAM, RAM_SIZE - PAGE, PROT_RW),  # ends exactly at 2**64
        DmaMapping(5 * MIB, RAM_SIZE, RAM, 0, PROT_RW),  # the whole segment
    ],
)
def test_valid_maps_pass_both_paths(request_: DmaMapping) -> None:
    assert map_ok(request_, SIZES)
    check_map(request_, SIZES)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((-1, 0, False, 0), "VALUE_OUT_OF_RANGE"),
        ((0, 0, False, -4096), "VALUE_OUT_OF_RANGE"),
        ((1, 1, True, PAGE), "BAD_FLAGS"),  # dirty bitmap with unmap-all, before anything else
        ((1, 0, False, PAGE), "BAD_BITMAP_SIZE"),  # verify_bitmap_size runs before alignment
        ((1, PAGE, False, 0), "MISALIGNED"),
        ((PAGE, 0, True, 0), "BAD_UNMAP_ALL"),
        ((0, PAGE, True, 0), "BAD_UNMAP_ALL"),
        ((0, 0, False, 0), "ZERO_SIZE"),
        ((0, 100, False, 0), "MISALIGNED"),
        ((U64 - PAGE, 2 * PAGE, False, 0), "WRAP"),
    ],
)
def test_unmap_checks_in_kernel_order(args: tuple[int, int, bool, int], reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_unmap(*args)
    assert _reason(error) == (InvalidArgument, reason, "EINVAL")


def test_unmap_bitmap_size_limit() -> None:
    check_unmap(0, 1 << 43, False, PAGE)  # 2**31 pages: exactly 256 MiB of bitmap
    with pytest.raises(InvalidArgument) as error:
        check_unmap(0, (1 << 43) + 64 * PAGE, False, PAGE)
    assert error.value.reason == "BAD_BITMAP_SIZE"


@pytest.mark.parametrize(
    "args", [(0, 0, True, 0), (0, PAGE, False, 0), (U64 - PAGE, PAGE, False, 0), (0, MIB, False, PAGE)]
)
def test_valid_unmaps(args: tuple[int, int, bool, int]) -> None:
    check_unmap(*args)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((-1, PAGE, PAGE), "VALUE_OUT_OF_RANGE"),
        ((U64 - PAGE, PAGE, 0), "WRAP"),  # iova + size == 2**64 wraps to 0 (< iova) in u64
        ((1, 0, 0), "BAD_PGSIZE"),  # __ffs(0) is undefined: refused as a page size
        ((1, 0, PAGE), "BAD_BITMAP_SIZE"),
        ((0, 1 << 44, PAGE), "BAD_BITMAP_SIZE"),
        ((1, 2 * MIB, 2 * PAGE), "BAD_PGSIZE"),
        ((1, MIB, PAGE), "MISALIGNED"),
        ((0, PAGE + 1, PAGE), "MISALIGNED"),
    ],
)
def test_dirty_range_checks_in_kernel_order(args: tuple[int, int, int], reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_dirty_range(*args)
    assert _reason(error) == (InvalidArgument, reason, "EINVAL")


def test_dirty_range_returns_the_page_count() -> None:
    assert check_dirty_range(0, MIB, PAGE) == 256


@pytest.mark.parametrize("value", [-1, 1 << 64, -(1 << 70)])
def test_u64(value: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_u64("x", value)
    assert error.value.reason == "VALUE_OUT_OF_RANGE"
    assert error.value.metadata["field"] == "x"


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 256, "tab\t", "nl\n", "\x00"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_name("device", name)
    assert error.value.reason == "BAD_NAME"


@pytest.mark.parametrize("name", ["a", "0b1c6e5e-6b8b-4a0c-9d4e-0f4c2c1a9b7d", "x" * 255, "vm-1.ram"])
def test_good_names(name: str) -> None:
    check_name("device", name)


@pytest.mark.parametrize("length", [0, -1, MIB + 1])
def test_dma_length(length: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_dma_length(length, MIB)
    assert not isinstance(error.value, TooBig)  # INVALID_ARGUMENT on the wire, as the proto says
    assert error.value.reason == "BAD_LENGTH"
