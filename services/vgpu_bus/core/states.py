"""The device state machine: one transition table and one :func:`next_state` (STYLE 11).

A device is born ``CREATING`` when its UUID is reserved and dies (``None``) when the vendor
create fails or the vendor remove returns. ``OPENING``, ``CLOSING`` and ``REMOVING`` are the
states in which a vendor call is in flight; a vendor failure takes the device back to where it
was. A remove of an open device is not a transition: the remove first waits (asking the owner)
until the device is ``ACTIVE`` again, then takes ``ACTIVE -> REMOVING``.

Glossary:
- op: what happens to the device (:class:`Op`), either a request (``OPEN``) or a vendor outcome
  (``SUCCEEDED``/``FAILED``).
- ``None`` as a state: the device no longer exists (its UUID is free again).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from vgpusim.vgpu_bus.core.model import DeviceState


class Op(enum.Enum):
    """An input of the device state machine."""

    OPEN = "open"
    CLOSE = "close"
    REMOVE = "remove"
    SUCCEEDED = "succeeded"
    """The vendor call of the current transitional state returned."""
    FAILED = "failed"
    """The vendor call of the current transitional state raised (or was cancelled)."""


S = DeviceState
TRANSITIONS: Mapping[tuple[DeviceState, Op], DeviceState | None] = {
    (S.CREATING, Op.SUCCEEDED): S.ACTIVE,
    (S.CREATING, Op.FAILED): None,
    (S.ACTIVE, Op.OPEN): S.OPENING,
    (S.OPENING, Op.SUCCEEDED): S.OPEN,
    (S.OPENING, Op.FAILED): S.ACTIVE,
    (S.OPEN, Op.CLOSE): S.CLOSING,
    (S.CLOSING, Op.SUCCEEDED): S.ACTIVE,
    (S.CLOSING, Op.FAILED): S.OPEN,
    (S.ACTIVE, Op.REMOVE): S.REMOVING,
    (S.REMOVING, Op.SUCCEEDED): None,
    (S.REMOVING, Op.FAILED): S.ACTIVE,
}
"""Every allowed transition; anything else is a bug in the caller."""

HELD_BY_OWNER = frozenset({S.OPENING, S.OPEN, S.CLOSING})
"""States in which the device has an owner."""

IN_FLIGHT = frozenset({S.CREATING, S.REMOVING})
"""States in which a create or remove is running: another remove gets ``EAGAIN``."""


class IllegalTransition(RuntimeError):
    """A transition the table does not have: a broken invariant, never mapped to a status."""


def next_state(state: DeviceState, op: Op) -> DeviceState | None:
    """The state after ``op`` in ``state`` (``None``: gone); raises :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, op)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.name} on {op.name}") from None
