#!/usr/bin/env python3
"""Autostart across a "reboot": an ``auto`` definition comes back by itself when its parent does.

    vgpusim up --state-dir /tmp/vgs                     # supervised: crashed services restart
    python examples/reboot_autostart.py --state-dir /tmp/vgs [--parent P --type T] [--restart]

What happens, as with mdevctl on a real host:
1. define a device with start policy ``auto`` (``mdevctl define --auto``), without starting it;
2. "reboot" the GPU driver: gfx_host goes away and comes back.  With ``--restart`` this script
   kills gfx_host (pid from ``<state>/run/gfx_host.json``) and the launcher's supervisor restarts
   it; without, it waits while you restart gfx_host yourself;
3. gfx_host registers its parents again (``RegisterParent``), and the bus starts every ``auto``
   definition of each parent (the udev rule + ``mdevctl start-parent-mdevs`` of a real host);
4. the script polls until the device is active on its parent, checks it is marked defined, then
   stops and undefines it (unless ``--keep``).

Exit status 0 when the device was autostarted within ``--wait`` seconds.

Glossary:
- definition: a persistent device config stored by vgpu_bus (SQLite), surviving restarts.
- autostart: starting the ``auto`` definitions of a parent when the parent registers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid

from vgpusim.client import Stack, bus_pb
from vgpusim.common.errors import NotFound, Unavailable, VgpusimError
from vgpusim.common.paths import StackPaths, resolve_state_dir


async def pick_type(stack: Stack, parent: str | None, type_id: str | None) -> tuple[str, str]:
    """The requested (parent, type), or the first type with a free instance."""
    if parent and type_id:
        return parent, type_id
    for p in sorted(await stack.bus.list_types(parent or ""), key=lambda p: p.name):
        for t in sorted(p.types, key=lambda t: t.type_id):
            if t.available_instances > 0 and type_id in (None, t.type_id):
                return p.name, t.type_id
    raise SystemExit("no parent has a free vGPU instance")


def kill_gfx_host(state_dir: str | None) -> int:
    """SIGKILL gfx_host (a crash, for the supervisor to restart); returns its pid."""
    status_file = StackPaths(resolve_state_dir(state_dir)).status_file("gfx_host")
    pid = int(json.loads(status_file.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_active(stack: Stack, dev_uuid: str, deadline: float) -> bus_pb.Device | None:
    """Poll until ``dev_uuid`` is an active device (tolerating the restart's hiccups)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            return await stack.bus.get_device(dev_uuid)
        except (NotFound, Unavailable):
            await asyncio.sleep(0.2)
    return None


async def run(args: argparse.Namespace) -> int:
    async with Stack.connect(args.state_dir, timeout=args.timeout) as stack:
        parent, type_id = await pick_type(stack, args.parent, args.type)
        dev_uuid = str(uuid.uuid4())
        await stack.bus.define_device(
            dev_uuid, parent=parent, type_id=type_id, start=bus_pb.START_POLICY_AUTO
        )
        print(f"defined {dev_uuid} ({type_id} on {parent}) with start policy auto; not started")
        try:
            if args.restart:
                pid = await asyncio.to_thread(kill_gfx_host, args.state_dir)
                print(f"killed gfx_host (pid {pid}); the supervisor restarts it")
            else:
                print(f"now restart gfx_host (e.g. kill it under `vgpusim up`); waiting {args.wait:g} s")
            deadline = asyncio.get_running_loop().time() + args.wait
            device = await wait_active(stack, dev_uuid, deadline)
            if device is None:
                print(f"{dev_uuid} was not autostarted within {args.wait:g} s")
                return 1
            print(
                f"autostarted: {device.uuid} on {device.parent} ({device.type_id}), defined={device.defined}"
            )
            return 0 if device.parent == parent and device.defined else 1
        finally:
            if not args.keep:
                try:
                    await stack.bus.stop_device(dev_uuid)
                except NotFound:
                    pass
                await stack.bus.undefine_device(dev_uuid, parent=parent)
                print(f"cleaned up: stopped and undefined {dev_uuid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--state-dir", help="the stack's state dir (default: $VGPUSIM_STATE_DIR)")
    parser.add_argument("--parent", help="the parent (GPU) to define the device on")
    parser.add_argument("--type", help="the mdev type of the device")
    parser.add_argument(
        "--restart", action="store_true", help="kill gfx_host so that the supervisor restarts it"
    )
    parser.add_argument("--wait", type=float, default=60.0, help="how long to wait for the autostart (s)")
    parser.add_argument("--keep", action="store_true", help="leave the device defined and running")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except VgpusimError as exc:
        print(f"error: {exc.message} [{exc.reason}]", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
