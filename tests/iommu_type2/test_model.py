"""Records and constants of the core."""

from __future__ import annotations

import pytest

from vgpusim.iommu_type2.core import (
    DMA_ENTRY_LIMIT,
    IOVA_PGSIZES,
    MAX_DIRTY_BITMAP_SIZE,
    PIN_PAGES_MAX,
    PROT_NONE,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    UNMAP_RETRIES,
    ContainerStatistics,
    Extension,
    MapperConfig,
)


def test_kernel_numbers() -> None:
    assert (DMA_ENTRY_LIMIT, PIN_PAGES_MAX, UNMAP_RETRIES) == (65535, 512, 10)
    assert (IOVA_PGSIZES, MAX_DIRTY_BITMAP_SIZE) == (0xFFFFFFFFFFFFF000, 268435456)
    assert [e.value for e in Extension] == [1, 2, 3, 4, 5, 8, 9, 10]


@pytest.mark.parametrize("have", [PROT_NONE, PROT_READ, PROT_WRITE, PROT_RW])
@pytest.mark.parametrize("need", [PROT_NONE, PROT_READ, PROT_WRITE, PROT_RW])
def test_prot_allows_is_the_kernels_mask_test(have: object, need: object) -> None:
    def bits(prot: object) -> int:
        return (1 if prot.read else 0) | (2 if prot.write else 0)  # type: ignore[attr-defined]

    assert have.allows(need) is ((bits(have) & bits(need)) == bits(need))  # type: ignore[attr-defined]


def test_statistics_add_field_by_field() -> None:
    one = ContainerStatistics(mappings=1, pins_total=5, translations_total=2)
    total = one + one + ContainerStatistics()
    assert (total.mappings, total.pins_total, total.translations_total, total.faults_total) == (2, 10, 4, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dma_entry_limit": 0},
        {"unmap_retries": -1},
        {"notify_timeout_s": 0},
        {"notify_timeout_s": float("nan")},
        {"fault_log_size": 0},
        {"dma_rw_max": 0},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MapperConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_are_the_kernels() -> None:
    config = MapperConfig()
    assert (config.dma_entry_limit, config.unmap_retries, config.fault_log_size) == (65535, 10, 256)
    assert config.dma_rw_max == 1 << 20
