"""Workload parameters: typed by their defaults, checked before the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vgpusim.common.errors import InvalidArgument
from vgpusim.gfx_host.core.registers import Engine
from vgpusim.qemu_frontend.guest.context import Params, ParamValue

DEFAULTS: dict[str, ParamValue] = {"bytes": 4096, "interval_ms": 16.0, "op": "all", "engine": "rcs"}


def test_strings_from_the_proto_are_converted() -> None:
    p = Params({"bytes": "0x2000", "interval_ms": "2.5", "engine": "bcs"}, DEFAULTS)
    assert p.integer("bytes") == 0x2000
    assert p.number("interval_ms") == 2.5
    assert p.text("op") == "all"
    assert p.engine() is Engine.BCS


def test_python_values_and_defaults() -> None:
    p = Params({"bytes": 8, "interval_ms": 3}, DEFAULTS)
    assert (p.integer("bytes"), p.number("interval_ms")) == (8, 3.0)
    assert Params(None, DEFAULTS).integer("bytes") == 4096


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        ({"nope": "1"}, lambda p: None),
        ({"bytes": "many"}, lambda p: None),
        ({"interval_ms": "soon"}, lambda p: None),
        ({"bytes": "-1"}, lambda p: p.integer("bytes")),
        ({"bytes": "9"}, lambda p: p.integer("bytes", hi=8)),
        ({"interval_ms": "-1"}, lambda p: p.number("interval_ms")),
        ({"op": "median"}, lambda p: p.text("op", choices=("all", "crc32"))),
        ({"engine": "gpu"}, lambda p: p.engine()),
    ],
)
def test_bad_values(raw: dict[str, ParamValue], check: Callable[[Params], object]) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check(Params(raw, DEFAULTS))
    assert exc.value.reason == "BAD_WORKLOAD_PARAM"
    assert exc.value.metadata["param"] in raw
