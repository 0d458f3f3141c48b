"""The real mdevctl (Debian's 1.2.0) against the mounted simulator, through ``unshare -m`` + bind mounts.

mdevctl 1.2.0 has no ``MDEVCTL_ENV_ROOT``, so each command runs in a private mount namespace
where ``<mount>/sys`` is bound over ``/sys`` and ``<mount>/etc/mdevctl.d`` over
``/etc/mdevctl.d`` (reference ``mdevctl.md`` §1). Skipped when mdevctl, ``unshare -m`` or FUSE
is unavailable. Outputs and error messages are mdevctl's own; the errno of a failed store
reaches it unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.vgpu_bus.sysfs.harness import BIG, GPU, SMALL, SMALL_GPU, U1, U2, U3, BusThread
from vgpusim.common.errors import Exhausted
from vgpusim.vgpu_bus.core import Attr, StartPolicy
from vgpusim.vgpu_bus.core.mdevctl_json import types_json

pytestmark = pytest.mark.timeout(90)

BIND = 'mount --bind "$0/sys" /sys && mount --bind "$0/etc/mdevctl.d" /etc/mdevctl.d && exec "$@"'


def _unavailable() -> str | None:
    for tool in ("mdevctl", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.isdir("/etc/mdevctl.d"):
        return "/etc/mdevctl.d (the bind target) is missing"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare -m is not permitted: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def root(mount: Path) -> Path:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    return mount


def mdevctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mdevctl args`` seeing ``root`` as ``/``; its exit code and outputs."""
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", BIND, str(root), "mdevctl", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def ok(root: Path, *args: str) -> str:
    result = mdevctl(root, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(root: Path, *args: str) -> str:
    result = mdevctl(root, *args)
    assert result.returncode == 1, result.stdout
    return result.stderr


def test_types_shows_every_parent_with_live_counts(root: Path, bus_thread: BusThread) -> None:
    assert ok(root, "types", "-p", SMALL_GPU) == (
        f"{SMALL_GPU}\n"
        f"  {BIG}\n"
        "    Available instances: 0\n"
        "    Device API: vfio-pci\n"
        "    Name: GVTg_V5_2\n"
        "    Description: low_gm_size: 256MB, high_gm_size: 1024MB, weight: 8\n"
        f"  {SMALL}\n"
        "    Available instances: 2\n"
        "    Device API: vfio-pci\n"
        "    Name: GVTg_V5_8\n"
        "\n"  # mdevctl ends every listing with an empty line
    )
    core = bus_thread.call(bus_thread.bus.devices.list_types)
    assert json.loads(ok(root, "types", "--dumpjson")) == types_json(core)


def test_start_list_stop_is_one_with_the_bus(root: Path, bus_thread: BusThread) -> None:
    bus = bus_thread.bus
    assert ok(root, "start", "-u", U1, "-p", GPU, "-t", SMALL) == ""
    assert bus_thread.sync(lambda: bus.devices.device_info(U1)).type_id == SMALL
    bus_thread.call(lambda: bus.devices.create_device(U2, SMALL_GPU, BIG.replace("V5_2", "V5_8")))
    assert ok(root, "list") == f"{U1} {GPU} {SMALL} manual\n{U2} {SMALL_GPU} {SMALL} manual\n\n"
    assert "Available instances: 7" in ok(root, "types", "-p", GPU)
    assert ok(root, "stop", "-u", U1) == ""
    assert bus_thread.sync(lambda: bus.devices.find_device(U1)) is None
    assert ok(root, "list") == f"{U2} {SMALL_GPU} {SMALL} manual\n\n"
    assert ok(root, "stop", "-u", U2) == ""
    assert ok(root, "list") == "\n"


def test_errors_reach_mdevctl(root: Path, bus_thread: BusThread) -> None:
    assert fails(root, "start", "-u", U1, "-p", SMALL_GPU, "-t", BIG) == (
        f"Error: No available instances of {BIG} on {SMALL_GPU}\n"
    )
    assert fails(root, "start", "-u", U1, "-p", "0000:00:09.0", "-t", SMALL) == (
        "Error: Unable to find parent device '0000:00:09.0'\n"
    )
    assert fails(root, "start", "-u", U1, "-p", GPU, "-t", "i915-nosuch") == (
        f"Error: Parent {GPU} does not support mdev type i915-nosuch\n"
    )
    vendor = bus_thread.vendors[GPU]
    bus_thread.sync(lambda: vendor.fail_next("create", Exhausted("no aperture", reason="APERTURE_EXHAUSTED")))
    assert fails(root, "start", "-u", U1, "-p", GPU, "-t", SMALL) == (
        f"Error: Failed to create mdev {U1}, type {SMALL} on {GPU}\n\n"
        "Caused by:\n    No space left on device (os error 28)\n"
    )
    ok(root, "start", "-u", U1, "-p", GPU, "-t", SMALL)
    assert fails(root, "start", "-u", U1, "-p", GPU, "-t", SMALL) == "Error: Device already exists\n"
    assert fails(root, "stop", "-u", U2) == (
        f"Error: Error removing device {U2}\n\nCaused by:\n    No such file or directory (os error 2)\n"
    )


def test_parallel_starts_get_exactly_the_free_slots(root: Path, bus_thread: BusThread) -> None:
    uuids = [f"{i:08x}-1111-4000-8000-000000000000" for i in range(1, 9)]
    with ThreadPoolExecutor(len(uuids)) as pool:
        results = list(
            pool.map(lambda u: mdevctl(root, "start", "-u", u, "-p", SMALL_GPU, "-t", SMALL), uuids)
        )
    assert sum(1 for result in results if result.returncode == 0) == 2
    for result in results:
        if result.returncode:
            assert "No available instances" in result.stderr or "(os error 28)" in result.stderr
    assert len(ok(root, "list").split()) == 2 * 4


def test_define_list_undefine_share_the_bus_definitions(root: Path, bus_thread: BusThread) -> None:
    bus = bus_thread.bus
    assert ok(root, "define", "-u", U1, "-p", GPU, "-t", SMALL) == ""
    assert bus_thread.sync(lambda: bus.definitions.get(U1)).type_id == SMALL
    assert (
        fails(root, "define", "-u", U1, "-p", GPU, "-t", SMALL)
        == f"Error: Device {U1} on {GPU} already defined\n"
    )
    bus_thread.sync(lambda: bus.definitions.define(U3, SMALL_GPU, BIG, start=StartPolicy.AUTO))
    assert ok(root, "list", "--defined") == f"{U1} {GPU} {SMALL} manual\n{U3} {SMALL_GPU} {BIG} auto\n\n"
    ok(root, "modify", "-u", U1, "--auto")
    ok(root, "modify", "-u", U1, "--addattr", "weight", "--value", "2")
    definition = bus_thread.sync(lambda: bus.definitions.get(U1))
    assert (definition.start, definition.attrs) == (StartPolicy.AUTO, (Attr("weight", "2"),))
    ok(root, "start", "-u", U1)
    assert bus_thread.sync(lambda: bus.devices.device_info(U1)).attrs == (Attr("weight", "2"),)
    assert ok(root, "list") == f"{U1} {GPU} {SMALL} auto (defined)\n\n"
    assert ok(root, "list", "--defined", "-u", U1) == f"{U1} {GPU} {SMALL} auto (active)\n\n"
    ok(root, "stop", "-u", U1)
    assert ok(root, "undefine", "-u", U1) == ""
    assert ok(root, "undefine", "-u", U3) == ""
    assert bus_thread.sync(bus.definitions.list_defined) == ()
    assert ok(root, "list", "--defined") == "\n"
    assert fails(root, "undefine", "-u", U1) == "Error: No devices match the specified uuid\n"


def test_a_definition_refused_by_the_core_fails_the_write(root: Path, bus_thread: BusThread) -> None:
    assert fails(root, "define", "-u", U1, "-p", GPU, "-t", "notatype") == (
        f"Error: Failed to write config for device {U1}\n\nCaused by:\n    Invalid argument (os error 22)\n"
    )
    assert bus_thread.sync(bus_thread.bus.definitions.list_defined) == ()


def test_transient_start_with_attributes_is_refused_as_documented(root: Path, tmp_path: Path) -> None:
    jsonfile = tmp_path / "vgpu.json"
    jsonfile.write_text(json.dumps({"mdev_type": SMALL, "start": "manual", "attrs": [{"weight": "2"}]}))
    assert fails(root, "start", "-u", U1, "-p", GPU, "--jsonfile", str(jsonfile)) == (
        "Error: Invalid attribute 'weight'\n"
    )
    assert ok(root, "list") == "\n"  # mdevctl removed the device it had created
