"""Shared constants and helpers of the iommu_type2 core tests."""

from __future__ import annotations

from vgpusim.iommu_type2.core import (
    PROT_RW,
    Container,
    DmaMapping,
    MapperConfig,
    Prot,
    UnpinningListener,
)

PAGE = 4096
MIB = 1 << 20
RAM = "ram"
RAM_SIZE = 16 * MIB
FAST = MapperConfig(notify_timeout_s=0.2)
"""Short notification deadline so that a hung device fails a test quickly."""


def mapping(iova: int, size: int, offset: int | None = None, prot: Prot = PROT_RW) -> DmaMapping:
    """A mapping of RAM; the segment offset defaults to the IOVA (IOVA = GPA, as QEMU maps)."""
    return DmaMapping(iova, size, RAM, iova if offset is None else offset, prot)


def add_device(
    container: Container, device: str = "vgpu0", *, ignore_calls: int | None = 0, hang: bool = False
) -> UnpinningListener:
    """Attach ``device`` and register an :class:`UnpinningListener` for it."""
    container.attach_device(device)
    listener = UnpinningListener(container, device, ignore_calls=ignore_calls, hang=hang)
    container.watch_unmap(device, listener)
    return listener
