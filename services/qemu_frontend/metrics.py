"""qemu_frontend's metrics: the interrupt path and guest MMIO live, VM and guest counts at scrape time.

| metric | type | labels | fed by |
|---|---|---|---|
| ``vgpusim_frontend_vms`` | gauge | | scrape: VMs of this frontend |
| ``vgpusim_frontend_guest_commands_total`` | counter | | scrape: commands the guest drivers submitted |
| ``vgpusim_irq_delivered_total`` | counter | kind (msi, intx, req, other) | IRQ dispatcher thread |
| ``vgpusim_irq_dropped_total`` | counter | reason (see below) | dispatcher, streams |
| ``vgpusim_irq_delivery_seconds`` | histogram (1 us..100 ms) | | raised (gfx_host) -> delivered |
| ``vgpusim_ring_doorbells_total`` | counter | | guest writes of a ring tail register |
| ``vgpusim_frontend_mmio_traps_total`` | counter | op (read, write) | every trapped register access |

Label values are fixed sets, so the series count is bounded.  The delivery latency compares the
``raised_ns`` gfx_host stamps (CLOCK_MONOTONIC) with the dispatcher's clock: same host, same clock.

Glossary:
- dropped: an interrupt no consumer saw: its index was not bound (``unbound``), INTx automasked
  (``masked``, pending until UNMASK), a WatchInterrupts stream was full (``queue_full``), or the
  record named no VFIO index (``bad_index``).
- trap: one guest register access sent to the device model through the channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DELIVERY_BUCKETS", "DROP_REASONS", "IRQ_KINDS", "FrontendMetrics", "FrontendStatistics"]

DELIVERY_BUCKETS: tuple[float, ...] = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4)
DELIVERY_BUCKETS += (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 1e-1)
IRQ_KINDS: tuple[str, ...] = ("intx", "msi", "other", "req")
DROP_REASONS: tuple[str, ...] = ("unbound", "masked", "queue_full", "bad_index")
_KIND_OF_INDEX = {0: "intx", 1: "msi", 4: "req"}


@dataclass(frozen=True, slots=True)
class FrontendStatistics:
    """What the frontend reports at scrape time."""

    vms: int
    guest_commands: int


class _StatsCollector(Collector):
    def __init__(self, statistics: Callable[[], FrontendStatistics]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        stats = self._statistics()
        vms = GaugeMetricFamily("vgpusim_frontend_vms", "VMs of this frontend")
        vms.add_metric([], stats.vms)
        commands = CounterMetricFamily(
            "vgpusim_frontend_guest_commands", "commands the built-in guest drivers submitted"
        )
        commands.add_metric([], stats.guest_commands)
        yield from (vms, commands)


class FrontendMetrics:
    """The live instruments of one frontend, registered in ``registry``.

    ``statistics`` (set later with :meth:`bind`) supplies the scrape-time values.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.irq_delivered = Counter(
            "vgpusim_irq_delivered", "interrupts delivered to bound consumers", ["kind"], registry=r
        )
        self.irq_dropped = Counter(
            "vgpusim_irq_dropped", "interrupts no consumer received", ["reason"], registry=r
        )
        self.irq_delivery = Histogram(
            "vgpusim_irq_delivery_seconds",
            "time from the device raising an interrupt to its delivery",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.doorbells = Counter("vgpusim_ring_doorbells", "guest writes of a ring tail register", registry=r)
        self.mmio_traps = Counter(
            "vgpusim_frontend_mmio_traps", "register accesses trapped to the device model", ["op"], registry=r
        )
        self._delivered = {kind: self.irq_delivered.labels(kind=kind) for kind in IRQ_KINDS}
        self._dropped = {reason: self.irq_dropped.labels(reason=reason) for reason in DROP_REASONS}
        self.trap_reads = self.mmio_traps.labels(op="read")
        self.trap_writes = self.mmio_traps.labels(op="write")
        self._collector: _StatsCollector | None = None

    def bind(self, statistics: Callable[[], FrontendStatistics]) -> None:
        """Export ``statistics()`` at every scrape (once per registry)."""
        if self._collector is not None:
            raise RuntimeError("FrontendMetrics.bind called twice")
        self._collector = _StatsCollector(statistics)
        self.registry.register(self._collector)

    def delivered(self, index: int, latency_s: float) -> None:
        """An interrupt of VFIO ``index`` reached its consumers ``latency_s`` after it was raised."""
        self._delivered[_KIND_OF_INDEX.get(index, "other")].inc()
        self.irq_delivery.observe(max(0.0, latency_s))

    def dropped(self, reason: str) -> None:
        """An interrupt was dropped for ``reason`` (one of :data:`DROP_REASONS`)."""
        self._dropped[reason].inc()
