"""The ``vgpuctl vm`` verbs, over qemu_frontend: create, list, destroy, attach, detach, guest, screenshot.

``vm create`` prints the new VM's id (so ``VM=$(vgpuctl vm create)`` works); ``vm start-guest``
runs a workload of the built-in guest driver and, with ``--wait``, waits for it to end (exit
status 1, reason ``GUEST_FAILED``, if it failed); ``vm screenshot`` writes the primary plane as
a PNG file (``-o -``: to standard output).

Glossary:
- VM id: the frontend's identifier of a VM (``vm_id``), as printed by ``vm create``/``vm list``.
- size: a byte count with an optional binary suffix: ``512M``, ``1G``, ``2MiB``, ``1048576``.
- workload: ``smoke`` (one batch, one interrupt), ``render``, ``copy``, ``compute``, ``idle``,
  ``hang``, ``hostile``, ``latency``; ``--param KEY=VALUE`` passes workload parameters (``frames``...).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from vgpusim.cli.vgpuctl_output import dump_json, enum_label, error_from_os, message_to_json, table
from vgpusim.client import GUEST_DONE, Stack, frontend_pb
from vgpusim.common.errors import VgpusimError

__all__ = ["WORKLOADS", "add_parsers", "size_arg"]

WORKLOADS: dict[str, frontend_pb.Workload.ValueType] = {
    "smoke": frontend_pb.WORKLOAD_SMOKE,
    "render": frontend_pb.WORKLOAD_RENDER,
    "copy": frontend_pb.WORKLOAD_COPY,
    "compute": frontend_pb.WORKLOAD_COMPUTE,
    "idle": frontend_pb.WORKLOAD_IDLE,
    "hang": frontend_pb.WORKLOAD_HANG,
    "hostile": frontend_pb.WORKLOAD_HOSTILE,
    "latency": frontend_pb.WORKLOAD_LATENCY,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def size_arg(text: str) -> int:
    """argparse type of a byte size: ``512M``, ``1G``, ``2MiB``, ``4096``."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 512M, 1G or a byte count")
    return int(match.group(1)) << _SHIFT[match.group(2).lower()]


def param_arg(text: str) -> tuple[str, str]:
    """argparse type of ``--param KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _guest_label(state: int) -> str:
    return enum_label(frontend_pb.GuestState, state, "GUEST_STATE_")


def _status_text(status: frontend_pb.GuestStatus) -> str:
    workload = enum_label(frontend_pb.Workload, status.workload, "WORKLOAD_")
    lines = [
        f"guest: {_guest_label(status.state)} (workload {workload})",
        f"commands submitted: {status.commands_submitted}",
        f"interrupts received: {status.interrupts_received}",
        f"frames drawn: {status.frames_drawn}",
        f"bytes copied: {status.bytes_copied}",
        f"hangs detected: {status.hangs_detected}",
        f"resets: {status.resets}",
        f"first irq latency: {status.first_irq_latency_us:.1f} us",
    ]
    latencies = (
        ("doorbell -> irq", status.irq_roundtrip_us, status.HasField("irq_roundtrip_us")),
        ("register read", status.mmio_read_us, status.HasField("mmio_read_us")),
    )
    for label, s, present in latencies:
        if present:
            lines.append(
                f"{label}: p50 {s.p50:.1f} us, p90 {s.p90:.1f} us, p99 {s.p99:.1f} us, "
                f"max {s.max:.1f} us ({s.count} samples)"
            )
    if status.error:
        lines.append(f"error: {status.error}")
    return "".join(f"{line}\n" for line in lines)


async def cmd_create(stack: Stack, args: argparse.Namespace) -> int:
    """``vm create [--name N] [--memory SIZE] [--hardware-iommu]``: prints the VM id."""
    vm = await stack.frontend.create_vm(
        memory_bytes=args.memory, name=args.name or "", hardware_iommu=args.hardware_iommu
    )
    _write(dump_json(message_to_json(vm)) + "\n" if args.json else f"{vm.vm_id}\n")
    return 0


async def cmd_list(stack: Stack, args: argparse.Namespace) -> int:
    """``vm list``: every VM with its memory, guest state and vGPUs."""
    vms = sorted(await stack.frontend.list_vms(), key=lambda v: (v.name, v.vm_id))
    if args.json:
        _write(dump_json({"vms": [message_to_json(vm) for vm in vms]}) + "\n")
        return 0
    rows = [
        (vm.vm_id, vm.name, vm.memory_bytes >> 20, _guest_label(vm.guest_state), ",".join(vm.devices) or "-")
        for vm in vms
    ]
    _write(table(("VM_ID", "NAME", "MEMORY_MIB", "GUEST", "DEVICES"), rows))
    return 0


async def cmd_destroy(stack: Stack, args: argparse.Namespace) -> int:
    """``vm destroy VM``: stops the guest, detaches the vGPU, frees the RAM."""
    await stack.frontend.destroy_vm(args.vm)
    return 0


async def cmd_attach(stack: Stack, args: argparse.Namespace) -> int:
    """``vm attach VM UUID``: opens the vGPU for the VM."""
    vm = await stack.frontend.attach_device(args.vm, args.uuid)
    if args.json:
        _write(dump_json(message_to_json(vm)) + "\n")
    return 0


async def cmd_detach(stack: Stack, args: argparse.Namespace) -> int:
    """``vm detach VM UUID``: closes the vGPU."""
    await stack.frontend.detach_device(args.vm, args.uuid)
    return 0


async def cmd_start_guest(stack: Stack, args: argparse.Namespace) -> int:
    """``vm start-guest VM [--workload W] [--param K=V]... [--wait]``: runs the guest driver."""
    status = await stack.frontend.start_guest(
        args.vm, workload=WORKLOADS[args.workload], params=dict(args.param)
    )
    if args.wait:
        status = await stack.frontend.wait_guest(args.vm, states=GUEST_DONE, timeout=args.wait_timeout)
    _write(dump_json(message_to_json(status)) + "\n" if args.json else _status_text(status))
    if args.wait and status.state == frontend_pb.GUEST_STATE_FAILED:
        raise VgpusimError(
            f"guest of VM {args.vm} failed: {status.error or 'no error text'}",
            reason="GUEST_FAILED",
            metadata={"vm_id": args.vm},
        )
    return 0


async def cmd_stop_guest(stack: Stack, args: argparse.Namespace) -> int:
    """``vm stop-guest VM``: stops the guest driver; prints its final status."""
    status = await stack.frontend.stop_guest(args.vm)
    _write(dump_json(message_to_json(status)) + "\n" if args.json else _status_text(status))
    return 0


async def cmd_status(stack: Stack, args: argparse.Namespace) -> int:
    """``vm status VM``: the VM and its guest driver's status."""
    vm = await stack.frontend.get_vm(args.vm)
    status = await stack.frontend.get_guest_status(args.vm)
    if args.json:
        _write(dump_json({"vm": message_to_json(vm), "guest": message_to_json(status)}) + "\n")
        return 0
    head = [
        f"vm: {vm.vm_id}",
        f"name: {vm.name}",
        f"memory: {vm.memory_bytes} bytes",
        f"container: {vm.container_id}",
        f"devices: {','.join(vm.devices) or '-'}",
    ]
    _write("".join(f"{line}\n" for line in head) + _status_text(status))
    return 0


async def cmd_screenshot(stack: Stack, args: argparse.Namespace) -> int:
    """``vm screenshot VM [-o FILE]``: the primary plane as PNG (default ``<VM>.png``)."""
    shot = await stack.frontend.get_screenshot(args.vm)
    target = args.output or f"{args.vm}.png"
    if target == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(shot.png)
        sys.stdout.buffer.flush()
        return 0
    try:
        await asyncio.to_thread(Path(target).write_bytes, shot.png)
    except OSError as exc:
        raise error_from_os(exc, f"cannot write {target}", "OUTPUT_UNWRITABLE") from None
    if args.json:
        _write(
            dump_json({"file": target, "width": shot.width, "height": shot.height, "bytes": len(shot.png)})
            + "\n"
        )
    else:
        _write(f"{target}: {shot.width}x{shot.height} PNG, {len(shot.png)} bytes\n")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``vm`` and its verbs on the ``vgpuctl`` subparsers ``sub``."""
    vm = sub.add_parser(
        "vm", parents=[common], help="VMs of qemu_frontend: create, attach vGPUs, run the guest, screenshots"
    )
    verbs = vm.add_subparsers(dest="vm_verb", metavar="VERB", required=True)

    def verb(name: str, help_text: str, *, with_vm: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, parents=[common], help=help_text)
        if with_vm:
            parser.add_argument("vm", metavar="VM", help="the VM id")
        return parser

    p = verb("create", "create a VM; prints its id", with_vm=False)
    p.add_argument("--name", help="unique name (default: generated)")
    p.add_argument(
        "--memory", type=size_arg, default=256 << 20, metavar="SIZE", help="guest RAM (default 256M)"
    )
    p.add_argument("--hardware-iommu", action="store_true", help="check every DMA (hardware IOMMU mode)")
    p.set_defaults(handler=cmd_create)

    verb("list", "list VMs", with_vm=False).set_defaults(handler=cmd_list)
    verb("destroy", "destroy a VM").set_defaults(handler=cmd_destroy)
    for name, handler, help_text in (
        ("attach", cmd_attach, "attach (open) a vGPU to a VM"),
        ("detach", cmd_detach, "detach (close) a VM's vGPU"),
    ):
        p = verb(name, help_text)
        p.add_argument("uuid", metavar="UUID", help="the vGPU (mdev UUID)")
        p.set_defaults(handler=handler)

    p = verb("start-guest", "run a workload in the VM's guest driver")
    p.add_argument("--workload", choices=list(WORKLOADS), default="smoke", help="what to run (default smoke)")
    p.add_argument("--param", type=param_arg, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="wait until the workload ends")
    p.add_argument(
        "--wait-timeout", type=float, default=30.0, metavar="SECONDS", help="with --wait (default 30)"
    )
    p.set_defaults(handler=cmd_start_guest)

    verb("stop-guest", "stop the guest driver").set_defaults(handler=cmd_stop_guest)
    verb("status", "show a VM and its guest driver's status").set_defaults(handler=cmd_status)
    p = verb("screenshot", "save the VM's display as PNG")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (default <VM>.png; - for stdout)")
    p.set_defaults(handler=cmd_screenshot)
