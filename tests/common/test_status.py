"""The status file: atomic writes, reading back, garbage and liveness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.common.status import ServiceStatus, read_status, remove_status, write_status


def test_round_trip_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "svc.json"
    status = ServiceStatus(
        "vgpu_bus", os.getpid(), "/s/run/vgpu_bus.sock", None, "http://x/metrics", "serving"
    )
    write_status(path, status)
    assert read_status(path) == status
    assert [p.name for p in tmp_path.iterdir()] == ["svc.json"]  # no temporary left behind
    write_status(path, ServiceStatus("vgpu_bus", os.getpid(), None, "127.0.0.1:5", None, "stopping"))
    again = read_status(path)
    assert again is not None and again.state == "stopping" and again.tcp == "127.0.0.1:5"
    remove_status(path)
    remove_status(path)
    assert read_status(path) is None


def test_garbage_and_bad_state(tmp_path: Path) -> None:
    path = tmp_path / "svc.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgument) as caught:
        read_status(path)
    assert caught.value.reason == "BAD_STATUS_FILE"
    path.write_text('{"pid": 1}')
    with pytest.raises(InvalidArgument):
        read_status(path)
    with pytest.raises(ValueError, match="state"):
        write_status(path, ServiceStatus("x", 1, None, None, None, "dancing"))


def test_alive() -> None:
    assert ServiceStatus("x", os.getpid(), None, None, None, "serving").alive()
    assert not ServiceStatus("x", 2**22 + 12345, None, None, None, "serving").alive()
