"""Tests of vgpusim.common.shm.segment: create/open/close/unlink, names, errors, clean-up."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from vgpusim.common.errors import AlreadyExists, Busy, InvalidArgument, NotFound, WrongState
from vgpusim.common.shm.segment import Segment, list_segments, remove_all


def test_create_and_open_share_memory(shm_dir: Path) -> None:
    with Segment.create(shm_dir, "ram0", 8192) as owner, Segment.open(shm_dir, "ram0") as peer:
        assert (owner.name, owner.size, owner.path) == ("ram0", 8192, str(shm_dir / "ram0"))
        assert peer.size == 8192
        assert owner.buf[:4].tobytes() == b"\0\0\0\0"
        owner.buf[100:105] = b"hello"
        assert peer.buf[100:105].tobytes() == b"hello"
        assert peer.buf.format == "B" and not peer.buf.readonly
        owner.unlink()
    assert list_segments(shm_dir) == []


def test_mode_ignores_umask(shm_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        with Segment.create(shm_dir, "a", 4096, mode=0o640) as seg:
            assert stat.S_IMODE(os.stat(seg.path).st_mode) == 0o640
        with Segment.create(shm_dir, "b", 4096) as seg:
            assert stat.S_IMODE(os.stat(seg.path).st_mode) == 0o600
    finally:
        os.umask(old)


def test_duplicate_name_is_already_exists(shm_dir: Path) -> None:
    with Segment.create(shm_dir, "dup", 4096), pytest.raises(AlreadyExists) as info:
        Segment.create(shm_dir, "dup", 4096)
    assert info.value.reason == "SEGMENT_EXISTS"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "sp ace", "é", "x" * 256, "nul\0"])
def test_invalid_names_rejected(shm_dir: Path, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Segment.create(shm_dir, name, 4096)
    assert info.value.reason == "INVALID_SEGMENT_NAME"
    with pytest.raises(InvalidArgument):
        Segment.open(shm_dir, name)
    assert list_segments(shm_dir) == []


def test_valid_name_characters(shm_dir: Path) -> None:
    name = "Az09._-" + "x" * 248
    with Segment.create(shm_dir, name, 1) as seg:
        seg.unlink()


@pytest.mark.parametrize("size", [0, -1])
def test_bad_size_rejected(shm_dir: Path, size: int) -> None:
    with pytest.raises(InvalidArgument):
        Segment.create(shm_dir, "s", size)
    assert list_segments(shm_dir) == []


def test_missing_segment_and_directory_are_not_found(shm_dir: Path) -> None:
    with pytest.raises(NotFound):
        Segment.open(shm_dir, "nope")
    with pytest.raises(NotFound):
        Segment.create(shm_dir / "no-such-dir", "x", 4096)
    with pytest.raises(NotFound):
        list_segments(shm_dir / "no-such-dir")
    assert remove_all(shm_dir / "no-such-dir") == 0


def test_open_rejects_empty_file_symlink_and_directory(shm_dir: Path) -> None:
    (shm_dir / "empty").touch()
    with pytest.raises(InvalidArgument) as info:
        Segment.open(shm_dir, "empty")
    assert info.value.reason == "EMPTY_SEGMENT"
    with Segment.create(shm_dir, "real", 4096):
        os.symlink(shm_dir / "real", shm_dir / "link")
        with pytest.raises(InvalidArgument):
            Segment.open(shm_dir, "link")
    (shm_dir / "sub").mkdir()
    with pytest.raises(InvalidArgument):
        Segment.open(shm_dir, "sub")


def test_close_is_idempotent_and_buf_then_fails(shm_dir: Path) -> None:
    seg = Segment.create(shm_dir, "c", 4096)
    seg.close()
    seg.close()
    assert seg.closed
    with pytest.raises(WrongState):
        _ = seg.buf
    seg.unlink()


def test_close_with_outstanding_view_is_busy_then_retries(shm_dir: Path) -> None:
    seg = Segment.create(shm_dir, "v", 4096)
    view = seg.buf[10:20]
    with pytest.raises(Busy) as info:
        seg.close()
    assert info.value.reason == "SEGMENT_EXPORTED"
    view[0] = 7  # the mapping is still there
    view.release()
    seg.close()
    assert seg.closed
    seg.unlink()


def test_unlink_keeps_mappings_and_reports_missing(shm_dir: Path) -> None:
    with Segment.create(shm_dir, "u", 4096) as owner, Segment.open(shm_dir, "u") as peer:
        owner.unlink()
        owner.buf[0] = 42
        assert peer.buf[0] == 42
        with pytest.raises(NotFound):
            owner.unlink()
        owner.unlink(missing_ok=True)
    assert not (shm_dir / "u").exists()


def test_prealloc(shm_dir: Path) -> None:
    with Segment.create(shm_dir, "p", 1 << 20, prealloc=True) as seg:
        assert os.stat(seg.path).st_blocks * 512 >= 1 << 20
        seg.unlink()


def test_list_and_remove_all_only_touch_segments(shm_dir: Path) -> None:
    for name in ("b", "a", "c.ring"):
        Segment.create(shm_dir, name, 4096).close()
    (shm_dir / "subdir").mkdir()
    os.symlink(shm_dir / "a", shm_dir / "alias")
    assert list_segments(shm_dir) == ["a", "b", "c.ring"]
    assert remove_all(shm_dir) == 3
    assert list_segments(shm_dir) == []
    assert sorted(os.listdir(shm_dir)) == ["alias", "subdir"]


def test_no_descriptor_leak(shm_dir: Path, open_fds: Callable[[], int]) -> None:
    before = open_fds()
    for i in range(20):
        seg = Segment.create(shm_dir, f"leak{i}", 4096)
        peer = Segment.open(shm_dir, f"leak{i}")
        assert open_fds() > before  # each mapping holds a descriptor until closed
        peer.close()
        seg.close()
        seg.unlink()
    with pytest.raises(AlreadyExists), Segment.create(shm_dir, "x", 4096):
        Segment.create(shm_dir, "x", 4096)
    os.unlink(shm_dir / "x")
    assert open_fds() == before
    assert os.listdir(shm_dir) == []
