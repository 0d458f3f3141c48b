"""What every measurement of ``vgpusim bench`` gets: the private stack, its clients, progress output.

A measurement is ``async def measure(ctx: BenchContext) -> list[Figure]``.  It asks for the
services it needs with :meth:`BenchContext.require` (which raises :class:`MissingService`, with the
reason, when one did not start), reports what it does with :meth:`BenchContext.say` (stderr, so
``--json`` keeps stdout clean), and sizes its work with :meth:`BenchContext.pick` (full vs
``--quick`` counts).

Glossary:
- private stack: the four services started by the bench in a fresh state dir, stopped at the end.
- pids: service name -> process id of the running services (for resource sampling).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from vgpusim.cli.bench_report import Figure
from vgpusim.client import Stack
from vgpusim.common.paths import StackPaths

__all__ = ["BenchContext", "MissingService"]

T = TypeVar("T")


class MissingService(RuntimeError):
    """A measurement needs a service that is not serving in the private stack."""


@dataclass
class BenchContext:
    """The private stack and the run's options, shared by every measurement."""

    paths: StackPaths
    quick: bool
    stack: Stack | None = None
    pids: dict[str, int] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)  # service -> why it is not serving
    cache: dict[str, object] = field(default_factory=dict)  # results shared by measurements
    figures: list[Figure] = field(default_factory=list)  # every figure reported so far
    out: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)

    @property
    def shm_dir(self) -> Path:
        """Where the stack's segments live (the services resolve the same directory)."""
        return self.paths.shm_dir.resolve()

    def require(self, *services: str) -> Stack:
        """The stack's clients, once every service in ``services`` is serving.

        Errors: MissingService naming the first missing service and why it is down.
        """
        for name in services:
            if name not in self.pids:
                why = self.down.get(name, "not started")
                raise MissingService(f"needs {name}, which is not serving in the bench stack: {why}")
        if self.stack is None:
            raise MissingService("the bench stack is not running")
        return self.stack

    def pick(self, full: T, quick: T) -> T:
        """``quick`` under ``--quick``, else ``full``."""
        return quick if self.quick else full

    def say(self, text: str) -> None:
        """A progress line on stderr, stamped with the seconds since the run started."""
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)
