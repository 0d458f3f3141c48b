"""Fixtures of the command engine tests."""

from __future__ import annotations

import pytest

from vgpusim.gfx_host.core.engine.testing import EngineRig


@pytest.fixture
def rig() -> EngineRig:
    return EngineRig()
