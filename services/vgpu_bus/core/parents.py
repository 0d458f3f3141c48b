"""Registered parents: the type catalogue check at registration, and live type information.

A parent is what ``mdev_register_parent()`` creates in the kernel: a physical device with a
vendor ops table and a catalogue of types. The catalogue is checked once, when the vendor
registers (STYLE: ops tables are checked at registration): every type-id is
``<driver>-<type>`` with one common driver, ids are unique, ``device_api`` is a VFIO API
string. ``description`` and ``available_instances`` are never cached; they are asked from the
vendor each time someone reads them, because creating one type can lower the count of others.

Glossary:
- driver: the part of every type-id before the first ``-`` (``dev_driver_string`` of the parent).
- going away: unregistration has begun; the flag plays the kernel's ``unreg_sem`` (see ``bus.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from vgpusim.common.errors import InvalidArgument, VgpusimError
from vgpusim.vgpu_bus.core.model import ParentInfo, ParentState, TypeInfo, TypeSpec
from vgpusim.vgpu_bus.core.naming import check_device_api, check_parent_name, split_type_id
from vgpusim.vgpu_bus.core.ops import VendorOps

T = TypeVar("T")


@dataclass(eq=False)
class Parent:
    """The bus's live record of one registered parent (internal; readers get :class:`ParentInfo`)."""

    name: str
    driver: str
    types: Mapping[str, TypeSpec]
    vendor: VendorOps
    registered_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serialises the vendor's ``create`` and ``remove`` for this parent."""
    going_away: bool = False
    """Set when unregistration begins and never cleared (the kernel's ``unreg_sem`` write side)."""
    unregistering: bool = False
    """An unregistration is running right now (a second one gets ``PARENT_BUSY``)."""

    @property
    def state(self) -> ParentState:
        """``GOING_AWAY`` once unregistration has begun."""
        return ParentState.GOING_AWAY if self.going_away else ParentState.REGISTERED


def check_catalogue(
    parent: str, types: Iterable[TypeSpec], vendor: object
) -> tuple[str, dict[str, TypeSpec]]:
    """The parent's driver name and its catalogue keyed by type-id, after checking all of it.

    Raises ``InvalidArgument`` with reason ``INVALID_PARENT_NAME``, ``INVALID_VENDOR_OPS``,
    ``EMPTY_TYPE_CATALOGUE``, ``INVALID_TYPE_ID``, ``MIXED_DRIVERS``, ``DUPLICATE_TYPE_ID`` or
    ``INVALID_DEVICE_API``.
    """
    check_parent_name(parent)
    if not isinstance(vendor, VendorOps):
        raise InvalidArgument(
            f"Vendor ops of parent {parent} do not implement VendorOps", reason="INVALID_VENDOR_OPS"
        )
    catalogue: dict[str, TypeSpec] = {}
    driver = ""
    for spec in types:
        spec_driver, type_name = split_type_id(spec.type_id)
        if driver and spec_driver != driver:
            raise InvalidArgument(
                f"Parent {parent}: type {spec.type_id} has driver {spec_driver!r}, others {driver!r}",
                reason="MIXED_DRIVERS",
                metadata={"type_id": spec.type_id},
            )
        driver = spec_driver
        if spec.type_id in catalogue:
            raise InvalidArgument(
                f"Parent {parent}: type {spec.type_id} registered twice",
                reason="DUPLICATE_TYPE_ID",
                metadata={"type_id": spec.type_id},
            )
        check_device_api(spec.device_api)
        catalogue[spec.type_id] = replace(spec, name=spec.name or type_name)
    if not catalogue:
        raise InvalidArgument(f"Parent {parent} registered without any type", reason="EMPTY_TYPE_CATALOGUE")
    return driver, catalogue


async def live_type_info(parent: Parent, spec: TypeSpec) -> TypeInfo:
    """One type of ``parent`` with its live ``description`` and ``available_instances``."""
    available = await parent.vendor.available_instances(spec.type_id)
    description = await parent.vendor.description(spec.type_id)
    if isinstance(available, bool) or not isinstance(available, int) or available < 0:
        raise RuntimeError(f"vendor of {parent.name} answered available_instances={available!r}")
    return TypeInfo(
        parent=parent.name,
        type_id=spec.type_id,
        name=spec.name,
        device_api=spec.device_api,
        description=description,
        available_instances=available,
    )


async def live_parent_info(parent: Parent, device_count: int, type_id: str | None = None) -> ParentInfo:
    """``parent`` with its live types sorted by type-id (only ``type_id`` if given), asked concurrently."""
    specs = [spec for key, spec in sorted(parent.types.items()) if type_id is None or key == type_id]
    types = await run_all([live_type_info(parent, spec) for spec in specs])
    return ParentInfo(
        name=parent.name,
        driver=parent.driver,
        state=parent.state,
        registered_at=parent.registered_at,
        device_count=device_count,
        types=types,
    )


async def run_all(calls: list[Coroutine[Any, Any, T]]) -> tuple[T, ...]:
    """The results of ``calls``, run concurrently in a task group, in order.

    When calls fail with domain errors, the first one is raised as itself (the task group would
    wrap it in an ``ExceptionGroup``, which no caller maps to a status); the others are cancelled.
    Any other failure is a bug and propagates as the group.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        errors = _leaves(failed)
        if not all(isinstance(error, VgpusimError) for error in errors):
            raise
        raise errors[0] from None
    return tuple(task.result() for task in tasks)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves
