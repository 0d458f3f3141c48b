"""Fixtures for the shared-runtime tests: a short state dir and a real echo server on a UNIX socket."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vgpusim.common.config import BaseServiceConfig
from vgpusim.common.server import ServerHandle, running_server

ECHO_APP = Path(__file__).with_name("echo_app.py")


def _load_echo() -> ModuleType:
    if "vgpusim_test_echo_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vgpusim_test_echo_app", ECHO_APP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["vgpusim_test_echo_app"]


@pytest.fixture
def echo() -> ModuleType:
    """The echo test service module (``tests/common/echo_app.py``)."""
    return _load_echo()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state dir (pytest's tmp_path can exceed the 107-byte socket path limit)."""
    with tempfile.TemporaryDirectory(prefix="vgs-") as name:
        yield Path(name)


@pytest.fixture
def config(state_dir: Path) -> BaseServiceConfig:
    return BaseServiceConfig(state_dir=state_dir, log_format="text", stop_grace_s=1.0)


@pytest.fixture
async def echo_server(config: BaseServiceConfig, echo: ModuleType) -> AsyncIterator[ServerHandle]:
    async with running_server("echo", config, echo.add_echo) as handle:
        yield handle


@pytest.fixture
async def channel(echo_server: ServerHandle) -> AsyncIterator[Any]:
    async with echo_server.channel() as chan:
        yield chan
