"""Translation between the vgpu_bus protos (``vgpusim.gen.vgpu_bus.v1``) and the core's records.

Pure functions, no I/O: the servicer calls them on the way in (proto -> arguments of the core)
and on the way out (frozen records -> proto). The rules that are not one-to-one:

- empty strings of optional request fields mean "not given" (``None`` for the core);
- enum zero values (``*_UNSPECIFIED``) are refused with ``InvalidArgument`` where a value is
  required (``INVALID_START_POLICY``); ``ModifyDefinition`` reads UNSPECIFIED as "unchanged";
- the core's transitional owner states ``OPENING`` and ``CLOSING`` are reported as
  ``DEVICE_STATE_OPEN`` (the device has an owner);
- an event's ``detail`` (``create``, ``define``, ``revoked``...) goes into ``message`` when the
  event has no message of its own; the overflow marker's ``seq`` is the last lost event's.

Glossary:
- record: a frozen dataclass of ``vgpusim.vgpu_bus.core.model``.
- defined keys: the ``(uuid, parent)`` pairs that have a definition (``Device.defined``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from vgpusim.common.errors import InvalidArgument
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.vgpu_bus.core import (
    Attr,
    DefinedDevice,
    Definition,
    DeviceInfo,
    DeviceState,
    Event,
    EventKind,
    ParentInfo,
    ParentRegistration,
    StartPolicy,
    TypeInfo,
    TypeSpec,
)

__all__ = [
    "attrs_in",
    "attrs_out",
    "defined_out",
    "definition_out",
    "device_out",
    "event_out",
    "optional",
    "parent_out",
    "registration_out",
    "start_policy_change",
    "start_policy_in",
    "start_policy_out",
    "timestamp",
    "type_specs_in",
]

DEFAULT_DEVICE_API = "vfio-pci"

_STATES: Mapping[DeviceState, pb.DeviceState.ValueType] = {
    DeviceState.CREATING: pb.DEVICE_STATE_CREATING,
    DeviceState.ACTIVE: pb.DEVICE_STATE_ACTIVE,
    DeviceState.OPENING: pb.DEVICE_STATE_OPEN,
    DeviceState.OPEN: pb.DEVICE_STATE_OPEN,
    DeviceState.CLOSING: pb.DEVICE_STATE_OPEN,
    DeviceState.REMOVING: pb.DEVICE_STATE_REMOVING,
}

_EVENTS: Mapping[EventKind, pb.EventKind.ValueType] = {
    EventKind.CREATED: pb.EVENT_KIND_DEVICE_CREATED,
    EventKind.REMOVED: pb.EVENT_KIND_DEVICE_REMOVED,
    EventKind.OPENED: pb.EVENT_KIND_DEVICE_OPENED,
    EventKind.CLOSED: pb.EVENT_KIND_DEVICE_CLOSED,
    EventKind.PARENT_ADDED: pb.EVENT_KIND_PARENT_ADDED,
    EventKind.PARENT_REMOVED: pb.EVENT_KIND_PARENT_REMOVED,
    EventKind.FAILED: pb.EVENT_KIND_FAILED,
    EventKind.DEFINITION_CHANGED: pb.EVENT_KIND_DEFINITION_CHANGED,
    EventKind.OVERFLOW: pb.EVENT_KIND_OVERFLOW,
}

_POLICIES: Mapping[StartPolicy, pb.StartPolicy.ValueType] = {
    StartPolicy.AUTO: pb.START_POLICY_AUTO,
    StartPolicy.MANUAL: pb.START_POLICY_MANUAL,
}


def optional(text: str) -> str | None:
    """``None`` for an empty (unset) string field, else the text."""
    return text or None


def timestamp(seconds: float) -> Timestamp:
    """A ``google.protobuf.Timestamp`` for a wall-clock time in seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def attrs_in(attributes: Iterable[pb.Attribute]) -> tuple[Attr, ...]:
    """Proto attributes as the core's ordered pairs."""
    return tuple(Attr(attribute.name, attribute.value) for attribute in attributes)


def attrs_out(attrs: Iterable[Attr]) -> list[pb.Attribute]:
    """The core's attributes as proto messages, in order."""
    return [pb.Attribute(name=attr.name, value=attr.value) for attr in attrs]


def start_policy_in(value: pb.StartPolicy.ValueType) -> StartPolicy:
    """The core's policy; ``InvalidArgument`` ``INVALID_START_POLICY`` for UNSPECIFIED or unknown."""
    for policy, number in _POLICIES.items():
        if number == value:
            return policy
    raise InvalidArgument(
        f"start policy {value} is not START_POLICY_AUTO or START_POLICY_MANUAL",
        reason="INVALID_START_POLICY",
        metadata={"start": str(value)},
    )


def start_policy_change(value: pb.StartPolicy.ValueType) -> StartPolicy | None:
    """As :func:`start_policy_in`, but UNSPECIFIED means "unchanged" (``None``)."""
    return None if value == pb.START_POLICY_UNSPECIFIED else start_policy_in(value)


def start_policy_out(policy: StartPolicy) -> pb.StartPolicy.ValueType:
    """The proto enum of a policy."""
    return _POLICIES[policy]


def type_specs_in(types: Iterable[pb.MdevType]) -> tuple[tuple[TypeSpec, ...], dict[str, str]]:
    """A registration's catalogue: the specs the core checks, and each type's description."""
    specs = tuple(
        TypeSpec(type_id=t.type_id, name=t.name, device_api=t.device_api or DEFAULT_DEVICE_API) for t in types
    )
    descriptions = {t.type_id: t.description for t in types}
    return specs, descriptions


def registration_out(
    registration: ParentRegistration, registered: Iterable[pb.MdevType], vendor_endpoint: str
) -> pb.Parent:
    """The parent as registered: the accepted catalogue (names defaulted), with the vendor's own
    description and ``available_instances`` from the request (not asked again)."""
    given = {t.type_id: t for t in registered}
    return pb.Parent(
        name=registration.parent,
        driver=registration.driver,
        vendor_endpoint=vendor_endpoint,
        types=[
            pb.MdevType(
                type_id=spec.type_id,
                name=spec.name,
                description=given[spec.type_id].description,
                device_api=spec.device_api,
                available_instances=given[spec.type_id].available_instances,
            )
            for spec in registration.types
        ],
    )


def type_out(info: TypeInfo) -> pb.MdevType:
    """One live type."""
    return pb.MdevType(
        type_id=info.type_id,
        name=info.name,
        description=info.description,
        device_api=info.device_api,
        available_instances=info.available_instances,
    )


def parent_out(info: ParentInfo, vendor_endpoint: str) -> pb.Parent:
    """A parent with its live types."""
    return pb.Parent(
        name=info.name,
        driver=info.driver,
        types=[type_out(t) for t in info.types],
        vendor_endpoint=vendor_endpoint,
    )


def device_out(info: DeviceInfo, defined: bool) -> pb.Device:
    """A device; ``defined``: a definition of its UUID exists on its parent."""
    device = pb.Device(
        uuid=info.uuid,
        parent=info.parent,
        type_id=info.type_id,
        state=_STATES[info.state],
        owner=info.owner or "",
        attrs=attrs_out(info.attrs),
        defined=defined,
    )
    if info.created_at:
        device.created.CopyFrom(timestamp(info.created_at))
    return device


def definition_out(definition: Definition, device: DeviceInfo | None) -> pb.Definition:
    """A definition as ``list --defined`` shows it; ``device``: the device with its UUID, if any.

    It is ``active`` when that device runs (is past ``CREATING``) with its parent and type.
    """
    active = (
        device is not None
        and device.state is not DeviceState.CREATING
        and (device.parent, device.type_id) == (definition.parent, definition.type_id)
    )
    return defined_out(DefinedDevice(definition, active))


def defined_out(defined: DefinedDevice) -> pb.Definition:
    """A definition with the core's ``active`` flag."""
    definition = defined.definition
    return pb.Definition(
        uuid=definition.uuid,
        parent=definition.parent,
        type_id=definition.type_id,
        start=start_policy_out(definition.start),
        attrs=attrs_out(definition.attrs),
        active=defined.active,
    )


def event_out(event: Event) -> pb.WatchEventsResponse:
    """One event of the stream (see the module docstring for ``detail``)."""
    return pb.WatchEventsResponse(
        sequence=event.seq,
        kind=_EVENTS[event.kind],
        time=timestamp(event.timestamp),
        uuid=event.uuid,
        parent=event.parent,
        type_id=event.type_id,
        owner=event.owner,
        reason=event.reason,
        message=event.message or event.detail,
    )
