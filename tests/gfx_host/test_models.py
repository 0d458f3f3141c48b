"""GPU model files and host configs: the shipped data, the cut rule, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gfx_host.helpers import GVT, MIB, NV
from vgpusim.common.errors import InvalidArgument, NotFound
from vgpusim.gfx_host.core.host_config import (
    default_host_config,
    load_host_config,
    parse_host_config,
)
from vgpusim.gfx_host.core.models import (
    MODELS_DIR,
    ModelKind,
    available_models,
    load_model,
    load_model_file,
)

GVT_TEXT = (MODELS_DIR / "gvtg-skl.toml").read_text()


def write_model(tmp_path: Path, text: str, name: str = "m") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_models_are_listed() -> None:
    assert available_models() == ["gvtg-skl", "nvidia-a10"]


def test_gvtg_model_numbers() -> None:
    assert GVT.kind is ModelKind.GVT
    assert (GVT.aperture_size, GVT.gm_size, GVT.high_gm_size) == (1024 * MIB, 4096 * MIB, 3072 * MIB)
    assert (GVT.num_fences, GVT.reserved_low_gm, GVT.reserved_high_gm, GVT.reserved_fences) == (
        32,
        128 * MIB,
        384 * MIB,
        4,
    )
    assert GVT.max_vgpus == 7
    table = [
        (t.type_id, t.low_gm // MIB, t.high_gm // MIB, t.fences, t.weight, t.width, t.height)
        for t in GVT.types
    ]
    assert table == [
        ("i915-GVTg_V5_8", 64, 384, 4, 2, 1024, 768),
        ("i915-GVTg_V5_4", 128, 512, 4, 4, 1920, 1200),
        ("i915-GVTg_V5_2", 256, 1024, 4, 8, 1920, 1200),
        ("i915-GVTg_V5_1", 512, 2048, 4, 16, 1920, 1200),
    ]


def test_gvtg_description_is_i915_shaped() -> None:
    assert GVT.find_type("i915-GVTg_V5_8").description == (
        "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2\n"
    )


def test_nvidia_model_numbers() -> None:
    assert NV.kind is ModelKind.FRAMEBUFFER and NV.homogeneous and NV.driver == "nvidia"
    assert NV.aperture_size == NV.gm_size == 24576 * MIB and NV.high_gm_size == 0 and NV.num_fences == 0
    four_q = NV.find_type("nvidia-A10-4Q")
    assert (four_q.low_gm, four_q.high_gm, four_q.fences, four_q.max_instances) == (4096 * MIB, 0, 0, 6)
    assert four_q.pretty_name == "NVIDIA A10-4Q"
    assert NV.types[0].type_id == "nvidia-A10-1Q" and len(NV.types) == 8
    assert "framebuffer=4096M" in four_q.description


def test_find_type_by_name_or_id_and_unknown() -> None:
    assert GVT.find_type("GVTg_V5_4") is GVT.find_type("i915-GVTg_V5_4")
    with pytest.raises(NotFound) as exc:
        GVT.find_type("i915-GVTg_V5_3")
    assert exc.value.reason == "TYPE_NOT_FOUND"


def test_type_list_is_cut_at_first_type_that_does_not_fit(tmp_path: Path) -> None:
    """kernel-mdev §4.1: with a 256 MB aperture only _8 and _4 are exposed."""
    text = GVT_TEXT.replace("aperture_mib = 1024", "aperture_mib = 256")
    model = load_model_file(write_model(tmp_path, text))
    assert [t.name for t in model.types] == ["GVTg_V5_8", "GVTg_V5_4"]


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ("fences = 32", "fences = 32\nfencse = 3", "memory.fencse", "unknown key"),
        (
            "low_gm_mib = 128\nhigh_gm_mib = 512",
            "low_gm_mib = -128\nhigh_gm_mib = 512",
            "type[1].low_gm_mib",
            ">= 1",
        ),
        (
            'weight = 4\nresolution = "1920x1200"',
            'weight = 32\nresolution = "1920x1200"',
            "type[1].weight",
            "<= 16",
        ),
        ('resolution = "1024x768"', 'resolution = "big"', "type[0].resolution", "does not match"),
        ('kind = "gvt"', 'kind = "amd"', "model.kind", "expected one of gvt, framebuffer"),
        ('engines = ["rcs", "bcs"]', 'engines = ["rcs", "gpu"]', "model.engines", "items from"),
        ("max_vgpus = 7", 'max_vgpus = "7"', "model.max_vgpus", "expected an integer"),
        ('driver = "i915"', "", "model.driver", "missing"),
        ("homogeneous = false", "homogeneous = 0", "model.homogeneous", "true or false"),
        ("aperture_mib = 1024", "aperture_mib = 4096", "memory.aperture_mib", "smaller than ggtt_mib"),
        (
            "low_gm_mib = 128\nhigh_gm_mib = 384",
            "low_gm_mib = 1024\nhigh_gm_mib = 384",
            "host_reserved.low_gm_mib",
            "no aperture",
        ),
        ('name = "GVTg_V5_4"', 'name = "GVTg_V5_8"', "type[1].name", "duplicate"),
    ],
)
def test_bad_model_names_file_and_key(tmp_path: Path, old: str, new: str, key: str, problem: str) -> None:
    assert old in GVT_TEXT
    path = write_model(tmp_path, GVT_TEXT.replace(old, new, 1))
    with pytest.raises(InvalidArgument) as exc:
        load_model_file(path)
    err = exc.value
    assert err.reason == "GPU_MODEL_INVALID"
    assert err.metadata["file"] == str(path) and err.metadata["key"] == key
    assert str(path) in err.message and f"'{key}'" in err.message and problem in err.message


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write_model(tmp_path, "[model\nkind = 1")
    with pytest.raises(InvalidArgument, match="not valid TOML") as exc:
        load_model_file(path)
    assert exc.value.metadata["file"] == str(path)


def test_no_type_fits(tmp_path: Path) -> None:
    text = GVT_TEXT.replace("low_gm_mib = 64", "low_gm_mib = 4096")
    with pytest.raises(InvalidArgument, match="no type fits"):
        load_model_file(write_model(tmp_path, text))


def test_missing_and_malformed_model_names(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        load_model("no-such-model")
    assert exc.value.reason == "GPU_MODEL_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        load_model("../etc/passwd")


def test_default_host_has_one_gpu_of_each_model() -> None:
    host = default_host_config()
    assert [(g.parent, g.model.name) for g in host.gpus] == [
        ("0000:00:02.0", "gvtg-skl"),
        ("0000:65:00.0", "nvidia-a10"),
    ]


def test_host_config_file_with_own_models_dir(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    write_model(tmp_path / "models", GVT_TEXT.replace("fences = 32", "fences = 16"), name="tiny")
    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nmodels_dir = "models"\n[[gpu]]\nparent = "0000:00:02.0"\nmodel = "tiny"\n')
    host = load_host_config(cfg)
    assert host.gpus[0].model.num_fences == 16 and host.source == str(cfg)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            '[[gpu]]\nparent = "0000:00:02.0"\nmodel = "nope"',
            "gpu[0].model",
            "available: gvtg-skl, nvidia-a10",
        ),
        ('[[gpu]]\nparent = "gpu0"\nmodel = "gvtg-skl"', "gpu[0].parent", "does not match"),
        (
            '[[gpu]]\nparent = "0000:00:02.0"\nmodel = "gvtg-skl"\n' * 2,
            "gpu[1].parent",
            "duplicate",
        ),
        ('[[gpu]]\nparent = "0000:00:02.0"\nmodel = "gvtg-skl"\ncolour = 1', "gpu[0].colour", "unknown key"),
        ("", "gpu", "missing"),
    ],
)
def test_bad_host_config(text: str, key: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_host_config(text, file="host.toml")
    assert exc.value.reason == "HOST_CONFIG_INVALID"
    assert exc.value.metadata == {"file": "host.toml", "key": key, "errno": "EINVAL"}
    assert problem in exc.value.message


def test_missing_host_config_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        load_host_config(tmp_path / "absent.toml")
    assert exc.value.reason == "HOST_CONFIG_NOT_FOUND"
