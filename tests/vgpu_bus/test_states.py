"""The device state machine: a walk over the whole transition table."""

from __future__ import annotations

import itertools

import pytest

from vgpusim.vgpu_bus.core.model import DeviceState
from vgpusim.vgpu_bus.core.states import (
    HELD_BY_OWNER,
    IN_FLIGHT,
    TRANSITIONS,
    IllegalTransition,
    Op,
    next_state,
)


@pytest.mark.parametrize(("state", "op"), list(itertools.product(DeviceState, Op)))
def test_every_pair_is_either_in_the_table_or_illegal(state: DeviceState, op: Op) -> None:
    if (state, op) in TRANSITIONS:
        assert next_state(state, op) is TRANSITIONS[(state, op)]
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, op)


def _reachable(start: DeviceState) -> set[DeviceState | None]:
    seen: set[DeviceState | None] = {start}
    frontier: list[DeviceState] = [start]
    while frontier:
        state = frontier.pop()
        for (source, _op), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                if target is not None:
                    frontier.append(target)
    return seen


def test_every_state_is_reachable_from_creating() -> None:
    assert _reachable(DeviceState.CREATING) == {*DeviceState, None}


@pytest.mark.parametrize("state", list(DeviceState))
def test_every_state_can_end_with_the_device_gone(state: DeviceState) -> None:
    assert None in _reachable(state)


@pytest.mark.parametrize(
    "state", [DeviceState.CREATING, DeviceState.OPENING, DeviceState.CLOSING, DeviceState.REMOVING]
)
def test_a_vendor_call_in_flight_ends_with_succeeded_or_failed_only(state: DeviceState) -> None:
    ops = {op for (source, op) in TRANSITIONS if source is state}
    assert ops == {Op.SUCCEEDED, Op.FAILED}


def test_a_failed_vendor_call_goes_back_to_where_the_device_was() -> None:
    assert next_state(DeviceState.OPENING, Op.FAILED) is DeviceState.ACTIVE
    assert next_state(DeviceState.CLOSING, Op.FAILED) is DeviceState.OPEN
    assert next_state(DeviceState.REMOVING, Op.FAILED) is DeviceState.ACTIVE
    assert next_state(DeviceState.CREATING, Op.FAILED) is None


def test_an_open_device_cannot_be_removed_without_being_closed_first() -> None:
    for state in HELD_BY_OWNER:
        with pytest.raises(IllegalTransition):
            next_state(state, Op.REMOVE)
    assert IN_FLIGHT.isdisjoint(HELD_BY_OWNER)
