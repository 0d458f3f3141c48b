"""``python -m vgpusim.common.healthcheck SERVICE``: exit 0 when a service reports SERVING.

Used by the docker-compose healthchecks (no grpc_health_probe binary is needed) and handy from a
shell.  The service's socket is found through ``--state-dir`` or ``$VGPUSIM_STATE_DIR``.
Exit codes: 0 SERVING, 1 anything else (the state is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from vgpusim.common.clients import check_health, open_channel
from vgpusim.common.errors import VgpusimError
from vgpusim.common.paths import StackPaths, resolve_state_dir

SERVICES = ("iommu_type2", "vgpu_bus", "gfx_host", "qemu_frontend")


async def _probe(target: str, timeout: float) -> str:
    async with open_channel(target) as channel:
        return await check_health(channel, "", timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgpusim-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--state-dir", default=None, help="the stack's state dir")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    target = StackPaths(resolve_state_dir(args.state_dir)).target(args.service)
    try:
        state = asyncio.run(_probe(target, args.timeout))
    except VgpusimError as exc:
        print(f"{args.service}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.service}: {state}")
    return 0 if state == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
