"""``vgpusim``: bring a whole stack up and down as local processes, and report its status.

Commands:
- ``vgpusim up [--config FILE] [--state-dir DIR] [--detach]``: start the four services (foreground
  by default, supervised; ``--detach`` returns once every service reports SERVING).
- ``vgpusim status [--state-dir DIR] [--json]``: per service: state, pid, socket, metrics URL.
- ``vgpusim down [--state-dir DIR]``: stop everything, remove sockets and shared-memory segments.
- ``vgpusim demo``: the end-to-end path on a private stack (see :mod:`vgpusim.cli.demo`).
- ``vgpusim bench [--quick] [--json] [--only NAME...]``: the DESIGN §5 figures on a private stack
  (see :mod:`vgpusim.cli.bench`).

The stack is found by ``--state-dir``, else ``$VGPUSIM_STATE_DIR``, else a per-user state dir.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vgpusim.cli.supervisor import (
    SERVICE_ORDER,
    Supervisor,
    cleanup_stack,
    launcher_file,
    probe_serving,
    tail,
)
from vgpusim.common.logs import setup_logging
from vgpusim.common.paths import StackPaths, resolve_state_dir


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def stack_status(paths: StackPaths) -> dict[str, dict[str, Any]]:
    """The state of every service of the stack in ``paths``."""
    result: dict[str, dict[str, Any]] = {}
    for name in SERVICE_ORDER:
        info = _read_json(paths.status_file(name)) or {}
        pid = info.get("pid")
        socket_path = paths.socket(name)
        if not _pid_alive(pid):
            state = "stopped" if not info else "dead"
        else:
            state = "serving" if await probe_serving(socket_path) else "not-serving"
        result[name] = {
            "state": state,
            "pid": pid if _pid_alive(pid) else None,
            "socket": str(socket_path),
            "metrics_url": info.get("metrics_url") if state != "stopped" else None,
        }
    return result


async def _up_foreground(paths: StackPaths, config: Path | None, sysfs: bool) -> int:
    supervisor = Supervisor(paths, config=config, sysfs=sysfs)
    try:
        await supervisor.start_all()
    except RuntimeError as exc:
        print(f"vgpusim up: {exc}", file=sys.stderr)
        await supervisor.stop_all()
        return 1
    print(f"vgpusim: stack serving in {paths.state_dir} (Ctrl-C to stop)", flush=True)
    await supervisor.run()
    return 0


def _up_detached(paths: StackPaths, config: Path | None, sysfs: bool) -> int:
    existing = _read_json(launcher_file(paths))
    if existing and _pid_alive(existing.get("pid")):
        print(
            f"vgpusim up: a stack already runs in {paths.state_dir} (pid {existing['pid']})", file=sys.stderr
        )
        return 1
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vgpusim.cli.launcher", "up", "--state-dir", str(paths.state_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    if sysfs:
        argv.append("--sysfs")
    log_path = paths.logs_dir / "launcher.log"
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"vgpusim up: the stack failed to start:\n{tail(log_path)}", file=sys.stderr)
            return 1
        info = _read_json(launcher_file(paths))
        if info and info.get("pid") == child.pid:
            print(f"vgpusim: stack serving in {paths.state_dir} (supervisor pid {child.pid})")
            return 0
        time.sleep(0.05)  # polling for the supervisor's file, bounded by the deadline
    child.terminate()
    print(f"vgpusim up: the stack did not become ready in 60s:\n{tail(log_path)}", file=sys.stderr)
    return 1


def _down(paths: StackPaths, timeout: float = 30.0) -> int:
    info = _read_json(launcher_file(paths))
    pids: list[int] = []
    if info and _pid_alive(info.get("pid")):
        pids.append(int(info["pid"]))
    else:
        for name in SERVICE_ORDER:
            svc = _read_json(paths.status_file(name)) or {}
            if _pid_alive(svc.get("pid")):
                pids.append(int(svc["pid"]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for processes to exit, bounded
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # services of a SIGKILLed supervisor may outlive it
    for name in SERVICE_ORDER:
        svc = _read_json(paths.status_file(name)) or {}
        if _pid_alive(svc.get("pid")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(svc["pid"]), signal.SIGKILL)
    cleanup_stack(paths)
    print(
        f"vgpusim: stack in {paths.state_dir} stopped"
        if pids
        else f"vgpusim: no stack ran in {paths.state_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgpusim", description="Run a vgpusim stack as local processes.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, help="the stack's state dir (default: $VGPUSIM_STATE_DIR)")

    up = sub.add_parser("up", help="start the stack")
    common(up)
    up.add_argument("--config", type=Path, help="host config file (TOML); default: the embedded host")
    up.add_argument("--detach", action="store_true", help="return once every service is SERVING")
    up.add_argument(
        "--sysfs",
        action="store_true",
        help="mount the sysfs view for mdevctl on <state>/sysfs (root, /dev/fuse)",
    )
    status = sub.add_parser("status", help="show the state of each service")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    down = sub.add_parser("down", help="stop the stack and remove its sockets and segments")
    common(down)
    sysfs_exec = sub.add_parser(
        "sysfs-exec",
        help="run a command (mdevctl, lsmdev) with the stack's sysfs view bound over /sys and /etc/mdevctl.d",
    )
    common(sysfs_exec)
    sysfs_exec.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command and its arguments"
    )
    demo = sub.add_parser("demo", help="run the end-to-end demo on a private stack")
    demo.add_argument("--keep-state", action="store_true", help="keep the demo's state dir")
    bench = sub.add_parser("bench", help="measure the performance figures on a private stack")
    bench.add_argument("--quick", action="store_true", help="smaller samples; under two minutes")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.add_argument(
        "--only", nargs="+", metavar="NAME", help="only these measurements or figure keys (default: all)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("vgpusim", level=os.environ.get("VGPUSIM_LOG_LEVEL", "info"), fmt="text")
    if args.command == "demo":
        from vgpusim.cli.demo import run_demo

        return run_demo(keep_state=args.keep_state)
    if args.command == "bench":
        from vgpusim.cli.bench import run_bench

        return run_bench(quick=args.quick, as_json=args.json, only=args.only)
    paths = StackPaths(resolve_state_dir(args.state_dir))
    if args.command == "up":
        config = args.config.resolve() if args.config else None
        if config is not None and not config.is_file():
            print(f"vgpusim up: config file {config} does not exist", file=sys.stderr)
            return 2
        if args.detach:
            return _up_detached(paths, config, args.sysfs)
        return asyncio.run(_up_foreground(paths, config, args.sysfs))
    if args.command == "status":
        status = asyncio.run(stack_status(paths))
        if args.json:
            print(json.dumps({"state_dir": str(paths.state_dir), "services": status}, indent=2))
        else:
            for name, st in status.items():
                pid = st["pid"] or "-"
                print(f"{name:14} {st['state']:12} pid={pid:<8} {st['socket']}  {st['metrics_url'] or ''}")
        return 0 if all(st["state"] == "serving" for st in status.values()) else 1
    if args.command == "down":
        return _down(paths)
    if args.command == "sysfs-exec":
        from vgpusim.cli.sysfs_exec import run_sysfs_exec

        return run_sysfs_exec(paths, args.cmd)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
