"""The ops tables the mapper is given: segment memory, and each pinning device's unmap callback.

Both are :class:`typing.Protocol` classes (STYLE 8) with in-memory fakes in ``fakes.py``.

- :class:`SegmentStore` gives the bytes behind a segment name. In production it opens the
  stack's shared-memory files (``vgpusim.common.shm``, supplied by the service wiring); in tests
  it is :class:`~.fakes.InMemorySegmentStore`. It is synchronous: mapping a file does not wait.
- :class:`UnmapListener` is a device's ``dma_unmap`` op (kernel-mdev §2.5). The servicer's
  ``WatchUnmap`` stream adapts to it: ``notify_unmap`` sends an ``UnmapEvent`` and returns when
  the device's ack arrives. The contract, as in the kernel: when the call returns the device
  holds no pins in ``[iova, iova + size)`` and no longer uses translations derived from it; it
  may (and normally does) call ``Container.unpin_pages`` from inside the call.

Glossary:
- store: where segment bytes live; the mapper never creates or removes segments itself.
- listener: the object a device registers with ``Container.watch_unmap``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SegmentStore(Protocol):
    """Read/write access to shared-memory segments by name."""

    def view(self, name: str) -> memoryview:
        """A writable byte view of the whole segment ``name`` (``format 'B'``, one dimension).

        Raises ``NotFound`` (reason ``SEGMENT_MISSING``) if no such segment exists. The mapper
        calls it once per ``register_segment`` and keeps the view until the segment is
        unregistered or the container is destroyed.
        """
        ...


@runtime_checkable
class UnmapListener(Protocol):
    """A device's unmap callback (the ``dma_unmap`` op of ``vfio_device_ops``)."""

    async def notify_unmap(self, iova: int, size: int) -> None:
        """Drop every pin in ``[iova, iova + size)`` (through ``unpin_pages``), then return.

        Called concurrently for all registered devices of a container, each under the
        container's notification deadline; an exception is logged and treated like a return
        (the mapper re-checks the pins either way).
        """
        ...
