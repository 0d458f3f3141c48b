"""The build entry points agree with each other: .ci/run, the Makefile, the README, the scripts.

Glossary: *target* = a GNU make target; *documented target* = one the README tells people to run
as ``make NAME``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"
CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.md"
SHELL_SCRIPTS = [*sorted((ROOT / "scripts").glob("*.sh")), CI_RUN, ROOT / "scripts" / "vgpusim-service"]

# What `make test` must run, in this order (pytest last, so its summary closes the CI log).
TEST_STEPS = ["venv", "lint", "typecheck", "buf", "check-gen", "compose-check", "pytest"]


def makefile_targets() -> set[str]:
    text = MAKEFILE.read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z-]*):(?!=)", text, flags=re.MULTILINE))


def phony_targets() -> set[str]:
    text = MAKEFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    names: set[str] = set()
    for line in re.findall(r"^\.PHONY:(.*)$", text, flags=re.MULTILINE):
        names.update(line.split())
    return names


def test_ci_runs_make_test() -> None:
    text = CI_RUN.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert re.search(r"^exec make test$", text, flags=re.MULTILINE)
    assert "APT_PACKAGES=(" in text


def test_make_test_runs_every_check_in_order() -> None:
    text = MAKEFILE.read_text(encoding="utf-8")
    match = re.search(r"^test:([^#\n]*)", text, flags=re.MULTILINE)
    assert match
    assert match.group(1).split() == TEST_STEPS


def test_targets_are_phony() -> None:
    real_files = {t for t in makefile_targets() if "." in t}
    assert makefile_targets() - real_files <= phony_targets()


def test_readme_names_only_existing_targets() -> None:
    documented = set(re.findall(r"`make ([a-z][a-z-]*)", README.read_text(encoding="utf-8")))
    assert {"demo", "test"} <= documented
    assert documented <= makefile_targets()


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_parses(script: Path) -> None:
    shell = "sh" if script.read_text(encoding="utf-8").startswith("#!/bin/sh") else "bash"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_dry_run_of_test() -> None:
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "test"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("ruff check", "mypy", "buf lint", "gen_protos.py --check", "check-compose.sh"):
        assert command in result.stdout
