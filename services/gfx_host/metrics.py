"""gfx_host's metrics, collected from the core and the runtimes at scrape time.

| metric | type | labels |
|---|---|---|
| ``vgpusim_gfx_vgpus`` | gauge | parent |
| ``vgpusim_type_available_instances`` | gauge | parent, type |
| ``vgpusim_gfx_workloads_total`` | counter | parent |
| ``vgpusim_gfx_hangs_total`` | counter | parent |
| ``vgpusim_gfx_audit_rejections_total`` | counter | parent |
| ``vgpusim_irq_injected_total`` | counter | parent |
| ``vgpusim_sched_busy_seconds_total`` | counter | vgpu |
| ``vgpusim_sched_switches_total`` | counter | parent |

Per-parent counters add up the devices open now (a released vGPU's counts leave the sum).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vgpusim.gfx_host.host import HostService


class _HostCollector(Collector):
    def __init__(self, service: HostService) -> None:
        self.s = service

    def collect(self) -> Iterator[Metric]:
        vgpus = GaugeMetricFamily("vgpusim_gfx_vgpus", "vGPUs created on a GPU", labels=["parent"])
        avail = GaugeMetricFamily(
            "vgpusim_type_available_instances",
            "instances of a type that can still be created",
            labels=["parent", "type"],
        )
        names = ("workloads", "hangs", "audit_rejections")
        counters = {
            n: CounterMetricFamily(
                f"vgpusim_gfx_{n}", f"{n.replace('_', ' ')} of open vGPUs", labels=["parent"]
            )
            for n in names
        }
        irqs = CounterMetricFamily("vgpusim_irq_injected", "MSIs posted to frontends", labels=["parent"])
        busy = CounterMetricFamily(
            "vgpusim_sched_busy_seconds", "GPU time used by a vGPU's workloads", labels=["vgpu"]
        )
        switches = CounterMetricFamily("vgpusim_sched_switches", "arbiter switches", labels=["parent"])
        for gpu in self.s.host.gpus():
            vgpus.add_metric([gpu.parent], len(gpu.vgpus()))
            for t in gpu.types():
                avail.add_metric([gpu.parent, t.type_id], t.available_instances)
            runtime = self.s.parents[gpu.parent]
            devices = list(runtime.devices.values())
            counters["workloads"].add_metric([gpu.parent], sum(d.workloads for d in devices))
            counters["hangs"].add_metric([gpu.parent], sum(d.hangs for d in devices))
            counters["audit_rejections"].add_metric([gpu.parent], sum(d.rejections for d in devices))
            irqs.add_metric([gpu.parent], sum(d.msis for d in devices))
            for d in devices:
                busy.add_metric([d.vgpu.uuid], d.busy_us / 1e6)
            switches.add_metric([gpu.parent], runtime.runner.scheduler.statistics().switches)
        yield from (vgpus, avail, *counters.values(), irqs, busy, switches)


def register_metrics(registry: CollectorRegistry, service: HostService) -> None:
    registry.register(_HostCollector(service))
