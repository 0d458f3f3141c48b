"""The scripts of examples/ run against the fakes (the end-to-end runs against real services come
with the services; these check the scripts against the proto contracts as the fakes implement them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import fakes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLES / script), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_lifecycle(tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    with fakes.running(tmp_path) as servers:
        done = _run("lifecycle.py", "--state-dir", str(tmp_path), "--screenshot", str(shot))
        assert done.returncode == 0, done.stdout + done.stderr
        assert not servers.bus.devices and not servers.frontend.vms
    assert "guest GUEST_STATE_FINISHED: 1 command(s), 1 interrupt(s)" in done.stdout
    assert "WatchInterrupts saw 1 interrupt(s)" in done.stdout
    assert shot.read_bytes() == fakes.PNG_1X1


def test_race(tmp_path: Path) -> None:
    with fakes.running(tmp_path) as servers:
        done = _run("race.py", "--state-dir", str(tmp_path), "--extra", "5")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not servers.bus.devices
    assert "i915-GVTg_V5_8 on 0000:00:02.0: 4 free slot(s); 9 parallel creates" in done.stdout
    assert "created: 4; RESOURCE_EXHAUSTED: 5 {'APERTURE_EXHAUSTED': 5}" in done.stdout


def test_reboot_autostart_reports_a_missing_autostart(tmp_path: Path) -> None:
    """The fakes have no gfx_host to restart: the script must time out, say so and clean up."""
    with fakes.running(tmp_path) as servers:
        done = _run("reboot_autostart.py", "--state-dir", str(tmp_path), "--wait", "0.5")
        assert done.returncode == 1, done.stdout + done.stderr
        assert not servers.bus.definitions
    assert "was not autostarted within 0.5 s" in done.stdout
