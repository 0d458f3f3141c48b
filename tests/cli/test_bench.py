"""``vgpusim bench``: the command line, the exit status and the output plumbing (no stack started).

The measurements themselves start real processes and take minutes; they are exercised by
``make bench``, not here.  These tests replace the run with canned figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from vgpusim.cli import bench
from vgpusim.cli.bench_context import BenchContext, MissingService
from vgpusim.cli.bench_report import FIGURE_KEYS, GROUPS, Figure, failed
from vgpusim.cli.launcher import build_parser, main
from vgpusim.common.paths import StackPaths
from vgpusim.gfx_host.core.host_config import load_host_config


def test_parser_accepts_the_bench_flags() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--json", "--only", "irq", "map_rpc_ratio"])
    assert (args.command, args.quick, args.json, args.only) == ("bench", True, True, ["irq", "map_rpc_ratio"])
    args = build_parser().parse_args(["bench"])
    assert (args.quick, args.json, args.only) == (False, False, None)


def test_unknown_only_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "warp_speed"]) == 2
    assert "unknown figure 'warp_speed'" in capsys.readouterr().err


def test_every_group_has_a_measurement() -> None:
    assert set(bench.MEASUREMENTS) == set(GROUPS)


def test_the_scale_host_config_has_four_parents_for_28_guests() -> None:
    host = load_host_config(bench.SCALE_HOST_CONFIG)
    assert len(host.gpus) == 4
    assert len({g.parent for g in host.gpus}) == 4
    assert all(g.model.name == "gvtg-skl" for g in host.gpus)


def _canned(
    monkeypatch: pytest.MonkeyPatch, figures: list[Figure], seen: list[Sequence[str]] | None = None
) -> None:
    async def fake_run(groups: Sequence[str], keys: list[str], ctx: BenchContext) -> list[Figure]:
        if seen is not None:
            seen.append(groups)
        return [f for f in figures if f.key in keys]

    monkeypatch.setattr(bench, "_run", fake_run)


MEETING_GOALS = {
    "dma_copy_ratio": 0.9,
    "irq_roundtrip_p50_ratio": 1.2,
    "irq_roundtrip_p99_ratio": 2.0,
    "mmio_trap_p50_ratio": 1.1,
    "map_rpc_ratio": 1.1,
    "map_throughput_per_s": 60_000.0,
    "pin_throughput_pages_per_s": 600_000.0,
    "lifecycle_p50_ms": 50.0,
    "fairness_max_error_points": 1.0,
    "scale_throughput_ratio": 0.9,
}


def test_json_output_and_success(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _canned(monkeypatch, [Figure(k, v, measured=v, baseline=1.0) for k, v in MEETING_GOALS.items()])
    assert bench.run_bench(as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {*FIGURE_KEYS, "machine"}
    assert doc["map_throughput_per_s"]["value"] == 60_000.0


def test_a_failed_figure_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _canned(monkeypatch, failed("lifecycle", "needs qemu_frontend"))
    assert bench.run_bench(only=["lifecycle"]) == 1
    out = capsys.readouterr().out
    assert "lifecycle_p50_ms" in out and "FAIL" in out and "needs qemu_frontend" in out


def test_only_runs_the_groups_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Sequence[str]] = []
    _canned(monkeypatch, [Figure("irq_roundtrip_p99_ratio", 2.0, unit="us", measured=2, baseline=1)], seen)
    assert bench.run_bench(as_json=True, only=["irq_roundtrip_p99_ratio"]) == 0
    assert seen == [["irq"]]
    assert set(json.loads(capsys.readouterr().out)) == {"irq_roundtrip_p99_ratio", "machine"}


def test_the_private_state_dir_is_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dirs: list[Path] = []

    async def fake_run(groups: Sequence[str], keys: list[str], ctx: BenchContext) -> list[Figure]:
        dirs.append(ctx.paths.state_dir)
        return []

    monkeypatch.setattr(bench, "_run", fake_run)
    assert bench.run_bench() == 1  # nothing measured is not a success
    assert dirs and not dirs[0].exists()


def test_require_names_the_missing_service(tmp_path: Path) -> None:
    ctx = BenchContext(StackPaths(tmp_path), quick=True, down={"qemu_frontend": "exited with status 1"})
    with pytest.raises(MissingService, match=r"needs qemu_frontend.*exited with status 1"):
        ctx.require("qemu_frontend")
    assert ctx.pick(10, 2) == 2
