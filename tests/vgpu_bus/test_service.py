"""The wired core: autostart on parent registration, restarts over the same SQLite file, statistics."""

from __future__ import annotations

from pathlib import Path

from tests.vgpu_bus.helpers import BIG, FAST, PARENT, SMALL, TYPES, U1, U2, U3, FakeClock, drain, make_vendor
from vgpusim.vgpu_bus.core.fakes import FakeOwners
from vgpusim.vgpu_bus.core.model import Attr, AutostartResult, DeviceState, EventKind, StartPolicy
from vgpusim.vgpu_bus.core.service import VgpuBus


def _open(db: Path) -> VgpuBus:
    return VgpuBus.open(db, FakeOwners(), config=FAST, clock=FakeClock())


async def test_definitions_survive_a_bus_restart_and_autostart_when_the_parent_returns(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bus.sqlite3"
    with _open(db) as bus:
        bus.definitions.define(U1, PARENT, BIG, start=StartPolicy.AUTO, attrs=[Attr("weight", "4")])
        bus.definitions.define(U2, PARENT, SMALL, start=StartPolicy.MANUAL)
        bus.definitions.define(U3, "0000:00:09.0", SMALL, start=StartPolicy.AUTO)  # parent never registers
        before = bus.definitions.list_defined()
    with _open(db) as bus:
        assert bus.definitions.list_defined() == before
        vendor = make_vendor()
        registration = await bus.register_parent(PARENT, TYPES, vendor)
        assert (registration.parent, registration.driver) == (PARENT, "fake")
        assert [t.type_id for t in registration.types] == [SMALL, BIG]
        assert [(o.uuid, o.result) for o in registration.autostart] == [(U1, AutostartResult.STARTED)]
        device = bus.devices.device_info(U1)
        assert (device.state, device.attrs) == (DeviceState.ACTIVE, (Attr("weight", "4"),))
        assert [d.uuid for d in bus.devices.list_devices()] == [U1]
        assert bus.definitions.autostart_outcomes() == registration.autostart


async def test_registration_without_autostart_creates_nothing(tmp_path: Path) -> None:
    with _open(tmp_path / "bus.sqlite3") as bus:
        bus.definitions.define(U1, PARENT, SMALL, start=StartPolicy.AUTO)
        registration = await bus.register_parent(PARENT, TYPES, make_vendor(), autostart=False)
        assert registration.autostart == ()
        assert bus.devices.list_devices() == ()


async def test_an_autostart_failure_is_announced_after_the_parent(tmp_path: Path) -> None:
    with _open(tmp_path / "bus.sqlite3") as bus:
        bus.definitions.define(U1, PARENT, BIG, start=StartPolicy.AUTO, attrs=[Attr("bogus", "1")])
        events = bus.subscribe()
        registration = await bus.register_parent(PARENT, TYPES, make_vendor())
        (outcome,) = registration.autostart
        assert (outcome.result, outcome.reason) == (AutostartResult.FAILED, "ATTRIBUTE_REJECTED")
        received = drain(events)
        assert [(e.kind, e.detail) for e in received] == [
            (EventKind.PARENT_ADDED, ""),
            (EventKind.FAILED, "create"),
            (EventKind.FAILED, "autostart"),
        ]
        assert received[-1].reason == "ATTRIBUTE_REJECTED"


async def test_statistics_join_the_bus_and_the_definitions(tmp_path: Path) -> None:
    with _open(tmp_path / "bus.sqlite3") as bus:
        bus.definitions.define(U1, PARENT, SMALL, start=StartPolicy.AUTO)
        bus.definitions.define(U2, PARENT, SMALL)
        await bus.register_parent(PARENT, TYPES, make_vendor())
        await bus.devices.open_device(U1, "vm-1")
        stats = bus.statistics()
        assert (stats.parents, stats.definitions, stats.open_devices) == (1, 2, 1)
        assert stats.autostarts_by_result == {"started": 1}
        assert stats.creates_by_result == {"ok": 1}
        assert stats.devices_by_type == {SMALL: 1}
        # 2 definitions changed, parent added, created, opened
        assert stats.events_emitted == 5


async def test_closing_the_bus_ends_every_subscription(tmp_path: Path) -> None:
    bus = _open(tmp_path / "bus.sqlite3")
    events = bus.subscribe(maxsize=4)
    bus.definitions.define(U1, PARENT, SMALL)
    bus.close()
    received = [event async for event in events]
    assert [e.kind for e in received] == [EventKind.DEFINITION_CHANGED]
