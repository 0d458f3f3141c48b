"""Structured logging: JSON lines with the fixed keys plus extras, or text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from vgpusim.common.logs import get_logger, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root")
def test_json_lines() -> None:
    out = io.StringIO()
    setup_logging("vgpu_bus", level="debug", stream=out)
    log = get_logger("vgpusim.vgpu_bus.core")
    log.info("device %s created", "d1", extra={"uuid": "1234", "count": 2})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "info" and first["svc"] == "vgpu_bus"
    assert first["logger"] == "vgpusim.vgpu_bus.core" and first["msg"] == "device d1 created"
    assert (first["uuid"], first["count"]) == ("1234", 2)
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2024-01-01T00:00:00.000Z")
    assert second["level"] == "error" and "ValueError: bad" in second["exc"]


@pytest.mark.usefixtures("restore_root")
def test_text_and_levels() -> None:
    out = io.StringIO()
    setup_logging("gfx_host", level="warning", fmt="text", stream=out)
    log = get_logger("t")
    log.info("hidden")
    log.warning("shown", extra={"vgpu": "v1", "n": 3})
    line = out.getvalue().strip()
    assert "hidden" not in line
    assert line.endswith("warning gfx_host t: shown vgpu='v1' n=3")


@pytest.mark.usefixtures("restore_root")
def test_setup_twice_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("a", stream=first)
    setup_logging("b", stream=second)
    assert len(root.handlers) == before + 1
    get_logger("x").warning("once")
    assert first.getvalue() == "" and json.loads(second.getvalue())["svc"] == "b"


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="level"):
        setup_logging("a", level="loud")
    with pytest.raises(ValueError, match="format"):
        setup_logging("a", fmt="xml")
