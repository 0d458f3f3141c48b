"""In-memory implementations of the ops tables, for tests of the bus and of its users.

:class:`FakeVendor` is a small resource model: every type of the parent costs some units of one
shared pool, so creating one type lowers ``available_instances`` of the others, as GVT-g's
aperture or NVIDIA's framebuffer do. It can be made *racy* (it yields between its capacity
check and its reservation, as a vendor behind an RPC effectively does), paused inside any op,
and told to fail the next call of an op. :class:`FakeOwners` records release requests and lets
each owner react (close at once, after some requests, or never).

Glossary:
- pool / cost: the shared resource (``pool`` units) and what one instance of a type takes.
- racy: create checks capacity, then ``await asyncio.sleep(0)``, then reserves.
- pause: a gate inside an op; ``entered`` is set when a call reaches it, ``resume()`` opens it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from vgpusim.common.errors import AlreadyExists, Busy, Exhausted, InvalidArgument, NotFound, VgpusimError
from vgpusim.vgpu_bus.core.model import Attr


@dataclass
class FakeInstance:
    """One instance the fake vendor holds."""

    type_id: str
    attrs: tuple[Attr, ...]
    owner: str | None = None


@dataclass
class Pause:
    """A gate inside one op of the fake vendor."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)

    def resume(self) -> None:
        """Let every call waiting at (or later reaching) this gate go on."""
        self.resumed.set()


class FakeVendor:
    """A :class:`~.ops.VendorOps` over a shared pool of ``pool`` units; type ``t`` costs ``costs[t]``."""

    def __init__(
        self,
        costs: Mapping[str, int],
        *,
        pool: int,
        exhausted_reason: str = "RESOURCE_EXHAUSTED",
        accepted_attrs: frozenset[str] = frozenset(),
        descriptions: Mapping[str, str] | None = None,
        racy: bool = False,
    ) -> None:
        self.costs = dict(costs)
        self.pool = pool
        self.used = 0
        self.exhausted_reason = exhausted_reason
        self.accepted_attrs = accepted_attrs
        self.descriptions = dict(descriptions or {})
        self.racy = racy
        self.instances: dict[str, FakeInstance] = {}
        self.calls: list[tuple[str, ...]] = []
        self._failures: defaultdict[str, deque[VgpusimError]] = defaultdict(deque)
        self._pauses: dict[str, Pause] = {}

    # -- test controls -------------------------------------------------------------------------

    def fail_next(self, op: str, error: VgpusimError) -> None:
        """Make the next call of ``op`` (``create``, ``open``...) raise ``error`` before doing anything."""
        self._failures[op].append(error)

    def pause(self, op: str) -> Pause:
        """Hold every call of ``op`` at its start until the returned gate is resumed."""
        gate = self._pauses[op] = Pause()
        return gate

    def count(self, op: str) -> int:
        """How many times ``op`` was called."""
        return sum(1 for call in self.calls if call[0] == op)

    # -- VendorOps -----------------------------------------------------------------------------

    async def create(self, uuid: str, type_id: str, attrs: tuple[Attr, ...]) -> None:
        await self._enter("create", uuid, type_id)
        cost = self._cost(type_id)
        if uuid in self.instances:
            raise AlreadyExists(f"instance {uuid} exists", reason="UUID_IN_USE")
        if self.pool - self.used < cost:
            raise Exhausted(
                f"not enough resources for {type_id}: {self.pool - self.used} of {cost} units free",
                reason=self.exhausted_reason,
                metadata={"type_id": type_id},
            )
        if self.racy:
            await asyncio.sleep(0)
        self.used += cost
        self.instances[uuid] = FakeInstance(type_id, attrs)
        for attr in attrs:
            if attr.name not in self.accepted_attrs:
                self.used -= cost
                del self.instances[uuid]
                raise InvalidArgument(f"Invalid attribute '{attr.name}'", reason="ATTRIBUTE_REJECTED")

    async def remove(self, uuid: str) -> None:
        await self._enter("remove", uuid)
        instance = self._instance(uuid)
        if instance.owner is not None:
            raise Busy(f"instance {uuid} is open", reason="DEVICE_IN_USE")
        self.used -= self.costs[instance.type_id]
        del self.instances[uuid]

    async def open(self, uuid: str, owner: str) -> Mapping[str, str]:
        await self._enter("open", uuid, owner)
        instance = self._instance(uuid)
        if instance.owner is not None:
            raise Busy(f"instance {uuid} is open by {instance.owner}", reason="DEVICE_IN_USE")
        instance.owner = owner
        return {"broker": "fake-broker.sock", "token": f"{uuid}/{owner}"}

    async def release(self, uuid: str) -> None:
        await self._enter("release", uuid)
        instance = self._instance(uuid)
        if instance.owner is None:
            raise Busy(f"instance {uuid} is not open", reason="DEVICE_NOT_OPEN")
        instance.owner = None

    async def available_instances(self, type_id: str) -> int:
        await self._enter("available_instances", type_id)
        return (self.pool - self.used) // self._cost(type_id)

    async def description(self, type_id: str) -> str:
        await self._enter("description", type_id)
        self._cost(type_id)
        return self.descriptions.get(type_id, "")

    # -- internals -----------------------------------------------------------------------------

    async def _enter(self, op: str, *args: str) -> None:
        self.calls.append((op, *args))
        gate = self._pauses.get(op)
        if gate is not None:
            gate.entered.set()
            await gate.resumed.wait()
        if self._failures[op]:
            raise self._failures[op].popleft()

    def _cost(self, type_id: str) -> int:
        if type_id not in self.costs:
            raise InvalidArgument(f"unknown type {type_id}", reason="UNKNOWN_TYPE")
        return self.costs[type_id]

    def _instance(self, uuid: str) -> FakeInstance:
        if uuid not in self.instances:
            raise NotFound(f"no instance {uuid}", reason="UNKNOWN_DEVICE")
        return self.instances[uuid]


ReleaseHandler = Callable[[str, int], Awaitable[object]]
"""``handler(uuid, count)`` an owner runs when asked to release ``uuid`` for the ``count``-th time."""


class FakeOwners:
    """A :class:`~.ops.OwnerNotifier` that records requests and runs each owner's handler, if any.

    An owner without a handler never releases (an uncooperative VM).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self._handlers: dict[str, ReleaseHandler] = {}

    def on_request(self, owner: str, handler: ReleaseHandler) -> None:
        """Run ``handler`` whenever ``owner`` is asked to release a device."""
        self._handlers[owner] = handler

    async def request_release(self, uuid: str, owner: str, count: int) -> None:
        self.requests.append((uuid, owner, count))
        handler = self._handlers.get(owner)
        if handler is not None:
            await handler(uuid, count)
