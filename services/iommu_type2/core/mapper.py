"""The mapper: every container of the service, their owners, and the mapper-wide counters.

The servicer holds one :class:`Mapper` and resolves each request's ``container_id`` with
:meth:`Mapper.container`; container-level calls are methods of the returned
:class:`~.container.Container`. Devices are unique across the mapper (a device attaches to one
container at a time), so the containers share the mapper's device registry.

Owners: every container has an owner id (a frontend/VM). :meth:`Mapper.destroy_owner` destroys
all of an owner's containers by force; the servicer calls it when the owner's ``KeepAlive``
stream ends, so a crashed frontend leaves no mappings and no pins behind.

Glossary:
- owner: an opaque non-empty id naming who keeps a container alive.
- retired totals: counters of destroyed containers, kept so that ``_total`` counters never go
  backwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from vgpusim.common.errors import NotFound
from vgpusim.iommu_type2.core import checks, reasons
from vgpusim.iommu_type2.core.container import Container
from vgpusim.iommu_type2.core.model import (
    ContainerInfo,
    ContainerStatistics,
    IommuMode,
    MapperConfig,
    MapperStatistics,
)
from vgpusim.iommu_type2.core.ops import SegmentStore

log = logging.getLogger(__name__)


def parse_mode(value: int) -> IommuMode:
    """The :class:`IommuMode` of a wire value; ``BAD_MODE`` for 0 (unspecified) or unknown."""
    try:
        return IommuMode(value)
    except ValueError:
        raise reasons.bad_mode(value) from None


def _new_id() -> str:
    return str(uuid.uuid4())


class Mapper:
    """All containers. ``new_id`` makes container ids (default: random UUIDs)."""

    def __init__(
        self,
        store: SegmentStore,
        config: MapperConfig | None = None,
        *,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.store = store
        self.config = config or MapperConfig()
        self._new_id = new_id
        self._containers: dict[str, Container] = {}
        self._attached: dict[str, str] = {}  # device -> container id
        self._retired = ContainerStatistics()
        self._created = 0
        self._destroyed = 0

    def create_container(self, owner: str, mode: IommuMode, memlock_limit_bytes: int = 0) -> Container:
        """A new empty container of ``owner``. ``memlock_limit_bytes`` 0 means unlimited.

        Errors, in order: ``BAD_NAME`` (owner), ``BAD_MODE``, ``VALUE_OUT_OF_RANGE`` (limit).
        """
        checks.check_name("owner", owner)
        if not isinstance(mode, IommuMode):
            raise reasons.bad_mode(mode)
        checks.check_u64("memlock_limit_bytes", memlock_limit_bytes)
        container_id = self._new_id()
        if container_id in self._containers:
            raise RuntimeError(f"container id {container_id!r} was handed out twice")
        container = Container(
            container_id,
            owner,
            mode,
            memlock_limit_bytes,
            store=self.store,
            config=self.config,
            attached=self._attached,
        )
        self._containers[container_id] = container
        self._created += 1
        return container

    def container(self, container_id: str) -> Container:
        """The live container ``container_id``; ``UNKNOWN_CONTAINER`` (NotFound) otherwise."""
        try:
            return self._containers[container_id]
        except KeyError:
            raise reasons.unknown_container(container_id) from None

    def containers(self, owner: str | None = None) -> tuple[ContainerInfo, ...]:
        """Every live container (of ``owner`` if given), in creation order."""
        return tuple(c.info() for c in self._containers.values() if owner is None or c.owner == owner)

    def owners(self) -> tuple[str, ...]:
        """The owners with at least one live container, sorted."""
        return tuple(sorted({c.owner for c in self._containers.values()}))

    def device_container(self, device: str) -> str | None:
        """The id of the container ``device`` is attached to, if any."""
        return self._attached.get(device)

    async def destroy_container(self, container_id: str, *, force: bool = False) -> int:
        """Destroy a container (see :meth:`Container.destroy`); returns the bytes unmapped.

        Errors: ``UNKNOWN_CONTAINER``; without ``force`` also ``UNMAP_NOTIFY_TIMEOUT`` and
        ``UNMAP_PINS_OUTSTANDING`` (the container then stays).
        """
        container = self.container(container_id)
        unmapped = await container.destroy(force=force)
        self._retire(container)
        return unmapped

    def _retire(self, container: Container) -> None:
        if self._containers.get(container.container_id) is container:
            del self._containers[container.container_id]
            self._retired += container.statistics()
            self._destroyed += 1

    async def destroy_owner(self, owner: str) -> int:
        """Destroy every container of ``owner`` by force (its keepalive dropped). Never fails
        because of devices; returns the bytes unmapped in total."""
        total = 0
        for container in [c for c in self._containers.values() if c.owner == owner]:
            try:
                total += await container.destroy(force=True)
            except NotFound:
                pass  # destroyed concurrently by another caller, who retires it
            else:
                self._retire(container)
        if total:
            log.info("owner %s gone: its containers unmapped %d bytes", owner, total)
        return total

    def statistics(self) -> MapperStatistics:
        """Mapper-wide counters; ``totals`` sums live containers and retired ones."""
        totals = self._retired
        for container in self._containers.values():
            totals += container.statistics()
        return MapperStatistics(
            containers=len(self._containers),
            owners=len({c.owner for c in self._containers.values()}),
            devices=len(self._attached),
            containers_created_total=self._created,
            containers_destroyed_total=self._destroyed,
            totals=totals,
        )
