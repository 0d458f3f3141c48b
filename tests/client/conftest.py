"""Fixtures of the client-library tests: the fakes of ``fakes.py`` served on a UNIX socket in tmp_path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from vgpusim.client import Stack


def load_fakes() -> ModuleType:
    """``tests/client/fakes.py`` as a module (tests are not a package under --import-mode=importlib)."""
    name = "vgpusim_test_fakes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fakes.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fakes = load_fakes()


@pytest.fixture
def bus_fake() -> fakes.FakeBus:
    return fakes.default_bus()


@pytest.fixture
def frontend_fake(bus_fake: fakes.FakeBus) -> fakes.FakeFrontend:
    return fakes.FakeFrontend(bus_fake)


@pytest.fixture
async def served(
    tmp_path: Path, bus_fake: fakes.FakeBus, frontend_fake: fakes.FakeFrontend
) -> AsyncIterator[Path]:
    """The state dir whose bus and frontend sockets answer."""
    async with fakes.serve(tmp_path, bus_fake, frontend_fake) as state_dir:
        yield state_dir


@pytest.fixture
async def stack(served: Path) -> AsyncIterator[Stack]:
    async with Stack.connect(served, timeout=5.0) as connected:
        yield connected
