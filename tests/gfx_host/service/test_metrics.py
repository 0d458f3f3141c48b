"""gfx_host's metrics (``metrics.register_metrics``): every documented family, fed from the runtimes."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tests.gfx_host.service.conftest import GVT, NV, T4, OpenVgpu
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.gfx_host.host import HostService
from vgpusim.gfx_host.metrics import register_metrics

DOCUMENTED = {
    "vgpusim_gfx_vgpus",
    "vgpusim_type_available_instances",
    "vgpusim_gfx_workloads_total",
    "vgpusim_gfx_hangs_total",
    "vgpusim_gfx_audit_rejections_total",
    "vgpusim_irq_injected_total",
    "vgpusim_sched_busy_seconds_total",
    "vgpusim_sched_switches_total",
}


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_every_documented_metric_is_collected(service: HostService) -> None:
    registry = CollectorRegistry()
    register_metrics(registry, service)
    service.create("6f5c1f5e-3c1b-4b8e-9a53-1b1d6c0a7e05", GVT, T4)

    got = samples(registry)

    names = {name for name, _ in got}
    assert DOCUMENTED - {"vgpusim_sched_busy_seconds_total"} <= names  # busy: per open vGPU only
    assert got["vgpusim_gfx_vgpus", (("parent", GVT),)] == 1
    assert got["vgpusim_gfx_vgpus", (("parent", NV),)] == 0
    assert got["vgpusim_type_available_instances", (("parent", GVT), ("type", T4))] == 4


async def test_a_workload_is_counted(opened: OpenVgpu, service: HostService) -> None:
    registry = CollectorRegistry()
    register_metrics(registry, service)
    guest = opened.guest
    await asyncio.to_thread(guest.bring_up)
    await asyncio.to_thread(guest.submit, c.pack(c.spin(100), c.user_interrupt()))
    await asyncio.to_thread(opened.port.recv_irq, timeout=5.0)

    got = samples(registry)

    assert {name for name, _ in got} >= DOCUMENTED
    parent = (("parent", GVT),)
    assert got["vgpusim_gfx_workloads_total", parent] == 1
    assert got["vgpusim_irq_injected_total", parent] == 1
    assert got["vgpusim_gfx_hangs_total", parent] == 0
    assert got["vgpusim_gfx_audit_rejections_total", parent] == 0
    assert got["vgpusim_sched_busy_seconds_total", (("vgpu", opened.uuid),)] >= 100e-6
