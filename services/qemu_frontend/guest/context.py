"""The run context every workload receives: the driver, its typed parameters, the stop event, stats.

Parameters arrive as strings (``StartGuestRequest.params`` is a ``map<string, string>``) or as
Python numbers from tests.  :class:`Params` checks them against the workload's defaults up front:
an unknown name or a value that does not parse as the default's type is ``InvalidArgument``
(``BAD_WORKLOAD_PARAM``), before anything touches the device.

Glossary:
- default: the value a parameter takes when absent; its type is the parameter's type.
- loop: a workload's repeat count; 0 means "until stopped".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest.driver import GuestDriver
from vgpusim.qemu_frontend.guest.stats import WorkloadStats

ParamValue = str | int | float


def _bad(name: str, value: object, what: str) -> InvalidArgument:
    return InvalidArgument(
        f"workload parameter {name}={value!r}: {what}",
        reason="BAD_WORKLOAD_PARAM",
        metadata={"param": name},
    )


class Params:
    """Workload parameters, typed by ``defaults`` (int, float or str)."""

    def __init__(self, raw: Mapping[str, ParamValue] | None, defaults: Mapping[str, ParamValue]) -> None:
        self._values: dict[str, ParamValue] = dict(defaults)
        for name, value in (raw or {}).items():
            if name not in defaults:
                known = ", ".join(sorted(defaults)) or "none"
                raise _bad(name, value, f"unknown (this workload takes: {known})")
            self._values[name] = self._convert(name, value, defaults[name])

    @staticmethod
    def _convert(name: str, value: ParamValue, default: ParamValue) -> ParamValue:
        try:
            if isinstance(default, str):
                return str(value)
            if isinstance(default, int):
                return int(value, 0) if isinstance(value, str) else int(value)
            return float(value)
        except (TypeError, ValueError):
            raise _bad(name, value, f"not a valid {type(default).__name__}") from None

    @staticmethod
    def invalid(name: str, value: object, what: str) -> InvalidArgument:
        """The error for parameter ``name`` having a bad ``value`` (for checks done by workloads)."""
        return _bad(name, value, what)

    def integer(self, name: str, *, lo: int = 0, hi: int | None = None) -> int:
        """An int parameter, checked against ``[lo, hi]``."""
        value = self._values[name]
        assert isinstance(value, int)
        if value < lo or (hi is not None and value > hi):
            raise _bad(name, value, f"must be in {lo}..{hi if hi is not None else 'inf'}")
        return value

    def number(self, name: str, *, lo: float = 0.0) -> float:
        """A float parameter, at least ``lo``."""
        value = self._values[name]
        assert isinstance(value, float)
        if value < lo:
            raise _bad(name, value, f"must be at least {lo}")
        return value

    def text(self, name: str, *, choices: tuple[str, ...] = ()) -> str:
        """A string parameter, one of ``choices`` if given."""
        value = str(self._values[name])
        if choices and value not in choices:
            raise _bad(name, value, f"must be one of {', '.join(choices)}")
        return value

    def engine(self, name: str = "engine") -> Engine:
        """An engine parameter (``rcs``, ``bcs`` or ``vcs``)."""
        value = self.text(name, choices=tuple(e.name.lower() for e in Engine))
        return Engine[value.upper()]


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """What a workload body runs with."""

    driver: GuestDriver
    params: Params
    stop: threading.Event
    stats: WorkloadStats

    def publish(self) -> None:
        """Copy the driver's counters into the stats (cheap; call after every step)."""
        self.stats.sync(self.driver.statistics())

    def loop(self, count: int) -> Iterator[int]:
        """0, 1, ... until ``count`` iterations ran (0: no limit) or the stop event is set."""
        i = 0
        while not self.stop.is_set() and (count == 0 or i < count):
            yield i
            i += 1
            self.publish()

    def engine(self, name: str = "engine") -> Engine:
        """The engine parameter ``name``, which the vGPU must have (after ``init``)."""
        engine = self.params.engine(name)
        if engine not in self.driver.engines:
            have = ", ".join(e.name.lower() for e in self.driver.engines)
            raise _bad(name, engine.name.lower(), f"this vGPU has only {have}")
        return engine
