"""The ops tables the bus calls out through: the vendor driver of a parent, and device owners.

These are the peers of the core, injected as :class:`typing.Protocol` classes (STYLE 8). In
production the vendor is ``gfx_host`` reached over gRPC (``VendorService``; its client adapts to
:class:`VendorOps`) and the owner notifier reaches ``qemu_frontend``; in tests they are the
in-memory fakes of ``fakes.py``. Every method is ``async`` because each is a round trip to
another process.

The vendor contract (what ``mdev_driver`` probe/remove and ``vfio_device_ops`` open/close are to
the kernel's mdev core):

- ``create(uuid, type_id, attrs)`` builds an instance of ``type_id`` with the attributes applied
  in order, **all or nothing**: on any error it raises and leaves nothing behind (no instance,
  no resources held). Its errors reach the bus caller unchanged, so they name what ran out
  (``Exhausted`` reason ``APERTURE_EXHAUSTED``...) or which attribute was refused.
- ``remove(uuid)`` destroys a closed instance and returns its resources; ``NotFound`` if absent.
- ``open(uuid, owner)`` readies an instance for ``owner`` and returns an opaque description
  (for ``gfx_host``: the fast-path channel), handed to the opener unchanged.
- ``release(uuid)`` undoes ``open`` (unpin, detach).
- ``available_instances(type_id)`` and ``description(type_id)`` are read live, so the counts
  reflect resources shared between types.

The bus guarantees to the vendor (see ``bus.py``): ``create`` and ``remove`` of one parent are
never concurrent (the parent lock); a UUID is never created twice; ``open``/``release`` are
called exactly once per open/close and never while a create or remove of the same UUID runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from vgpusim.vgpu_bus.core.model import Attr


@runtime_checkable
class VendorOps(Protocol):
    """The vendor side of one parent (``gfx_host``'s ``VendorService`` for one GPU)."""

    async def create(self, uuid: str, type_id: str, attrs: tuple[Attr, ...]) -> None:
        """Create instance ``uuid`` of ``type_id`` with ``attrs`` applied, all or nothing."""
        ...

    async def remove(self, uuid: str) -> None:
        """Destroy instance ``uuid`` and return its resources."""
        ...

    async def open(self, uuid: str, owner: str) -> Mapping[str, str]:
        """Ready ``uuid`` for ``owner``; returns the opaque channel description for the opener."""
        ...

    async def release(self, uuid: str) -> None:
        """Undo :meth:`open` of ``uuid``."""
        ...

    async def available_instances(self, type_id: str) -> int:
        """How many more instances of ``type_id`` could be created now (>= 0)."""
        ...

    async def description(self, type_id: str) -> str:
        """The type's sysfs ``description`` text (may be empty, may contain newlines)."""
        ...


@runtime_checkable
class OwnerNotifier(Protocol):
    """How the bus asks the owner of an open device to let go (the VFIO REQ interrupt)."""

    async def request_release(self, uuid: str, owner: str, count: int) -> None:
        """Ask ``owner`` to close ``uuid``; ``count`` is 1 for the first request and grows on repeats.

        It returns once the request is delivered, not when the device is closed; the bus waits
        for the close itself. An error here is logged and the bus keeps waiting.
        """
        ...
