"""Configuration of the iommu_type2 service: the shared fields plus the mapper's tunables.

Loaded by :func:`load_iommu_config` (``load_config(IommuServiceConfig, "iommu_type2", argv)``)
from, in increasing precedence, the defaults below, the ``[common]`` and ``[iommu_type2]`` tables
of the TOML file, ``VGPUSIM_IOMMU_TYPE2_<FIELD>`` environment variables and ``--<field>``
flags. Every value is checked at start-up; a bad one is ``InvalidArgument BAD_CONFIG`` naming
the field. The defaults are the kernel's (``vfio_iommu_type1`` module parameters).

Glossary:
- dma entry limit: mappings per container (type1's ``dma_entry_limit``, 65535).
- unmap retries: notification rounds after the first before an unmap over pinned pages gives up.
- notify timeout: how long one device may take to answer an unmap event (ack on ``WatchUnmap``).
- default memlock limit: applied to containers created with ``memlock_limit_bytes = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vgpusim.common.config import BaseServiceConfig, load_config, option
from vgpusim.common.errors import InvalidArgument
from vgpusim.iommu_type2.core import DMA_ENTRY_LIMIT, UNMAP_RETRIES, MapperConfig

__all__ = ["SERVICE", "IommuServiceConfig", "load_iommu_config"]

SERVICE = "iommu_type2"


@dataclass(frozen=True, kw_only=True)
class IommuServiceConfig(BaseServiceConfig):
    """iommu_type2: the type2 IOMMU mapper (containers, DMA maps, pins, unmap notification)."""

    dma_entry_limit: int = option(
        DMA_ENTRY_LIMIT, "mappings per container (type1 dma_entry_limit), 1..2**32-1"
    )
    unmap_retries: int = option(
        UNMAP_RETRIES, "notification rounds after the first before an unmap gives up, 0..1000"
    )
    notify_timeout_s: float = option(5.0, "seconds a device has to ack an unmap event (> 0)")
    fault_log_size: int = option(256, "DMA faults kept per hardware-mode container, 1..65536")
    default_memlock_limit_bytes: int = option(
        0, "memlock limit of containers created without one (memlock_limit_bytes 0); 0 = unlimited"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("dma_entry_limit", self.dma_entry_limit, 1, (1 << 32) - 1)  # dma_avail is a uint32
        _check_range("unmap_retries", self.unmap_retries, 0, 1000)
        _check_range("fault_log_size", self.fault_log_size, 1, 1 << 16)
        _check_range("default_memlock_limit_bytes", self.default_memlock_limit_bytes, 0, (1 << 64) - 1)
        if not (math.isfinite(self.notify_timeout_s) and self.notify_timeout_s > 0):
            raise _bad("notify_timeout_s", "a finite number > 0", self.notify_timeout_s)

    def mapper_config(self) -> MapperConfig:
        """The core's tunables."""
        return MapperConfig(
            dma_entry_limit=self.dma_entry_limit,
            unmap_retries=self.unmap_retries,
            notify_timeout_s=self.notify_timeout_s,
            fault_log_size=self.fault_log_size,
        )


def load_iommu_config(argv: Sequence[str] | None = None) -> IommuServiceConfig:
    """The service's config from defaults, file, environment and ``argv`` (default ``sys.argv[1:]``)."""
    return load_config(IommuServiceConfig, SERVICE, argv)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _bad(name, f"an integer in {low}..{high}", value)


def _bad(name: str, expected: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        f"config {name}: must be {expected}, got {value!r}",
        reason="BAD_CONFIG",
        metadata={"field": name, "value": repr(value)},
    )
