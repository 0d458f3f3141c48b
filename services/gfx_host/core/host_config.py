"""Host configuration: which physical GPUs this gfx_host drives, and their models.

A host config is a TOML file::

    [host]                       # optional
    models_dir = "my-models"     # where model files live (relative to this file); default: shipped

    [[gpu]]
    parent = "0000:00:02.0"      # the parent device name (PCI address), unique
    model = "gvtg-skl"           # models/<model>.toml

:data:`DEFAULT_HOST_TOML` is the embedded default of ``vgpusim up``: two simulated GPUs, one
GVT-g-like iGPU and one NVIDIA-like A10, so both models are exercised.

Glossary:
- parent: a physical GPU as the mdev bus names it (``mdev_bus`` entry), here a PCI address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.errors import NotFound
from vgpusim.gfx_host.core.models import MODEL_NAME_RE, GpuModel, available_models, load_model
from vgpusim.gfx_host.core.schema import TomlTable, load_toml, parse_toml

HOST_CONFIG_INVALID = "HOST_CONFIG_INVALID"
PARENT_RE = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]"
MAX_GPUS = 16

DEFAULT_HOST_TOML = """\
# The embedded default host: two simulated GPUs, one of each shipped model.
[[gpu]]
parent = "0000:00:02.0"
model = "gvtg-skl"

[[gpu]]
parent = "0000:65:00.0"
model = "nvidia-a10"
"""


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """One physical GPU of the host."""

    parent: str
    model: GpuModel


@dataclass(frozen=True, slots=True)
class HostConfig:
    """The GPUs of a host, in config order; ``source`` names where it came from."""

    gpus: tuple[GpuConfig, ...]
    source: str


def default_host_config() -> HostConfig:
    """The embedded default host (:data:`DEFAULT_HOST_TOML`)."""
    return parse_host_config(DEFAULT_HOST_TOML, file="<default host>")


def load_host_config(path: Path) -> HostConfig:
    """Load and validate the host config file at ``path``."""
    root = load_toml(path, reason=HOST_CONFIG_INVALID, not_found_reason="HOST_CONFIG_NOT_FOUND")
    return _parse(root, base_dir=path.parent)


def parse_host_config(text: str, *, file: str, base_dir: Path | None = None) -> HostConfig:
    """Validate host config ``text``; ``file`` names it in errors, ``base_dir`` anchors models_dir."""
    return _parse(parse_toml(text, file=file, reason=HOST_CONFIG_INVALID), base_dir=base_dir or Path.cwd())


def _parse(root: TomlTable, *, base_dir: Path) -> HostConfig:
    models_dir: Path | None = None
    if root.has("host"):
        host = root.table("host")
        if host.has("models_dir"):
            models_dir = base_dir / host.string("models_dir")
        host.finish()
    entries = root.tables("gpu")
    if len(entries) > MAX_GPUS:
        raise root.error("gpu", f"at most {MAX_GPUS} GPUs per host, got {len(entries)}")
    gpus: list[GpuConfig] = []
    for entry in entries:
        parent = entry.string("parent", pattern=PARENT_RE)
        if any(g.parent == parent for g in gpus):
            raise entry.error("parent", f"duplicate parent {parent!r}")
        model_name = entry.string("model", pattern=MODEL_NAME_RE)
        try:
            model = load_model(model_name, models_dir)
        except NotFound as exc:
            known = ", ".join(available_models(models_dir)) or "none"
            raise entry.error("model", f"unknown GPU model {model_name!r} (available: {known})") from exc
        entry.finish()
        gpus.append(GpuConfig(parent=parent, model=model))
    root.finish()
    return HostConfig(gpus=tuple(gpus), source=root.file)
