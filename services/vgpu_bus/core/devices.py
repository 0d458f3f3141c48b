"""One device's live record, and the owner-release handshake a remove goes through.

The record follows the table of ``states.py``; every change wakes whoever waits on the device.
:func:`wait_for_release` is the simulation of ``vfio_unregister_group_dev()``: while the device
is held by an owner it asks the owner to let go (the REQ interrupt, repeated every
``interval``) and waits, up to a deadline, for the device to come back to ``ACTIVE``.

Glossary:
- REQ: the VFIO "please release this device" interrupt; here an :class:`~.ops.OwnerNotifier` call.
- release requested: a remove (or unregistration) is waiting on the owner; new opens are refused.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from vgpusim.common.errors import TimedOut, VgpusimError
from vgpusim.vgpu_bus.core.model import Attr, DeviceInfo, DeviceState
from vgpusim.vgpu_bus.core.ops import OwnerNotifier
from vgpusim.vgpu_bus.core.states import HELD_BY_OWNER, Op, next_state

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Device:
    """The bus's live record of one device (internal; readers get :class:`DeviceInfo`)."""

    uuid: str
    parent: str
    type_id: str
    attrs: tuple[Attr, ...]
    state: DeviceState = DeviceState.CREATING
    owner: str | None = None
    created_at: float = 0.0
    opened_at: float | None = None
    release_requested: bool = False
    gone: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def apply(self, op: Op) -> None:
        """Take the transition ``op`` (see ``states.TRANSITIONS``) and wake the waiters."""
        state = next_state(self.state, op)
        if state is None:
            self.gone = True
        else:
            self.state = state
        if state not in HELD_BY_OWNER:
            self.owner = None
            self.opened_at = None
        self._wake()

    def info(self) -> DeviceInfo:
        """A frozen snapshot."""
        return DeviceInfo(
            uuid=self.uuid,
            parent=self.parent,
            type_id=self.type_id,
            state=self.state,
            owner=self.owner,
            attrs=self.attrs,
            created_at=self.created_at,
            opened_at=self.opened_at,
            release_requested=self.release_requested,
        )

    async def wait_changed(self) -> None:
        """Return at the next change of state (or of ``gone``)."""
        await self._changed.wait()

    async def wait_gone(self) -> None:
        """Return once the device no longer exists."""
        while not self.gone:
            await self.wait_changed()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


async def wait_for_release(device: Device, notifier: OwnerNotifier, timeout: float, interval: float) -> None:
    """Return once ``device`` is no longer held by an owner (``ACTIVE``, or gone).

    While it is held, ``notifier.request_release`` is called at once and then every
    ``interval`` seconds. Raises ``TimedOut`` reason ``OWNER_DID_NOT_RELEASE`` (metadata
    ``owner``, ``uuid``, ``requests``) if the owner still holds it after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    requests = 0
    next_request = loop.time()
    while device.state in HELD_BY_OWNER and not device.gone:
        now = loop.time()
        if now >= deadline:
            owner = device.owner or ""
            raise TimedOut(
                f"Device {device.uuid} is still open by owner {owner!r} after {timeout:g} s "
                f"({requests} release requests)",
                reason="OWNER_DID_NOT_RELEASE",
                metadata={"owner": owner, "uuid": device.uuid, "requests": str(requests)},
            )
        if now >= next_request and device.owner is not None:
            requests += 1
            next_request = now + interval
            try:
                await notifier.request_release(device.uuid, device.owner, requests)
            except VgpusimError as error:
                log.warning(
                    "release request %d for %s to %s failed: %s", requests, device.uuid, device.owner, error
                )
            continue
        try:
            async with asyncio.timeout(max(0.0, min(deadline, next_request) - loop.time())):
                await device.wait_changed()
        except TimeoutError:
            pass
