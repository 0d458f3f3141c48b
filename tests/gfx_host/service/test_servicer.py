"""Contract tests of ``VendorService`` and ``GfxHostService``: status codes and ErrorInfo reasons
as a client sees them, on a real grpc.aio server (``running_server`` + ``add_services``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from tests.gfx_host.service.conftest import GVT, NV, T4, T8, U1, U2, Dirs, Stubs
from tests.gfx_host.service.fake_iommu import FakeIommu
from tests.gfx_host.service.guest import GuestDriver, connect
from vgpusim.common.errors import ERROR_DOMAIN
from vgpusim.common.rpc import STATUS_DETAILS_KEY, error_info_of
from vgpusim.common.shm.segment import Segment
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as pb
from vgpusim.gfx_host.core import registers as r
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.host import HostService
from vgpusim.iommu_type2.core import Container, IommuMode

MIB = 1 << 20
UUIDS = [f"6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e{i:02x}" for i in range(16)]


@dataclass
class Failure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]


async def failure(call: Awaitable[Any]) -> Failure:
    """The status of a call that must fail (with a vgpusim ErrorInfo, never UNKNOWN)."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    trailers = [v for k, v in exc.value.trailing_metadata() or () if k == STATUS_DETAILS_KEY]
    info = error_info_of(status_pb2.Status.FromString(trailers[0])) if trailers else None
    assert info is not None and info.domain == ERROR_DOMAIN
    assert exc.value.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    return Failure(exc.value.code(), info.reason, dict(info.metadata))


async def create(stubs: Stubs, uuid: str, parent: str = GVT, type_id: str = T4) -> pb.CreateInstanceResponse:
    request = pb.CreateInstanceRequest(uuid=uuid, parent=parent, type_id=type_id)
    reply: pb.CreateInstanceResponse = await stubs.vendor.CreateInstance(request)
    return reply


async def available(stubs: Stubs, type_id: str, parent: str = GVT) -> int:
    request = pb.GetAvailableInstancesRequest(parent=parent, type_id=type_id)
    return int((await stubs.vendor.GetAvailableInstances(request)).available_instances)


# ---- VendorService ---------------------------------------------------------------------------


async def test_create_instance_returns_the_vgpu(stubs: Stubs) -> None:
    reply = await create(stubs, U1)

    vgpu = reply.vgpu
    assert (vgpu.uuid, vgpu.parent, vgpu.type_id, vgpu.open) == (U1, GVT, T4, False)
    assert vgpu.partition.vgpu_id == 1
    assert vgpu.partition.low_gm_size == 128 * MIB
    assert vgpu.partition.framebuffer_bytes == vgpu.partition.low_gm_size + vgpu.partition.high_gm_size
    assert vgpu.weight > 0


async def test_the_eighth_vgpu_exhausts_the_vgpu_ids(stubs: Stubs) -> None:
    for uuid in UUIDS[:7]:
        await create(stubs, uuid, type_id=T8)

    failed = await failure(create(stubs, UUIDS[7], type_id=T8))

    assert (failed.code, failed.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "VGPU_ID_EXHAUSTED")
    assert failed.metadata["parent"] == GVT
    assert await available(stubs, T8) == 0


async def test_create_instance_errors(stubs: Stubs) -> None:
    await create(stubs, U1)

    assert (
        await failure(create(stubs, U2, type_id="i915-GVTg_V9_9"))
    ).code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await failure(create(stubs, U2, type_id="i915-GVTg_V9_9"))).reason == "UNKNOWN_TYPE"
    assert (await failure(create(stubs, U1))).reason == "UUID_IN_USE"
    assert (await failure(create(stubs, U1))).code == grpc.StatusCode.ALREADY_EXISTS
    assert (await failure(create(stubs, "not-a-uuid"))).code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await failure(create(stubs, U2, parent="0000:00:09.0"))).code == grpc.StatusCode.NOT_FOUND


async def test_get_available_instances(stubs: Stubs) -> None:
    counts = [await available(stubs, f"i915-GVTg_V5_{n}") for n in (8, 4, 2, 1)]
    await create(stubs, U1)
    after = [await available(stubs, f"i915-GVTg_V5_{n}") for n in (8, 4, 2, 1)]
    bad_type = await failure(
        stubs.vendor.GetAvailableInstances(pb.GetAvailableInstancesRequest(parent=GVT, type_id="x"))
    )
    bad_parent = await failure(
        stubs.vendor.GetAvailableInstances(pb.GetAvailableInstancesRequest(parent="0000:00:09.0", type_id=T4))
    )

    assert (counts, after) == ([7, 5, 2, 1], [5, 4, 2, 1])
    assert (bad_type.code, bad_type.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TYPE")
    assert bad_parent.code == grpc.StatusCode.NOT_FOUND


async def test_remove_instance(stubs: Stubs) -> None:
    await create(stubs, U1)

    await stubs.vendor.RemoveInstance(pb.RemoveInstanceRequest(uuid=U1))
    gone = await failure(stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1)))
    again = await failure(stubs.vendor.RemoveInstance(pb.RemoveInstanceRequest(uuid=U1)))

    assert gone.code == again.code == grpc.StatusCode.NOT_FOUND
    assert await available(stubs, T4) == 5


async def test_open_and_release_instance(stubs: Stubs, container: Container, service: HostService) -> None:
    await create(stubs, U1)

    opened = await stubs.vendor.OpenInstance(
        pb.OpenInstanceRequest(uuid=U1, container_id=container.container_id)
    )
    shown = (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1))).vgpu
    twice = await failure(
        stubs.vendor.OpenInstance(pb.OpenInstanceRequest(uuid=U1, container_id=container.container_id))
    )
    busy = await failure(stubs.vendor.RemoveInstance(pb.RemoveInstanceRequest(uuid=U1)))
    await stubs.vendor.ReleaseInstance(pb.ReleaseInstanceRequest(uuid=U1))
    closed = await failure(stubs.vendor.ReleaseInstance(pb.ReleaseInstanceRequest(uuid=U1)))
    unknown = await failure(stubs.vendor.ReleaseInstance(pb.ReleaseInstanceRequest(uuid=U2)))

    assert opened.broker == str(service.broker.path) and len(opened.token) == 32
    assert (shown.open, shown.container_id) == (True, container.container_id)
    assert (twice.code, twice.reason) == (grpc.StatusCode.UNAVAILABLE, "VGPU_OPEN")
    assert (busy.code, busy.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VGPU_OPEN")
    assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_OPEN")
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    assert not (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1))).vgpu.open


async def test_open_instance_in_an_unknown_container(stubs: Stubs) -> None:
    await create(stubs, U1)

    failed = await failure(stubs.vendor.OpenInstance(pb.OpenInstanceRequest(uuid=U1, container_id="nope")))

    assert failed.code == grpc.StatusCode.NOT_FOUND


# ---- GfxHostService --------------------------------------------------------------------------


async def test_list_gpus(stubs: Stubs) -> None:
    await create(stubs, U1)

    gpus = (await stubs.host.ListGpus(pb.ListGpusRequest())).gpus

    assert [(g.parent, g.model, g.driver) for g in gpus] == [
        (GVT, "gvtg-skl", "i915"),
        (NV, "nvidia-a10", "nvidia"),
    ]
    assert [g.vgpus for g in gpus] == [1, 0]
    assert {g.policy for g in gpus} == {pb.SCHEDULER_POLICY_WEIGHTED}
    usage = {u.resource: (u.total, u.used) for u in gpus[0].resources}
    assert set(usage) == {"low_gm", "high_gm", "fence", "vgpu_id"}
    assert usage["vgpu_id"] == (7, 1)
    assert usage["low_gm"][1] == 128 * MIB


async def test_list_and_get_vgpus(stubs: Stubs) -> None:
    await create(stubs, U1)
    await create(stubs, U2, parent=NV, type_id="nvidia-A10-4Q")

    everything = (await stubs.host.ListVgpus(pb.ListVgpusRequest())).vgpus
    on_nv = (await stubs.host.ListVgpus(pb.ListVgpusRequest(parent=NV))).vgpus
    one = (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U2))).vgpu
    bad_parent = await failure(stubs.host.ListVgpus(pb.ListVgpusRequest(parent="0000:00:09.0")))
    bad_uuid = await failure(stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=UUIDS[9])))

    assert [v.uuid for v in everything] == [U1, U2]
    assert [v.uuid for v in on_nv] == [U2]
    assert (one.parent, one.type_id, one.failsafe_reason) == (NV, "nvidia-A10-4Q", "")
    assert one.partition.framebuffer_bytes == 4 << 30
    assert bad_parent.code == bad_uuid.code == grpc.StatusCode.NOT_FOUND


async def test_describe_device(stubs: Stubs) -> None:
    vgpu = (await create(stubs, U1)).vgpu

    info = await stubs.host.DescribeDevice(pb.DescribeDeviceRequest(uuid=U1))
    unknown = await failure(stubs.host.DescribeDevice(pb.DescribeDeviceRequest(uuid=U2)))

    assert info.flags == 1 | 2  # RESET | PCI
    regions = {region.index: region for region in info.regions}
    assert sorted(regions) == [0, 2, 7]
    bar0, bar2, config = regions[0], regions[2], regions[7]
    assert (bar0.size, bar0.flags, bar0.offset) == (16 * MIB, 1 | 2, 0)
    assert bar2.flags == 1 | 2 | 4 | 8 and bar2.offset == 2 << 40
    assert bar2.size >= vgpu.partition.low_gm_size and bar2.size & (bar2.size - 1) == 0
    assert [(a.offset, a.size) for a in bar2.sparse_areas] == [(0, vgpu.partition.low_gm_size)]
    assert (config.size, config.offset, config.flags) == (4096, 7 << 40, 1 | 2)
    irqs = {irq.index: (irq.flags, irq.count) for irq in info.irqs}
    assert irqs[0] == (1 | 2 | 4, 1)  # INTx: eventfd, maskable, automasked
    assert irqs[1] == (1 | 8, 1)  # MSI: one vector
    assert unknown.code == grpc.StatusCode.NOT_FOUND


async def test_query_gfx_plane_is_zeroed_while_the_plane_is_disabled(stubs: Stubs) -> None:
    await create(stubs, U1)

    plane = (
        await stubs.host.QueryGfxPlane(pb.QueryGfxPlaneRequest(uuid=U1, plane_type=pb.PLANE_TYPE_PRIMARY))
    ).plane
    bad = await failure(stubs.host.QueryGfxPlane(pb.QueryGfxPlaneRequest(uuid=U1)))
    unknown = await failure(
        stubs.host.QueryGfxPlane(pb.QueryGfxPlaneRequest(uuid=U2, plane_type=pb.PLANE_TYPE_PRIMARY))
    )

    no_hotspot = 0xFFFF_FFFF
    assert plane == pb.GfxPlane(x_hot=no_hotspot, y_hot=no_hotspot)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code == grpc.StatusCode.NOT_FOUND


async def test_get_framebuffer_of_an_unknown_dmabuf(stubs: Stubs) -> None:
    await create(stubs, U1)

    failed = await failure(stubs.host.GetFramebuffer(pb.GetFramebufferRequest(uuid=U1, dmabuf_id=5)))

    assert failed.code == grpc.StatusCode.NOT_FOUND


async def test_reset_vgpu(stubs: Stubs, container: Container, dirs: Dirs, ram: Segment) -> None:
    await create(stubs, U1)
    closed = await failure(stubs.host.ResetVgpu(pb.ResetVgpuRequest(uuid=U1)))
    opened = await stubs.vendor.OpenInstance(
        pb.OpenInstanceRequest(uuid=U1, container_id=container.container_id)
    )
    port = await asyncio.to_thread(connect, opened.broker, opened.token, dirs.shm)
    view = ram.buf[:]
    try:
        guest = GuestDriver(port, view)
        await asyncio.to_thread(guest.write, r.ring_reg(r.Engine.RCS, r.RING_CTL), r.RING_CTL_ENABLE)
        await asyncio.to_thread(guest.read, r.SCRATCH)  # orders after the write
        failsafe = (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1))).vgpu.failsafe_reason

        await stubs.host.ResetVgpu(pb.ResetVgpuRequest(uuid=U1))
        after = (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1))).vgpu.failsafe_reason
    finally:
        view.release()
        port.close()

    assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_OPEN")
    assert (failsafe, after) == ("UNSUPPORTED_GUEST", "")


# ---- scheduler -------------------------------------------------------------------------------


async def open_vgpu(stubs: Stubs, uuid: str, container_id: str, parent: str = GVT, type_id: str = T4) -> None:
    await create(stubs, uuid, parent, type_id)
    await stubs.vendor.OpenInstance(pb.OpenInstanceRequest(uuid=uuid, container_id=container_id))


async def test_get_scheduler(stubs: Stubs, container: Container) -> None:
    await open_vgpu(stubs, U1, container.container_id)

    sched = await stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT))
    unknown = await failure(stubs.host.GetScheduler(pb.GetSchedulerRequest(parent="0000:00:09.0")))

    assert (sched.parent, sched.policy, sched.tick_us) == (GVT, pb.SCHEDULER_POLICY_WEIGHTED, 1000)
    assert [(e.uuid, e.configured_share) for e in sched.entries] == [(U1, 1.0)]
    assert unknown.code == grpc.StatusCode.NOT_FOUND


async def test_set_scheduler_policy_and_weights(stubs: Stubs, container: Container) -> None:
    await open_vgpu(stubs, U1, container.container_id)
    await open_vgpu(stubs, U2, container.container_id, type_id=T8)

    reply = await stubs.host.SetScheduler(
        pb.SetSchedulerRequest(
            parent=GVT, policy=pb.SCHEDULER_POLICY_BEST_EFFORT, weights=[pb.WeightChange(uuid=U1, weight=3)]
        )
    )
    gpus = (await stubs.host.ListGpus(pb.ListGpusRequest())).gpus

    sched = reply.scheduler
    assert sched.policy == pb.SCHEDULER_POLICY_BEST_EFFORT
    assert {e.uuid: e.weight for e in sched.entries}[U1] == 3
    assert [g.policy for g in gpus] == [pb.SCHEDULER_POLICY_BEST_EFFORT, pb.SCHEDULER_POLICY_WEIGHTED]


@pytest.mark.parametrize("weight", [0, 17])
async def test_set_scheduler_rejects_a_bad_weight(stubs: Stubs, container: Container, weight: int) -> None:
    await open_vgpu(stubs, U1, container.container_id)

    failed = await failure(
        stubs.host.SetScheduler(
            pb.SetSchedulerRequest(
                parent=GVT,
                policy=pb.SCHEDULER_POLICY_EQUAL_SHARE,
                weights=[pb.WeightChange(uuid=U1, weight=weight)],
            )
        )
    )
    sched = await stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT))

    assert (failed.code, failed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHT")
    assert sched.policy == pb.SCHEDULER_POLICY_WEIGHTED  # nothing applied


async def test_set_scheduler_errors_change_nothing(
    stubs: Stubs, container: Container, fake: FakeIommu
) -> None:
    await open_vgpu(stubs, U1, container.container_id)
    other = fake.mapper.create_container("vm1", IommuMode.EMULATED)
    await open_vgpu(stubs, U2, other.container_id, parent=NV, type_id="nvidia-A10-4Q")  # also vGPU id 1
    before = await stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT))

    unknown_parent = await failure(stubs.host.SetScheduler(pb.SetSchedulerRequest(parent="0000:00:09.0")))
    unknown_vgpu = await failure(
        stubs.host.SetScheduler(
            pb.SetSchedulerRequest(
                parent=GVT,
                policy=pb.SCHEDULER_POLICY_FIXED_SHARE,
                weights=[pb.WeightChange(uuid=UUIDS[9], weight=2)],
            )
        )
    )
    other_parent = await failure(
        stubs.host.SetScheduler(
            pb.SetSchedulerRequest(parent=GVT, weights=[pb.WeightChange(uuid=U2, weight=2)])
        )
    )
    after = await stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT))

    assert unknown_parent.code == unknown_vgpu.code == other_parent.code == grpc.StatusCode.NOT_FOUND
    assert after.policy == before.policy == pb.SCHEDULER_POLICY_WEIGHTED
    assert [(e.uuid, e.weight) for e in after.entries] == [(e.uuid, e.weight) for e in before.entries]


async def test_a_workload_shows_in_the_counters(
    stubs: Stubs, container: Container, dirs: Dirs, ram: Segment
) -> None:
    await create(stubs, U1)
    opened = await stubs.vendor.OpenInstance(
        pb.OpenInstanceRequest(uuid=U1, container_id=container.container_id)
    )
    port = await asyncio.to_thread(connect, opened.broker, opened.token, dirs.shm)
    view = ram.buf[:]
    try:
        guest = GuestDriver(port, view)
        await asyncio.to_thread(guest.bring_up)
        await asyncio.to_thread(guest.submit, c.pack(c.spin(200), c.user_interrupt()))
        await asyncio.to_thread(port.recv_irq, timeout=5.0)
    finally:
        view.release()
        port.close()

    vgpu = (await stubs.host.GetVgpu(pb.GetVgpuRequest(uuid=U1))).vgpu
    sched = await stubs.host.GetScheduler(pb.GetSchedulerRequest(parent=GVT))

    assert (vgpu.workloads_total, vgpu.hangs_total, vgpu.audit_rejections_total) == (1, 0, 0)
    assert vgpu.busy_seconds_total >= 200e-6
    assert sched.entries[0].busy_seconds_total >= 200e-6
