"""State-dir resolution and the paths derived from it, including the shared-memory folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.common.paths import SOCKET_PATH_MAX_BYTES, StackPaths, check_socket_path, resolve_state_dir


def test_state_dir_precedence(tmp_path: Path) -> None:
    env = {"HOME": "/home/u"}
    assert resolve_state_dir(environ=env) == Path("/home/u/.local/state/vgpusim")
    env["XDG_STATE_HOME"] = "/xdg"
    assert resolve_state_dir(environ=env) == Path("/xdg/vgpusim")
    env["VGPUSIM_STATE_DIR"] = "/explicit/env"
    assert resolve_state_dir(environ=env) == Path("/explicit/env")
    assert resolve_state_dir(tmp_path, environ=env) == tmp_path
    assert resolve_state_dir("", environ=env) == Path("/explicit/env")  # an empty flag is no flag
    assert resolve_state_dir("~/s", environ=env) == Path.home() / "s"


def test_layout() -> None:
    paths = StackPaths(Path("/st"))
    assert paths.run_dir == Path("/st/run")
    assert paths.socket("vgpu_bus") == Path("/st/run/vgpu_bus.sock")
    assert paths.target("vgpu_bus") == "unix:/st/run/vgpu_bus.sock"
    assert paths.status_file("gfx_host") == Path("/st/run/gfx_host.json")
    assert paths.chan_socket == Path("/st/run/gfx_host.chan.sock")
    assert paths.shm_dir == Path("/st/shm")
    assert paths.logs_dir == Path("/st/logs")
    assert paths.log_file("iommu_type2") == Path("/st/logs/iommu_type2.log")
    assert paths.bus_db == Path("/st/bus.sqlite3")
    assert StackPaths.from_state_dir(environ={"VGPUSIM_STATE_DIR": "/st"}) == paths


def test_socket_path_limit() -> None:
    room = SOCKET_PATH_MAX_BYTES - len("/run/qemu_frontend.sock")
    fits = StackPaths(Path("/" + "a" * (room - 1)))
    assert len(os.fsencode(fits.socket("qemu_frontend"))) == SOCKET_PATH_MAX_BYTES
    too_long = StackPaths(Path("/" + "a" * room))
    with pytest.raises(InvalidArgument) as caught:
        too_long.socket("qemu_frontend")
    assert caught.value.reason == "SOCKET_PATH_TOO_LONG"
    assert caught.value.metadata["length_bytes"] == str(SOCKET_PATH_MAX_BYTES + 1)
    assert "--state-dir" in caught.value.message
    with pytest.raises(InvalidArgument):
        check_socket_path("/" + "é" * 60)  # bytes count, not characters


@pytest.mark.parametrize("name", ["", "Bus", "../x", "a/b", "x" * 40])
def test_bad_service_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        StackPaths(Path("/st")).socket(name)
    assert caught.value.reason == "BAD_SERVICE_NAME"


def test_ensure_dirs_modes(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "state")
    paths.ensure_dirs()
    paths.ensure_dirs()
    assert stat.S_IMODE(paths.run_dir.stat().st_mode) == 0o700
    assert paths.logs_dir.is_dir()


def test_shm_dir_symlink_lifecycle(tmp_path: Path) -> None:
    shm_root = tmp_path / "devshm"
    shm_root.mkdir()
    paths = StackPaths(tmp_path / "state", shm_root=shm_root)
    backing = paths.ensure_shm_dir()
    assert backing == shm_root / f"vgpusim-{paths.shm_id}" and len(paths.shm_id) == 12
    assert stat.S_IMODE(backing.stat().st_mode) == 0o700
    assert paths.shm_dir.is_symlink() and paths.shm_dir.resolve() == backing
    (backing / "seg").write_bytes(b"x")
    assert paths.ensure_shm_dir() == backing  # idempotent, contents kept
    assert (paths.shm_dir / "seg").read_bytes() == b"x"
    other = StackPaths(tmp_path / "other", shm_root=shm_root)
    assert other.shm_id != paths.shm_id
    paths.remove_shm_dir()
    assert not paths.shm_dir.exists() and not paths.shm_dir.is_symlink() and not backing.exists()
    paths.remove_shm_dir()  # idempotent


def test_shm_id_follows_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert StackPaths(tmp_path / "link").shm_id == StackPaths(tmp_path / "real").shm_id


def test_real_shm_directory_is_used_as_is(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "state", shm_root=tmp_path / "unused")
    paths.shm_dir.mkdir(parents=True)  # e.g. a tmpfs volume mounted by docker-compose
    assert paths.ensure_shm_dir() == paths.shm_dir.resolve()
    paths.remove_shm_dir()
    assert paths.shm_dir.is_dir()


def test_foreign_file_in_place_of_backing_dir(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "state", shm_root=tmp_path)
    paths.shm_backing_dir.write_text("not a dir")
    with pytest.raises(InvalidArgument) as caught:
        paths.ensure_shm_dir()
    assert caught.value.reason == "SHM_DIR_FOREIGN"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_real_dev_shm(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "state")
    try:
        backing = paths.ensure_shm_dir()
        assert backing.parent == Path("/dev/shm") and backing.is_dir()
    finally:
        paths.remove_shm_dir()
    assert not paths.shm_backing_dir.exists()
