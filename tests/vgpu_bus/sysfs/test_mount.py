"""The real FUSE mount, used with plain Python file I/O as a sysfs user would.

Every test mounts a fresh bus (``mount`` fixture: skipped without FUSE or root) and checks what
system calls return: listings, live values, the errno of each failed write, links resolved by
``realpath``, and that the filesystem and the bus are one (a device made on either side shows
on the other, and in the event stream).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from tests.vgpu_bus.helpers import drain
from tests.vgpu_bus.sysfs.harness import BIG, GPU, SMALL, SMALL_GPU, U1, U2, U3, BusThread
from vgpusim.vgpu_bus.core import Attr, EventKind, StartPolicy

pytestmark = pytest.mark.timeout(60)


def sys_type(root: Path, parent: str, type_id: str) -> Path:
    return root / "sys/class/mdev_bus" / parent / "mdev_supported_types" / type_id


def write(path: Path, data: str | bytes) -> int:
    """One ``write()`` system call; the errno if it fails, else 0."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError as error:
        return error.errno or -1
    try:
        os.write(fd, raw)
    except OSError as error:
        return error.errno or -1
    finally:
        os.close(fd)
    return 0


def devices(root: Path) -> list[str]:
    return sorted(os.listdir(root / "sys/bus/mdev/devices"))


def test_tree_lists_and_reads_like_sysfs(mount: Path) -> None:
    assert sorted(os.listdir(mount)) == ["etc", "sys", "usr"]
    assert sorted(os.listdir(mount / "sys/class/mdev_bus")) == [GPU, SMALL_GPU]
    small = sys_type(mount, GPU, SMALL)
    assert sorted(os.listdir(small)) == ["available_instances", "create", "device_api", "devices", "name"]
    assert (small / "available_instances").read_text() == "8\n"
    assert (small / "device_api").read_text() == "vfio-pci\n"
    assert (small / "name").read_text() == "GVTg_V5_8\n"
    assert "weight: 8" in (sys_type(mount, GPU, BIG) / "description").read_text()
    info = os.stat(small / "available_instances")
    assert info.st_size == 4096
    assert oct(info.st_mode & 0o777) == "0o444"
    assert oct(os.stat(small / "create").st_mode & 0o777) == "0o200"
    parent = os.path.realpath(mount / "sys/class/mdev_bus" / GPU)
    assert parent == str(mount / "sys/devices/pci0000:00" / GPU)
    assert os.path.isdir(small) and not os.path.islink(small)


def test_create_write_makes_the_device_on_the_bus_at_once(mount: Path, bus_thread: BusThread) -> None:
    events = bus_thread.sync(bus_thread.bus.subscribe)
    small = sys_type(mount, GPU, SMALL)
    assert write(small / "create", U1) == 0
    assert devices(mount) == [U1]
    device = mount / "sys/bus/mdev/devices" / U1
    assert os.path.realpath(device) == str(mount / "sys/devices/pci0000:00" / GPU / U1)
    assert os.path.basename(os.path.realpath(device / "mdev_type")) == SMALL
    assert os.path.realpath(device / "iommu_group") == str(mount / "sys/kernel/iommu_groups/0")
    assert os.listdir(small / "devices") == [U1]
    assert (small / "available_instances").read_text() == "7\n"
    assert (sys_type(mount, GPU, BIG) / "available_instances").read_text() == "1\n"
    info = bus_thread.sync(lambda: bus_thread.bus.devices.device_info(U1))
    assert (info.parent, info.type_id) == (GPU, SMALL)
    kinds = [event.kind for event in bus_thread.sync(lambda: drain(events))]
    assert kinds == [EventKind.CREATED]


def test_create_errors_reach_the_writer(mount: Path, bus_thread: BusThread) -> None:
    create = sys_type(mount, GPU, SMALL) / "create"
    assert write(create, U1 + "\n") == 0
    assert write(create, U1) == errno.EEXIST
    assert write(sys_type(mount, SMALL_GPU, SMALL) / "create", U1) == errno.EEXIST
    assert write(create, "not-a-uuid") == errno.EINVAL
    assert write(create, U2 + "\n\n") == errno.EINVAL
    assert write(sys_type(mount, SMALL_GPU, BIG) / "create", U2) == errno.ENOSPC
    assert devices(mount) == [U1]


def test_parallel_writers_over_the_limit_get_exactly_the_limit(mount: Path, bus_thread: BusThread) -> None:
    create = sys_type(mount, GPU, SMALL) / "create"
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(1, 25)]
    results: dict[str, int] = {}
    start = threading.Barrier(len(uuids))

    def writer(uuid: str) -> None:
        start.wait()
        results[uuid] = write(create, uuid)

    threads = [threading.Thread(target=writer, args=(uuid,)) for uuid in uuids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()).count(0) == 8
    assert {code for code in results.values() if code} == {errno.ENOSPC}
    assert devices(mount) == sorted(uuid for uuid, code in results.items() if code == 0)
    assert (sys_type(mount, GPU, SMALL) / "available_instances").read_text() == "0\n"


def test_remove_write_leaves_no_stale_entry(mount: Path, bus_thread: BusThread) -> None:
    assert write(sys_type(mount, GPU, SMALL) / "create", U1) == 0
    device = mount / "sys/bus/mdev/devices" / U1
    os.stat(device / "remove")  # the kernel now knows these names
    assert write(device / "remove", "abc") == errno.EINVAL
    assert write(device / "remove", "1\n") == 0
    assert devices(mount) == []
    assert not os.path.lexists(device)
    assert not os.path.exists(mount / "sys/devices/pci0000:00" / GPU / U1)
    assert os.listdir(sys_type(mount, GPU, SMALL) / "devices") == []
    assert os.listdir(mount / "sys/kernel/iommu_groups") == []
    assert bus_thread.sync(lambda: bus_thread.bus.devices.find_device(U1)) is None
    assert write(sys_type(mount, GPU, SMALL) / "create", U1) == 0  # the same UUID again
    assert os.path.basename(os.path.realpath(device / "mdev_type")) == SMALL


def test_devices_made_through_the_core_show_and_vanish(mount: Path, bus_thread: BusThread) -> None:
    bus = bus_thread.bus
    bus_thread.call(lambda: bus.devices.create_device(U2, SMALL_GPU, SMALL, [Attr("weight", "4")]))
    assert devices(mount) == [U2]
    device = mount / "sys/bus/mdev/devices" / U2
    assert (device / "weight").read_text() == "4\n"
    assert write(device / "weight", "4") == 0
    assert write(device / "weight", "16") == errno.EINVAL
    bus_thread.call(lambda: bus.devices.remove_device(U2))
    assert devices(mount) == []
    assert not os.path.lexists(device)


def test_write_only_and_read_only_files_refuse_even_root(mount: Path) -> None:
    small = sys_type(mount, GPU, SMALL)
    with pytest.raises(PermissionError):
        (small / "create").read_text()
    assert write(small / "available_instances", "3") == errno.EACCES
    assert write(small / "newfile", "x") == errno.EACCES
    assert write(sys_type(mount, GPU, SMALL) / "create", U1) == 0
    with pytest.raises(PermissionError):
        (mount / "sys/bus/mdev/devices" / U1 / "remove").read_text()
    assert write(mount / "sys/bus/mdev/devices" / U1 / "nosuch", "1") == errno.EACCES
    with pytest.raises(PermissionError):
        os.mkdir(mount / "sys/class/x")
    with pytest.raises(PermissionError):
        os.unlink(mount / "sys/class/mdev_bus" / GPU)
    os.truncate(small / "create", 0)  # setattr: accepted, changes nothing


def test_definitions_are_files_both_ways(mount: Path, bus_thread: BusThread) -> None:
    bus = bus_thread.bus
    bus_thread.sync(lambda: bus.definitions.define(U1, GPU, SMALL, start=StartPolicy.AUTO))
    file = mount / "etc/mdevctl.d" / GPU / U1
    assert json.loads(file.read_text()) == {"mdev_type": SMALL, "start": "auto", "attrs": []}
    os.makedirs(mount / "etc/mdevctl.d" / SMALL_GPU, exist_ok=True)
    other = mount / "etc/mdevctl.d" / SMALL_GPU / U3
    other.write_text(json.dumps({"mdev_type": BIG, "start": "manual", "attrs": [{"weight": "2"}]}))
    defined = bus_thread.sync(lambda: bus.definitions.get(U3, SMALL_GPU))
    assert (defined.type_id, defined.attrs) == (BIG, (Attr("weight", "2"),))
    assert write(other, b'{"mdev_type": "x"}') == errno.EINVAL
    assert write(mount / "etc/mdevctl.d" / SMALL_GPU / "junk", b"{}") == errno.EINVAL
    os.unlink(file)
    assert [d.definition.uuid for d in bus_thread.sync(bus.definitions.list_defined)] == [U3]
    with pytest.raises(OSError, match="Directory not empty"):
        os.rmdir(mount / "etc/mdevctl.d" / SMALL_GPU)
