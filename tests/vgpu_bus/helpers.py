"""Names and helpers shared by the vgpu_bus core tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from vgpusim.common.errors import VgpusimError
from vgpusim.vgpu_bus.core.events import Subscription
from vgpusim.vgpu_bus.core.fakes import FakeVendor
from vgpusim.vgpu_bus.core.model import BusConfig, Event, TypeSpec

PARENT = "0000:00:02.0"
OTHER_PARENT = "0000:00:03.0"
SMALL = "fake-small"
BIG = "fake-big"
TYPES = (TypeSpec(SMALL, "Fake small"), TypeSpec(BIG))
U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"
U3 = "33333333-3333-3333-3333-333333333333"
FAST = BusConfig(release_timeout=0.3, release_request_interval=0.05, autostart_backoff=0.001)


class FakeClock:
    """A wall clock that advances one second per reading."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make_vendor(pool: int = 8, *, racy: bool = False) -> FakeVendor:
    """A vendor whose small type costs 1 unit and big type 4 units of one shared pool."""
    return FakeVendor(
        {SMALL: 1, BIG: 4},
        pool=pool,
        exhausted_reason="APERTURE_EXHAUSTED",
        accepted_attrs=frozenset({"resolution", "weight"}),
        descriptions={BIG: "low_gm_size: 128MB\nweight: 4\n"},
        racy=racy,
    )


async def failure(call: Awaitable[object]) -> VgpusimError:
    """The domain error ``call`` raises (the test fails if it raises none)."""
    with pytest.raises(VgpusimError) as info:
        await call
    return info.value


def drain(subscription: Subscription) -> list[Event]:
    """Every event already queued for ``subscription``."""
    events = []
    while (event := subscription.get_nowait()) is not None:
        events.append(event)
    return events
