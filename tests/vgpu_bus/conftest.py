"""Fixtures of the vgpu_bus core tests: a fake vendor, fake owners, a fake clock, a bus."""

from __future__ import annotations

import pytest

from tests.vgpu_bus.helpers import FAST, PARENT, TYPES, FakeClock, make_vendor
from vgpusim.vgpu_bus.core.bus import DeviceBus
from vgpusim.vgpu_bus.core.events import EventHub
from vgpusim.vgpu_bus.core.fakes import FakeOwners, FakeVendor


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vendor() -> FakeVendor:
    return make_vendor()


@pytest.fixture
def owners() -> FakeOwners:
    return FakeOwners()


@pytest.fixture
def hub(clock: FakeClock) -> EventHub:
    return EventHub(clock, default_queue_size=64)


@pytest.fixture
def bus(hub: EventHub, owners: FakeOwners, vendor: FakeVendor, clock: FakeClock) -> DeviceBus:
    """A bus with one parent (``PARENT``) registered on ``vendor``."""
    device_bus = DeviceBus(hub, owners, config=FAST, clock=clock)
    device_bus.register_parent(PARENT, TYPES, vendor)
    return device_bus
