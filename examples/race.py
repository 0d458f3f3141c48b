#!/usr/bin/env python3
"""N parallel creates for M free slots: exactly M win, the other N-M fail with RESOURCE_EXHAUSTED.

    python examples/race.py --state-dir /tmp/vgs [--parent P --type T] [--extra 4]

Reads a type's live ``available_instances`` (M), fires M + extra ``CreateDevice`` calls at once
(``asyncio.gather``), and checks the bus's atomicity guarantee: M devices created, every loser an
:class:`~vgpusim.common.errors.Exhausted` error whose ``reason`` names the exhausted resource
(e.g. ``APERTURE_EXHAUSTED``), and ``available_instances`` now 0.  The winners are removed at
the end.  Exit status 0 when the guarantee held.

Glossary:
- slot: one more device of the type the parent can still host (``available_instances``).
- reason: the machine-readable ``google.rpc.ErrorInfo.reason`` the client rebuilds on the error.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import uuid

from vgpusim.client import Stack, bus_pb
from vgpusim.common.errors import Exhausted, VgpusimError


async def free_slots(stack: Stack, parent: str, type_id: str) -> int:
    """The live available_instances of ``type_id`` on ``parent``."""
    (p,) = await stack.bus.list_types(parent)
    return next(t.available_instances for t in p.types if t.type_id == type_id)


async def pick_type(stack: Stack, parent: str | None, type_id: str | None) -> tuple[str, str]:
    """The requested (parent, type), or the type with the most free slots."""
    if parent and type_id:
        return parent, type_id
    candidates = [
        (t.available_instances, p.name, t.type_id)
        for p in await stack.bus.list_types(parent or "")
        for t in p.types
        if type_id in (None, t.type_id)
    ]
    slots, best_parent, best_type = max(candidates, default=(0, "", ""))
    if slots == 0:
        raise SystemExit("no parent has a free vGPU instance")
    return best_parent, best_type


async def run(args: argparse.Namespace) -> int:
    async with Stack.connect(args.state_dir, timeout=args.timeout) as stack:
        parent, type_id = await pick_type(stack, args.parent, args.type)
        slots = await free_slots(stack, parent, type_id)
        attempts = slots + args.extra
        print(f"{type_id} on {parent}: {slots} free slot(s); {attempts} parallel creates")

        results = await asyncio.gather(
            *(stack.bus.create_device(str(uuid.uuid4()), parent, type_id) for _ in range(attempts)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, bus_pb.Device)]
        exhausted = [r for r in results if isinstance(r, Exhausted)]
        others = [r for r in results if not isinstance(r, bus_pb.Device | Exhausted)]
        reasons = collections.Counter(e.reason for e in exhausted)
        left = await free_slots(stack, parent, type_id)

        print(
            f"created: {len(winners)}; RESOURCE_EXHAUSTED: {len(exhausted)} {dict(reasons)}; other: {others}"
        )
        print(f"available_instances now {left}")
        try:
            ok = len(winners) == slots and len(exhausted) == attempts - slots and not others and left == 0
        finally:
            for device in winners:
                await stack.bus.remove_device(device.uuid)
        print("exactly the free slots won" if ok else "RACE GUARANTEE VIOLATED")
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--state-dir", help="the stack's state dir (default: $VGPUSIM_STATE_DIR)")
    parser.add_argument("--parent", help="the parent (GPU) to race on (default: the one with most room)")
    parser.add_argument("--type", help="the mdev type to create (default: the one with most room)")
    parser.add_argument("--extra", type=int, default=4, help="creates beyond the free slots (default 4)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except VgpusimError as exc:
        print(f"error: {exc.message} [{exc.reason}]", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
