"""The tree without FUSE: what each path is, lists and reads, and what each write does to the bus."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable

import pytest

from tests.vgpu_bus.sysfs.harness import (
    BIG,
    BIG_DESCRIPTION,
    GPU,
    SMALL,
    SMALL_GPU,
    TYPES,
    U1,
    U2,
    make_vendor,
)
from vgpusim.common.errors import VgpusimError
from vgpusim.vgpu_bus.core import Attr, Definition, DefinitionStore, EventKind, StartPolicy, VgpuBus
from vgpusim.vgpu_bus.core.fakes import FakeOwners
from vgpusim.vgpu_bus.sysfs.confview import definition_text
from vgpusim.vgpu_bus.sysfs.layout import DIR, MODE_RO, MODE_WO, FsError, Kind, Path
from vgpusim.vgpu_bus.sysfs.tree import STATIC_DIRS, Tree

TYPE_DIR: Path = ("sys", "devices", "pci0000:00", GPU, "mdev_supported_types", SMALL)
DEVICE_DIR: Path = ("sys", "devices", "pci0000:00", GPU, U1)


@pytest.fixture
async def bus() -> AsyncIterator[VgpuBus]:
    with VgpuBus(DefinitionStore(":memory:"), FakeOwners()) as core:
        await core.register_parent(GPU, TYPES, make_vendor(8))
        await core.register_parent(SMALL_GPU, TYPES, make_vendor(2))
        yield core


@pytest.fixture
def tree(bus: VgpuBus) -> Tree:
    return Tree(bus)


async def errno_of(call: Awaitable[object]) -> int:
    """The errno of the error ``call`` raises (the test fails if it raises none)."""
    with pytest.raises((FsError, VgpusimError)) as info:
        await call
    error = info.value
    assert isinstance(error, FsError | VgpusimError)
    return error.errno


async def names(tree: Tree, path: Path) -> list[str]:
    return [name for name, _ in await tree.listdir(path)]


async def test_static_directories_exist_and_list_their_entries(tree: Tree) -> None:
    for path, children in STATIC_DIRS.items():
        assert await tree.resolve(path) == DIR
        assert set(children) <= set(await names(tree, path))
    assert await names(tree, ()) == ["etc", "sys", "usr"]
    assert await names(tree, ("etc", "mdevctl.d", "scripts.d")) == ["callouts", "notifiers"]
    assert await names(tree, ("usr", "lib", "mdevctl", "scripts.d", "callouts")) == []


async def test_parents_are_links_to_their_real_directories(tree: Tree) -> None:
    entries = dict(await tree.listdir(("sys", "class", "mdev_bus")))
    assert sorted(entries) == [GPU, SMALL_GPU]
    assert entries[GPU].kind is Kind.LINK
    assert entries[GPU].target == f"../../devices/pci0000:00/{GPU}"
    assert await names(tree, ("sys", "devices", "pci0000:00", GPU)) == ["mdev_supported_types"]
    assert await names(tree, ("sys", "devices", "pci0000:00", GPU, "mdev_supported_types")) == [BIG, SMALL]
    assert await errno_of(tree.resolve(("sys", "class", "mdev_bus", "0000:00:09.0"))) == errno.ENOENT


async def test_type_directory_has_the_sysfs_files_with_live_values(tree: Tree, bus: VgpuBus) -> None:
    assert await names(tree, TYPE_DIR) == ["available_instances", "device_api", "name", "create", "devices"]
    big = (*TYPE_DIR[:-1], BIG)
    assert "description" in await names(tree, big)
    assert await tree.read((*big, "description")) == BIG_DESCRIPTION.encode()
    assert await tree.read((*TYPE_DIR, "available_instances")) == b"8\n"
    assert await tree.read((*TYPE_DIR, "device_api")) == b"vfio-pci\n"
    assert await tree.read((*TYPE_DIR, "name")) == b"GVTg_V5_8\n"
    assert (await tree.resolve((*TYPE_DIR, "create"))).mode == MODE_WO
    assert (await tree.resolve((*TYPE_DIR, "name"))).mode == MODE_RO
    await bus.devices.create_device(U1, GPU, BIG)
    assert await tree.read((*TYPE_DIR, "available_instances")) == b"4\n"
    assert await tree.read((*big, "available_instances")) == b"1\n"
    assert await errno_of(tree.resolve((*TYPE_DIR, "description"))) == errno.ENOENT
    assert await errno_of(tree.read((*TYPE_DIR, "create"))) == errno.EACCES


async def test_a_device_made_through_the_bus_appears_with_every_link(tree: Tree, bus: VgpuBus) -> None:
    await bus.devices.create_device(U1, GPU, SMALL, [Attr("weight", "4")])
    bus_entry = dict(await tree.listdir(("sys", "bus", "mdev", "devices")))[U1]
    assert bus_entry.target == f"../../../devices/pci0000:00/{GPU}/{U1}"
    assert await names(tree, DEVICE_DIR) == ["iommu_group", "mdev_type", "remove", "weight"]
    assert (await tree.resolve((*DEVICE_DIR, "mdev_type"))).target == f"../mdev_supported_types/{SMALL}"
    assert (await tree.resolve((*DEVICE_DIR, "iommu_group"))).target == "../../../../kernel/iommu_groups/0"
    assert (await tree.resolve((*TYPE_DIR, "devices", U1))).target == f"../../../{U1}"
    group = ("sys", "kernel", "iommu_groups", "0", "devices", U1)
    assert (await tree.resolve(group)).target == f"../../../../devices/pci0000:00/{GPU}/{U1}"
    assert await tree.read((*DEVICE_DIR, "weight")) == b"4\n"
    assert await errno_of(tree.read((*DEVICE_DIR, "remove"))) == errno.EACCES
    assert await errno_of(tree.resolve(("sys", "devices", "pci0000:00", SMALL_GPU, U1))) == errno.ENOENT


async def test_create_write_creates_through_the_core_with_its_errnos(tree: Tree, bus: VgpuBus) -> None:
    create = (*TYPE_DIR, "create")
    events = bus.subscribe()
    await tree.write(create, (U1 + "\n").encode())
    assert bus.devices.find_device(U1) is not None
    assert events.get_nowait().kind is EventKind.CREATED  # type: ignore[union-attr]
    assert await errno_of(tree.write(create, U1.encode())) == errno.EEXIST
    assert await errno_of(tree.write(create, b"not-a-uuid")) == errno.EINVAL
    assert await errno_of(tree.write(create, U2.upper().encode() + b"xx")) == errno.EINVAL
    assert await errno_of(tree.write(create, b"\xff" * 36)) == errno.EINVAL
    small_big = ("sys", "devices", "pci0000:00", SMALL_GPU, "mdev_supported_types", BIG, "create")
    assert await errno_of(tree.write(small_big, U2.encode())) == errno.ENOSPC
    assert bus.devices.find_device(U2) is None


async def test_remove_write_parses_like_kstrtoul(tree: Tree, bus: VgpuBus) -> None:
    await bus.devices.create_device(U1, GPU, SMALL)
    remove = (*DEVICE_DIR, "remove")
    assert await errno_of(tree.write(remove, b"yes")) == errno.EINVAL
    await tree.write(remove, b"0\n")
    assert bus.devices.find_device(U1) is not None
    await tree.write(remove, b"1")
    assert bus.devices.find_device(U1) is None
    assert await names(tree, ("sys", "bus", "mdev", "devices")) == []
    assert await names(tree, ("sys", "kernel", "iommu_groups")) == []
    assert await errno_of(tree.resolve(DEVICE_DIR)) == errno.ENOENT


async def test_attribute_writes_accept_the_created_value_only(tree: Tree, bus: VgpuBus) -> None:
    await bus.devices.create_device(U1, GPU, SMALL, [Attr("weight", "4")])
    await tree.write((*DEVICE_DIR, "weight"), b"4\n")
    assert await errno_of(tree.write((*DEVICE_DIR, "weight"), b"8")) == errno.EINVAL
    assert await errno_of(tree.create((*DEVICE_DIR, "nosuch"))) == errno.EACCES


async def test_create_applies_the_attributes_of_a_matching_definition(tree: Tree, bus: VgpuBus) -> None:
    bus.definitions.define(U1, GPU, SMALL, attrs=[Attr("weight", "2")])
    bus.definitions.define(U2, GPU, BIG, attrs=[Attr("weight", "9")])
    await tree.write((*TYPE_DIR, "create"), U1.encode())
    await tree.write((*TYPE_DIR, "create"), U2.encode())  # defined with another type: no attrs
    assert bus.devices.device_info(U1).attrs == (Attr("weight", "2"),)
    assert bus.devices.device_info(U2).attrs == ()


async def test_sysfs_refuses_namespace_changes(tree: Tree) -> None:
    assert await errno_of(tree.mkdir(("sys", "class", "x"))) == errno.EPERM
    assert await errno_of(tree.unlink(("sys", "class", "mdev_bus", GPU))) == errno.EPERM
    assert await errno_of(tree.rmdir(("sys", "devices", "pci0000:00", GPU))) == errno.EPERM
    assert await errno_of(tree.rename(("sys", "class"), ("sys", "klass"), replace=True)) == errno.EPERM
    assert await errno_of(tree.create(("sys", "newfile"))) == errno.EACCES
    assert await errno_of(tree.write((*TYPE_DIR, "name"), b"x")) == errno.EACCES


async def test_parent_going_away_loses_its_class_link_and_types(tree: Tree, bus: VgpuBus) -> None:
    await bus.devices.unregister_parent(SMALL_GPU)
    assert await names(tree, ("sys", "class", "mdev_bus")) == [GPU]


# -- etc/mdevctl.d ----------------------------------------------------------------------------------

CONF: Path = ("etc", "mdevctl.d")


def config(type_id: str, start: str = "manual", attrs: list[dict[str, str]] | None = None) -> bytes:
    return definition_text(
        Definition(
            U1,
            GPU,
            type_id,
            StartPolicy(start),
            tuple(Attr(k, v) for item in attrs or [] for k, v in item.items()),
        )
    )


async def test_definitions_of_the_bus_are_mdevctl_files(tree: Tree, bus: VgpuBus) -> None:
    bus.definitions.define(U1, GPU, SMALL, start=StartPolicy.AUTO, attrs=[Attr("weight", "2")])
    assert await names(tree, CONF) == ["scripts.d", GPU]
    node = await tree.resolve((*CONF, GPU, U1))
    text = await tree.read((*CONF, GPU, U1))
    assert node.size == len(text)
    assert text.decode() == (
        '{\n  "mdev_type": "i915-GVTg_V5_8",\n  "start": "auto",\n  "attrs": [\n    {\n'
        '      "weight": "2"\n    }\n  ]\n}'
    )


async def test_writing_a_definition_file_defines_and_modifies(tree: Tree, bus: VgpuBus) -> None:
    events = bus.subscribe()
    await tree.mkdir((*CONF, GPU))
    assert await errno_of(tree.mkdir((*CONF, GPU))) == errno.EEXIST
    path = (*CONF, GPU, U1)
    await tree.create(path)
    assert (await tree.resolve(path)).size == 0
    await tree.write(path, config(SMALL))
    await tree.write(path, config(SMALL, "auto"))
    await tree.write(path, config(SMALL, "auto", [{"weight": "2"}]))
    await tree.write(path, config(SMALL, "auto", [{"weight": "2"}, {"resolution": "1024x768"}]))
    await tree.write(path, config(SMALL, "auto", [{"resolution": "1024x768"}]))
    await tree.write(path, config(BIG, "manual"))
    await tree.release(path, created=True)
    (defined,) = bus.definitions.list_defined()
    assert defined.definition == Definition(U1, GPU, BIG, StartPolicy.MANUAL, ())
    details = [e.detail for e in iter(events.get_nowait, None) if e is not None]
    assert details == ["define", "modify", "modify", "modify", "modify", "undefine", "define"]


async def test_bad_definition_files_are_einval_and_change_nothing(tree: Tree, bus: VgpuBus) -> None:
    await tree.mkdir((*CONF, GPU))
    path = (*CONF, GPU, U1)
    assert await errno_of(tree.write(path, b'{"start": "manual"}')) == errno.EINVAL
    assert await errno_of(tree.write(path, config("notatype"))) == errno.EINVAL
    assert await errno_of(tree.write(path, b"[1]")) == errno.EINVAL
    assert await errno_of(tree.create((*CONF, GPU, "tmpfile"))) == errno.EINVAL
    assert await errno_of(tree.create((*CONF, GPU, "AAAAAAAA-0000-0000-0000-000000000000"))) == errno.EINVAL
    assert await errno_of(tree.mkdir((*CONF, "bad/name"))) == errno.EINVAL
    assert await errno_of(tree.create((*CONF, "scripts.d", "callouts", "x"))) == errno.EACCES
    assert bus.definitions.list_defined() == ()


async def test_unlink_undefines_and_rmdir_needs_an_empty_directory(tree: Tree, bus: VgpuBus) -> None:
    bus.definitions.define(U1, GPU, SMALL)
    assert await errno_of(tree.rmdir((*CONF, GPU))) == errno.ENOTEMPTY
    await tree.unlink((*CONF, GPU, U1))
    assert bus.definitions.list_defined() == ()
    assert await errno_of(tree.unlink((*CONF, GPU, U1))) == errno.ENOENT
    await tree.mkdir((*CONF, "other"))
    await tree.rmdir((*CONF, "other"))
    assert await names(tree, CONF) == ["scripts.d"]


async def test_rename_moves_a_definition(tree: Tree, bus: VgpuBus) -> None:
    bus.definitions.define(U1, GPU, SMALL)
    bus.definitions.define(U2, SMALL_GPU, BIG)
    await tree.rename((*CONF, GPU, U1), (*CONF, GPU, U2), replace=True)
    assert (
        await errno_of(tree.rename((*CONF, GPU, U2), (*CONF, SMALL_GPU, U2), replace=False)) == errno.EEXIST
    )
    await tree.rename((*CONF, GPU, U2), (*CONF, SMALL_GPU, U2), replace=True)
    (defined,) = bus.definitions.list_defined()
    assert defined.definition == Definition(U2, SMALL_GPU, SMALL)
