"""Typed client of ``vgpusim.vgpu_bus.v1.VgpuBusService``: parents, types, devices, definitions, events.

One method per RPC, keyword arguments, returning the inner message (a ``Device``, a list of
``Parent``...) rather than the response wrapper.  Failures raise :mod:`vgpusim.common.errors`
classes with the server's ``reason`` (e.g. ``Exhausted`` with reason ``APERTURE_EXHAUSTED``).

Glossary:
- parent: a physical GPU registered by gfx_host (``0000:00:02.0``); it offers *types*.
- type id: ``<driver>-<type>``, e.g. ``i915-GVTg_V5_4``.
- definition: a persistent device configuration (mdevctl ``define``), started on request
  (``START_POLICY_MANUAL``) or when its parent registers (``START_POLICY_AUTO``).
- attrs: ordered ``(name, value)`` pairs, written to the device in order (names may repeat).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping

import grpc

from vgpusim.client._transport import DEFAULT_TIMEOUT, ServiceClient, with_timeout_ms
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as pb
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as pb_grpc

__all__ = ["Attrs", "BusClient", "to_attributes"]

Attrs = Mapping[str, str] | Iterable[tuple[str, str]] | None
"""Device attributes: a mapping, or ordered ``(name, value)`` pairs when order or repeats matter."""


def to_attributes(attrs: Attrs) -> list[pb.Attribute]:
    """``attrs`` as proto ``Attribute`` messages, in order."""
    if attrs is None:
        return []
    pairs = attrs.items() if isinstance(attrs, Mapping) else attrs
    return [pb.Attribute(name=str(name), value=str(value)) for name, value in pairs]


class BusClient(ServiceClient):
    """The mdev core (``vgpu_bus``): what management planes and the vendor driver call."""

    SERVICE = "vgpu_bus"

    def __init__(self, channel: grpc.aio.Channel, *, target: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, target=target, timeout=timeout)
        self._stub = pb_grpc.VgpuBusServiceStub(channel)

    # ---- parents and types ------------------------------------------------------------------

    async def register_parent(
        self,
        name: str,
        driver: str,
        types: Iterable[pb.MdevType],
        vendor_endpoint: str,
        *,
        timeout: float | None = None,
    ) -> pb.Parent:
        """RegisterParent (normally done by gfx_host). Returns: the parent as registered."""
        req = pb.RegisterParentRequest(
            name=name, driver=driver, types=list(types), vendor_endpoint=vendor_endpoint
        )
        resp = await self._unary(self._stub.RegisterParent, req, pb.RegisterParentResponse, timeout)
        return resp.parent

    async def unregister_parent(
        self, name: str, *, timeout_ms: int = 0, timeout: float | None = None
    ) -> list[str]:
        """UnregisterParent: revokes the parent's devices. Returns: the revoked device UUIDs."""
        req = pb.UnregisterParentRequest(name=name, timeout_ms=timeout_ms)
        resp = await self._unary(
            self._stub.UnregisterParent,
            req,
            pb.UnregisterParentResponse,
            timeout,
            at_least=with_timeout_ms(timeout_ms),
        )
        return list(resp.revoked_devices)

    async def list_parents(self, *, timeout: float | None = None) -> list[pb.Parent]:
        """ListParents. Returns: every parent with its types and live ``available_instances``."""
        resp = await self._unary(
            self._stub.ListParents, pb.ListParentsRequest(), pb.ListParentsResponse, timeout
        )
        return list(resp.parents)

    async def list_types(self, parent: str = "", *, timeout: float | None = None) -> list[pb.Parent]:
        """ListTypes of one parent (or all). Errors: NotFound (UNKNOWN_PARENT)."""
        req = pb.ListTypesRequest(parent=parent)
        resp = await self._unary(self._stub.ListTypes, req, pb.ListTypesResponse, timeout)
        return list(resp.parents)

    # ---- devices ----------------------------------------------------------------------------

    async def create_device(
        self, uuid: str, parent: str, type_id: str, *, attrs: Attrs = None, timeout: float | None = None
    ) -> pb.Device:
        """CreateDevice (``echo UUID > create``). Errors: InvalidArgument (INVALID_UUID, UNKNOWN_TYPE),
        AlreadyExists (UUID_IN_USE), NotFound (UNKNOWN_PARENT), Exhausted (e.g. APERTURE_EXHAUSTED).
        """
        req = pb.CreateDeviceRequest(uuid=uuid, parent=parent, type_id=type_id, attrs=to_attributes(attrs))
        resp = await self._unary(self._stub.CreateDevice, req, pb.CreateDeviceResponse, timeout)
        return resp.device

    async def remove_device(self, uuid: str, *, timeout_ms: int = 0, timeout: float | None = None) -> None:
        """RemoveDevice (``echo 1 > remove``); an open device's owner gets ``timeout_ms`` to release it."""
        req = pb.RemoveDeviceRequest(uuid=uuid, timeout_ms=timeout_ms)
        await self._unary(
            self._stub.RemoveDevice,
            req,
            pb.RemoveDeviceResponse,
            timeout,
            at_least=with_timeout_ms(timeout_ms),
        )

    async def get_device(self, uuid: str, *, timeout: float | None = None) -> pb.Device:
        """GetDevice. Errors: NotFound (UNKNOWN_DEVICE), InvalidArgument (INVALID_UUID)."""
        resp = await self._unary(
            self._stub.GetDevice, pb.GetDeviceRequest(uuid=uuid), pb.GetDeviceResponse, timeout
        )
        return resp.device

    async def list_devices(
        self, *, parent: str = "", type_id: str = "", uuid: str = "", timeout: float | None = None
    ) -> list[pb.Device]:
        """ListDevices, optionally filtered. Returns: the active devices."""
        req = pb.ListDevicesRequest(parent=parent, type_id=type_id, uuid=uuid)
        resp = await self._unary(self._stub.ListDevices, req, pb.ListDevicesResponse, timeout)
        return list(resp.devices)

    async def open_device(
        self, uuid: str, owner: str, container_id: str, *, timeout: float | None = None
    ) -> pb.OpenDeviceResponse:
        """OpenDevice for ``owner``. Returns: the device and its fast-path channel (broker, token)."""
        req = pb.OpenDeviceRequest(uuid=uuid, owner=owner, container_id=container_id)
        return await self._unary(self._stub.OpenDevice, req, pb.OpenDeviceResponse, timeout)

    async def close_device(self, uuid: str, owner: str, *, timeout: float | None = None) -> None:
        """CloseDevice. Errors: NotFound, PermissionDenied (NOT_OWNER), WrongState (NOT_OPEN)."""
        req = pb.CloseDeviceRequest(uuid=uuid, owner=owner)
        await self._unary(self._stub.CloseDevice, req, pb.CloseDeviceResponse, timeout)

    def watch_ownership(
        self, owner: str, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.WatchOwnershipResponse, None]:
        """WatchOwnership: ``watching`` first, then a ``release_requested`` per REQ interrupt.

        When the iteration stops, the bus closes every device ``owner`` still holds.
        """
        req = pb.WatchOwnershipRequest(owner=owner)
        return self._stream(self._stub.WatchOwnership, req, pb.WatchOwnershipResponse, timeout)

    # ---- definitions (mdevctl) --------------------------------------------------------------

    async def define_device(
        self,
        uuid: str,
        *,
        parent: str = "",
        type_id: str = "",
        start: pb.StartPolicy.ValueType = pb.START_POLICY_MANUAL,
        attrs: Attrs = None,
        timeout: float | None = None,
    ) -> pb.Definition:
        """DefineDevice (mdevctl define); parent and type may be omitted for an active device.
        Errors: AlreadyExists (ALREADY_DEFINED), InvalidArgument (INVALID_UUID, INSUFFICIENTLY_SPECIFIED).
        """
        req = pb.DefineDeviceRequest(
            uuid=uuid, parent=parent, type_id=type_id, start=start, attrs=to_attributes(attrs)
        )
        resp = await self._unary(self._stub.DefineDevice, req, pb.DefineDeviceResponse, timeout)
        return resp.definition

    async def undefine_device(
        self, uuid: str, *, parent: str = "", timeout: float | None = None
    ) -> list[pb.Definition]:
        """UndefineDevice on ``parent`` (or every parent). Returns: the removed definitions."""
        req = pb.UndefineDeviceRequest(uuid=uuid, parent=parent)
        resp = await self._unary(self._stub.UndefineDevice, req, pb.UndefineDeviceResponse, timeout)
        return list(resp.removed)

    async def modify_definition(
        self,
        uuid: str,
        *,
        parent: str = "",
        type_id: str = "",
        start: pb.StartPolicy.ValueType = pb.START_POLICY_UNSPECIFIED,
        add_attr: tuple[str, str] | None = None,
        delete_attr: bool = False,
        index: int | None = None,
        timeout: float | None = None,
    ) -> pb.Definition:
        """ModifyDefinition (mdevctl modify): type, start policy, and one attribute edit.

        ``add_attr=(name, value)`` inserts at ``index`` (default: append); ``delete_attr=True``
        deletes at ``index`` (default: the last one).  Empty/UNSPECIFIED fields stay unchanged.
        """
        req = pb.ModifyDefinitionRequest(uuid=uuid, parent=parent, type_id=type_id, start=start)
        position = -1 if index is None else index
        if add_attr is not None and delete_attr:
            raise ValueError("add_attr and delete_attr are mutually exclusive")
        if add_attr is not None:
            req.add_attribute.CopyFrom(pb.AddAttribute(name=add_attr[0], value=add_attr[1], index=position))
        elif delete_attr:
            req.delete_attribute.CopyFrom(pb.DeleteAttribute(index=position))
        resp = await self._unary(self._stub.ModifyDefinition, req, pb.ModifyDefinitionResponse, timeout)
        return resp.definition

    async def list_definitions(
        self, *, parent: str = "", uuid: str = "", timeout: float | None = None
    ) -> list[pb.Definition]:
        """ListDefinitions (mdevctl list --defined), optionally filtered."""
        req = pb.ListDefinitionsRequest(parent=parent, uuid=uuid)
        resp = await self._unary(self._stub.ListDefinitions, req, pb.ListDefinitionsResponse, timeout)
        return list(resp.definitions)

    async def start_device(
        self,
        uuid: str = "",
        *,
        parent: str = "",
        type_id: str = "",
        attrs: Attrs = None,
        timeout: float | None = None,
    ) -> pb.Device:
        """StartDevice (mdevctl start): a definition by UUID, or a transient device (UUID generated by
        the bus when empty). Errors: as create_device, plus AlreadyExists (DEVICE_EXISTS).
        """
        req = pb.StartDeviceRequest(uuid=uuid, parent=parent, type_id=type_id, attrs=to_attributes(attrs))
        resp = await self._unary(self._stub.StartDevice, req, pb.StartDeviceResponse, timeout)
        return resp.device

    async def stop_device(self, uuid: str, *, timeout_ms: int = 0, timeout: float | None = None) -> None:
        """StopDevice (mdevctl stop): removes the active device; its definition stays."""
        req = pb.StopDeviceRequest(uuid=uuid, timeout_ms=timeout_ms)
        await self._unary(
            self._stub.StopDevice, req, pb.StopDeviceResponse, timeout, at_least=with_timeout_ms(timeout_ms)
        )

    # ---- events -----------------------------------------------------------------------------

    def watch_events(
        self, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[pb.WatchEventsResponse, None]:
        """WatchEvents from ``after_sequence`` (0 = only new events), oldest first, until the
        consumer stops iterating (or ``timeout`` seconds pass).  A slow consumer gets an
        ``EVENT_KIND_OVERFLOW`` event and continues from the newest.

        The subscription starts with the first iteration: to see the events of calls made before
        that, pass the ``sequence`` of the last event already seen as ``after_sequence``.
        """
        req = pb.WatchEventsRequest(after_sequence=after_sequence)
        return self._stream(self._stub.WatchEvents, req, pb.WatchEventsResponse, timeout)
