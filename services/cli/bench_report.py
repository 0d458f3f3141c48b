"""The figures of ``vgpusim bench``: their goals, the ``--only`` selection, the table and the JSON.

Every figure of DESIGN.md §5 has a key (the JSON key), a goal, and belongs to one *group*: the
measurement that produces it (``irq`` produces both IRQ round-trip figures from one run).  A
measurement returns :class:`Figure` records; this module judges them against their goals and
renders them, and knows nothing about how they were measured.

JSON (``--json``) is one object: one key per selected figure, each
``{"value": number, "baseline": number or null, "goal": string}``, plus ``"machine"``.  A figure
that could not be measured has ``"value": null`` and an ``"error"`` string; a figure that was
measured but failed a condition other than its value (the scale figure's leak check) carries
the reason in ``"error"`` too.  Nothing else is ever added, so a figure that met its goal has
exactly the three keys.

Glossary:
- ratio figure: a key ending in ``_ratio``; ``value = measured / baseline``, both in ``unit``,
  measured in the same run (for DMA the unit is GB/s, so higher is better; for latencies it is
  microseconds, so lower is better).
- absolute figure: a figure with no baseline (``value`` is in ``unit``, ``baseline`` is null).
- group: a measurement, named on the command line by ``--only`` (as are the figure keys).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "FIGURE_KEYS",
    "GOALS",
    "GROUPS",
    "Collected",
    "Figure",
    "Goal",
    "failed",
    "machine_info",
    "render_json",
    "render_table",
    "select",
    "with_goal_text",
]


@dataclass(frozen=True, slots=True)
class Goal:
    """A target: ``value <op> limit``, written as ``text`` in the output."""

    op: Literal[">=", "<="]
    limit: float
    text: str

    def met(self, value: float) -> bool:
        """Whether ``value`` reaches the target."""
        return value >= self.limit if self.op == ">=" else value <= self.limit


GOALS: dict[str, Goal] = {
    "dma_copy_ratio": Goal(">=", 0.7, ">= 0.7"),
    "irq_roundtrip_p50_ratio": Goal("<=", 1.5, "<= 1.5x"),
    "irq_roundtrip_p99_ratio": Goal("<=", 3.0, "<= 3x"),
    "mmio_trap_p50_ratio": Goal("<=", 1.5, "<= 1.5x"),
    "map_rpc_ratio": Goal("<=", 1.3, "<= 1.3x"),
    "map_throughput_per_s": Goal(">=", 50_000, ">= 50,000/s"),
    "pin_throughput_pages_per_s": Goal(">=", 500_000, ">= 500,000 pages/s"),
    "lifecycle_p50_ms": Goal("<=", 100, "<= 100 ms"),
    "fairness_max_error_points": Goal("<=", 3, "<= 3 points"),
    "scale_throughput_ratio": Goal(">=", 0.8, ">= 0.8x, no leak after 10,000 create/remove cycles"),
}
"""The goals of DESIGN.md §5, in output order."""

FIGURE_KEYS: tuple[str, ...] = tuple(GOALS)

GROUPS: dict[str, tuple[str, ...]] = {
    "dma": ("dma_copy_ratio",),
    "irq": ("irq_roundtrip_p50_ratio", "irq_roundtrip_p99_ratio"),
    "trap": ("mmio_trap_p50_ratio",),
    "map": ("map_rpc_ratio",),
    "map_throughput": ("map_throughput_per_s",),
    "pin": ("pin_throughput_pages_per_s",),
    "lifecycle": ("lifecycle_p50_ms",),
    "fairness": ("fairness_max_error_points",),
    "scale": ("scale_throughput_ratio",),
}
"""Measurement name -> the figures it produces (every figure key appears exactly once)."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured (or failed) figure.

    ``measured`` and ``baseline`` are in ``unit``; ``value`` is the ratio for a ratio figure and
    the measured quantity otherwise.  ``problems`` are failed conditions besides the value (a
    leak); ``error`` says why nothing could be measured; ``notes`` go to the table.
    """

    key: str
    value: float | None
    unit: str = ""
    measured: float | None = None
    baseline: float | None = None
    goal: Goal | None = None
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    error: str | None = None

    def __post_init__(self) -> None:
        if self.key not in GOALS:
            raise ValueError(f"unknown figure {self.key!r}")
        if self.goal is None:
            object.__setattr__(self, "goal", GOALS[self.key])
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"{self.key}: value {self.value!r} is not a finite number")

    @property
    def the_goal(self) -> Goal:
        """The goal (set in ``__post_init__``)."""
        assert self.goal is not None
        return self.goal

    @property
    def is_ratio(self) -> bool:
        """A figure compared with a baseline of the same run."""
        return self.key.endswith("_ratio")

    @property
    def met(self) -> bool:
        """Measured, within its goal, and without problems."""
        return (
            self.error is None
            and not self.problems
            and self.value is not None
            and self.the_goal.met(self.value)
        )

    @property
    def status(self) -> str:
        """``ok``, ``MISS`` (measured, goal not met) or ``FAIL`` (not measured)."""
        if self.error is not None or self.value is None:
            return "FAIL"
        return "ok" if self.met else "MISS"

    def as_json(self) -> dict[str, Any]:
        """The figure's JSON object (see the module docstring)."""
        out: dict[str, Any] = {
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "goal": self.the_goal.text,
        }
        reasons = ([self.error] if self.error else []) + list(self.problems)
        if reasons:
            out["error"] = "; ".join(reasons)
        return out


def failed(group: str, error: str, *, notes: Sequence[str] = ()) -> list[Figure]:
    """The figures of ``group``, each marked as not measured because of ``error``."""
    return [Figure(key, None, error=error, notes=tuple(notes)) for key in GROUPS[group]]


def with_goal_text(figure: Figure, text: str) -> Figure:
    """``figure`` with the same goal written differently (e.g. the cycles actually run)."""
    return replace(figure, goal=replace(figure.the_goal, text=text))


def select(names: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """Resolve ``--only`` names (group names or figure keys) to (groups to run, keys to report).

    No names means everything.  Raises ValueError naming an unknown name and the known ones.
    """
    wanted = list(names or [])
    if not wanted:
        return list(GROUPS), list(FIGURE_KEYS)
    groups: list[str] = []
    keys: set[str] = set()
    for raw in wanted:
        for name in (part.strip() for part in raw.split(",")):
            if not name:
                continue
            if name in GROUPS:
                group, picked = name, GROUPS[name]
            else:
                found = [g for g, ks in GROUPS.items() if name in ks]
                if not found:
                    known = ", ".join([*GROUPS, *FIGURE_KEYS])
                    raise ValueError(f"unknown figure {name!r} (known: {known})")
                group, picked = found[0], (name,)
            if group not in groups:
                groups.append(group)
            keys.update(picked)
    if not groups:
        raise ValueError("--only needs at least one figure name")
    ordered_groups = [g for g in GROUPS if g in groups]
    return ordered_groups, [k for k in FIGURE_KEYS if k in keys]


def machine_info(*, quick: bool) -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "quick": quick,
    }


def render_json(figures: Sequence[Figure], machine: dict[str, Any]) -> str:
    """The ``--json`` document: figure keys in goal order, then ``machine``."""
    by_key = {f.key: f for f in figures}
    doc: dict[str, Any] = {k: by_key[k].as_json() for k in FIGURE_KEYS if k in by_key}
    doc["machine"] = machine
    return json.dumps(doc, indent=2)


_HEADERS = ("figure", "measured", "baseline", "ratio", "goal", "result")


def render_table(figures: Sequence[Figure], machine: dict[str, Any]) -> str:
    """The human table: one row per figure, then its notes, errors and problems."""
    rows = [_HEADERS]
    for f in figures:
        if f.value is None:
            rows.append((f.key, "-", "-", "-", f.the_goal.text, f.status))
            continue
        if f.is_ratio:
            measured, baseline, ratio = _num(f.measured, f.unit), _num(f.baseline, f.unit), _fmt(f.value)
        else:
            measured, baseline, ratio = _num(f.value, f.unit), "-", "-"
        rows.append((f.key, measured, baseline, ratio, f.the_goal.text, f.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    remarks = []
    for f in figures:
        remarks += [f"  {f.key}: {note}" for note in f.notes]
        remarks += [f"  {f.key}: PROBLEM: {p}" for p in f.problems]
        if f.error:
            remarks.append(f"  {f.key}: ERROR: {f.error}")
    met = sum(f.met for f in figures)
    summary = f"{met}/{len(figures)} goals met; {machine['cores']} cores, Python {machine['python']}" + (
        ", --quick" if machine.get("quick") else ""
    )
    return "\n".join([*lines, "", *remarks, *([""] if remarks else []), summary])


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return float(f"{value:.4g}") if abs(value) < 1000 else round(value, 1)


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{_fmt(value)} {unit}".rstrip()


@dataclass
class Collected:
    """Figures gathered so far, filtered to the keys asked for."""

    keys: list[str]
    figures: list[Figure] = field(default_factory=list)

    def add(self, figures: Iterable[Figure]) -> None:
        """Keep the figures whose key was asked for."""
        self.figures += [f for f in figures if f.key in self.keys]
