"""Pinning: per-page and per-device refcounts, host runs, unwinding, memlock accounting."""

from __future__ import annotations

import pytest

from tests.iommu_type2.helpers import MIB, PAGE, RAM, RAM_SIZE, add_device, mapping
from vgpusim.common.errors import Exhausted, InvalidArgument, PermissionDenied
from vgpusim.iommu_type2.core import (
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    Container,
    HostRun,
    IommuMode,
    Mapper,
)
from vgpusim.iommu_type2.core.mappings import NO_PINS


def _limited(mapper: Mapper, mode: IommuMode, pages: int) -> Container:
    container = mapper.create_container("limited", mode, memlock_limit_bytes=pages * PAGE)
    container.register_segment(RAM, RAM_SIZE)
    add_device(container)
    return container


def test_runs_are_coalesced_across_mappings(ctr: Container) -> None:
    ctr.map_dma_batch(
        [mapping(0, 2 * PAGE), mapping(2 * PAGE, 2 * PAGE), mapping(4 * PAGE, PAGE, offset=MIB)]
    )
    add_device(ctr)
    runs = ctr.pin_pages("vgpu0", PAGE, 4, PROT_RW)
    assert runs == (HostRun(PAGE, RAM, PAGE, 3 * PAGE), HostRun(4 * PAGE, RAM, MIB, PAGE))


def test_512_pages_is_the_limit(ctr: Container) -> None:
    ctr.map_dma(mapping(0, 4 * MIB))
    add_device(ctr)
    assert ctr.pin_pages("vgpu0", 0, 512, PROT_RW) == (HostRun(0, RAM, 0, 2 * MIB),)
    assert ctr.statistics().pinned_pages == 512


def test_refcounts_per_page(ctr: Container) -> None:
    ctr.map_dma(mapping(0, MIB))
    add_device(ctr)
    ctr.pin_pages("vgpu0", 0, 2, PROT_RW)
    ctr.pin_pages("vgpu0", PAGE, 2, PROT_RW)  # page 1 now has two references
    assert ctr.statistics().pinned_pages == 3
    assert ctr.unpin_pages("vgpu0", 0, 3) == 2  # pages 0 and 2 released, page 1 kept
    assert ctr.pinned_runs("vgpu0") == ((PAGE, 1),)
    assert ctr.unpin_pages("vgpu0", PAGE, 1) == 1
    assert ctr.unpin_pages("vgpu0", PAGE, 1) == 0  # never-pinned (now): a no-op
    stats = ctr.statistics()
    assert (stats.pinned_pages, stats.pins_total, stats.unpins_total) == (0, 4, 4)


def test_pins_are_per_device(ctr: Container) -> None:
    ctr.map_dma(mapping(0, MIB))
    add_device(ctr, "a")
    add_device(ctr, "b")
    ctr.pin_pages("a", 0, 2, PROT_RW)
    ctr.pin_pages("b", PAGE, 2, PROT_RW)
    assert ctr.statistics().pinned_pages == 3
    assert ctr.unpin_pages("a", 2 * PAGE, 1) == 0  # b's page: a cannot drop it
    assert ctr.unpin_pages("a", PAGE, 1) == 0  # shared page: still held by b
    assert ctr.pinned_runs("b") == ((PAGE, 2),)
    assert ctr.detach_device("b") == 2  # detaching drops b's pins
    assert ctr.pinned_runs("a") == ((0, 1),)
    assert ctr.statistics().pinned_pages == 1


def test_unpin_stops_at_the_first_hole(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, 2 * PAGE), mapping(3 * PAGE, 2 * PAGE)])
    add_device(ctr)
    ctr.pin_pages("vgpu0", 0, 2, PROT_RW)
    ctr.pin_pages("vgpu0", 3 * PAGE, 2, PROT_RW)
    assert ctr.unpin_pages("vgpu0", 0, 5) == 2
    assert ctr.pinned_runs("vgpu0") == ((3 * PAGE, 2),)


def test_errors_unwind_the_pages_pinned_by_the_call(ctr: Container) -> None:
    ctr.map_dma_batch(
        [mapping(0, 2 * PAGE), mapping(2 * PAGE, 2 * PAGE, prot=PROT_READ), mapping(5 * PAGE, PAGE)]
    )
    add_device(ctr)
    ctr.pin_pages("vgpu0", PAGE, 1, PROT_RW)
    before = ctr.statistics()
    with pytest.raises(PermissionDenied) as denied:
        ctr.pin_pages("vgpu0", 0, 3, PROT_RW)  # pages 0-1 pinned, then page 2 is read-only
    assert (denied.value.reason, denied.value.metadata["errno"]) == ("PROT_MISMATCH", "EPERM")
    assert denied.value.metadata["iova"] == hex(2 * PAGE)
    with pytest.raises(InvalidArgument) as hole:
        ctr.pin_pages("vgpu0", 0, 6, PROT_READ)  # page 4 is a hole
    assert (hole.value.reason, hole.value.metadata["iova"]) == ("NOT_MAPPED", hex(4 * PAGE))
    after = ctr.statistics()
    assert (after.pinned_pages, after.pins_total, after.unpins_total) == (1, before.pins_total, 0)
    assert ctr.pinned_runs("vgpu0") == ((PAGE, 1),)
    assert ctr.unpin_pages("vgpu0", PAGE, 1) == 1  # refcount 1: the unwind restored it exactly


def test_prot_checks(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, PAGE, prot=PROT_READ), mapping(PAGE, PAGE, prot=PROT_WRITE)])
    add_device(ctr)
    ctr.pin_pages("vgpu0", 0, 1, PROT_READ)
    ctr.pin_pages("vgpu0", PAGE, 1, PROT_WRITE)
    ctr.pin_pages("vgpu0", 0, 2, PROT_NONE)  # (dma->prot & 0) == 0: allowed, as type1
    for iova, prot in ((0, PROT_WRITE), (0, PROT_RW), (PAGE, PROT_READ)):
        with pytest.raises(PermissionDenied):
            ctr.pin_pages("vgpu0", iova, 1, prot)


def test_pin_past_the_end_of_the_address_space(ctr: Container) -> None:
    ctr.map_dma(mapping((1 << 64) - PAGE, PAGE, offset=0))
    add_device(ctr)
    with pytest.raises(InvalidArgument) as error:
        ctr.pin_pages("vgpu0", (1 << 64) - PAGE, 2, PROT_RW)
    assert error.value.reason == "NOT_MAPPED"
    assert ctr.statistics().pinned_pages == 0


def test_memlock_is_charged_per_distinct_page_in_emulated_mode(mapper: Mapper) -> None:
    container = _limited(mapper, IommuMode.EMULATED, 4)
    container.map_dma(mapping(0, MIB))
    add_device(container, "other")
    container.pin_pages("vgpu0", 0, 3, PROT_RW)
    container.pin_pages("vgpu0", 0, 3, PROT_RW)  # same pages again: no new charge
    container.pin_pages("other", 0, 3, PROT_RW)  # another device, same pages: no new charge
    assert container.statistics().memlock_bytes == 3 * PAGE
    with pytest.raises(Exhausted) as error:
        container.pin_pages("vgpu0", 2 * PAGE, 3, PROT_RW)  # 2 new pages, 1 would fit
    assert (error.value.reason, error.value.metadata["errno"]) == ("MEMLOCK_EXCEEDED", "ENOMEM")
    assert container.statistics().memlock_bytes == 3 * PAGE
    assert container.pinned_runs("vgpu0") == ((0, 3),)
    container.pin_pages("vgpu0", 3 * PAGE, 1, PROT_RW)
    assert container.statistics().memlock_bytes == 4 * PAGE
    assert container.detach_device("other") == 3
    assert container.unpin_pages("vgpu0", 0, 4) == 1  # pages 0-2 keep their second reference
    assert container.unpin_pages("vgpu0", 0, 4) == 3
    assert container.statistics().memlock_bytes == 0


def test_memlock_failure_in_a_later_mapping_unwinds_the_earlier_ones(mapper: Mapper) -> None:
    container = _limited(mapper, IommuMode.EMULATED, 3)
    container.map_dma_batch([mapping(0, 2 * PAGE), mapping(2 * PAGE, 2 * PAGE)])
    with pytest.raises(Exhausted):
        container.pin_pages("vgpu0", 0, 4, PROT_RW)
    stats = container.statistics()
    assert (stats.memlock_bytes, stats.pinned_pages) == (0, 0)


def test_memlock_comes_before_a_later_hole(mapper: Mapper) -> None:
    """Per page in order: the memlock failure at page 1 wins over the hole at page 2."""
    container = _limited(mapper, IommuMode.EMULATED, 1)
    container.map_dma(mapping(0, 2 * PAGE))
    with pytest.raises(Exhausted):
        container.pin_pages("vgpu0", 0, 3, PROT_RW)


def test_hardware_mode_pins_charge_nothing_more(mapper: Mapper) -> None:
    container = _limited(mapper, IommuMode.HARDWARE, 4)
    container.map_dma(mapping(0, 4 * PAGE))
    container.pin_pages("vgpu0", 0, 4, PROT_RW)
    assert container.statistics().memlock_bytes == 4 * PAGE


def test_unpinned_mappings_share_one_empty_pin_table(ctr: Container) -> None:
    ctr.map_dma_batch([mapping(0, PAGE), mapping(PAGE, PAGE)])
    add_device(ctr)
    ctr.pin_pages("vgpu0", 0, 1, PROT_RW)
    ctr.unpin_pages("vgpu0", 0, 1)
    assert not NO_PINS
