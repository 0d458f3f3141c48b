"""The vendor device calls: argument and device-state checks in the kernel's order (§2.4, §2.7)."""

from __future__ import annotations

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, add_device, mapping
from vgpusim.common.errors import InvalidArgument, NotFound, TooBig, VgpusimError
from vgpusim.iommu_type2.core import PROT_RW, Container


@pytest.fixture
def dev(ctr: Container) -> Container:
    """``ctr`` with 1 MiB mapped at 0, device ``vgpu0`` watching, ``bare`` attached only."""
    ctr.map_dma(mapping(0, MIB))
    add_device(ctr)
    ctr.attach_device("bare")
    return ctr


def _fails(call: object, cls: type[VgpusimError], reason: str, errno: str) -> None:
    assert callable(call)
    with pytest.raises(cls) as error:
        call()
    assert type(error.value) is cls
    assert (error.value.reason, error.value.metadata["errno"]) == (reason, errno)


def test_pin_checks_in_kernel_order(dev: Container) -> None:
    # each call is also wrong in every later way
    _fails(lambda: dev.pin_pages("nobody", -1, 0, PROT_RW), InvalidArgument, "VALUE_OUT_OF_RANGE", "EINVAL")
    _fails(lambda: dev.pin_pages("nobody", 1, 0, PROT_RW), InvalidArgument, "ZERO_NPAGE", "EINVAL")
    _fails(lambda: dev.pin_pages("nobody", 1, 513, PROT_RW), InvalidArgument, "DEVICE_NOT_ATTACHED", "EINVAL")
    _fails(lambda: dev.pin_pages("bare", 1, 513, PROT_RW), InvalidArgument, "NO_UNMAP_LISTENER", "EINVAL")
    _fails(lambda: dev.pin_pages("vgpu0", 1, 513, PROT_RW), TooBig, "TOO_MANY_PAGES", "E2BIG")
    _fails(lambda: dev.pin_pages("vgpu0", 2 * MIB + 1, 1, PROT_RW), InvalidArgument, "MISALIGNED", "EINVAL")
    _fails(lambda: dev.pin_pages("vgpu0", 2 * MIB, 1, PROT_RW), InvalidArgument, "NOT_MAPPED", "EINVAL")


def test_unpin_checks_in_order(dev: Container) -> None:
    _fails(lambda: dev.unpin_pages("nobody", -1, 513), InvalidArgument, "VALUE_OUT_OF_RANGE", "EINVAL")
    _fails(lambda: dev.unpin_pages("nobody", 1, 513), NotFound, "DEVICE_NOT_ATTACHED", "ENODEV")
    _fails(lambda: dev.unpin_pages("vgpu0", 1, 513), TooBig, "TOO_MANY_PAGES", "E2BIG")
    _fails(lambda: dev.unpin_pages("vgpu0", 1, 1), InvalidArgument, "MISALIGNED", "EINVAL")
    assert dev.unpin_pages("vgpu0", 0, 0) == 0
    assert dev.unpin_pages("bare", 0, 1) == 0  # no listener: nothing pinned, nothing to drop
    assert dev.unpin_pages("vgpu0", 4 * MIB, 512) == 0  # unmapped: stops at once


def test_dma_checks_in_order(dev: Container) -> None:
    _fails(lambda: dev.dma_read("nobody", -1, 0), InvalidArgument, "DEVICE_NOT_ATTACHED", "EINVAL")
    _fails(lambda: dev.dma_read("bare", -1, 0), InvalidArgument, "VALUE_OUT_OF_RANGE", "EINVAL")
    _fails(lambda: dev.dma_read("bare", 4 * MIB, 0), InvalidArgument, "BAD_LENGTH", "EINVAL")
    _fails(lambda: dev.dma_read("bare", 4 * MIB, MIB + 1), InvalidArgument, "BAD_LENGTH", "EINVAL")
    _fails(lambda: dev.dma_write("bare", 4 * MIB, b""), InvalidArgument, "BAD_LENGTH", "EINVAL")
    _fails(lambda: dev.dma_read("bare", 4 * MIB, 1), InvalidArgument, "DMA_FAULT", "EINVAL")
    _fails(lambda: dev.translate("bare", 0, 0, False), InvalidArgument, "BAD_LENGTH", "EINVAL")
    _fails(lambda: dev.translate("nobody", 0, 1, False), InvalidArgument, "DEVICE_NOT_ATTACHED", "EINVAL")
    assert dev.dma_read("bare", 0, MIB) == bytes(MIB)  # no listener needed for DMA


def test_pinned_runs_of_a_range(dev: Container) -> None:
    dev.pin_pages("vgpu0", 0, 4, PROT_RW)
    dev.pin_pages("vgpu0", 8 * PAGE, 2, PROT_RW)
    assert dev.pinned_runs("vgpu0") == ((0, 4), (8 * PAGE, 2))
    assert dev.pinned_runs("vgpu0", 2 * PAGE, 7 * PAGE) == ((2 * PAGE, 2), (8 * PAGE, 1))
    assert dev.pinned_runs("bare") == ()
