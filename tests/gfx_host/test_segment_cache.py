"""gfx_host's segment cache closes the mappings of unlinked RAM segments (no leak across VMs)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vgpusim.common.shm.segment import Segment
from vgpusim.gfx_host.clients import SegmentCache


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        yield Path(d)


def test_unlinked_segments_are_closed_when_the_next_vm_comes(shm_dir: Path) -> None:
    cache = SegmentCache(shm_dir)
    for i in range(50):  # VM after VM: at most the current one stays mapped
        with Segment.create(shm_dir, f"ram-{i}", 1 << 16) as ram:
            cache.view(ram.name)[0:4] = b"\x01\x02\x03\x04"
            assert bytes(ram.buf[0:4]) == b"\x01\x02\x03\x04"  # the cache maps the same memory
            ram.unlink()
    with Segment.create(shm_dir, "ram-last", 1 << 16) as ram:
        cache.view(ram.name)
        assert cache.prune() == 0  # ram-last still exists
        assert len(cache._open) == 1
        ram.unlink()
    assert cache.prune() == 1
    assert cache._open == {}
    cache.close()


def test_a_segment_in_use_is_kept_until_its_views_are_gone(shm_dir: Path) -> None:
    cache = SegmentCache(shm_dir)
    with Segment.create(shm_dir, "ram-a", 1 << 16) as ram:
        held = cache.view("ram-a")[0:16]  # a workload still holds a view
        ram.unlink()
    assert cache.prune() == 0
    held.release()
    assert cache.prune() == 1


def test_many_threads_opening_and_pruning_at_once(shm_dir: Path) -> None:
    """Trap threads of several vGPUs open segments while old ones are pruned (no KeyError)."""
    import threading

    cache = SegmentCache(shm_dir)
    errors: list[BaseException] = []

    def vm(i: int) -> None:
        try:
            for k in range(30):
                with Segment.create(shm_dir, f"ram-{i}-{k}", 1 << 14) as ram:
                    for _ in range(3):
                        cache.view(ram.name)[0:1] = b"\x01"
                    ram.unlink()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=vm, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    cache.prune()
    assert cache._open == {}
    cache.close()
