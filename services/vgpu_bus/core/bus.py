"""The mediated-device core: parents, devices, and their create / open / close / remove.

This is ``drivers/vfio/mdev/mdev_core.c`` for the simulation: requests validated in the kernel's
order (kernel-mdev §1.2, §1.3), vendors called through :class:`~.ops.VendorOps` with their errors
passed on unchanged, every change published on the :class:`~.events.EventHub`.

Locking (all of it is asyncio, one event loop; "atomic" means "no ``await`` in between"):

- **Global UUID registry** ``_devices``: a UUID is checked and reserved (a ``CREATING`` record)
  with no ``await`` in between, before the vendor is called, so two creates of one UUID can
  never both reach the vendor; the loser gets ``UUID_IN_USE``. The record leaves the registry
  when the vendor create fails or the vendor remove returns.
- **Per-parent lock** ``Parent.lock``: held around every vendor ``create`` and ``remove`` of the
  parent, so the vendor sees one resource change at a time and N racing creates for M free
  slots give exactly M devices even if the vendor's own check-then-reserve could interleave.
  ``open``/``release`` and the live reads (``available_instances``) do not take it, and no
  wait on an owner is ever done while holding it.
- **Going-away flag** ``Parent.going_away`` (the kernel's ``unreg_sem``): set, never cleared,
  when unregistration begins. A create checks it before reserving and again once it holds the
  parent lock, so creates racing with unregistration fail with ``ENODEV`` (``PARENT_REMOVED``);
  unregistration then takes the lock once, which lets a create already inside the vendor
  finish, and revokes every device (each like a remove, all concurrently).
- **Per-device state** (``states.py``): ``CREATING``/``REMOVING`` make another remove ``EAGAIN``;
  ``release_requested`` marks a remove waiting for the owner (no new open meanwhile).

Glossary:
- revoke: remove a device because its parent goes away (owner asked to release first).
- force: on unregistration, release for owners that do not and drop devices the vendor fails on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterable

from vgpusim.common.errors import VgpusimError
from vgpusim.vgpu_bus.core import reasons
from vgpusim.vgpu_bus.core.devices import Device, wait_for_release
from vgpusim.vgpu_bus.core.events import Clock, EventHub
from vgpusim.vgpu_bus.core.model import (
    Attr,
    BusConfig,
    BusStatistics,
    DeviceInfo,
    DeviceState,
    EventKind,
    OpenedDevice,
    ParentInfo,
    ParentRegistration,
    TypeInfo,
    TypeSpec,
)
from vgpusim.vgpu_bus.core.naming import check_attrs, check_owner, parse_uuid
from vgpusim.vgpu_bus.core.ops import OwnerNotifier, VendorOps
from vgpusim.vgpu_bus.core.parents import Parent, check_catalogue, live_parent_info, run_all
from vgpusim.vgpu_bus.core.states import HELD_BY_OWNER, IN_FLIGHT, Op

log = logging.getLogger(__name__)


class DeviceBus:
    """Parents and devices of the bus; see the module docstring for the rules and the locking."""

    def __init__(
        self,
        events: EventHub,
        owner_notifier: OwnerNotifier,
        *,
        config: BusConfig | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config or BusConfig()
        self._events = events
        self._notifier = owner_notifier
        self._clock = clock
        self._parents: dict[str, Parent] = {}
        self._devices: dict[str, Device] = {}
        self._creates: Counter[str] = Counter()
        self._removes: Counter[str] = Counter()

    # -- parents -------------------------------------------------------------------------------

    def register_parent(
        self, parent: str, types: Iterable[TypeSpec], vendor: VendorOps
    ) -> ParentRegistration:
        """Add ``parent`` with its catalogue and vendor ops (``mdev_register_parent``); ``InvalidArgument``
        for a bad name or catalogue (``parents.check_catalogue``), ``PARENT_EXISTS`` if registered.
        """
        driver, catalogue = check_catalogue(parent, types, vendor)
        if parent in self._parents:
            raise reasons.parent_exists(parent)
        self._parents[parent] = Parent(parent, driver, catalogue, vendor, registered_at=self._clock())
        self._events.publish(EventKind.PARENT_ADDED, parent=parent)
        return ParentRegistration(parent=parent, driver=driver, types=tuple(catalogue.values()))

    async def unregister_parent(
        self, parent: str, *, force: bool = False, release_timeout: float | None = None
    ) -> None:
        """Revoke every device of ``parent`` (each like a remove), then forget it.

        Without ``force`` the first failure (``OWNER_DID_NOT_RELEASE`` after ``release_timeout``,
        a vendor error) is raised once every revocation has ended; the parent then stays going
        away and the call may be repeated. With ``force`` the bus releases for unresponsive
        owners and drops devices whatever the vendor says. ``UNKNOWN_PARENT``; ``PARENT_BUSY``.
        """
        record = self._parent(parent)
        if record.unregistering:
            raise reasons.parent_busy(parent)
        record.unregistering = record.going_away = True
        timeout = self.config.release_timeout if release_timeout is None else release_timeout
        try:
            async with record.lock:
                pass  # a create already inside the vendor finishes; those queued behind fail with ENODEV
            devices = [device for device in self._devices.values() if device.parent == parent]
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._revoke(device, timeout, force)) for device in devices]
        finally:
            record.unregistering = False
        errors = [error for task in tasks if (error := task.result()) is not None]
        if errors:
            raise errors[0]
        del self._parents[parent]
        self._events.publish(EventKind.PARENT_REMOVED, parent=parent)

    async def parent_info(self, parent: str, type_id: str | None = None) -> ParentInfo:
        """``parent`` with its live types (only ``type_id`` if given); ``NotFound`` ``UNKNOWN_PARENT``."""
        record = self._parent(parent)
        count = sum(1 for device in self._devices.values() if device.parent == parent)
        return await live_parent_info(record, count, type_id)

    async def list_parents(self, parent: str | None = None) -> tuple[ParentInfo, ...]:
        """Every registered parent (or just ``parent``; none if unknown) with live types, sorted by name."""
        names = sorted(name for name in self._parents if parent is None or name == parent)
        return await run_all([self.parent_info(name) for name in names])

    async def list_types(
        self, *, parent: str | None = None, type_id: str | None = None
    ) -> tuple[TypeInfo, ...]:
        """Live types of every parent (filtered), sorted by parent then type-id (as mdevctl sorts)."""
        parents = await self.list_parents(parent)
        return tuple(info for p in parents for info in p.types if type_id is None or info.type_id == type_id)

    # -- devices -------------------------------------------------------------------------------

    async def create_device(
        self, uuid: str, parent: str, type_id: str, attrs: Iterable[Attr] = ()
    ) -> DeviceInfo:
        """Create a device; checks in order (kernel-mdev §1.2): ``INVALID_UUID``, ``UUID_IN_USE``
        (any parent, or being created), ``UNKNOWN_PARENT``, ``UNKNOWN_TYPE``, ``PARENT_REMOVED``
        (ENODEV), ``INVALID_ATTRIBUTE``, then the vendor's own error, unchanged. Atomic: on any
        failure or cancellation no device remains and the UUID is free again.
        """
        uuid = parse_uuid(uuid)
        if (existing := self._devices.get(uuid)) is not None:
            raise reasons.uuid_in_use(uuid, existing.parent, existing.type_id, parent, type_id)
        record = self._parent(parent)
        if type_id not in record.types:
            raise reasons.unknown_type(parent, type_id)
        if record.going_away:
            raise reasons.parent_removed(parent)
        checked = check_attrs(attrs)
        device = Device(uuid, parent, type_id, checked)
        self._devices[uuid] = device
        try:
            async with record.lock:
                if record.going_away:
                    raise reasons.parent_removed(parent)
                try:
                    await record.vendor.create(uuid, type_id, checked)
                except asyncio.CancelledError:
                    await _undo(record.vendor.remove(uuid), f"create of {uuid}")
                    raise
        except BaseException as error:
            del self._devices[uuid]
            device.apply(Op.FAILED)
            self._count_failure(self._creates, "create", device, error)
            raise
        device.created_at = self._clock()
        device.apply(Op.SUCCEEDED)
        self._creates["ok"] += 1
        self._events.publish(EventKind.CREATED, parent=parent, uuid=uuid, type_id=type_id)
        return device.info()

    async def remove_device(self, uuid: str, *, release_timeout: float | None = None) -> None:
        """Remove a device; if it is open, ask its owner to release and wait (kernel-mdev §1.3).

        ``INVALID_UUID``; ``UNKNOWN_DEVICE``; ``PARENT_REMOVED`` (ENODEV: unregistration removes
        it); ``DEVICE_BUSY`` (EAGAIN) while a create or remove of it runs; ``OWNER_DID_NOT_RELEASE``
        (metadata ``owner``) after ``release_timeout`` seconds (default ``config.release_timeout``);
        a vendor error (the device stays).
        """
        device = self._device(parse_uuid(uuid))
        if self._parents[device.parent].going_away:
            raise reasons.parent_removed(device.parent)
        if device.state in IN_FLIGHT or device.release_requested:
            raise reasons.device_busy(device.uuid, device.state.value, "a create or remove is in progress")
        timeout = self.config.release_timeout if release_timeout is None else release_timeout
        await self._remove(device, timeout, force=False)

    async def open_device(self, uuid: str, owner: str) -> OpenedDevice:
        """Open a device for ``owner`` (one at a time); returns the vendor's open result unchanged.

        ``INVALID_UUID``; ``INVALID_OWNER``; ``UNKNOWN_DEVICE``; ``PARENT_REMOVED``; ``DEVICE_BUSY``
        (being created, removed or released); ``DEVICE_IN_USE`` (metadata ``owner``); vendor errors.
        """
        uuid = parse_uuid(uuid)
        check_owner(owner)
        device = self._device(uuid)
        if self._parents[device.parent].going_away:
            raise reasons.parent_removed(device.parent)
        if device.state in IN_FLIGHT or device.release_requested:
            raise reasons.device_busy(device.uuid, device.state.value, "it is being created or removed")
        if device.state in HELD_BY_OWNER:
            raise reasons.device_in_use(device.uuid, device.owner or "")
        device.owner = owner
        device.apply(Op.OPEN)
        vendor = self._parents[device.parent].vendor
        try:
            try:
                channel = await vendor.open(device.uuid, owner)
            except asyncio.CancelledError:
                await _undo(vendor.release(device.uuid), f"open of {device.uuid}")
                raise
        except BaseException:
            device.apply(Op.FAILED)
            raise
        device.opened_at = self._clock()
        device.apply(Op.SUCCEEDED)
        self._events.publish(
            EventKind.OPENED, parent=device.parent, uuid=device.uuid, type_id=device.type_id, owner=owner
        )
        return OpenedDevice(device=device.info(), channel=dict(channel))

    async def close_device(self, uuid: str, owner: str) -> DeviceInfo:
        """Close a device ``owner`` holds open (one vendor release); ``INVALID_UUID``, ``UNKNOWN_DEVICE``,
        ``DEVICE_NOT_OPEN``, ``NOT_OWNER`` (metadata ``owner``: the holder), ``DEVICE_BUSY`` (its open
        or close is in flight), or a vendor error (it then stays open).
        """
        device = self._device(parse_uuid(uuid))
        if device.state not in HELD_BY_OWNER:
            raise reasons.device_not_open(device.uuid)
        if device.owner != owner:
            raise reasons.not_owner(device.uuid, device.owner or "", owner)
        if device.state is not DeviceState.OPEN:
            raise reasons.device_busy(device.uuid, device.state.value, "its open or close is in progress")
        await self._close(device, self._parents[device.parent].vendor, forced=False)
        return device.info()

    def device_info(self, uuid: str) -> DeviceInfo:
        """One device; ``InvalidArgument`` ``INVALID_UUID`` or ``NotFound`` ``UNKNOWN_DEVICE``."""
        return self._device(parse_uuid(uuid)).info()

    def find_device(self, uuid: str) -> DeviceInfo | None:
        """The device with this canonical UUID, or ``None``."""
        device = self._devices.get(uuid)
        return None if device is None else device.info()

    def list_devices(
        self, *, parent: str | None = None, type_id: str | None = None, uuid: str | None = None
    ) -> tuple[DeviceInfo, ...]:
        """Devices matching every given filter (all states), sorted by parent then UUID."""
        wanted = None if uuid is None else parse_uuid(uuid)
        return tuple(
            device.info()
            for device in sorted(self._devices.values(), key=lambda d: (d.parent, d.uuid))
            if (parent is None or device.parent == parent)
            and (type_id is None or device.type_id == type_id)
            and (wanted is None or device.uuid == wanted)
        )

    def statistics(self) -> BusStatistics:
        """Counts for metrics (definitions and autostart are added by ``VgpuBus.statistics``)."""
        devices = self._devices.values()
        events = self._events.statistics()
        return BusStatistics(
            parents=len(self._parents),
            devices_by_parent=dict(Counter(device.parent for device in devices)),
            devices_by_type=dict(Counter(device.type_id for device in devices)),
            open_devices=sum(1 for device in devices if device.state in HELD_BY_OWNER),
            creates_by_result=dict(self._creates),
            removes_by_result=dict(self._removes),
            events_emitted=events.emitted,
            events_dropped=events.dropped,
            subscribers=events.subscribers,
        )

    # -- internals -----------------------------------------------------------------------------

    def _parent(self, parent: str) -> Parent:
        record = self._parents.get(parent)
        if record is None:
            raise reasons.unknown_parent(parent, self._parents)
        return record

    def _device(self, uuid: str) -> Device:
        device = self._devices.get(uuid)
        if device is None:
            raise reasons.unknown_device(uuid)
        return device

    async def _revoke(self, device: Device, timeout: float, force: bool) -> VgpusimError | None:
        # Remove ``device`` for an unregistration, once operations already in flight have ended.
        while not device.gone:
            if device.state in IN_FLIGHT or device.release_requested:
                await device.wait_changed()
                continue
            try:
                await self._remove(device, timeout, force)
            except VgpusimError as error:
                return error
        return None

    async def _remove(self, device: Device, timeout: float, force: bool) -> None:
        parent = self._parents[device.parent]
        device.release_requested = True
        try:
            try:
                await wait_for_release(device, self._notifier, timeout, self.config.release_request_interval)
            except VgpusimError as error:
                if not force:
                    self._count_failure(self._removes, "remove", device, error)
                    raise
                log.warning("forcing release of %s held by %s: %s", device.uuid, device.owner, error)
                while device.state is not DeviceState.OPEN and device.state in HELD_BY_OWNER:
                    await device.wait_changed()
                if device.state is DeviceState.OPEN:
                    await self._close(device, parent.vendor, forced=True)
        finally:
            device.release_requested = False
        device.apply(Op.REMOVE)
        result = "ok"
        try:
            async with parent.lock:
                await parent.vendor.remove(device.uuid)
        except VgpusimError as error:
            if not force:
                device.apply(Op.FAILED)
                self._count_failure(self._removes, "remove", device, error)
                raise
            log.warning("vendor failed to remove %s; dropping it anyway: %s", device.uuid, error)
            result = error.reason
        except BaseException:
            device.apply(Op.FAILED)
            raise
        del self._devices[device.uuid]
        device.apply(Op.SUCCEEDED)
        self._removes[result] += 1
        self._events.publish(
            EventKind.REMOVED, parent=device.parent, uuid=device.uuid, type_id=device.type_id
        )

    async def _close(self, device: Device, vendor: VendorOps, *, forced: bool) -> None:
        owner = device.owner or ""
        device.apply(Op.CLOSE)
        try:
            await vendor.release(device.uuid)
        except VgpusimError as error:
            if not forced:
                device.apply(Op.FAILED)
                raise
            log.warning("vendor failed to release %s; treating it as closed: %s", device.uuid, error)
        except BaseException:
            device.apply(Op.FAILED)
            raise
        device.apply(Op.SUCCEEDED)
        self._events.publish(
            EventKind.CLOSED,
            parent=device.parent,
            uuid=device.uuid,
            type_id=device.type_id,
            owner=owner,
            detail="revoked" if forced else "",
        )

    def _count_failure(self, counter: Counter[str], op: str, device: Device, error: BaseException) -> None:
        if not isinstance(error, VgpusimError):
            counter["CANCELLED"] += 1
            return
        counter[error.reason] += 1
        self._events.publish(
            EventKind.FAILED,
            parent=device.parent,
            uuid=device.uuid,
            type_id=device.type_id,
            owner=device.owner or "",
            detail=op,
            reason=error.reason,
            message=error.message,
        )


async def _undo(call: Awaitable[None], what: str) -> None:
    """After a cancelled vendor call, undo whatever part of it the vendor did (errors only logged)."""
    try:
        await call
    except VgpusimError as error:
        log.info("rollback of cancelled %s: %s", what, error)
