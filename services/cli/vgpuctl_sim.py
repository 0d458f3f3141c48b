"""The simulator verbs of ``vgpuctl`` that are not VM verbs: ``parents``, ``events``, ``sched get|set``.

Text output is for people (aligned tables, one event per line); ``--json`` prints one JSON
document per command (``events`` prints JSON lines, one object per event) using the JSON mapping
of :func:`vgpusim.cli.vgpuctl_output.message_to_json`.

Glossary:
- parent: a physical GPU registered on the bus; ``parents`` lists each type it offers with its
  live ``available_instances`` (how many more devices of that type can be created now).
- event: one bus event (created, removed, opened, closed, parent added/removed, failed,
  definition changed, overflow), numbered from 1 by ``sequence``.
- idle: without ``--follow``, ``events`` stops once no event arrived for this many seconds.
- policy: the arbiter policy of a parent: ``weighted``, ``best-effort``, ``equal-share``,
  ``fixed-share``; weights go from 1 to 16.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from vgpusim.cli.vgpuctl_output import dump_json, enum_label, message_to_json, table
from vgpusim.client import Stack, bus_pb, gfx_pb

__all__ = ["POLICIES", "add_parsers", "format_event"]

POLICIES: dict[str, gfx_pb.SchedulerPolicy.ValueType] = {
    "weighted": gfx_pb.SCHEDULER_POLICY_WEIGHTED,
    "best-effort": gfx_pb.SCHEDULER_POLICY_BEST_EFFORT,
    "equal-share": gfx_pb.SCHEDULER_POLICY_EQUAL_SHARE,
    "fixed-share": gfx_pb.SCHEDULER_POLICY_FIXED_SHARE,
}


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---- parents --------------------------------------------------------------------------------


async def cmd_parents(stack: Stack, args: argparse.Namespace) -> int:
    """``parents``: every parent with its types and available instances."""
    parents = sorted(await stack.bus.list_parents(), key=lambda p: p.name)
    if args.json:
        _write(dump_json({"parents": [message_to_json(p) for p in parents]}) + "\n")
        return 0
    rows = [
        (p.name, p.driver, t.type_id, t.available_instances, t.name)
        for p in parents
        for t in sorted(p.types, key=lambda t: t.type_id)
    ]
    _write(table(("PARENT", "DRIVER", "TYPE", "AVAILABLE", "NAME"), rows))
    return 0


# ---- events ---------------------------------------------------------------------------------


def format_event(event: bus_pb.WatchEventsResponse) -> str:
    """One text line for a bus event: sequence, time, kind, then the non-empty fields."""
    when = event.time.ToJsonString() if event.HasField("time") else "-"
    kind = enum_label(bus_pb.EventKind, event.kind, "EVENT_KIND_")
    fields = [
        ("uuid", event.uuid),
        ("parent", event.parent),
        ("type", event.type_id),
        ("owner", event.owner),
        ("reason", event.reason),
        ("message", json.dumps(event.message, ensure_ascii=False) if event.message else ""),
    ]
    extra = " ".join(f"{name}={value}" for name, value in fields if value)
    return f"{event.sequence} {when} {kind}{' ' + extra if extra else ''}\n"


async def cmd_events(stack: Stack, args: argparse.Namespace) -> int:
    """``events [--follow] [--after SEQ] [--count N] [--idle S]``: the bus event stream."""
    seen = 0
    async with contextlib.aclosing(stack.bus.watch_events(after_sequence=args.after)) as events:
        while args.count is None or seen < args.count:
            try:
                if args.follow:
                    event = await anext(events)
                else:
                    async with asyncio.timeout(args.idle):
                        event = await anext(events)
            except (TimeoutError, StopAsyncIteration):
                break
            if args.json:
                _write(json.dumps(message_to_json(event), ensure_ascii=False) + "\n")
            else:
                _write(format_event(event))
            seen += 1
    return 0


# ---- sched ----------------------------------------------------------------------------------


def _print_scheduler(args: argparse.Namespace, sched: gfx_pb.GetSchedulerResponse) -> None:
    if args.json:
        _write(dump_json(message_to_json(sched)) + "\n")
        return
    policy = enum_label(gfx_pb.SchedulerPolicy, sched.policy, "SCHEDULER_POLICY_").replace("_", "-")
    head = (
        f"parent: {sched.parent}\npolicy: {policy}\n"
        f"tick: {sched.tick_us} us\nswitches: {sched.switches_total}\n"
    )
    rows = [
        (
            e.uuid,
            e.weight,
            f"{e.configured_share:.3f}",
            f"{e.achieved_share:.3f}",
            f"{e.busy_seconds_total:.3f}",
            e.queued_workloads,
        )
        for e in sorted(sched.entries, key=lambda e: e.uuid)
    ]
    _write(head + table(("UUID", "WEIGHT", "CONFIGURED", "ACHIEVED", "BUSY_S", "QUEUED"), rows))


async def cmd_sched_get(stack: Stack, args: argparse.Namespace) -> int:
    """``sched get -p P``: the arbiter of a parent."""
    _print_scheduler(args, await stack.gfx.get_scheduler(args.parent))
    return 0


async def cmd_sched_set(stack: Stack, args: argparse.Namespace) -> int:
    """``sched set -p P [--policy X] [--weight UUID=W]...``: change the arbiter; prints it after."""
    policy = POLICIES[args.policy] if args.policy else gfx_pb.SCHEDULER_POLICY_UNSPECIFIED
    sched = await stack.gfx.set_scheduler(args.parent, policy=policy, weights=args.weight)
    _print_scheduler(args, sched)
    return 0


def weight_arg(text: str) -> tuple[str, int]:
    """argparse type of ``--weight UUID=W``."""
    uuid, sep, weight = text.partition("=")
    try:
        if not sep or not uuid:
            raise ValueError
        return uuid.strip().lower(), int(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected UUID=WEIGHT, got {text!r}") from None


def check_sched_set(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``sched set`` needs something to set."""
    if not args.policy and not args.weight:
        parser.error("nothing to set: give --policy and/or --weight UUID=W")


def positive_float(text: str) -> float:
    """argparse type of a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


# ---- parsers --------------------------------------------------------------------------------


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``parents``, ``events`` and ``sched`` on the ``vgpuctl`` subparsers ``sub``."""
    p = sub.add_parser(
        "parents", parents=[common], help="list parents and their types with available instances"
    )
    p.set_defaults(handler=cmd_parents)

    p = sub.add_parser("events", parents=[common], help="print bus events")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events until interrupted")
    p.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQ",
        help="start after event number SEQ (default 0: only new events)",
    )
    p.add_argument("-n", "--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--idle",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="without --follow, stop once no event came for SECONDS (default 1)",
    )
    p.set_defaults(handler=cmd_events)

    sched = sub.add_parser("sched", parents=[common], help="show or change a parent's arbiter (gfx_host)")
    sched_sub = sched.add_subparsers(dest="sched_verb", metavar="{get,set}", required=True)
    p = sched_sub.add_parser("get", parents=[common], help="show the arbiter of a parent")
    p.add_argument("-p", "--parent", required=True, help="the parent (GPU)")
    p.set_defaults(handler=cmd_sched_get)
    p = sched_sub.add_parser("set", parents=[common], help="change the policy and/or vGPU weights")
    p.add_argument("-p", "--parent", required=True, help="the parent (GPU)")
    p.add_argument("--policy", choices=sorted(POLICIES), help="the arbiter policy")
    p.add_argument(
        "--weight",
        type=weight_arg,
        action="append",
        default=[],
        metavar="UUID=W",
        help="a vGPU weight (1..16)",
    )
    p.set_defaults(handler=cmd_sched_set, check=check_sched_set)
