"""gfx_host's two servicers: the vendor ops (for vgpu_bus) and the host API (for operators).

Translation only: proto in, :class:`~vgpusim.gfx_host.host.HostService` or the core, proto out;
domain errors become rich statuses through ``@rpc_method``.

Glossary:
- vendor ops: ``VendorService``, the mdev parent/driver callbacks the bus invokes.
"""

from __future__ import annotations

from typing import Any

import grpc

from vgpusim.common.errors import InvalidArgument
from vgpusim.common.rpc import rpc_method
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as pb
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as pb_grpc
from vgpusim.gfx_host.core.engine.scheduler import MAX_WEIGHT, SchedPolicy
from vgpusim.gfx_host.core.gpu import PhysicalGpu
from vgpusim.gfx_host.core.resources import PoolStatistics
from vgpusim.gfx_host.core.vgpu import REGION_BAR0, REGION_BAR2, REGION_CONFIG, Vgpu, VgpuState
from vgpusim.gfx_host.host import HostService

_POLICY_TO_PB = {
    SchedPolicy.WEIGHTED: pb.SCHEDULER_POLICY_WEIGHTED,
    SchedPolicy.BEST_EFFORT: pb.SCHEDULER_POLICY_BEST_EFFORT,
    SchedPolicy.EQUAL_SHARE: pb.SCHEDULER_POLICY_EQUAL_SHARE,
    SchedPolicy.FIXED_SHARE: pb.SCHEDULER_POLICY_FIXED_SHARE,
}
_PB_TO_POLICY = {v: k for k, v in _POLICY_TO_PB.items()}
REGION_RW, REGION_RW_MMAP_CAPS = 1 | 2, 1 | 2 | 4 | 8
IRQS = ((0, 1 | 2 | 4, 1), (1, 1 | 8, 1), (2, 1 | 8, 0), (3, 1, 0), (4, 1, 1))


def vgpu_pb(service: HostService, vgpu: Vgpu) -> pb.Vgpu:
    part = vgpu.partition
    device = service.open.get(vgpu.uuid)
    rt = device.runtime if device else None
    return pb.Vgpu(
        uuid=vgpu.uuid,
        parent=vgpu.parent,
        type_id=vgpu.vgpu_type.type_id,
        partition=pb.Partition(
            low_gm_base=part.low_gm.start,
            low_gm_size=part.low_gm.size,
            high_gm_base=part.high_gm.start,
            high_gm_size=part.high_gm.size,
            fence_base=part.fences.start,
            fence_count=part.fences.size,
            framebuffer_bytes=part.low_gm.size + part.high_gm.size,
            vgpu_id=part.vgpu_id,
        ),
        open=vgpu.state is VgpuState.OPEN,
        container_id=vgpu.container or "",
        failsafe_reason=vgpu.failsafe.name if vgpu.failsafe is not None else "",
        hangs_total=rt.hangs if rt else 0,
        workloads_total=rt.workloads if rt else 0,
        audit_rejections_total=rt.rejections if rt else 0,
        busy_seconds_total=(rt.busy_us / 1e6) if rt else 0.0,
        weight=vgpu.vgpu_type.weight,
    )


def _usage(name: str, pool: PoolStatistics) -> pb.ResourceUsage:
    return pb.ResourceUsage(resource=name, total=pool.total, used=pool.used)


def gpu_pb(service: HostService, gpu: PhysicalGpu) -> pb.Gpu:
    stats = gpu.statistics()
    res = stats.resources
    policy = service.parents[gpu.parent].runner.scheduler.config.policy
    return pb.Gpu(
        parent=gpu.parent,
        model=stats.model,
        driver=gpu.model.driver,
        resources=[
            _usage("low_gm", res.low_gm),
            _usage("high_gm", res.high_gm),
            _usage("fence", res.fences),
            pb.ResourceUsage(resource="vgpu_id", total=res.vgpu_ids_total, used=res.vgpu_ids_used),
        ],
        vgpus=stats.vgpus,
        policy=_POLICY_TO_PB[policy],
    )


class VendorServicer(pb_grpc.VendorServiceServicer):
    """The mdev vendor ops, called by vgpu_bus."""

    def __init__(self, service: HostService) -> None:
        self.s = service

    @rpc_method
    async def CreateInstance(
        self, request: pb.CreateInstanceRequest, context: Any
    ) -> pb.CreateInstanceResponse:
        vgpu = self.s.create(request.uuid, request.parent, request.type_id)
        return pb.CreateInstanceResponse(vgpu=vgpu_pb(self.s, vgpu))

    @rpc_method
    async def RemoveInstance(
        self, request: pb.RemoveInstanceRequest, context: Any
    ) -> pb.RemoveInstanceResponse:
        self.s.remove(request.uuid)
        return pb.RemoveInstanceResponse()

    @rpc_method
    async def OpenInstance(self, request: pb.OpenInstanceRequest, context: Any) -> pb.OpenInstanceResponse:
        token = await self.s.open_device(request.uuid, request.container_id)
        return pb.OpenInstanceResponse(broker=str(self.s.broker.path), token=token)

    @rpc_method
    async def ReleaseInstance(
        self, request: pb.ReleaseInstanceRequest, context: Any
    ) -> pb.ReleaseInstanceResponse:
        await self.s.release(request.uuid)
        return pb.ReleaseInstanceResponse()

    @rpc_method
    async def GetAvailableInstances(
        self, request: pb.GetAvailableInstancesRequest, context: Any
    ) -> pb.GetAvailableInstancesResponse:
        count = self.s.available(request.parent, request.type_id)
        return pb.GetAvailableInstancesResponse(available_instances=count)


class GfxHostServicer(pb_grpc.GfxHostServiceServicer):
    """The host driver's own API."""

    def __init__(self, service: HostService) -> None:
        self.s = service

    @rpc_method
    async def ListGpus(self, request: pb.ListGpusRequest, context: Any) -> pb.ListGpusResponse:
        return pb.ListGpusResponse(gpus=[gpu_pb(self.s, g) for g in self.s.host.gpus()])

    @rpc_method
    async def ListVgpus(self, request: pb.ListVgpusRequest, context: Any) -> pb.ListVgpusResponse:
        gpus = [self.s.host.gpu(request.parent)] if request.parent else self.s.host.gpus()
        return pb.ListVgpusResponse(vgpus=[vgpu_pb(self.s, v) for g in gpus for v in g.vgpus()])

    @rpc_method
    async def GetVgpu(self, request: pb.GetVgpuRequest, context: Any) -> pb.GetVgpuResponse:
        return pb.GetVgpuResponse(vgpu=vgpu_pb(self.s, self.s.host.find_vgpu(request.uuid)))

    @rpc_method
    async def DescribeDevice(
        self, request: pb.DescribeDeviceRequest, context: Any
    ) -> pb.DescribeDeviceResponse:
        vgpu = self.s.host.find_vgpu(request.uuid)
        regions = [
            pb.RegionInfo(index=REGION_BAR0, flags=REGION_RW, size=vgpu.bar0_size, offset=REGION_BAR0 << 40),
            pb.RegionInfo(
                index=REGION_BAR2,
                flags=REGION_RW_MMAP_CAPS,
                size=vgpu.bar2_size,
                offset=REGION_BAR2 << 40,
                sparse_areas=[pb.SparseArea(offset=0, size=vgpu.partition.low_gm.size)],
            ),
            pb.RegionInfo(index=REGION_CONFIG, flags=REGION_RW, size=4096, offset=REGION_CONFIG << 40),
        ]
        irqs = [pb.IrqInfo(index=i, flags=f, count=c) for i, f, c in IRQS]
        return pb.DescribeDeviceResponse(flags=1 | 2, regions=regions, irqs=irqs)

    @rpc_method
    async def ResetVgpu(self, request: pb.ResetVgpuRequest, context: Any) -> pb.ResetVgpuResponse:
        await self.s.reset(request.uuid)
        return pb.ResetVgpuResponse()

    @rpc_method
    async def QueryGfxPlane(self, request: pb.QueryGfxPlaneRequest, context: Any) -> pb.QueryGfxPlaneResponse:
        vgpu = self.s.host.find_vgpu(request.uuid)
        info = vgpu.display.query_plane(2, int(request.plane_type))  # VFIO_GFX_PLANE_TYPE_DMABUF
        assert info is not None
        return pb.QueryGfxPlaneResponse(plane=_plane_pb(info))

    @rpc_method
    async def GetFramebuffer(
        self, request: pb.GetFramebufferRequest, context: Any
    ) -> pb.GetFramebufferResponse:
        vgpu = self.s.host.find_vgpu(request.uuid)
        info = vgpu.display.get_dmabuf(request.dmabuf_id)
        async with self.s.parents[vgpu.parent].hold():
            await vgpu.gtt.apply_pending()  # the plane may be mapped by GTT writes no doorbell applied
            data = vgpu.display.fetch(request.dmabuf_id, self.s.memory)
        return pb.GetFramebufferResponse(plane=_plane_pb(info), data=data)

    @rpc_method
    async def GetScheduler(self, request: pb.GetSchedulerRequest, context: Any) -> pb.GetSchedulerResponse:
        return await self._scheduler(request.parent)

    @rpc_method
    async def SetScheduler(self, request: pb.SetSchedulerRequest, context: Any) -> pb.SetSchedulerResponse:
        self.s.host.gpu(request.parent)
        for change in request.weights:
            if not 1 <= change.weight <= MAX_WEIGHT:
                raise InvalidArgument(f"weight {change.weight} outside 1..{MAX_WEIGHT}", reason="BAD_WEIGHT")
        policy = None
        if request.policy != pb.SCHEDULER_POLICY_UNSPECIFIED:
            if request.policy not in _PB_TO_POLICY:
                raise InvalidArgument(f"unknown policy {request.policy}", reason="BAD_POLICY")
            policy = _PB_TO_POLICY[request.policy]
        weights = [(change.uuid, change.weight) for change in request.weights]
        await self.s.set_scheduler(request.parent, policy, weights)
        return pb.SetSchedulerResponse(scheduler=await self._scheduler(request.parent))

    async def _scheduler(self, parent: str) -> pb.GetSchedulerResponse:
        gpu = self.s.host.gpu(parent)
        runtime = self.s.parents[parent]
        async with runtime.hold():  # never block the loop on it: a loop task may hold it
            stats = runtime.runner.scheduler.statistics()
        by_id = {v.vgpu_id: v for v in gpu.vgpus()}
        total_weight = sum(v.weight for v in stats.vgpus) or 1
        busy_total = sum(v.busy_us for v in stats.vgpus) or 1
        entries = [
            pb.SchedulerEntry(
                uuid=by_id[v.vgpu_id].uuid if v.vgpu_id in by_id else str(v.vgpu_id),
                weight=v.weight,
                configured_share=v.weight / total_weight,
                achieved_share=v.busy_us / busy_total,
                busy_seconds_total=v.busy_us / 1e6,
            )
            for v in stats.vgpus
        ]
        return pb.GetSchedulerResponse(
            parent=parent,
            policy=_POLICY_TO_PB[stats.policy],
            tick_us=runtime.runner.scheduler.config.tick_us,
            entries=entries,
            switches_total=stats.switches,
        )


def _plane_pb(info: Any) -> pb.GfxPlane:
    return pb.GfxPlane(
        drm_format=info.drm_format,
        drm_format_mod=info.drm_format_mod,
        width=info.width,
        height=info.height,
        stride=info.stride,
        size=info.size,
        x_pos=info.x_pos,
        y_pos=info.y_pos,
        x_hot=info.x_hot,
        y_hot=info.y_hot,
        dmabuf_id=info.dmabuf_id,
    )


def add_services(service: HostService) -> Any:
    def add(server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_VendorServiceServicer_to_server(VendorServicer(service), server)
        pb_grpc.add_GfxHostServiceServicer_to_server(GfxHostServicer(service), server)
        names = pb.DESCRIPTOR.services_by_name
        return [names["VendorService"].full_name, names["GfxHostService"].full_name]

    return add
