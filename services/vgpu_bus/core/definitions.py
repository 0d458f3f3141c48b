"""mdevctl semantics over the bus: define, undefine, modify, list, start, stop and autostart.

This is mdevctl 1.x (``src/main.rs``, ``src/mdev.rs``) with the SQLite store in place of
``/etc/mdevctl.d`` and the :class:`~.bus.DeviceBus` in place of sysfs. Its rules, kept here:

- a UUID may be defined under several parents, but only one device with that UUID can run;
- ``define`` does not check that the parent or type exist; for an active device ``parent``,
  ``type`` and the attributes default to the running device's;
- ``undefine`` and ``modify`` never touch a running device;
- ``start`` with the UUID of a definition starts that definition (mdevctl #38), otherwise it
  creates a transient device (generating the UUID if none is given);
- ``autostart`` (``start-parent-mdevs``) starts every ``auto`` definition of a parent when it
  registers. Unlike mdevctl it retries *transient* failures a bounded number of times with
  backoff (never after a success, never on a definitive error, mdevctl #53) and records and
  publishes each outcome. Error texts are mdevctl's where mdevctl has the case.

Glossary:
- transient device: a device started without a definition; it disappears for good when stopped.
- outcome: what autostart did for one definition (:class:`~.model.AutostartOutcome`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
import uuid as uuid_mod
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from vgpusim.common.errors import (
    Aborted,
    Busy,
    InvalidArgument,
    NotFound,
    TimedOut,
    Unavailable,
    VgpusimError,
)
from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.events import Clock, EventHub
from vgpusim.vgpu_bus.core.model import (
    Attr,
    AutostartOutcome,
    AutostartResult,
    BusConfig,
    DefinedDevice,
    Definition,
    DeviceInfo,
    DeviceState,
    EventKind,
    StartPolicy,
)
from vgpusim.vgpu_bus.core.naming import check_attrs, check_parent_name, check_type_id, parse_uuid
from vgpusim.vgpu_bus.core.store import DefinitionStore

log = logging.getLogger(__name__)

RETRYABLE: tuple[type[VgpusimError], ...] = (Busy, Unavailable, TimedOut, Aborted)
"""Errors autostart retries: the parent or device is momentarily busy, or a peer restarts."""


class Definitions:
    """Persistent definitions of one bus and the lifecycle operations built on them."""

    def __init__(
        self,
        bus: DeviceBus,
        store: DefinitionStore,
        events: EventHub,
        *,
        config: BusConfig | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config or BusConfig()
        self._bus = bus
        self._store = store
        self._events = events
        self._clock = clock
        self._outcomes: dict[tuple[str, str], AutostartOutcome] = {}
        self._autostarts: Counter[str] = Counter()

    def define(
        self,
        uuid: str | None = None,
        parent: str | None = None,
        type_id: str | None = None,
        *,
        start: StartPolicy = StartPolicy.MANUAL,
        attrs: Iterable[Attr] | None = None,
    ) -> Definition:
        """Store a definition (``mdevctl define``); a UUID is generated when none is given.

        ``InvalidArgument`` ``INSUFFICIENTLY_SPECIFIED`` ("No parent specified" / "No type
        specified") unless the device is active and supplies them; ``AlreadyExists``
        ``DEFINITION_EXISTS`` ("Device U on P already defined").
        """
        uuid = str(uuid_mod.uuid4()) if uuid is None else parse_uuid(uuid)
        active = self._active(uuid)
        if parent is None:
            if active is None or type_id is not None:
                raise _insufficient("No parent specified")
            parent = active.parent
        if type_id is None:
            if active is None:
                raise _insufficient("No type specified")
            type_id = active.type_id
        if attrs is None:
            attrs = active.attrs if active else ()
        definition = Definition(
            uuid, check_parent_name(parent), check_type_id(type_id), start, check_attrs(attrs)
        )
        self._store.insert(definition)
        self._changed(definition, "define")
        return definition

    def undefine(self, uuid: str, parent: str | None = None) -> tuple[Definition, ...]:
        """Forget every definition of ``uuid`` (under ``parent`` only, if given); running devices stay.

        ``NotFound`` ``UNKNOWN_DEFINITION`` ("No devices match the specified uuid").
        """
        found = self._store.find(uuid=parse_uuid(uuid), parent=parent)
        if not found:
            raise NotFound(
                "No devices match the specified uuid", reason="UNKNOWN_DEFINITION", errno=errno.ENOENT
            )
        for definition in found:
            self._store.delete(definition.uuid, definition.parent)
            self._changed(definition, "undefine")
        return found

    def modify(
        self,
        uuid: str,
        parent: str | None = None,
        *,
        type_id: str | None = None,
        start: StartPolicy | None = None,
        add_attr: Attr | None = None,
        delete_attr: bool = False,
        index: int | None = None,
    ) -> Definition:
        """Change a stored definition (``mdevctl modify``); a running device is left alone.

        ``add_attr`` inserts at ``index`` (default: appends); ``delete_attr`` removes the one at
        ``index`` (default: the last). ``NotFound`` ``UNKNOWN_DEFINITION``; ``InvalidArgument``
        ``MULTIPLE_DEFINITIONS`` (give the parent), ``INVALID_ATTRIBUTE_INDEX``, ``INVALID_OPTIONS``.
        """
        current = self._one_definition(parse_uuid(uuid), parent)
        if add_attr is not None and delete_attr:
            raise InvalidArgument("addattr and delattr are mutually exclusive", reason="INVALID_OPTIONS")
        if index is not None and add_attr is None and not delete_attr:
            raise InvalidArgument("index needs addattr or delattr", reason="INVALID_OPTIONS")
        attrs = list(current.attrs)
        if add_attr is not None:
            check_attrs([add_attr])
            position = len(attrs) if index is None else index
            if not 0 <= position <= len(attrs):
                raise _bad_index(current, position)
            attrs.insert(position, add_attr)
        elif delete_attr and attrs:
            position = len(attrs) - 1 if index is None else index
            if not 0 <= position < len(attrs):
                raise _bad_index(current, position)
            del attrs[position]
        elif delete_attr and index is not None:
            raise _bad_index(current, index)
        modified = replace(
            current,
            type_id=current.type_id if type_id is None else check_type_id(type_id),
            start=current.start if start is None else start,
            attrs=tuple(attrs),
        )
        self._store.update(modified)
        self._changed(modified, "modify")
        return modified

    def list_defined(
        self, *, uuid: str | None = None, parent: str | None = None
    ) -> tuple[DefinedDevice, ...]:
        """Definitions (filtered), sorted by parent then UUID, each marked active if its device runs."""
        wanted = None if uuid is None else parse_uuid(uuid)
        result = []
        for definition in self._store.find(uuid=wanted, parent=parent):
            device = self._active(definition.uuid)
            active = (
                device is not None
                and device.parent == definition.parent
                and device.type_id == definition.type_id
            )
            result.append(DefinedDevice(definition, active))
        return tuple(result)

    def get(self, uuid: str, parent: str | None = None) -> Definition:
        """The one definition of ``uuid`` (under ``parent``); see :meth:`modify` for the errors."""
        return self._one_definition(parse_uuid(uuid), parent)

    async def start(
        self,
        uuid: str | None = None,
        parent: str | None = None,
        type_id: str | None = None,
        *,
        attrs: Iterable[Attr] | None = None,
    ) -> DeviceInfo:
        """Start a defined device, or a transient one (``mdevctl start``).

        With ``attrs`` (mdevctl's ``--jsonfile``) the device is transient and needs ``parent``
        and ``type_id``. Otherwise a UUID with exactly one matching definition starts it;
        several give ``MULTIPLE_DEFINITIONS``; a different ``type_id`` gives ``TYPE_MISMATCH``.
        Then the bus create runs, with its errors (``UUID_IN_USE``, ``UNKNOWN_PARENT``...).
        """
        spec = self._start_spec(uuid, parent, type_id, attrs)
        return await self._bus.create_device(spec.uuid, spec.parent, spec.type_id, spec.attrs)

    async def stop(self, uuid: str, *, release_timeout: float | None = None) -> None:
        """Remove a running device (``mdevctl stop``); its definition, if any, stays.

        An open device's owner gets ``release_timeout`` seconds (default: the bus's) to close it.
        """
        await self._bus.remove_device(uuid, release_timeout=release_timeout)

    async def autostart(self, parent: str) -> tuple[AutostartOutcome, ...]:
        """Start every ``auto`` definition of ``parent``, in UUID order; one outcome each.

        Failures do not stop the others; each is logged, recorded (:meth:`autostart_outcomes`)
        and published as a ``FAILED`` event with ``detail="autostart"``.
        """
        outcomes = []
        for definition in self._store.find(parent=parent):
            if definition.start is StartPolicy.AUTO:
                outcome = await self._autostart_one(definition)
                self._outcomes[(definition.uuid, definition.parent)] = outcome
                self._autostarts[outcome.result.value] += 1
                outcomes.append(outcome)
        return tuple(outcomes)

    def autostart_outcomes(self, parent: str | None = None) -> tuple[AutostartOutcome, ...]:
        """The latest autostart outcome of each definition (of ``parent``), sorted by parent then UUID."""
        return tuple(
            outcome
            for key, outcome in sorted(self._outcomes.items(), key=lambda item: (item[0][1], item[0][0]))
            if parent is None or key[1] == parent
        )

    def statistics(self) -> tuple[int, dict[str, int]]:
        """(definitions stored, autostart outcomes by result) for ``VgpuBus.statistics``."""
        return self._store.count(), dict(self._autostarts)

    # -- internals -----------------------------------------------------------------------------

    def _active(self, uuid: str) -> DeviceInfo | None:
        device = self._bus.find_device(uuid)
        return None if device is None or device.state is DeviceState.CREATING else device

    def _one_definition(self, uuid: str, parent: str | None) -> Definition:
        found = self._store.find(uuid=uuid, parent=parent)
        name = uuid if parent is None else f"{parent}/{uuid}"
        if not found:
            raise NotFound(
                f"Mediated device {name} is not defined",
                reason="UNKNOWN_DEFINITION",
                errno=errno.ENOENT,
                metadata={"uuid": uuid},
            )
        if len(found) > 1:
            raise InvalidArgument(
                f"Multiple definitions found for {uuid}, specify a parent",
                reason="MULTIPLE_DEFINITIONS",
                metadata={"uuid": uuid, "parents": ",".join(d.parent for d in found)},
            )
        return found[0]

    def _start_spec(
        self, uuid: str | None, parent: str | None, type_id: str | None, attrs: Iterable[Attr] | None
    ) -> Definition:
        if uuid is not None and attrs is None:
            found = self._store.find(uuid=parse_uuid(uuid), parent=parent)
            if len(found) > 1:
                raise InvalidArgument(
                    f"Multiple definitions found for device {found[0].uuid}. Please specify a parent.",
                    reason="MULTIPLE_DEFINITIONS",
                    metadata={"uuid": found[0].uuid},
                )
            if found:
                definition = found[0]
                if type_id is not None and type_id != definition.type_id:
                    raise InvalidArgument(
                        f"Device {definition.uuid} already exists on parent {definition.parent} "
                        f"with type {definition.type_id}",
                        reason="TYPE_MISMATCH",
                        metadata={"uuid": definition.uuid, "type_id": definition.type_id},
                    )
                return definition
        if type_id is not None and parent is None:
            raise _insufficient("can't provide type without parent")
        if type_id is None or parent is None:
            raise _insufficient("Device is insufficiently specified")
        return Definition(uuid or str(uuid_mod.uuid4()), parent, type_id, attrs=tuple(attrs or ()))

    async def _autostart_one(self, definition: Definition) -> AutostartOutcome:
        device = self._active(definition.uuid)
        if device is not None and (device.parent, device.type_id) == (definition.parent, definition.type_id):
            return self._outcome(definition, AutostartResult.ALREADY_ACTIVE, 0)
        delay = self.config.autostart_backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._bus.create_device(
                    definition.uuid, definition.parent, definition.type_id, definition.attrs
                )
            except VgpusimError as error:
                if isinstance(error, RETRYABLE) and attempt < self.config.autostart_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                log.warning("autostart of %s on %s failed: %s", definition.uuid, definition.parent, error)
                self._events.publish(
                    EventKind.FAILED,
                    parent=definition.parent,
                    uuid=definition.uuid,
                    type_id=definition.type_id,
                    detail="autostart",
                    reason=error.reason,
                    message=error.message,
                )
                return self._outcome(definition, AutostartResult.FAILED, attempt, error)
            return self._outcome(definition, AutostartResult.STARTED, attempt)

    def _outcome(
        self,
        definition: Definition,
        result: AutostartResult,
        attempts: int,
        error: VgpusimError | None = None,
    ) -> AutostartOutcome:
        return AutostartOutcome(
            uuid=definition.uuid,
            parent=definition.parent,
            type_id=definition.type_id,
            result=result,
            attempts=attempts,
            reason=error.reason if error else "",
            message=error.message if error else "",
            at=self._clock(),
        )

    def _changed(self, definition: Definition, action: str) -> None:
        self._events.publish(
            EventKind.DEFINITION_CHANGED,
            parent=definition.parent,
            uuid=definition.uuid,
            type_id=definition.type_id,
            detail=action,
        )


def _insufficient(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INSUFFICIENTLY_SPECIFIED")


def _bad_index(definition: Definition, index: int) -> InvalidArgument:
    if definition.attrs:
        hint = "  Attrs:\n" + "".join(
            f'    @{{{i}}}: {{"{attr.name}":"{attr.value}"}}\n' for i, attr in enumerate(definition.attrs)
        )
    else:
        hint = f"Device {definition.uuid} has no attributes"
    return InvalidArgument(
        f"Attribute index {index} is invalid\n{hint}",
        reason="INVALID_ATTRIBUTE_INDEX",
        metadata={"index": str(index)},
    )
