"""vgpuctl end to end against real grpc.aio servers (the fakes of tests/client/fakes.py) on UNIX sockets.

Most tests run ``main(argv)`` in-process (the servers live in a thread with their own loop) and
compare stdout/stderr byte for byte with what mdevctl 1.2.0 prints; one runs vgpuctl as a
subprocess the way libvirt runs mdevctl.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from vgpusim.cli.vgpuctl import main


def _load_fakes() -> ModuleType:
    name = "vgpusim_test_fakes"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "client" / "fakes.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fakes = _load_fakes()

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
P2, P3 = "0000:00:02.0", "0000:00:03.0"
Result = tuple[int, str, str]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[fakes.ServerThread]:
    with fakes.running(tmp_path) as running:
        yield running


@pytest.fixture
def ctl(servers: fakes.ServerThread, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``vgpuctl --state-dir <served> ARGS...``; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> Result:
        code = main(["--state-dir", str(servers.state_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


TYPES_JSON = """[
  {
    "0000:00:02.0": [
      {
        "i915-GVTg_V5_4": {
          "available_instances": 2,
          "device_api": "vfio-pci",
          "name": "GVTg_V5_4",
          "description": "low_gm_size: 128MB, high_gm_size: 512MB, fence: 4"
        }
      },
      {
        "i915-GVTg_V5_8": {
          "available_instances": 3,
          "device_api": "vfio-pci",
          "name": "GVTg_V5_8",
          "description": "low_gm_size: 64MB, high_gm_size: 384MB, fence: 4"
        }
      }
    ],
    "0000:00:03.0": [
      {
        "i915-GVTg_V5_1": {
          "available_instances": 1,
          "device_api": "vfio-pci",
          "name": "GVTg_V5_1"
        }
      }
    ]
  }
]
"""

TYPES_TEXT = """0000:00:03.0
  i915-GVTg_V5_1
    Available instances: 1
    Device API: vfio-pci
    Name: GVTg_V5_1

"""


def test_types_dumpjson_is_mdevctls_shape(ctl: Callable[..., Result]) -> None:
    assert ctl("start", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_8")[0] == 0
    assert ctl("types", "--dumpjson") == (0, TYPES_JSON, "")


def test_types_text_and_parent_filter(ctl: Callable[..., Result]) -> None:
    assert ctl("types", "-p", P3) == (0, TYPES_TEXT, "")
    code, out, _ = ctl("types")
    assert code == 0
    assert out.startswith(
        "0000:00:02.0\n  i915-GVTg_V5_4\n    Available instances: 2\n    Device API: vfio-pci\n"
    )
    assert "    Description: low_gm_size: 64MB, high_gm_size: 384MB, fence: 4\n" in out
    assert ctl("types", "--parent=nosuchparent") == (0, "\n", "")
    assert ctl("types", "-p", "nosuchparent", "--dumpjson") == (0, "[]\n", "")


def test_list_formats(ctl: Callable[..., Result]) -> None:
    assert ctl("list") == (0, "\n", "")
    assert ctl("list", "--dumpjson") == (0, "[]\n", "")
    assert ctl("start", "-u", U2, "-p", P2, "-t", "i915-GVTg_V5_4")[0] == 0
    assert ctl("define", "-u", U1, "-p", P3, "-t", "i915-GVTg_V5_1", "--auto")[0] == 0
    assert ctl("start", "-u", U1)[0] == 0
    assert ctl("modify", "-u", U1, "--addattr", "sim_attr", "--value", "7")[0] == 0
    assert ctl("list") == (
        0,
        f"{U2} {P2} i915-GVTg_V5_4 manual\n{U1} {P3} i915-GVTg_V5_1 auto (defined)\n\n",
        "",
    )
    assert ctl("list", "--defined", "-v") == (
        0,
        f'{U1} {P3} i915-GVTg_V5_1 auto (active)\n  Attrs:\n    @{{0}}: {{"sim_attr":"7"}}\n\n',
        "",
    )
    expected = {P2: [{U2: {"mdev_type": "i915-GVTg_V5_4", "start": "manual", "attrs": []}}]}
    expected[P3] = [{U1: {"mdev_type": "i915-GVTg_V5_1", "start": "auto", "attrs": []}}]
    code, out, _ = ctl("list", "--dumpjson")
    assert (code, json.loads(out)) == (0, [expected])
    assert out == json.dumps([expected], indent=2) + "\n"
    single = (
        '{\n  "mdev_type": "i915-GVTg_V5_1",\n  "start": "auto",\n'
        '  "attrs": [\n    {\n      "sim_attr": "7"\n    }\n  ]\n}\n'
    )
    assert ctl("list", "-d", "--dumpjson", f"--uuid={U1}") == (0, single, "")
    assert ctl("list", "--dumpjson", "-u", "33333333-3333-4333-8333-333333333333") == (0, "[]\n", "")


def test_start_without_uuid_generates_and_prints_it(
    ctl: Callable[..., Result], servers: fakes.ServerThread
) -> None:
    code, out, err = ctl("start", "-p", P2, "-t", "i915-GVTg_V5_8")
    assert (code, err) == (0, "")
    printed = out.strip()
    assert out == f"{printed}\n" and len(printed) == 36
    assert printed in servers.bus.devices
    assert ctl("start", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_8") == (0, "", "")


def test_opt_equals_value_forms(ctl: Callable[..., Result], servers: fakes.ServerThread) -> None:
    assert ctl("start", f"--uuid={U1.upper()}", f"--parent={P2}", "--type=i915-GVTg_V5_4") == (0, "", "")
    assert servers.bus.devices[U1].type_id == "i915-GVTg_V5_4"
    assert ctl("list", f"-u={U1}") == (0, f"{U1} {P2} i915-GVTg_V5_4 manual\n\n", "")
    assert ctl("stop", f"--uuid={U1}") == (0, "", "")


def test_jsonfile_config(ctl: Callable[..., Result], servers: fakes.ServerThread, tmp_path: Path) -> None:
    config = {"mdev_type": "i915-GVTg_V5_4", "start": "manual", "attrs": [{"a": "1"}, {"b": "2"}, {"a": "3"}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(config))
    assert ctl("start", "-u", U1, "-p", P2, "--jsonfile", str(path)) == (0, "", "")
    assert [(a.name, a.value) for a in servers.bus.devices[U1].attrs] == [("a", "1"), ("b", "2"), ("a", "3")]
    assert ctl("define", "-u", U1, "-p", P2, f"--jsonfile={path}")[0] == 0
    code, out, _ = ctl("list", "-d", "--dumpjson", "-u", U1)
    assert (code, json.loads(out)) == (0, config)


def test_jsonfile_from_stdin(
    ctl: Callable[..., Result], servers: fakes.ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys, "stdin", io.StringIO('{"mdev_type": "i915-GVTg_V5_1", "start": "auto", "attrs": []}')
    )
    code, out, err = ctl("define", f"--parent={P3}", "--jsonfile=/dev/stdin")
    assert (code, err) == (0, "")
    assert servers.bus.definitions[(P3, out.strip())].start == fakes.bus.START_POLICY_AUTO


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "Expecting property name"),
        ('{"mdev_type": "x"}', "invalid json"),
        ('{"mdev_type": "x", "start": "auto", "attrs": {}}', "attributes field is not an array"),
        (
            '{"mdev_type": "x", "start": "auto", "attrs": [{"a": "1", "b": "2"}]}',
            "invalid JSON format for attribute: too many",
        ),
    ],
)
def test_bad_jsonfile(ctl: Callable[..., Result], tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    code, out, err = ctl("start", "-p", P2, "--jsonfile", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"Error: {message}") and err.endswith("\nreason: INVALID_JSON\n")


def test_not_found_exit_code_and_reason(ctl: Callable[..., Result]) -> None:
    assert ctl("stop", "-u", U1) == (1, "", f"Error: no device {U1}\nreason: UNKNOWN_DEVICE\n")
    assert ctl("undefine", "-u", U1) == (
        1,
        "",
        "Error: No devices match the specified uuid\nreason: NOT_DEFINED\n",
    )


def test_resource_exhausted_exit_code_and_reason(ctl: Callable[..., Result]) -> None:
    assert ctl("start", "-u", U1, "-p", P3, "-t", "i915-GVTg_V5_1")[0] == 0
    code, out, err = ctl("start", "-p", P3, "-t", "i915-GVTg_V5_1")
    assert (code, out) == (1, "")
    assert err == f"Error: no aperture left on {P3} for i915-GVTg_V5_1\nreason: APERTURE_EXHAUSTED\n"
    code, _, err = ctl("--json", "start", "-p", P3, "-t", "i915-GVTg_V5_1")
    report = json.loads(err)["error"]
    assert (code, report["reason"], report["code"], report["exit_code"]) == (
        1,
        "APERTURE_EXHAUSTED",
        "RESOURCE_EXHAUSTED",
        1,
    )
    assert report["metadata"] == {"errno": "ENOSPC", "resource": "low_gm"}


def test_other_error_classes(ctl: Callable[..., Result], tmp_path: Path) -> None:
    assert ctl("define", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_4")[0] == 0
    assert ctl("define", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_4") == (
        1,  # mdevctl verbs exit 1, the reason says which error
        "",
        f"Error: Device {U1} on {P2} already defined\nreason: ALREADY_DEFINED\n",
    )
    assert ctl("start", "-t", "i915-GVTg_V5_4", "-u", U2)[0] == 1  # type without parent
    assert ctl("start", "-p", P2, "-t", "i915-GVTg_V5_4", "-u", U2)[0] == 0
    code, vm_id, _ = ctl("vm", "create")
    assert ctl("vm", "start-guest", vm_id.strip())[0] == 10  # WrongState: NO_VGPU
    assert ctl("vm", "attach", vm_id.strip(), U2)[0] == 0
    other = ctl("vm", "create", "--memory=64M")[1].strip()
    assert ctl("vm", "attach", other, U2)[0] == 7  # Busy: DEVICE_IN_USE
    assert ctl("vm", "create", "--memory", "1000")[0] == 5
    code, _, err = main_unreachable(tmp_path)
    assert code == 7 and err.endswith("reason: PEER_UNAVAILABLE\n")


def main_unreachable(tmp_path: Path) -> Result:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(["--state-dir", str(tmp_path / "nostack"), "--timeout", "2", "parents"])
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["start"],
        ["start", "-p", P2, "-t", "x", "--jsonfile", "f"],
        ["stop"],
        ["list", "-u", "not-a-uuid"],
        ["modify", "-u", U1, "--addattr", "x"],
        ["modify", "-u", U1, "--auto", "--manual"],
        ["nosuchverb"],
        ["--target", "nosuch=x:1", "list"],
        ["sched", "set", "-p", P2],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: vgpuctl" in capsys.readouterr().err


def test_target_override(
    servers: fakes.ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = servers.state_dir / "run" / "vgpu_bus.sock"
    assert main(["--state-dir", str(tmp_path / "other"), "types", f"--target=bus=unix:{sock}", "-p", P3]) == 0
    assert capsys.readouterr().out == TYPES_TEXT


def test_parents_events_and_sched(ctl: Callable[..., Result]) -> None:
    code, out, _ = ctl("parents")
    assert code == 0
    assert out.splitlines()[0].split() == ["PARENT", "DRIVER", "TYPE", "AVAILABLE", "NAME"]
    assert out.splitlines()[3].split() == [P3, "i915", "i915-GVTg_V5_1", "1", "GVTg_V5_1"]
    assert [p["name"] for p in json.loads(ctl("parents", "--json")[1])["parents"]] == [P2, P3]
    ctl("start", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_4")
    ctl("stop", "-u", U1)
    code, out, _ = ctl("events", "--after", "0", "--idle", "0.2")
    assert (code, out) == (0, "")
    code, out, _ = ctl("events", "--after=1", "--idle", "0.3")
    assert code == 0
    assert out.split()[0] == "2" and out.split()[2:] == [
        "device_removed",
        f"uuid={U1}",
        f"parent={P2}",
        "type=i915-GVTg_V5_4",
    ]
    code, out, _ = ctl("--json", "events", "--after", "0", "--follow", "-n", "0")
    assert (code, out) == (0, "")
    code, out, _ = ctl("events", "--after", "1", "--follow", "--count", "1", "--json")
    assert json.loads(out)["kind"] == "EVENT_KIND_DEVICE_REMOVED"
    ctl("start", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_4")
    code, out, _ = ctl("sched", "set", "-p", P2, "--policy", "fixed-share", "--weight", f"{U1}=8")
    assert code == 0
    assert out.startswith(f"parent: {P2}\npolicy: fixed-share\ntick: 1000 us\nswitches: 7\n")
    assert out.splitlines()[-1].split()[:3] == [U1, "8", "1.000"]
    sched = json.loads(ctl("sched", "get", "-p", P2, "--json")[1])
    assert (sched["policy"], sched["entries"][0]["weight"]) == ("SCHEDULER_POLICY_FIXED_SHARE", 8)
    assert ctl("sched", "set", "-p", P2, "--weight", f"{U1}=99")[0] == 5


def test_vm_verbs(ctl: Callable[..., Result], tmp_path: Path) -> None:
    ctl("start", "-u", U1, "-p", P2, "-t", "i915-GVTg_V5_4")
    code, out, _ = ctl("vm", "create", "--name", "g1", "--memory", "512M")
    vm_id = out.strip()
    assert code == 0 and vm_id.startswith("vm-")
    assert ctl("vm", "attach", vm_id, U1) == (0, "", "")
    code, out, _ = ctl("vm", "start-guest", vm_id, "--workload", "smoke", "--wait")
    assert code == 0 and out.startswith("guest: finished (workload smoke)\n")
    assert "interrupts received: 1\n" in out
    status = json.loads(ctl("vm", "status", vm_id, "--json")[1])
    assert (status["vm"]["memory_bytes"], status["guest"]["state"]) == (512 << 20, "GUEST_STATE_FINISHED")
    assert ctl("vm", "list")[1].splitlines()[1].split() == [vm_id, "g1", "512", "finished", U1]
    shot = tmp_path / "shot.png"
    assert ctl("vm", "screenshot", vm_id, "-o", str(shot)) == (
        0,
        f"{shot}: 1x1 PNG, {len(fakes.PNG_1X1)} bytes\n",
        "",
    )
    assert shot.read_bytes() == fakes.PNG_1X1
    assert ctl("vm", "detach", vm_id, U1) == (0, "", "")
    assert ctl("vm", "destroy", vm_id) == (0, "", "")
    assert ctl("vm", "destroy", vm_id)[0] == 3


def test_as_a_subprocess_like_libvirt(servers: fakes.ServerThread) -> None:
    """``mdevctl start --parent=P --jsonfile=/dev/stdin`` as libvirt's nodedev-create runs it."""
    env = {**os.environ, "VGPUSIM_STATE_DIR": str(servers.state_dir)}
    config = json.dumps({"mdev_type": "i915-GVTg_V5_8", "start": "manual", "attrs": [{"x": "1"}]})
    argv = [sys.executable, "-m", "vgpusim.cli.vgpuctl", "start", f"--parent={P2}", "--jsonfile=/dev/stdin"]
    done = subprocess.run(
        argv, input=config, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")
    uuid = done.stdout.strip()
    assert servers.bus.devices[uuid].attrs[0].value == "1"
    stop = [sys.executable, "-m", "vgpusim.cli.vgpuctl", "stop", f"--uuid={uuid}"]
    done = subprocess.run(stop, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0 and uuid not in servers.bus.devices
    done = subprocess.run(stop, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (1, f"Error: no device {uuid}\nreason: UNKNOWN_DEVICE\n")
