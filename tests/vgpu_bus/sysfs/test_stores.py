"""Pure parts: the store parsers, iommu group numbering, link targets, and the inode table."""

from __future__ import annotations

import errno

import pytest

from vgpusim.vgpu_bus.core import Attr, DeviceInfo, DeviceState
from vgpusim.vgpu_bus.sysfs import layout
from vgpusim.vgpu_bus.sysfs.layout import FsError
from vgpusim.vgpu_bus.sysfs.stores import parse_kstrtoul, store_attr
from vgpusim.vgpu_bus.sysfs.sysview import IommuGroups

U = "11111111-1111-1111-1111-111111111111"


@pytest.mark.parametrize(
    ("text", "value"),
    [(b"1", 1), (b"0", 0), (b"1\n", 1), (b"+7", 7), (b"0x1f", 31), (b"010", 8), (b"42\n", 42)],
)
def test_kstrtoul_accepts_what_the_kernel_accepts(text: bytes, value: int) -> None:
    assert parse_kstrtoul(text) == value


@pytest.mark.parametrize("text", [b"", b"\n", b"-1", b"yes", b"1 ", b"08", b"1\n\n", b"\xff", b"1\x00"])
def test_kstrtoul_refuses_the_rest(text: bytes) -> None:
    with pytest.raises(FsError) as info:
        parse_kstrtoul(text)
    assert info.value.errno == errno.EINVAL


def test_attribute_store_accepts_any_value_the_device_was_created_with() -> None:
    device = DeviceInfo(U, "p", "d-t", DeviceState.ACTIVE, None, (Attr("w", "1"), Attr("w", "2")), 1.0)
    store_attr(device, "w", b"1")
    store_attr(device, "w", b"2\n")
    with pytest.raises(FsError) as info:
        store_attr(device, "w", b"3")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(FsError) as info:
        store_attr(device, "other", b"1")
    assert info.value.errno == errno.ENOENT


def test_iommu_groups_take_the_lowest_free_number_and_free_it() -> None:
    groups = IommuGroups()
    groups.update(["a", "b", "c"])
    assert groups.numbers() == {"a": 0, "b": 1, "c": 2}
    groups.update(["a", "c"])
    groups.update(["a", "c", "d"])
    assert groups.numbers() == {"a": 0, "c": 2, "d": 1}
    assert groups.owner("2") == "c"
    assert groups.owner("7") is None


def test_link_targets_resolve_to_the_real_directories() -> None:
    import posixpath

    def resolve(link_dir: layout.Path, target: str) -> str:
        return posixpath.normpath(posixpath.join("/", *link_dir, target))

    device = "/" + "/".join(layout.device_dir("P", U))
    assert resolve(layout.MDEV_BUS, layout.class_link("P")) == "/" + "/".join(layout.parent_dir("P"))
    assert resolve(layout.MDEV_DEVICES, layout.bus_link("P", U)) == device
    assert (
        resolve(layout.device_dir("P", U), layout.type_link("T"))
        == "/sys/devices/pci0000:00/P/mdev_supported_types/T"
    )
    type_devices = (*layout.parent_dir("P"), layout.TYPES_DIR, "T", "devices")
    assert resolve(type_devices, layout.type_device_link(U)) == device
    assert resolve(layout.device_dir("P", U), layout.group_link(3)) == "/sys/kernel/iommu_groups/3"
    assert resolve((*layout.IOMMU_GROUPS, "3", "devices"), layout.group_device_link("P", U)) == device


def test_inode_numbers_follow_the_kernels_lookup_counts() -> None:
    pyfuse3 = pytest.importorskip("pyfuse3")
    from vgpusim.vgpu_bus.sysfs.handles import Inodes

    inodes = Inodes()
    sys_ino = inodes.inode(("sys",))
    assert inodes.inode(("sys",)) == sys_ino
    assert inodes.path(sys_ino) == ("sys",)
    inodes.remember(sys_ino)
    inodes.remember(sys_ino)
    inodes.forget(sys_ino, 1)
    assert inodes.path(sys_ino) == ("sys",)
    inodes.forget(sys_ino, 1)
    with pytest.raises(pyfuse3.FUSEError) as info:
        inodes.path(sys_ino)
    assert info.value.errno == errno.ESTALE
    assert inodes.inode(("sys",)) != sys_ino
    unused = inodes.inode(("etc",))
    inodes.drop_unreferenced(unused)
    assert len(inodes) == 2  # the root and the new ("sys",)
