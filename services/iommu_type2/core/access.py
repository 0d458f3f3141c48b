"""The calls a vendor device makes on its container: pin/unpin, DMA read/write and translate.

These are the driver-facing half of the container (``vfio_pin_pages``, ``vfio_unpin_pages``,
``vfio_dma_rw`` and the bulk-DMA ``translate``), kept apart from the address-space half in
``container.py``; :class:`~.container.Container` inherits them. Each validates its arguments
and the device's state in the kernel's order (kernel-mdev §2.4, §2.7) and hands the work to
``pins.py`` or ``dma.py``. None of them waits.

Glossary:
- vendor device: an attached mdev whose driver (``gfx_host``) pins and DMAs guest memory.
- run: ``(iova, npages)`` in :meth:`DeviceCalls.pinned_runs`, a :class:`~.model.HostRun` elsewhere.
"""

from __future__ import annotations

from vgpusim.iommu_type2.core import checks, reasons
from vgpusim.iommu_type2.core.dma import DmaAccess
from vgpusim.iommu_type2.core.model import PAGE_MASK, PIN_PAGES_MAX, U64_MAX, HostRun, MapperConfig, Prot
from vgpusim.iommu_type2.core.ops import UnmapListener
from vgpusim.iommu_type2.core.pins import PinTracker


class DeviceCalls:
    """The vendor-facing methods of :class:`~.container.Container` (a base class, not used alone)."""

    container_id: str
    config: MapperConfig
    _devices: set[str]
    _listeners: dict[str, UnmapListener]
    _pins: PinTracker
    _dma: DmaAccess

    def _check_alive(self) -> None:
        """Raise if the container was destroyed; the container class that mixes this in defines it."""
        raise NotImplementedError  # a mixin method: an unbound use is a programming error

    def pin_pages(self, device: str, iova: int, npage: int, prot: Prot) -> tuple[HostRun, ...]:
        """``vfio_pin_pages``: pin ``npage`` contiguous pages from ``iova`` for ``device``.

        Errors, in order: ``VALUE_OUT_OF_RANGE``; ``ZERO_NPAGE``; ``DEVICE_NOT_ATTACHED`` and
        ``NO_UNMAP_LISTENER`` (EINVAL); ``TOO_MANY_PAGES`` (E2BIG, above 512); ``MISALIGNED``;
        then per page in IOVA order ``NOT_MAPPED`` (EINVAL), ``UNMAP_IN_PROGRESS`` (EBUSY),
        ``PROT_MISMATCH`` (EPERM), ``MEMLOCK_EXCEEDED`` (ENOMEM, emulated mode). On error the
        pages this call pinned are unpinned again. Returns the host runs, coalesced.
        """
        self._check_alive()
        checks.check_u64("iova", iova)
        checks.check_u64("npage", npage)
        if npage == 0:
            raise reasons.zero_npage()
        if device not in self._devices:
            raise reasons.device_not_attached_arg(device, self.container_id)
        if device not in self._listeners:
            raise reasons.no_unmap_listener(device)
        if npage > PIN_PAGES_MAX:
            raise reasons.too_many_pages(npage, PIN_PAGES_MAX)
        if iova & PAGE_MASK:
            raise reasons.misaligned("iova", iova)
        return self._pins.pin(device, iova, npage, prot)

    def unpin_pages(self, device: str, iova: int, npage: int) -> int:
        """``vfio_unpin_pages``: drop one of ``device``'s references on each page.

        Pages the device never pinned are ignored; the walk stops at the first unmapped page.
        Errors, in order: ``VALUE_OUT_OF_RANGE``, ``DEVICE_NOT_ATTACHED`` (NotFound),
        ``TOO_MANY_PAGES`` (E2BIG), ``MISALIGNED``. ``npage`` 0 does nothing. Returns the pages
        released (no reference from any device left).
        """
        self._check_alive()
        checks.check_u64("iova", iova)
        checks.check_u64("npage", npage)
        if device not in self._devices:
            raise reasons.device_not_attached(device, self.container_id)
        if npage > PIN_PAGES_MAX:
            raise reasons.too_many_pages(npage, PIN_PAGES_MAX)
        if iova & PAGE_MASK:
            raise reasons.misaligned("iova", iova)
        return self._pins.unpin(device, iova, npage) if npage else 0

    def pinned_runs(self, device: str, iova: int = 0, size: int = U64_MAX + 1) -> tuple[tuple[int, int], ...]:
        """``device``'s pinned pages in ``[iova, iova + size)`` as ``(iova, npages)`` runs."""
        self._check_alive()
        return tuple(self._pins.device_runs(device, iova, iova + size))

    def _dma_device(self, device: str, iova: int) -> None:
        if device not in self._devices:
            raise reasons.device_not_attached_arg(device, self.container_id)
        checks.check_u64("iova", iova)

    def dma_read(self, device: str, iova: int, length: int) -> bytes:
        """``vfio_dma_rw`` read. Errors: ``DEVICE_NOT_ATTACHED``, ``BAD_LENGTH`` (0 or above
        ``dma_rw_max``), ``VALUE_OUT_OF_RANGE``, ``DMA_FAULT`` (EINVAL), ``PROT_MISMATCH``."""
        self._check_alive()
        self._dma_device(device, iova)
        checks.check_dma_length(length, self.config.dma_rw_max)
        return self._dma.read(device, iova, length)

    def dma_write(self, device: str, iova: int, data: bytes) -> None:
        """``vfio_dma_rw`` write (marks the pages dirty). Errors as :meth:`dma_read`; the mapping
        needs READ and WRITE."""
        self._check_alive()
        self._dma_device(device, iova)
        checks.check_dma_length(len(data), self.config.dma_rw_max)
        self._dma.write(device, iova, data)

    def translate(self, device: str, iova: int, size: int, write: bool) -> tuple[HostRun, ...]:
        """Host runs for a device DMA of ``[iova, iova + size)`` (bulk path; a write marks the
        pages dirty). Errors: ``DEVICE_NOT_ATTACHED``, ``VALUE_OUT_OF_RANGE``, ``BAD_LENGTH``
        (size 0), ``DMA_FAULT``, ``PROT_MISMATCH``; recorded as faults in hardware mode."""
        self._check_alive()
        self._dma_device(device, iova)
        checks.check_dma_length(size, U64_MAX + 1)
        return self._dma.translate(device, iova, size, write)
