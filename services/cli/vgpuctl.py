"""``vgpuctl``: the lifecycle command line of vgpusim, mdevctl-compatible, built on :mod:`vgpusim.client`.

Verbs (``vgpuctl VERB --help`` for the flags)::

    types [-p P] [--dumpjson]                    mdevctl: parents' types and available instances
    list [-d] [-u U] [-p P] [--dumpjson] [-v]     mdevctl: active devices, or definitions with -d
    define [-u U] [-p P] [-t T] [-a] [--jsonfile F]
    undefine -u U [-p P]
    modify -u U [-p P] [-t T] [-a|-m] [--addattr A --value V | --delattr] [-i N]
    start [-u U] [-p P] [-t T] [--jsonfile F]    prints the UUID it generates when given none
    stop -u U
    parents                                      parents, types, available instances
    events [--follow] [--after SEQ] [-n N]       the bus event stream
    vm create|list|destroy|attach|detach|start-guest|stop-guest|status|screenshot
    sched get|set -p P [--policy X] [--weight UUID=W]

Global options, before or after the verb: ``--state-dir DIR`` (else ``$VGPUSIM_STATE_DIR``, else
the per-user dir), ``--target SVC=ADDR`` (repeatable; SVC a service or its alias ``bus``,
``iommu``, ``gfx``, ``frontend``; ADDR ``unix:/path`` or ``host:port``), ``--timeout SECONDS``
(deadline of each call, default 10) and ``--json`` (JSON output; for ``list``/``types`` the same
as ``--dumpjson``; errors as one JSON object on stderr).  ``--opt=value`` forms are accepted.

Exit codes (one per error class; the error's machine-readable reason is always printed)::

    0    success
    1    any other error (INTERNAL, GUEST_FAILED...)
    2    usage error (bad or missing flags; argparse)
    3    not found                  NotFound            (NOT_FOUND)
    4    already exists             AlreadyExists       (ALREADY_EXISTS)
    5    invalid argument           InvalidArgument, TooBig (INVALID_ARGUMENT, OUT_OF_RANGE)
    6    resource exhausted         Exhausted           (RESOURCE_EXHAUSTED)
    7    busy or unavailable: retry Busy, Unavailable, Aborted (UNAVAILABLE, ABORTED)
    8    permission denied          PermissionDenied    (PERMISSION_DENIED)
    9    timed out                  TimedOut            (DEADLINE_EXCEEDED)
    10   wrong state                WrongState          (FAILED_PRECONDITION)
    11   not supported              NotSupported        (UNIMPLEMENTED)
    130  interrupted (Ctrl-C)

An error prints ``Error: <message>`` and ``reason: <REASON>`` on stderr (with ``--json``:
``{"error": {"message", "reason", "code", "class", "metadata", "exit_code"}}``).

Glossary:
- mdevctl verbs: same flags and output as mdevctl 1.2.0 (see :mod:`vgpusim.cli.vgpuctl_mdev`).
- simulator verbs: ``parents``, ``events``, ``vm ...``, ``sched ...`` (:mod:`.vgpuctl_sim`,
  :mod:`.vgpuctl_vm`).
- handler: ``async (stack, args) -> exit status`` of one verb; ``check``: its extra usage rules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib import metadata

from vgpusim.cli import vgpuctl_mdev, vgpuctl_sim, vgpuctl_vm
from vgpusim.cli.vgpuctl_output import EXIT_GENERIC, EXIT_INTERRUPTED, EXIT_USAGE, report_error
from vgpusim.client import DEFAULT_TIMEOUT, Stack, parse_target_override
from vgpusim.common.errors import VgpusimError

__all__ = ["build_parser", "main"]

_GLOBAL_DEFAULTS: dict[str, object] = {
    "state_dir": None,
    "target": None,
    "timeout": DEFAULT_TIMEOUT,
    "json": False,
}


def _target_arg(text: str) -> tuple[str, str]:
    try:
        return parse_target_override(text)
    except VgpusimError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _common_options() -> argparse.ArgumentParser:
    """The global options, accepted before and after the verb (no defaults here: see main)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the stack's state dir (default: $VGPUSIM_STATE_DIR)",
    )
    group.add_argument(
        "--target",
        type=_target_arg,
        action="append",
        default=argparse.SUPPRESS,
        metavar="SVC=ADDR",
        help="address of one service: unix:/path or host:port (repeatable)",
    )
    group.add_argument(
        "--timeout",
        type=vgpuctl_sim.positive_float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    return common


def _version() -> str:
    try:
        return metadata.version("vgpusim")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``vgpuctl`` argument parser."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="vgpuctl",
        parents=[common],
        description="Manage the vGPUs, VMs and schedulers of a vgpusim stack (mdevctl-compatible verbs).",
        epilog="Exit codes: 0 ok, 1 other, 2 usage, 3 not found, 4 exists, 5 invalid argument, 6 exhausted, "
        "7 busy/unavailable, 8 permission, 9 timeout, 10 wrong state, 11 not supported.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    vgpuctl_mdev.add_parsers(sub, common)
    vgpuctl_sim.add_parsers(sub, common)
    vgpuctl_vm.add_parsers(sub, common)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for name, value in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    check = getattr(args, "check", None)
    if check is not None:
        check(args, _verb_parser(parser, args))
    return args


def _verb_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subparser of the verb ``args`` was parsed with (for its usage line in errors)."""
    current = parser
    for dest in ("verb", "vm_verb", "sched_verb"):
        name = getattr(args, dest, None)
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if name is None or not actions:
            break
        current = actions[0].choices[name]
    return current


async def _run(args: argparse.Namespace) -> int:
    targets = dict(args.target or ())
    async with Stack.connect(args.state_dir, targets=targets, timeout=args.timeout) as stack:
        status: int = await args.handler(stack, args)
        return status


# mdevctl's verbs exit 1 on every runtime error, like mdevctl 1.2.0; the reason is still printed.
MDEVCTL_VERBS = frozenset({"types", "list", "define", "undefine", "modify", "start", "stop"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vgpuctl`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return asyncio.run(_run(args))
    except VgpusimError as err:
        compat = EXIT_GENERIC if args.verb in MDEVCTL_VERBS else None
        return report_error(err, as_json=args.json, exit_code=compat)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `vgpuctl events --follow | head`
        sys.stderr.close()
        return EXIT_GENERIC


if __name__ == "__main__":
    sys.exit(main())
