"""The vgpu_bus metrics: one custom collector reading the core's ``statistics()`` at scrape time.

Nothing is counted here twice: every value comes from the core's snapshot (``BusStatistics``),
its device list, the event tally of the servicer's event history, or the cache of the last
``available_instances`` answers. Series (base units, ``_total`` counters, bounded labels):

- ``vgpusim_bus_parents``: registered parents;
- ``vgpusim_bus_devices{parent,type}``: devices in any state;
- ``vgpusim_bus_open_devices``: devices held by an owner;
- ``vgpusim_bus_definitions``: stored definitions;
- ``vgpusim_lifecycle_operations_total{op,result}``: ``op`` = create, remove, autostart;
  ``result`` = ``ok`` (autostart: ``started``, ``already_active``, ``failed``) or the error reason;
- ``vgpusim_bus_events_total{kind}``: events published, by kind (``created``, ``removed``...);
- ``vgpusim_bus_events_dropped_total``: deliveries lost by slow subscribers;
- ``vgpusim_bus_event_subscribers``: open subscriptions (including the event history's own);
- ``vgpusim_type_available_instances{parent,type}``: the last answer of the vendor, refreshed in
  the background at each scrape (so at most one scrape old) and by every ListParents/ListTypes;
- ``vgpusim_vgpu_info{vgpu,parent,type,owner}``: 1 per device (owner empty when closed).

Glossary:
- scrape: one ``GET /metrics``; the collector runs synchronously inside it, on the event loop.
- availability cache: :class:`TypeAvailability`, because ``available_instances`` is a vendor RPC.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from vgpusim.common.errors import VgpusimError
from vgpusim.common.logs import get_logger
from vgpusim.vgpu_bus.clients import Spawn
from vgpusim.vgpu_bus.core import ParentInfo, VgpuBus

__all__ = ["BusCollector", "TypeAvailability", "register_metrics"]

_log = get_logger(__name__)


class TypeAvailability:
    """The last known ``available_instances`` of every (parent, type)."""

    def __init__(self, bus: VgpuBus, spawn: Spawn) -> None:
        self._bus = bus
        self._spawn = spawn
        self._values: dict[tuple[str, str], int] = {}
        self._refreshing = False

    def update(self, parents: Iterable[ParentInfo], *, complete: bool = False) -> None:
        """Record live answers; ``complete``: ``parents`` are all parents (others are forgotten)."""
        parents = tuple(parents)
        names = {parent.name for parent in parents}
        for key in list(self._values):
            if complete or key[0] in names:
                del self._values[key]
        for parent in parents:
            for info in parent.types:
                self._values[(parent.name, info.type_id)] = info.available_instances

    def values(self) -> Mapping[tuple[str, str], int]:
        """The cached counts."""
        return dict(self._values)

    def refresh_soon(self) -> None:
        """Ask every vendor again in the background (one refresh at a time)."""
        if self._refreshing:
            return
        try:
            self._spawn(self._refresh())
        except RuntimeError:  # the task group is shutting down
            return
        self._refreshing = True

    async def _refresh(self) -> None:
        try:
            self.update(await self._bus.devices.list_parents(), complete=True)
        except VgpusimError as error:
            _log.debug("available_instances refresh failed: %s", error)
        finally:
            self._refreshing = False


class BusCollector:
    """A prometheus_client collector over the bus core."""

    def __init__(
        self,
        bus: VgpuBus,
        events_by_kind: Callable[[], Mapping[str, int]],
        availability: TypeAvailability,
        parents: Callable[[], Iterable[str]],
    ) -> None:
        self._bus = bus
        self._events_by_kind = events_by_kind
        self._availability = availability
        self._parents = parents

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate check)."""
        return iter(_Families())

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the bus."""
        stats = self._bus.statistics()
        devices = self._bus.devices.list_devices()
        self._availability.refresh_soon()
        out = _Families()
        out.parents.add_metric([], stats.parents)
        for (parent, type_id), count in sorted(Counter((d.parent, d.type_id) for d in devices).items()):
            out.devices.add_metric([parent, type_id], count)
        out.open_devices.add_metric([], stats.open_devices)
        out.definitions.add_metric([], stats.definitions)
        for op, results in (
            ("create", stats.creates_by_result),
            ("remove", stats.removes_by_result),
            ("autostart", stats.autostarts_by_result),
        ):
            for result, count in sorted(results.items()):
                out.lifecycle.add_metric([op, result], count)
        for kind, count in sorted(self._events_by_kind().items()):
            out.events.add_metric([kind], count)
        out.dropped.add_metric([], stats.events_dropped)
        out.subscribers.add_metric([], stats.subscribers)
        registered = set(self._parents())
        for (parent, type_id), count in sorted(self._availability.values().items()):
            if parent in registered:
                out.available.add_metric([parent, type_id], count)
        for device in devices:
            out.info.add_metric([device.uuid, device.parent, device.type_id, device.owner or ""], 1)
        return iter(out)


class _Families:
    """The metric families of one scrape, empty."""

    def __init__(self) -> None:
        self.parents = GaugeMetricFamily("vgpusim_bus_parents", "Registered parents (physical GPUs).")
        self.devices = GaugeMetricFamily(
            "vgpusim_bus_devices", "Mediated devices, by parent and type.", labels=["parent", "type"]
        )
        self.open_devices = GaugeMetricFamily("vgpusim_bus_open_devices", "Devices held open by an owner.")
        self.definitions = GaugeMetricFamily("vgpusim_bus_definitions", "Stored persistent definitions.")
        self.lifecycle = CounterMetricFamily(
            "vgpusim_lifecycle_operations",
            "Lifecycle operations by operation and result (ok or the error reason).",
            labels=["op", "result"],
        )
        self.events = CounterMetricFamily(
            "vgpusim_bus_events", "Bus events published, by kind.", labels=["kind"]
        )
        self.dropped = CounterMetricFamily(
            "vgpusim_bus_events_dropped", "Event deliveries lost by slow subscribers."
        )
        self.subscribers = GaugeMetricFamily("vgpusim_bus_event_subscribers", "Open event subscriptions.")
        self.available = GaugeMetricFamily(
            "vgpusim_type_available_instances",
            "Instances of a type its parent can still create (last vendor answer).",
            labels=["parent", "type"],
        )
        self.info = GaugeMetricFamily(
            "vgpusim_vgpu_info", "One series per device, value 1.", labels=["vgpu", "parent", "type", "owner"]
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(
            (
                self.parents,
                self.devices,
                self.open_devices,
                self.definitions,
                self.lifecycle,
                self.events,
                self.dropped,
                self.subscribers,
                self.available,
                self.info,
            )
        )


def register_metrics(
    registry: CollectorRegistry,
    bus: VgpuBus,
    events_by_kind: Callable[[], Mapping[str, int]],
    availability: TypeAvailability,
    parents: Callable[[], Iterable[str]],
) -> BusCollector:
    """Add the bus collector to ``registry``; ``parents``: the names of the registered parents."""
    collector = BusCollector(bus, events_by_kind, availability, parents)
    registry.register(collector)
    return collector
