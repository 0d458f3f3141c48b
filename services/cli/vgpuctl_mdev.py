"""The mdevctl-compatible verbs of ``vgpuctl``: types, list, define, undefine, modify, start, stop.

Flags, text output and ``--dumpjson`` shapes are those of mdevctl 1.2.0, so scripts written for
mdevctl (libvirt's ``start --parent=P --jsonfile=/dev/stdin``, ``list --dumpjson --defined``...)
work unchanged; only errors differ, by design: they carry the server's reason and an exit code
per error class (see :mod:`vgpusim.cli.vgpuctl`).  Exactly as mdevctl: parents are listed in
name order, types and devices in type-id and UUID order; ``list`` and ``types`` end with one
empty line; ``list --dumpjson -u U`` with a single match prints only that device's config; a
UUID is generated, and printed on success, when ``start`` or ``define`` is given none.

The formats themselves live in :mod:`vgpusim.cli.vgpuctl_mdevfmt`.

Glossary:
- transient device: one started without a definition (``start -p P -t T``); gone once stopped.
- definition: a persistent device config (``define``), started by ``start -u U`` or, with
  ``--auto``, whenever its parent registers.
- INSUFFICIENTLY_SPECIFIED: the reason of the usage errors mdevctl reports after parsing
  (``Device is insufficiently specified``, ``can't provide type without parent``...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid as uuid_mod
from collections.abc import Iterable
from typing import Any

from vgpusim.cli.vgpuctl_mdevfmt import (
    Entry,
    format_list,
    format_types_json,
    format_types_text,
    read_config,
    uuid_arg,
)
from vgpusim.cli.vgpuctl_output import dump_json, message_to_json
from vgpusim.client import Stack, bus_pb
from vgpusim.common.errors import InvalidArgument

__all__ = ["add_parsers"]

_INSUFFICIENT = "INSUFFICIENTLY_SPECIFIED"


async def cmd_types(stack: Stack, args: argparse.Namespace) -> int:
    """``types [-p P] [--dumpjson]``: every parent's types with live available instances."""
    parents = [p for p in await stack.bus.list_types() if args.parent is None or p.name == args.parent]
    dump = args.dumpjson or args.json
    sys.stdout.write((format_types_json(parents) if dump else format_types_text(parents)) + "\n")
    return 0


def _pairs(attrs: Iterable[bus_pb.Attribute]) -> tuple[tuple[str, str], ...]:
    return tuple((a.name, a.value) for a in attrs)


async def cmd_list(stack: Stack, args: argparse.Namespace) -> int:
    """``list [-d] [-u U] [-p P] [--dumpjson] [-v]``: active devices, or definitions with ``-d``."""
    parent, uuid = args.parent or "", args.uuid or ""
    definitions = await stack.bus.list_definitions(parent=parent, uuid=uuid)
    if args.defined:
        entries = [
            Entry(
                d.uuid,
                d.parent,
                d.type_id,
                d.start == bus_pb.START_POLICY_AUTO,
                _pairs(d.attrs),
                " (active)" if d.active else "",
            )
            for d in definitions
        ]
    else:
        auto = {(d.parent, d.uuid) for d in definitions if d.start == bus_pb.START_POLICY_AUTO}
        entries = [
            Entry(
                dev.uuid,
                dev.parent,
                dev.type_id,
                (dev.parent, dev.uuid) in auto,
                _pairs(dev.attrs),
                " (defined)" if dev.defined else "",
            )
            for dev in await stack.bus.list_devices(parent=parent, uuid=uuid)
        ]
    output = format_list(
        entries, dumpjson=args.dumpjson or args.json, verbose=args.verbose, uuid_given=bool(uuid)
    )
    sys.stdout.write(output + "\n")
    return 0


# ---- define, undefine, modify ---------------------------------------------------------------


def _insufficient(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=_INSUFFICIENT)


def _print_result(args: argparse.Namespace, message: Any, generated: str | None) -> None:
    if args.json:
        sys.stdout.write(dump_json(message_to_json(message)) + "\n")
    elif generated is not None:
        sys.stdout.write(f"{generated}\n")


async def cmd_define(stack: Stack, args: argparse.Namespace) -> int:
    """``define [-u U] [-p P] [-t T] [-a] [--jsonfile F]``: a persistent definition."""
    uuid = args.uuid or str(uuid_mod.uuid4())
    if args.jsonfile is not None:
        if not args.parent:
            raise _insufficient(f"Parent device required to define device via {json.dumps(args.jsonfile)}")
        cfg = await asyncio.to_thread(read_config, args.jsonfile, "Unable to read file")
        definition = await stack.bus.define_device(
            uuid, parent=args.parent, type_id=cfg.mdev_type, start=cfg.start, attrs=cfg.attrs
        )
    else:
        if args.uuid is None and not args.type:
            raise _insufficient("No type specified")
        start = bus_pb.START_POLICY_AUTO if args.auto else bus_pb.START_POLICY_MANUAL
        definition = await stack.bus.define_device(
            uuid, parent=args.parent or "", type_id=args.type or "", start=start
        )
    _print_result(args, definition, None if args.uuid else uuid)
    return 0


async def cmd_undefine(stack: Stack, args: argparse.Namespace) -> int:
    """``undefine -u U [-p P]``: removes the definition(s); a running device is left alone."""
    removed = await stack.bus.undefine_device(args.uuid, parent=args.parent or "")
    if args.json:
        sys.stdout.write(dump_json({"removed": [message_to_json(d) for d in removed]}) + "\n")
    return 0


async def cmd_modify(stack: Stack, args: argparse.Namespace) -> int:
    """``modify -u U [-p P] [-t T] [-a|-m] [--addattr A --value V | --delattr] [-i N]``."""
    start = bus_pb.START_POLICY_UNSPECIFIED
    if args.auto:
        start = bus_pb.START_POLICY_AUTO
    elif args.manual:
        start = bus_pb.START_POLICY_MANUAL
    definition = await stack.bus.modify_definition(
        args.uuid,
        parent=args.parent or "",
        type_id=args.type or "",
        start=start,
        add_attr=(args.addattr, args.value) if args.addattr is not None else None,
        delete_attr=args.delattr,
        index=args.index,
    )
    if args.json:
        _print_result(args, definition, None)
    return 0


def check_modify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage rules argparse cannot say (exit 2, as clap does for mdevctl)."""
    if args.addattr is not None and args.value is None:
        parser.error("the argument --addattr requires --value")
    if args.addattr is not None and args.delattr:
        parser.error("argument --addattr: not allowed with argument --delattr")


# ---- start, stop ----------------------------------------------------------------------------


async def cmd_start(stack: Stack, args: argparse.Namespace) -> int:
    """``start [-u U] [-p P] [-t T] [--jsonfile F]``: a definition, or a transient device."""
    uuid = args.uuid or str(uuid_mod.uuid4())
    if args.jsonfile is not None:
        if not args.parent:
            raise _insufficient("Parent device required to start device via json file")
        cfg = await asyncio.to_thread(read_config, args.jsonfile, "Unable to read jsonfile")
        device = await stack.bus.start_device(
            uuid, parent=args.parent, type_id=cfg.mdev_type, attrs=cfg.attrs
        )
    else:
        if args.type and not args.parent:
            raise _insufficient("can't provide type without parent")
        if args.uuid is None and not args.type:
            raise _insufficient("Device is insufficiently specified")
        device = await stack.bus.start_device(uuid, parent=args.parent or "", type_id=args.type or "")
    _print_result(args, device, None if args.uuid else device.uuid or uuid)
    return 0


async def cmd_stop(stack: Stack, args: argparse.Namespace) -> int:
    """``stop -u U``: removes the active device (its definition stays)."""
    await stack.bus.stop_device(args.uuid)
    return 0


def check_uuid_or_parent(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``start``/``define`` need ``-u`` or ``-p``; ``--jsonfile`` excludes ``-t`` (and ``-a``)."""
    if args.uuid is None and args.parent is None:
        parser.error("one of the arguments -u/--uuid -p/--parent is required")
    if args.jsonfile is not None and args.type is not None:
        parser.error("argument --jsonfile: not allowed with argument -t/--type")
    if args.jsonfile is not None and getattr(args, "auto", False):
        parser.error("argument --jsonfile: not allowed with argument -a/--auto")


# ---- parsers --------------------------------------------------------------------------------


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the mdevctl verbs on the ``vgpuctl`` subparsers ``sub``."""

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        return parser

    p = verb("types", "List available mediated device types (mdevctl types)")
    p.add_argument("-p", "--parent", help="show supported types for the specified parent")
    p.add_argument("--dumpjson", action="store_true", help="output mdev types list in JSON format")
    p.set_defaults(handler=cmd_types)

    p = verb("list", "List mediated devices (mdevctl list)")
    p.add_argument("-d", "--defined", action="store_true", help="show defined devices")
    p.add_argument("--dumpjson", action="store_true", help="output device list in JSON format")
    p.add_argument("-v", "--verbose", action="store_true", help="print the attributes of the devices")
    p.add_argument("-u", "--uuid", type=uuid_arg, help="list devices matching the specified UUID")
    p.add_argument("-p", "--parent", help="list devices of the specified parent device")
    p.set_defaults(handler=cmd_list)

    p = verb("define", "Define a persistent mediated device (mdevctl define)")
    p.add_argument(
        "-u", "--uuid", type=uuid_arg, help="assign UUID to the device (generated and printed if absent)"
    )
    p.add_argument(
        "-a", "--auto", action="store_true", help="automatically start device on parent availability"
    )
    p.add_argument("-p", "--parent", help="specify the parent of the device")
    p.add_argument("-t", "--type", help="specify the mdev type of the device")
    p.add_argument("--jsonfile", metavar="FILE", help="device details in mdevctl JSON (/dev/stdin allowed)")
    p.set_defaults(handler=cmd_define, check=check_uuid_or_parent)

    p = verb("undefine", "Undefine a persistent mediated device (mdevctl undefine)")
    p.add_argument("-u", "--uuid", type=uuid_arg, required=True, help="UUID of the device to undefine")
    p.add_argument("-p", "--parent", help="parent of the device to undefine (default: every parent)")
    p.set_defaults(handler=cmd_undefine)

    p = verb("modify", "Modify the definition of a mediated device (mdevctl modify)")
    p.add_argument("-u", "--uuid", type=uuid_arg, required=True, help="UUID of the mdev to modify")
    p.add_argument("-p", "--parent", help="parent of the mdev to modify")
    p.add_argument("-t", "--type", help="modify the mdev type of this device")
    p.add_argument("--addattr", metavar="ATTR_NAME", help="add a new attribute (needs --value)")
    p.add_argument("--delattr", action="store_true", help="delete an attribute")
    p.add_argument(
        "-i", "--index", type=int, help="index of the attribute to add or delete (default: the end)"
    )
    p.add_argument("--value", metavar="ATTR_VALUE", help="value for the attribute given by --addattr")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("-a", "--auto", action="store_true", help="device will be started automatically")
    policy.add_argument("-m", "--manual", action="store_true", help="device must be started manually")
    p.set_defaults(handler=cmd_modify, check=check_modify)

    p = verb("start", "Start a mediated device (mdevctl start)")
    p.add_argument(
        "-u", "--uuid", type=uuid_arg, help="UUID of the device to start (generated and printed if absent)"
    )
    p.add_argument("-p", "--parent", help="parent of the device to start")
    p.add_argument("-t", "--type", help="mdev type of the device to start")
    p.add_argument("--jsonfile", metavar="FILE", help="device details in mdevctl JSON (/dev/stdin allowed)")
    p.set_defaults(handler=cmd_start, check=check_uuid_or_parent)

    p = verb("stop", "Stop a mediated device (mdevctl stop)")
    p.add_argument("-u", "--uuid", type=uuid_arg, required=True, help="UUID of the device to stop")
    p.set_defaults(handler=cmd_stop)
