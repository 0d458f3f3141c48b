"""Typed client of ``vgpusim.gfx_host.v1.GfxHostService``: GPUs, vGPUs, display planes and the arbiter.

One method per RPC of the operator-facing ``GfxHostService``.  ``VendorService`` (the mdev vendor
ops) is called by ``vgpu_bus`` only and has no client here: scripts create and remove vGPUs
through the bus (:class:`~vgpusim.client.bus.BusClient`).

Glossary:
- GPU: a physical GPU = an mdev parent, with resource pools (``low_gm``, ``high_gm``, ``fence``...).
- vGPU: the host driver's view of one mdev: its partition, open state, counters and weight.
- arbiter / scheduler: the per-parent time-slicer; policy ``WEIGHTED`` (GVT-g tbs),
  ``BEST_EFFORT``, ``EQUAL_SHARE`` or ``FIXED_SHARE``; weights 1..16 per vGPU.
- dmabuf id: the id of an exported display plane (from 1, reused while the plane is unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from vgpusim.client._transport import DEFAULT_TIMEOUT, ServiceClient
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2 as pb
from vgpusim.gen.gfx_host.v1 import gfx_host_pb2_grpc as pb_grpc

__all__ = ["GfxClient"]


class GfxClient(ServiceClient):
    """The host graphics driver (``gfx_host``)."""

    SERVICE = "gfx_host"

    def __init__(self, channel: grpc.aio.Channel, *, target: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, target=target, timeout=timeout)
        self._stub = pb_grpc.GfxHostServiceStub(channel)

    async def list_gpus(self, *, timeout: float | None = None) -> list[pb.Gpu]:
        """ListGpus. Returns: every physical GPU with its model and resource usage."""
        resp = await self._unary(self._stub.ListGpus, pb.ListGpusRequest(), pb.ListGpusResponse, timeout)
        return list(resp.gpus)

    async def list_vgpus(self, *, parent: str = "", timeout: float | None = None) -> list[pb.Vgpu]:
        """ListVgpus (of one parent, or all). Errors: NotFound (UNKNOWN_PARENT)."""
        resp = await self._unary(
            self._stub.ListVgpus, pb.ListVgpusRequest(parent=parent), pb.ListVgpusResponse, timeout
        )
        return list(resp.vgpus)

    async def get_vgpu(self, uuid: str, *, timeout: float | None = None) -> pb.Vgpu:
        """GetVgpu. Errors: NotFound (UNKNOWN_VGPU)."""
        resp = await self._unary(
            self._stub.GetVgpu, pb.GetVgpuRequest(uuid=uuid), pb.GetVgpuResponse, timeout
        )
        return resp.vgpu

    async def describe_device(self, uuid: str, *, timeout: float | None = None) -> pb.DescribeDeviceResponse:
        """DescribeDevice: the vGPU's VFIO flags, regions and IRQs."""
        req = pb.DescribeDeviceRequest(uuid=uuid)
        return await self._unary(self._stub.DescribeDevice, req, pb.DescribeDeviceResponse, timeout)

    async def reset_vgpu(self, uuid: str, *, timeout: float | None = None) -> None:
        """ResetVgpu (device-model reset; clears failsafe). Errors: WrongState (NOT_OPEN)."""
        await self._unary(self._stub.ResetVgpu, pb.ResetVgpuRequest(uuid=uuid), pb.ResetVgpuResponse, timeout)

    async def query_gfx_plane(
        self,
        uuid: str,
        *,
        plane_type: pb.PlaneType.ValueType = pb.PLANE_TYPE_PRIMARY,
        timeout: float | None = None,
    ) -> pb.GfxPlane:
        """QueryGfxPlane. Returns: the plane (zeroed when disabled) with its dmabuf id."""
        req = pb.QueryGfxPlaneRequest(uuid=uuid, plane_type=plane_type)
        resp = await self._unary(self._stub.QueryGfxPlane, req, pb.QueryGfxPlaneResponse, timeout)
        return resp.plane

    async def get_framebuffer(
        self, uuid: str, dmabuf_id: int, *, timeout: float | None = None
    ) -> pb.GetFramebufferResponse:
        """GetFramebuffer of a dmabuf id. Returns: the plane and its bytes."""
        req = pb.GetFramebufferRequest(uuid=uuid, dmabuf_id=dmabuf_id)
        return await self._unary(self._stub.GetFramebuffer, req, pb.GetFramebufferResponse, timeout)

    async def get_scheduler(self, parent: str, *, timeout: float | None = None) -> pb.GetSchedulerResponse:
        """GetScheduler: policy, tick and per-vGPU weight, share and busy time of ``parent``."""
        req = pb.GetSchedulerRequest(parent=parent)
        return await self._unary(self._stub.GetScheduler, req, pb.GetSchedulerResponse, timeout)

    async def set_scheduler(
        self,
        parent: str,
        *,
        policy: pb.SchedulerPolicy.ValueType = pb.SCHEDULER_POLICY_UNSPECIFIED,
        weights: Mapping[str, int] | Iterable[tuple[str, int]] | None = None,
        timeout: float | None = None,
    ) -> pb.GetSchedulerResponse:
        """SetScheduler: a new policy (UNSPECIFIED = unchanged) and/or vGPU weights (UUID -> 1..16).

        Returns: the arbiter after the change. Errors: NotFound, InvalidArgument (BAD_WEIGHT).
        """
        pairs = weights.items() if isinstance(weights, Mapping) else (weights or ())
        changes = [pb.WeightChange(uuid=uuid, weight=weight) for uuid, weight in pairs]
        req = pb.SetSchedulerRequest(parent=parent, policy=policy, weights=changes)
        resp = await self._unary(self._stub.SetScheduler, req, pb.SetSchedulerResponse, timeout)
        return resp.scheduler
