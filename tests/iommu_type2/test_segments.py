"""ShmSegmentStore: segment files of a shm dir, mapped once, re-checked by name, unmapped when unused.

The behaviour every SegmentStore shares is in ``test_ops.py`` (``any_store`` includes this one).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vgpusim.common.errors import InvalidArgument, NotFound
from vgpusim.common.shm.segment import Segment
from vgpusim.iommu_type2.segments import ShmSegmentStore

PAGE = 4096


def _make(shm_dir: Path, name: str, size: int = 2 * PAGE, fill: bytes = b"") -> None:
    with Segment.create(shm_dir, name, size) as segment:
        segment.buf[: len(fill)] = fill


def test_view_maps_once_and_shares_bytes_with_the_file(shm_dir: Path) -> None:
    _make(shm_dir, "ram", fill=b"guest")
    store = ShmSegmentStore(shm_dir)
    view = store.view("ram")
    assert store.view("ram") is view  # cached: the same mapping for every container
    assert bytes(view[:5]) == b"guest"
    with Segment.open(shm_dir, "ram") as peer:
        peer.buf[5:8] = b"RAM"
        assert bytes(view[5:8]) == b"RAM"  # MAP_SHARED both ways
        view[0:1] = b"G"
        assert bytes(peer.buf[:1]) == b"G"
    assert store.names() == ("ram",)
    del view
    store.close()
    assert store.names() == ()


def test_missing_and_bad_names(shm_dir: Path) -> None:
    store = ShmSegmentStore(shm_dir)
    with pytest.raises(NotFound) as missing:
        store.view("nope")
    assert (missing.value.reason, missing.value.metadata) == (
        "SEGMENT_MISSING",
        {"segment": "nope", "errno": "ENOENT"},
    )
    for name in ("a/b", "..", ""):
        with pytest.raises(InvalidArgument) as bad:
            store.view(name)
        assert bad.value.reason == "INVALID_SEGMENT_NAME"
    (shm_dir / "empty").touch()
    with pytest.raises(InvalidArgument) as empty:
        store.view("empty")
    assert empty.value.reason == "EMPTY_SEGMENT"
    os.mkdir(shm_dir / "folder")
    with pytest.raises(InvalidArgument) as folder:
        store.view("folder")
    assert folder.value.reason == "NOT_A_SEGMENT"


def test_unlinked_file_is_missing_even_when_cached(shm_dir: Path) -> None:
    _make(shm_dir, "ram")
    store = ShmSegmentStore(shm_dir)
    store.view("ram")
    os.unlink(shm_dir / "ram")
    with pytest.raises(NotFound) as missing:
        store.view("ram")
    assert missing.value.reason == "SEGMENT_MISSING"
    store.close()


def test_replaced_file_is_mapped_afresh(shm_dir: Path) -> None:
    """A VM restarted under the same segment name must not see the dead VM's pages."""
    _make(shm_dir, "ram", fill=b"old")
    store = ShmSegmentStore(shm_dir)
    old = store.view("ram")
    os.unlink(shm_dir / "ram")
    _make(shm_dir, "ram", size=4 * PAGE, fill=b"new")
    new = store.view("ram")
    assert (bytes(new[:3]), len(new)) == (b"new", 4 * PAGE)
    assert bytes(old[:3]) == b"old"  # a container registered earlier keeps its own mapping
    del old, new
    store.close()


def test_retain_and_forget_unmap_unused_segments(shm_dir: Path) -> None:
    for name in ("a", "b", "c"):
        _make(shm_dir, name)
    store = ShmSegmentStore(shm_dir)
    for name in ("a", "b", "c"):
        store.view(name).release()
    store.retain(["b", "unknown"])
    assert store.names() == ("b",)
    store.forget("b")
    store.forget("never-mapped")
    assert store.names() == ()


def test_a_segment_with_live_views_is_parked_until_released(shm_dir: Path) -> None:
    _make(shm_dir, "ram")
    store = ShmSegmentStore(shm_dir)
    held = store.view("ram").cast("B")  # like a container's registration
    store.forget("ram")  # cannot unmap yet: parked, no error
    assert (store.names(), store.parked) == ((), 1)
    held[0] = 7  # the parked mapping is still valid
    again = store.view("ram")  # a new registration maps the file again
    assert again[0] == 7
    held.release()
    del again
    store.close()  # closes both the parked and the cached mapping
    assert (store.names(), store.parked) == ((), 0)
