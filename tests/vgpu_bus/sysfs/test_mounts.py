"""Mount bookkeeping: mountinfo parsing, the server's lifecycle, and recovery from a killed server."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vgpu_bus.sysfs.harness import BusThread, force_unmount, fuse_available, mounted
from vgpusim.vgpu_bus.sysfs.mounts import (
    absolute,
    fuse_mounts_at,
    read_mounts,
    record_path,
    unmount_recorded,
    unmount_stale,
)

REPO = Path(__file__).resolve().parents[3]


def test_mountinfo_is_parsed_with_its_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "42 22 0:39 / /tmp/a\\040b rw,nosuid - fuse.vgpusim vgpusim rw,user_id=0\n"
        "43 22 0:40 / /mnt/x rw - fuse /dev/fuse rw\n"
    )
    entries = read_mounts(str(info))
    assert [(e.mount_point, e.fs_type, e.is_fuse) for e in entries] == [
        ("/", "ext4", False),
        ("/tmp/a b", "fuse.vgpusim", True),
        ("/mnt/x", "fuse", True),
    ]


def test_nothing_mounted_means_nothing_to_do(tmp_path: Path) -> None:
    assert absolute(tmp_path / "x" / ".." / "y") == str(tmp_path.resolve() / "y")
    assert fuse_mounts_at(tmp_path) == 0
    assert unmount_stale(tmp_path) is False
    assert unmount_recorded(tmp_path / "state") is None


@pytest.fixture
def fuse() -> None:
    reason = fuse_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.usefixtures("fuse")
def test_the_server_records_its_mount_and_removes_the_record(bus_thread: BusThread, tmp_path: Path) -> None:
    record = record_path(bus_thread.state_dir)
    with mounted(bus_thread, tmp_path / "root") as root:
        assert fuse_mounts_at(root) == 1
        assert str(root) in record.read_text()
    assert not record.exists()
    assert os.listdir(tmp_path / "root") == []


@pytest.mark.usefixtures("fuse")
def test_one_mount_per_process(bus_thread: BusThread, tmp_path: Path) -> None:
    from vgpusim.vgpu_bus.sysfs.server import SysfsServer

    with mounted(bus_thread, tmp_path / "first"):
        second = SysfsServer(bus_thread.bus, bus_thread.loop, tmp_path / "second", state_dir=tmp_path)
        with pytest.raises(RuntimeError, match="already served"):
            bus_thread.call(second.start)
    assert fuse_mounts_at(tmp_path / "second") == 0


@pytest.fixture
def killed_server(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(state dir, mount point) of a FUSE server process that was killed with SIGKILL."""
    state, mountpoint = tmp_path / "state", tmp_path / "root"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.vgpu_bus.sysfs.harness", str(state), str(mountpoint)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        assert fuse_mounts_at(mountpoint) == 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        process.stdout.close()
        yield state, mountpoint
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        force_unmount(mountpoint)


@pytest.mark.usefixtures("fuse")
def test_unmount_recorded_clears_the_dead_mount_of_a_killed_server(killed_server: tuple[Path, Path]) -> None:
    state, mountpoint = killed_server
    with pytest.raises(OSError) as info:
        os.listdir(mountpoint)
    assert info.value.errno == errno.ENOTCONN
    assert unmount_recorded(state) == mountpoint
    assert os.listdir(mountpoint) == []
    assert fuse_mounts_at(mountpoint) == 0
    assert not record_path(state).exists()
    assert unmount_stale(mountpoint) is False


@pytest.mark.usefixtures("fuse")
def test_a_new_server_mounts_over_the_dead_mount(
    killed_server: tuple[Path, Path], bus_thread: BusThread
) -> None:
    _, mountpoint = killed_server
    with mounted(bus_thread, mountpoint) as root:
        assert fuse_mounts_at(root) == 1
        assert sorted(os.listdir(root)) == ["etc", "sys", "usr"]
    assert fuse_mounts_at(mountpoint) == 0
