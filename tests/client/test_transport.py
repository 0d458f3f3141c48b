"""Targets: the state dir's sockets by default, per-service overrides, aliases, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpusim.client import SERVICES, normalize_target, parse_target_override, resolve_targets
from vgpusim.common.errors import InvalidArgument


def test_default_targets_are_the_state_dir_sockets(tmp_path: Path) -> None:
    targets = resolve_targets(tmp_path)
    assert list(targets) == list(SERVICES)
    assert targets["vgpu_bus"] == f"unix:{tmp_path}/run/vgpu_bus.sock"
    assert targets["qemu_frontend"] == f"unix:{tmp_path}/run/qemu_frontend.sock"


def test_state_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGPUSIM_STATE_DIR", str(tmp_path / "env"))
    assert resolve_targets()["gfx_host"] == f"unix:{tmp_path}/env/run/gfx_host.sock"


def test_overrides_win_and_aliases_work(tmp_path: Path) -> None:
    targets = resolve_targets(tmp_path, {"bus": "localhost:50051", "qemu_frontend": "/x/fe.sock"})
    assert targets["vgpu_bus"] == "localhost:50051"
    assert targets["qemu_frontend"] == "unix:/x/fe.sock"
    assert targets["iommu_type2"] == f"unix:{tmp_path}/run/iommu_type2.sock"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus=unix:/run/b.sock", ("vgpu_bus", "unix:/run/b.sock")),
        ("gfx=host:1234", ("gfx_host", "host:1234")),
        ("iommu_type2=/abs/i.sock", ("iommu_type2", "unix:/abs/i.sock")),
    ],
)
def test_parse_target_override(text: str, expected: tuple[str, str]) -> None:
    assert parse_target_override(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"), [("nosuch=x:1", "UNKNOWN_SERVICE"), ("bus", "BAD_TARGET"), ("bus=", "BAD_TARGET")]
)
def test_bad_target_override(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_target_override(text)
    assert err.value.reason == reason


def test_socket_path_too_long_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        normalize_target("/" + "x" * 200)
    assert err.value.reason == "SOCKET_PATH_TOO_LONG"
