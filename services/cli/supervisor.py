"""The process supervisor behind ``vgpusim up``: starts the four services, restarts crashed ones.

A stack is the four service processes of one state dir, started in dependency order
(:data:`SERVICE_ORDER`), each waited for until its gRPC health says SERVING.  While the supervisor
runs it restarts a service that exits unexpectedly (exponential backoff, logged with the exit
status), and on SIGTERM/SIGINT it stops the services in reverse order.

Glossary:
- state dir: the directory holding a stack's sockets, status files, logs and database.
- launcher file: ``<state>/run/launcher.json``, the supervisor's pid and the services it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgpusim.common.logs import get_logger
from vgpusim.common.paths import StackPaths
from vgpusim.vgpu_bus.sysfs.mounts import unmount_recorded

SERVICE_ORDER: tuple[str, ...] = ("iommu_type2", "vgpu_bus", "gfx_host", "qemu_frontend")
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 30.0
_log = get_logger("vgpusim.supervisor")


def launcher_file(paths: StackPaths) -> Path:
    """Where the supervisor records itself."""
    return paths.run_dir / "launcher.json"


async def probe_serving(socket_path: Path, timeout: float = 1.0) -> bool:
    """True when the gRPC server on ``socket_path`` answers health SERVING for the whole server."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class ManagedService:
    """One supervised service process."""

    name: str
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = 0.5
    stopping: bool = False
    history: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.started_at = time.monotonic()

    async def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        self.stopping = True
        proc = self.process
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await proc.wait()
        except TimeoutError:
            _log.warning("service did not stop in time; killing", extra={"svc": self.name})
            proc.kill()
            return await proc.wait()


class Supervisor:
    """Starts, watches and stops the services of one stack."""

    def __init__(
        self, paths: StackPaths, *, config: Path | None, restart: bool = True, sysfs: bool = False
    ) -> None:
        self.paths = paths
        self.config = config
        self.restart = restart
        self.sysfs = sysfs
        self.services: dict[str, ManagedService] = {}
        self._stop = asyncio.Event()

    def _argv(self, name: str) -> list[str]:
        argv = [sys.executable, "-m", f"vgpusim.{name}.server", "--state-dir", str(self.paths.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.sysfs and name == "vgpu_bus":
            argv.append("--sysfs")
        return argv

    async def wait_serving(self, svc: ManagedService, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``svc`` answers SERVING; raise RuntimeError with its log tail if it dies."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            proc = svc.process
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(
                    f"{svc.name} exited with status {proc.returncode} while starting:\n{tail(svc.log_path)}"
                )
            if await probe_serving(self.paths.socket(svc.name)):
                return
            await asyncio.sleep(delay)  # polling a condition with a bounded deadline
            delay = min(delay * 2, 0.2)
        raise RuntimeError(f"{svc.name} did not report SERVING within {timeout:.0f}s:\n{tail(svc.log_path)}")

    async def start_all(self) -> None:
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        self.paths.ensure_shm_dir()
        for name in SERVICE_ORDER:
            svc = ManagedService(name, self._argv(name), self.paths.logs_dir / f"{name}.log")
            self.services[name] = svc
            await svc.start()
            await self.wait_serving(svc)
            _log.info("service serving", extra={"svc": name, "pid": svc.process.pid if svc.process else 0})
        self._write_launcher_file()

    def _write_launcher_file(self) -> None:
        data = {
            "pid": os.getpid(),
            "state_dir": str(self.paths.state_dir),
            "services": {n: (s.process.pid if s.process else None) for n, s in self.services.items()},
            "restarts": {n: s.restarts for n, s in self.services.items()},
        }
        tmp = launcher_file(self.paths).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(launcher_file(self.paths))

    async def stop_all(self) -> None:
        for name in reversed(SERVICE_ORDER):
            svc = self.services.get(name)
            if svc is not None:
                await svc.stop()
        cleanup_stack(self.paths)

    def request_stop(self) -> None:
        self._stop.set()

    async def _watch(self, svc: ManagedService) -> None:
        while not self._stop.is_set():
            proc = svc.process
            assert proc is not None
            status = await proc.wait()
            if svc.stopping or self._stop.is_set():
                return
            reason = f"exit status {status}" if status >= 0 else f"killed by signal {-status}"
            svc.history.append(reason)
            if not self.restart:
                _log.error("service died; not restarting", extra={"svc": svc.name, "reason": reason})
                self._stop.set()
                return
            if time.monotonic() - svc.started_at > 30:
                svc.backoff_s = 0.5
            _log.warning(
                "service died; restarting",
                extra={"svc": svc.name, "reason": reason, "backoff_s": svc.backoff_s},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(svc.backoff_s):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            svc.backoff_s = min(svc.backoff_s * 2, 10.0)
            svc.restarts += 1
            await svc.start()
            try:
                await self.wait_serving(svc)
            except RuntimeError as exc:
                _log.error("restart failed", extra={"svc": svc.name, "error": str(exc)})
            self._write_launcher_file()

    async def run(self) -> None:
        """Supervise until a stop is requested, then stop everything."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        watchers = [
            loop.create_task(self._watch(svc), name=f"watch-{svc.name}") for svc in self.services.values()
        ]
        try:
            await self._stop.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self.stop_all()


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cleanup_stack(paths: StackPaths) -> None:
    """Remove what a stopped stack leaves: sockets, status files, shared memory."""
    for sock in (*(paths.socket(n) for n in SERVICE_ORDER), paths.chan_socket):
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    for name in SERVICE_ORDER:
        with contextlib.suppress(FileNotFoundError):
            paths.status_file(name).unlink()
    with contextlib.suppress(FileNotFoundError):
        launcher_file(paths).unlink()
    unmount_recorded(paths.state_dir)  # a FUSE view left by a crashed vgpu_bus: detach it
    paths.remove_shm_dir()
