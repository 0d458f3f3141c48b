#!/usr/bin/env python3
"""The whole life of a vGPU, scripted with vgpusim.client against a running stack.

    vgpusim up --detach --state-dir /tmp/vgs
    python examples/lifecycle.py --state-dir /tmp/vgs [--parent 0000:00:02.0 --type i915-GVTg_V5_4]

Steps: pick a type with a free instance, create a vGPU (vgpu_bus), create a VM (qemu_frontend),
attach the vGPU (the bus opens it for the VM's container), run the guest driver's smoke workload
(one batch, one completion interrupt), wait for it to finish while watching the device's
interrupts, take a screenshot, then tear everything down in reverse order (AsyncExitStack), also
when a step fails.  Exit status 0 when the guest finished and saw its interrupt.

Glossary:
- vGPU / mdev: a mediated device, named by a UUID, created on a parent (a physical GPU).
- smoke workload: the guest driver probes the device, submits one batch and waits for its MSI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from pathlib import Path

from vgpusim.client import Stack, frontend_pb
from vgpusim.common.errors import VgpusimError, WrongState


async def pick_type(stack: Stack, parent: str | None, type_id: str | None) -> tuple[str, str]:
    """The requested (parent, type), or the first type that has a free instance."""
    if parent and type_id:
        return parent, type_id
    for p in sorted(await stack.bus.list_types(parent or ""), key=lambda p: p.name):
        for t in sorted(p.types, key=lambda t: -t.available_instances):
            if t.available_instances > 0 and type_id in (None, t.type_id):
                return p.name, t.type_id
    raise SystemExit("no parent has a free vGPU instance")


async def collect_interrupts(
    stack: Stack, vm_id: str, dev: str, seen: list[frontend_pb.WatchInterruptsResponse], first: asyncio.Event
) -> None:
    """Record every interrupt the device raises until cancelled; set ``first`` at the first one."""
    async with contextlib.aclosing(stack.frontend.watch_interrupts(vm_id, dev)) as irqs:
        async for irq in irqs:
            seen.append(irq)
            first.set()


async def run(args: argparse.Namespace) -> int:
    async with (
        Stack.connect(args.state_dir, timeout=args.timeout) as stack,
        contextlib.AsyncExitStack() as undo,
    ):
        parent, type_id = await pick_type(stack, args.parent, args.type)

        dev = await stack.bus.create_device(str(uuid.uuid4()), parent, type_id)
        undo.push_async_callback(stack.bus.remove_device, dev.uuid)
        print(f"created vGPU {dev.uuid} ({type_id} on {parent})")

        vm = await stack.frontend.create_vm(
            memory_bytes=args.memory_mib << 20, name=f"lifecycle-{dev.uuid[:8]}"
        )
        undo.push_async_callback(stack.frontend.destroy_vm, vm.vm_id)
        print(f"created VM {vm.vm_id} with {args.memory_mib} MiB of RAM")

        await stack.frontend.attach_device(vm.vm_id, dev.uuid)
        undo.push_async_callback(stack.frontend.detach_device, vm.vm_id, dev.uuid)
        owner = (await stack.bus.get_device(dev.uuid)).owner
        print(f"attached: the bus reports the vGPU open by {owner!r}")

        seen: list[frontend_pb.WatchInterruptsResponse] = []
        first_irq = asyncio.Event()
        watcher = asyncio.create_task(collect_interrupts(stack, vm.vm_id, dev.uuid, seen, first_irq))
        undo.callback(watcher.cancel)
        await asyncio.sleep(0.1)  # let the interrupt stream subscribe before the guest runs

        await stack.frontend.start_guest(vm.vm_id, workload=frontend_pb.WORKLOAD_SMOKE)
        status = await stack.frontend.wait_guest(vm.vm_id, timeout=args.guest_timeout)
        state = frontend_pb.GuestState.Name(status.state)
        print(
            f"guest {state}: {status.commands_submitted} command(s), "
            f"{status.interrupts_received} interrupt(s), first IRQ after {status.first_irq_latency_us:.0f} us"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await first_irq.wait()
        print(f"WatchInterrupts saw {len(seen)} interrupt(s)")

        try:
            shot = await stack.frontend.get_screenshot(vm.vm_id)
        except WrongState as exc:  # DISPLAY_DISABLED: the smoke workload need not program a plane
            print(f"no screenshot: {exc.message} [{exc.reason}]")
        else:
            await asyncio.to_thread(Path(args.screenshot).write_bytes, shot.png)
            print(f"screenshot {shot.width}x{shot.height} written to {args.screenshot}")

        ok = status.state == frontend_pb.GUEST_STATE_FINISHED and status.interrupts_received >= 1
        print("tearing down: detach, destroy VM, remove vGPU")
    async with Stack.connect(args.state_dir, timeout=args.timeout) as stack:
        gone = not await stack.bus.list_devices(uuid=dev.uuid)
        print(f"vGPU {dev.uuid} removed: {gone}")
    return 0 if ok and gone else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--state-dir", help="the stack's state dir (default: $VGPUSIM_STATE_DIR)")
    parser.add_argument("--parent", help="the parent (GPU) to use (default: the first with room)")
    parser.add_argument("--type", help="the mdev type to create (default: one with a free instance)")
    parser.add_argument("--memory-mib", type=int, default=256, help="guest RAM in MiB (default 256)")
    parser.add_argument("--screenshot", default="lifecycle.png", help="where to save the screenshot")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    parser.add_argument("--guest-timeout", type=float, default=30.0, help="how long the workload may run")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except VgpusimError as exc:
        print(f"error: {exc.message} [{exc.reason}]", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
