"""In-test fakes of vgpu_bus, qemu_frontend and gfx_host's arbiter on REAL grpc.aio UNIX-socket servers.

The fakes subclass the generated ``*Servicer`` classes and fail the way the real services do: a
``google.rpc.Status`` with one ``ErrorInfo`` (domain ``vgpusim.local``, reason, ``errno``), sent
with ``context.abort_with_status(rpc_status.to_status(...))``.  They hold just enough state for
the client library, vgpuctl and the examples: parents with per-type capacity, devices,
definitions, events; VMs with a guest whose smoke workload raises one interrupt; schedulers.

:func:`serve` runs them on ``<state>/run/{vgpu_bus,qemu_frontend,gfx_host}.sock`` in this loop;
:class:`ServerThread` runs them in a thread of their own, for code that calls ``asyncio.run``
itself (``vgpuctl.main``) or runs in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid as uuid_mod
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as gfx
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as gfx_grpc
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2 as fe
from vgpusim.gen.qemu_frontend.v1 import qemu_frontend_pb2_grpc as fe_grpc
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2 as bus
from vgpusim.gen.vgpu_bus.v1 import vgpu_bus_pb2_grpc as bus_grpc

PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


async def abort(
    context: Any, code: grpc.StatusCode, message: str, reason: str, errno: str, **meta: str
) -> None:
    """End the RPC with a rich status, as vgpusim servers do."""
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain="vgpusim.local", metadata={"errno": errno, **meta}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    await context.abort_with_status(rpc_status.to_status(status))


def _canonical(text: str) -> str | None:
    try:
        value = uuid_mod.UUID(text)
    except ValueError:
        return None
    return str(value) if len(text) == 36 else None


class FakeBus(bus_grpc.VgpuBusServiceServicer):
    """vgpu_bus: parents with a capacity per type, devices, definitions and the event stream."""

    def __init__(self) -> None:
        self.parents: dict[str, tuple[str, dict[str, tuple[int, str, str]]]] = {}
        self.devices: dict[str, bus.Device] = {}
        self.definitions: dict[tuple[str, str], bus.Definition] = {}
        self.events: list[bus.WatchEventsResponse] = []
        self.delay = 0.0  # seconds each ListParents sleeps (deadline tests)
        self._wakeups: set[asyncio.Event] = set()

    def add_parent(self, name: str, driver: str, types: dict[str, tuple[int, str, str]]) -> None:
        """``types``: type id -> (capacity, name, description)."""
        self.parents[name] = (driver, types)

    def _parent(self, name: str) -> bus.Parent:
        driver, types = self.parents[name]
        out = []
        for type_id, (capacity, tname, description) in types.items():
            used = sum(1 for d in self.devices.values() if d.parent == name and d.type_id == type_id)
            out.append(
                bus.MdevType(
                    type_id=type_id,
                    name=tname,
                    description=description,
                    device_api="vfio-pci",
                    available_instances=max(0, capacity - used),
                )
            )
        return bus.Parent(name=name, driver=driver, types=out, vendor_endpoint="unix:/fake/gfx_host.sock")

    def _emit(self, kind: bus.EventKind.ValueType, **fields: str) -> None:
        self.events.append(bus.WatchEventsResponse(sequence=len(self.events) + 1, kind=kind, **fields))
        for wakeup in self._wakeups:
            wakeup.set()

    def _is_defined(self, parent: str, uuid: str) -> bool:
        return (parent, uuid) in self.definitions

    async def ListParents(self, request: Any, context: Any) -> bus.ListParentsResponse:
        await asyncio.sleep(self.delay)
        return bus.ListParentsResponse(parents=[self._parent(n) for n in self.parents])

    async def ListTypes(self, request: Any, context: Any) -> bus.ListTypesResponse:
        if request.parent and request.parent not in self.parents:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no parent {request.parent}", "UNKNOWN_PARENT", "ENODEV"
            )
        names = [request.parent] if request.parent else list(self.parents)
        return bus.ListTypesResponse(parents=[self._parent(n) for n in names])

    async def _create(self, context: Any, uuid: str, parent: str, type_id: str, attrs: Any) -> bus.Device:
        canonical = _canonical(uuid)
        if canonical is None:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"bad UUID {uuid!r}", "INVALID_UUID", "EINVAL"
            )
        assert canonical is not None
        if canonical in self.devices:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"{canonical} in use", "UUID_IN_USE", "EEXIST"
            )
        if parent not in self.parents:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no parent {parent}", "UNKNOWN_PARENT", "ENODEV")
        types = self.parents[parent][1]
        if type_id not in types:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"no type {type_id}", "UNKNOWN_TYPE", "EINVAL"
            )
        available = next(t.available_instances for t in self._parent(parent).types if t.type_id == type_id)
        if available == 0:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"no aperture left on {parent} for {type_id}",
                "APERTURE_EXHAUSTED",
                "ENOSPC",
                resource="low_gm",
            )
        device = bus.Device(
            uuid=canonical,
            parent=parent,
            type_id=type_id,
            state=bus.DEVICE_STATE_ACTIVE,
            attrs=list(attrs),
            defined=self._is_defined(parent, canonical),
        )
        self.devices[canonical] = device
        self._emit(bus.EVENT_KIND_DEVICE_CREATED, uuid=canonical, parent=parent, type_id=type_id)
        for key, definition in self.definitions.items():
            if key[1] == canonical:
                definition.active = key[0] == parent
        return device

    async def CreateDevice(self, request: Any, context: Any) -> bus.CreateDeviceResponse:
        device = await self._create(context, request.uuid, request.parent, request.type_id, request.attrs)
        return bus.CreateDeviceResponse(device=device)

    async def _remove(self, context: Any, uuid: str) -> None:
        device = self.devices.pop(uuid.lower(), None)
        if device is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no device {uuid}", "UNKNOWN_DEVICE", "ENODEV")
            return
        self._emit(
            bus.EVENT_KIND_DEVICE_REMOVED, uuid=device.uuid, parent=device.parent, type_id=device.type_id
        )
        for key, definition in self.definitions.items():
            if key[1] == device.uuid:
                definition.active = False

    async def RemoveDevice(self, request: Any, context: Any) -> bus.RemoveDeviceResponse:
        await self._remove(context, request.uuid)
        return bus.RemoveDeviceResponse()

    async def GetDevice(self, request: Any, context: Any) -> bus.GetDeviceResponse:
        device = self.devices.get(request.uuid.lower())
        if device is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no device {request.uuid}", "UNKNOWN_DEVICE", "ENODEV"
            )
        return bus.GetDeviceResponse(device=device)

    async def ListDevices(self, request: Any, context: Any) -> bus.ListDevicesResponse:
        found = [
            d
            for d in self.devices.values()
            if (not request.parent or d.parent == request.parent)
            and (not request.type_id or d.type_id == request.type_id)
            and (not request.uuid or d.uuid == request.uuid.lower())
        ]
        return bus.ListDevicesResponse(devices=found)

    async def DefineDevice(self, request: Any, context: Any) -> bus.DefineDeviceResponse:
        uuid, parent, type_id = request.uuid.lower(), request.parent, request.type_id
        active = self.devices.get(uuid)
        if active is not None and not parent:
            parent, type_id = active.parent, type_id or active.type_id
        if not parent or not type_id:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "No parent specified",
                "INSUFFICIENTLY_SPECIFIED",
                "EINVAL",
            )
        if (parent, uuid) in self.definitions:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"Device {uuid} on {parent} already defined",
                "ALREADY_DEFINED",
                "EEXIST",
            )
        definition = bus.Definition(
            uuid=uuid,
            parent=parent,
            type_id=type_id,
            start=request.start or bus.START_POLICY_MANUAL,
            attrs=list(request.attrs),
            active=active is not None and active.parent == parent,
        )
        self.definitions[(parent, uuid)] = definition
        if active is not None and active.parent == parent:
            active.defined = True
        return bus.DefineDeviceResponse(definition=definition)

    async def _matching(self, context: Any, uuid: str, parent: str) -> list[bus.Definition]:
        found = [
            d for (p, u), d in self.definitions.items() if u == uuid.lower() and (not parent or p == parent)
        ]
        if not found:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "No devices match the specified uuid",
                "NOT_DEFINED",
                "ENOENT",
            )
        return found

    async def UndefineDevice(self, request: Any, context: Any) -> bus.UndefineDeviceResponse:
        removed = await self._matching(context, request.uuid, request.parent)
        for d in removed:
            del self.definitions[(d.parent, d.uuid)]
            if d.uuid in self.devices and self.devices[d.uuid].parent == d.parent:
                self.devices[d.uuid].defined = False
        return bus.UndefineDeviceResponse(removed=removed)

    async def ModifyDefinition(self, request: Any, context: Any) -> bus.ModifyDefinitionResponse:
        (definition,) = (await self._matching(context, request.uuid, request.parent))[:1]
        if request.type_id:
            definition.type_id = request.type_id
        if request.start:
            definition.start = request.start
        attrs = list(definition.attrs)
        edit = request.WhichOneof("attribute_edit")
        if edit == "add_attribute":
            add = request.add_attribute
            position = len(attrs) if add.index < 0 else add.index
            if position > len(attrs):
                await abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "bad index", "BAD_ATTRIBUTE_INDEX", "EINVAL"
                )
            attrs.insert(position, bus.Attribute(name=add.name, value=add.value))
        elif edit == "delete_attribute":
            position = request.delete_attribute.index
            if not attrs or position >= len(attrs):
                await abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "bad index", "BAD_ATTRIBUTE_INDEX", "EINVAL"
                )
            del attrs[position]
        del definition.attrs[:]
        definition.attrs.extend(attrs)
        return bus.ModifyDefinitionResponse(definition=definition)

    async def ListDefinitions(self, request: Any, context: Any) -> bus.ListDefinitionsResponse:
        found = [
            d
            for (p, u), d in self.definitions.items()
            if (not request.parent or p == request.parent) and (not request.uuid or u == request.uuid.lower())
        ]
        return bus.ListDefinitionsResponse(definitions=found)

    async def StartDevice(self, request: Any, context: Any) -> bus.StartDeviceResponse:
        uuid, parent, type_id, attrs = request.uuid.lower(), request.parent, request.type_id, request.attrs
        if uuid and not type_id:
            defs = await self._matching(context, uuid, parent)
            parent, type_id, attrs = defs[0].parent, defs[0].type_id, defs[0].attrs
        if uuid in self.devices:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, "Device already exists", "DEVICE_EXISTS", "EEXIST"
            )
        device = await self._create(context, uuid or str(uuid_mod.uuid4()), parent, type_id, attrs)
        return bus.StartDeviceResponse(device=device)

    async def StopDevice(self, request: Any, context: Any) -> bus.StopDeviceResponse:
        await self._remove(context, request.uuid)
        return bus.StopDeviceResponse()

    async def WatchEvents(self, request: Any, context: Any) -> AsyncIterator[bus.WatchEventsResponse]:
        next_seq = request.after_sequence + 1 if request.after_sequence else len(self.events) + 1
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                while next_seq <= len(self.events):
                    yield self.events[next_seq - 1]
                    next_seq += 1
                wakeup.clear()
                await wakeup.wait()
        finally:
            self._wakeups.discard(wakeup)


class FakeFrontend(fe_grpc.QemuFrontendServiceServicer):
    """qemu_frontend: VMs that open bus devices; a guest whose workloads end at once with one IRQ."""

    def __init__(self, bus_fake: FakeBus) -> None:
        self.bus = bus_fake
        self.vms: dict[str, fe.Vm] = {}
        self.guests: dict[str, fe.GuestStatus] = {}
        self.watchers: dict[tuple[str, str], list[asyncio.Queue[fe.WatchInterruptsResponse]]] = {}
        self.guest_delay = 0.05
        self._tasks: set[asyncio.Task[None]] = set()
        self._irq_seq = 0

    async def _vm(self, context: Any, vm_id: str) -> fe.Vm:
        vm = self.vms.get(vm_id)
        if vm is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no VM {vm_id}", "UNKNOWN_VM", "ENOENT")
        assert vm is not None
        return vm

    async def _attached(self, context: Any, vm_id: str, uuid: str) -> fe.Vm:
        vm = await self._vm(context, vm_id)
        if uuid not in vm.devices:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"{uuid} not attached", "NOT_ATTACHED", "ENODEV")
        return vm

    async def CreateVm(self, request: Any, context: Any) -> fe.CreateVmResponse:
        if request.memory_bytes == 0 or request.memory_bytes % (2 << 20):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "bad memory size", "BAD_MEMORY_SIZE", "EINVAL"
            )
        name = request.name or f"vm{len(self.vms) + 1}"
        if any(vm.name == name for vm in self.vms.values()):
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"VM {name} exists", "VM_EXISTS", "EEXIST")
        vm_id = f"vm-{uuid_mod.uuid4().hex[:8]}"
        vm = fe.Vm(
            vm_id=vm_id,
            name=name,
            memory_bytes=request.memory_bytes,
            ram_segment=f"{vm_id}.ram",
            container_id=f"ctr-{vm_id}",
            regions=[fe.MemoryRegion(gpa=0, size=request.memory_bytes, offset=0)],
            guest_state=fe.GUEST_STATE_STOPPED,
        )
        self.vms[vm_id] = vm
        self.guests[vm_id] = fe.GuestStatus(state=fe.GUEST_STATE_STOPPED)
        return fe.CreateVmResponse(vm=vm)

    async def DestroyVm(self, request: Any, context: Any) -> fe.DestroyVmResponse:
        vm = await self._vm(context, request.vm_id)
        for uuid in vm.devices:
            self._close(request.vm_id, uuid)
        del self.vms[request.vm_id]
        return fe.DestroyVmResponse()

    async def GetVm(self, request: Any, context: Any) -> fe.GetVmResponse:
        return fe.GetVmResponse(vm=await self._vm(context, request.vm_id))

    async def ListVms(self, request: Any, context: Any) -> fe.ListVmsResponse:
        return fe.ListVmsResponse(vms=list(self.vms.values()))

    async def AttachDevice(self, request: Any, context: Any) -> fe.AttachDeviceResponse:
        vm = await self._vm(context, request.vm_id)
        device = self.bus.devices.get(request.uuid)
        if device is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no device {request.uuid}", "UNKNOWN_DEVICE", "ENODEV"
            )
        assert device is not None
        if device.owner:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "device in use",
                "DEVICE_IN_USE",
                "EBUSY",
                owner=device.owner,
            )
        if vm.devices:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "one vGPU per VM", "VM_HAS_VGPU", "EINVAL"
            )
        device.owner, device.state = request.vm_id, bus.DEVICE_STATE_OPEN
        vm.devices.append(request.uuid)
        return fe.AttachDeviceResponse(vm=vm)

    def _close(self, vm_id: str, uuid: str) -> None:
        device = self.bus.devices.get(uuid)
        if device is not None:
            device.owner, device.state = "", bus.DEVICE_STATE_ACTIVE

    async def DetachDevice(self, request: Any, context: Any) -> fe.DetachDeviceResponse:
        vm = await self._attached(context, request.vm_id, request.uuid)
        vm.devices.remove(request.uuid)
        self._close(request.vm_id, request.uuid)
        return fe.DetachDeviceResponse()

    async def StartGuest(self, request: Any, context: Any) -> fe.StartGuestResponse:
        vm = await self._vm(context, request.vm_id)
        if not vm.devices:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no vGPU", "NO_VGPU", "ENODEV")
        if vm.guest_state == fe.GUEST_STATE_RUNNING:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "running", "GUEST_RUNNING", "EBUSY")
        status = fe.GuestStatus(state=fe.GUEST_STATE_RUNNING, workload=request.workload)
        self.guests[request.vm_id] = status
        vm.guest_state = fe.GUEST_STATE_RUNNING
        task = asyncio.get_running_loop().create_task(self._finish(vm, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fe.StartGuestResponse(status=status)

    async def _finish(self, vm: fe.Vm, status: fe.GuestStatus) -> None:
        await asyncio.sleep(self.guest_delay)
        self._irq_seq += 1
        irq = fe.WatchInterruptsResponse(index=1, vector=0, raised_ns=1, sequence=self._irq_seq)
        for queue in self.watchers.get((vm.vm_id, vm.devices[0]), []):
            queue.put_nowait(irq)
        status.commands_submitted, status.interrupts_received = 1, 1
        status.first_irq_latency_us = 42.0
        status.state = vm.guest_state = fe.GUEST_STATE_FINISHED

    async def StopGuest(self, request: Any, context: Any) -> fe.StopGuestResponse:
        vm = await self._vm(context, request.vm_id)
        vm.guest_state = self.guests[request.vm_id].state = fe.GUEST_STATE_STOPPED
        return fe.StopGuestResponse(status=self.guests[request.vm_id])

    async def GetGuestStatus(self, request: Any, context: Any) -> fe.GetGuestStatusResponse:
        await self._vm(context, request.vm_id)
        return fe.GetGuestStatusResponse(status=self.guests[request.vm_id])

    async def WatchInterrupts(self, request: Any, context: Any) -> AsyncIterator[fe.WatchInterruptsResponse]:
        await self._attached(context, request.vm_id, request.uuid)
        queue: asyncio.Queue[fe.WatchInterruptsResponse] = asyncio.Queue()
        key = (request.vm_id, request.uuid)
        self.watchers.setdefault(key, []).append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.watchers[key].remove(queue)

    async def GetScreenshot(self, request: Any, context: Any) -> fe.GetScreenshotResponse:
        vm = await self._vm(context, request.vm_id)
        if not vm.devices:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no vGPU attached", "NOT_ATTACHED", "ENODEV")
        return fe.GetScreenshotResponse(png=PNG_1X1, width=1, height=1)


class FakeGfx(gfx_grpc.GfxHostServiceServicer):
    """gfx_host's arbiter only: the scheduler of each bus parent, weights of its devices."""

    def __init__(self, bus_fake: FakeBus) -> None:
        self.bus = bus_fake
        self.policies: dict[str, gfx.SchedulerPolicy.ValueType] = {}
        self.weights: dict[str, int] = {}

    async def _scheduler(self, context: Any, parent: str) -> gfx.GetSchedulerResponse:
        if parent not in self.bus.parents:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no parent {parent}", "UNKNOWN_PARENT", "ENODEV")
        devices = sorted(d.uuid for d in self.bus.devices.values() if d.parent == parent)
        total = sum(self.weights.get(u, 4) for u in devices) or 1
        entries = [
            gfx.SchedulerEntry(
                uuid=u, weight=self.weights.get(u, 4), configured_share=self.weights.get(u, 4) / total
            )
            for u in devices
        ]
        policy = self.policies.get(parent, gfx.SCHEDULER_POLICY_WEIGHTED)
        return gfx.GetSchedulerResponse(
            parent=parent, policy=policy, tick_us=1000, entries=entries, switches_total=7
        )

    async def GetScheduler(self, request: Any, context: Any) -> gfx.GetSchedulerResponse:
        return await self._scheduler(context, request.parent)

    async def SetScheduler(self, request: Any, context: Any) -> gfx.SetSchedulerResponse:
        await self._scheduler(context, request.parent)
        for change in request.weights:
            if not 1 <= change.weight <= 16:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "weight 1..16", "BAD_WEIGHT", "EINVAL")
            self.weights[change.uuid] = change.weight
        if request.policy:
            self.policies[request.parent] = request.policy
        return gfx.SetSchedulerResponse(scheduler=await self._scheduler(context, request.parent))


def default_bus() -> FakeBus:
    """A bus with two GVT-g-like parents: 0000:00:02.0 (V5_4 x2, V5_8 x4) and 0000:00:03.0 (V5_1 x1)."""
    fake = FakeBus()
    fake.add_parent(
        "0000:00:02.0",
        "i915",
        {
            "i915-GVTg_V5_8": (4, "GVTg_V5_8", "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4"),
            "i915-GVTg_V5_4": (2, "GVTg_V5_4", "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4"),
        },
    )
    fake.add_parent("0000:00:03.0", "i915", {"i915-GVTg_V5_1": (1, "GVTg_V5_1", "")})
    return fake


@contextlib.asynccontextmanager
async def serve(
    state_dir: Path, bus_fake: FakeBus, frontend: FakeFrontend | None = None
) -> AsyncIterator[Path]:
    """Serve the fakes on ``<state_dir>/run/{vgpu_bus,qemu_frontend,gfx_host}.sock`` in this loop."""
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    server = grpc.aio.server()
    bus_grpc.add_VgpuBusServiceServicer_to_server(bus_fake, server)
    fe_grpc.add_QemuFrontendServiceServicer_to_server(frontend or FakeFrontend(bus_fake), server)
    gfx_grpc.add_GfxHostServiceServicer_to_server(FakeGfx(bus_fake), server)
    for svc in ("vgpu_bus", "qemu_frontend", "gfx_host"):
        server.add_insecure_port(f"unix:{run / svc}.sock")
    await server.start()
    try:
        yield state_dir
    finally:
        await server.stop(None)


class ServerThread:
    """:func:`serve` in a thread with its own event loop (a context manager)."""

    def __init__(self, state_dir: Path, bus_fake: FakeBus, frontend: FakeFrontend | None = None) -> None:
        self.state_dir = state_dir
        self.bus = bus_fake
        self.frontend = frontend or FakeFrontend(bus_fake)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fake-servers", daemon=True)
        self._error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> None:
            self._stop = asyncio.Event()
            async with serve(self.state_dir, self.bus, self.frontend):
                self._ready.set()
                await self._stop.wait()

        try:
            self._loop.run_until_complete(run())
        except BaseException as exc:  # reported by __enter__/__exit__
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def running(state_dir: Path, bus_fake: FakeBus | None = None) -> Iterator[ServerThread]:
    """``with running(tmp_path) as servers:`` the default fakes, served from a thread."""
    with ServerThread(state_dir, bus_fake or default_bus()) as servers:
        yield servers
