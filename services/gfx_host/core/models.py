"""GPU models as data: one TOML file per model in ``services/gfx_host/models/``.

A model says what a physical GPU has (graphics memory, fences, engines, PCI IDs) and which vGPU
types it offers.  Two kinds exist:

- ``gvt``: GVT-g-like.  ``[memory] aperture_mib`` (low GM, CPU-visible through BAR2),
  ``ggtt_mib`` (all GM; high/hidden GM = ggtt - aperture), ``fences``; ``[host_reserved]``
  ``low_gm_mib``/``high_gm_mib``/``fences``; each ``[[type]]`` has ``low_gm_mib``,
  ``high_gm_mib``, ``fences``.  As in i915's ``intel_gvt_init_vgpu_types``, the type list is cut
  at the first type whose low GM does not fit in the aperture left after the host reservation.
- ``framebuffer``: NVIDIA-like.  ``[memory] framebuffer_mib``; ``[host_reserved] framebuffer_mib``;
  each ``[[type]]`` has ``framebuffer_mib`` and ``max_instances``.  The framebuffer is modelled
  as low GM (the vGPU's whole graphics memory is CPU-visible); there is no high GM and no fence.
  ``homogeneous = true`` means one type per GPU at a time.

``[model]`` (both kinds): ``kind``, ``driver`` (prefix of type-ids: ``i915-GVTg_V5_4``),
``description``, ``vendor_id``, ``device_id``, ``subsystem_vendor_id``, ``subsystem_id``,
``revision``, ``max_vgpus`` (vGPU IDs 1..max), ``homogeneous``, ``engines``.  Every type also
has ``name``, optional ``pretty_name``, ``weight`` (1..16, scheduler share) and ``resolution``.
Unknown keys are errors.  Internally every size is in bytes.

Glossary:
- type name: the vendor's sysfs name (``GVTg_V5_4``); type-id: ``<driver>-<name>``.
- low GM / high GM: aperture (mappable) / hidden graphics memory, see ``core/__init__``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from vgpusim.common.errors import InvalidArgument, NotFound
from vgpusim.gfx_host.core.schema import TomlTable, load_toml

MIB = 1 << 20
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
ENGINE_NAMES = ("rcs", "bcs", "vcs")  # order = engine index, see registers.Engine
MODEL_INVALID = "GPU_MODEL_INVALID"
MODEL_NOT_FOUND = "GPU_MODEL_NOT_FOUND"
MODEL_NAME_RE = r"[a-z0-9][a-z0-9._-]{0,62}"
_TYPE_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_RES_RE = r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}"
_MAX_MIB = 1 << 20  # 1 TiB of graphics memory is plenty for a simulation


class ModelKind(enum.Enum):
    """Which resources a model partitions."""

    GVT = "gvt"
    FRAMEBUFFER = "framebuffer"


@dataclass(frozen=True, slots=True)
class VgpuType:
    """One vGPU type of a model, all sizes in bytes."""

    name: str
    type_id: str
    pretty_name: str
    description: str
    low_gm: int
    high_gm: int
    fences: int
    weight: int
    width: int
    height: int
    max_instances: int | None


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A physical GPU model; ``types`` is the exposed (already cut) catalogue."""

    name: str
    kind: ModelKind
    driver: str
    description: str
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_id: int
    revision: int
    aperture_size: int
    gm_size: int
    num_fences: int
    reserved_low_gm: int
    reserved_high_gm: int
    reserved_fences: int
    max_vgpus: int
    homogeneous: bool
    engines: tuple[str, ...]
    types: tuple[VgpuType, ...]
    source: str

    @property
    def high_gm_size(self) -> int:
        """Hidden GM: everything of the GGTT above the aperture (0 for framebuffer models)."""
        return self.gm_size - self.aperture_size

    def find_type(self, type_id_or_name: str) -> VgpuType:
        """The type named by its type-id (``i915-GVTg_V5_4``) or its bare name; NotFound otherwise."""
        for t in self.types:
            if type_id_or_name in (t.type_id, t.name):
                return t
        raise NotFound(
            f"model {self.name} has no vGPU type {type_id_or_name!r}",
            reason="TYPE_NOT_FOUND",
            metadata={"model": self.name, "type": type_id_or_name},
        )


def available_models(models_dir: Path | None = None) -> list[str]:
    """Names of the model files in ``models_dir`` (default: the shipped ones), sorted."""
    return sorted(p.stem for p in (models_dir or MODELS_DIR).glob("*.toml"))


def load_model(name: str, models_dir: Path | None = None) -> GpuModel:
    """Load the model ``<models_dir>/<name>.toml``; InvalidArgument naming file and key if malformed."""
    if not isinstance(name, str) or not re.fullmatch(MODEL_NAME_RE, name):
        raise InvalidArgument(
            f"bad GPU model name {name!r}", reason=MODEL_INVALID, metadata={"model": str(name)}
        )
    return load_model_file((models_dir or MODELS_DIR) / f"{name}.toml")


def load_model_file(path: Path) -> GpuModel:
    """Load and validate one model file (its name is the file's stem)."""
    root = load_toml(path, reason=MODEL_INVALID, not_found_reason=MODEL_NOT_FOUND)
    return _parse_model(root, name=path.stem)


def _mib(table: TomlTable, key: str, *, lo: int = 1) -> int:
    return table.integer(key, lo=lo, hi=_MAX_MIB) * MIB


def _resolution(table: TomlTable) -> tuple[int, int]:
    width, height = table.string("resolution", pattern=_RES_RE).split("x")
    return int(width), int(height)


def _parse_model(root: TomlTable, *, name: str) -> GpuModel:
    m = root.table("model")
    kind = ModelKind(m.choice("kind", tuple(k.value for k in ModelKind)))
    driver = m.string("driver", pattern=r"[a-z][a-z0-9_]{0,15}")
    vendor_id, device_id, subsystem_vendor_id, subsystem_id = (
        m.integer(key, lo=0, hi=0xFFFF)
        for key in ("vendor_id", "device_id", "subsystem_vendor_id", "subsystem_id")
    )
    description = m.string("description")
    revision = m.integer("revision", 0, lo=0, hi=0xFF)
    max_vgpus = m.integer("max_vgpus", lo=1, hi=64)
    homogeneous = m.boolean("homogeneous", False)
    engines = m.str_list("engines", choices=ENGINE_NAMES)
    m.finish()
    mem, res = root.table("memory"), root.table("host_reserved")
    if kind is ModelKind.GVT:
        aperture, gm_size = _mib(mem, "aperture_mib"), _mib(mem, "ggtt_mib")
        fences = mem.integer("fences", lo=0, hi=1024)
        if aperture >= gm_size:
            raise mem.error("aperture_mib", "the aperture must be smaller than ggtt_mib")
        reserved = (
            _mib(res, "low_gm_mib", lo=0),
            _mib(res, "high_gm_mib", lo=0),
            res.integer("fences", lo=0),
        )
        if reserved[0] >= aperture:
            raise res.error("low_gm_mib", "host reservation leaves no aperture for vGPUs")
        if reserved[1] >= gm_size - aperture:
            raise res.error("high_gm_mib", "host reservation leaves no high GM for vGPUs")
        if reserved[2] > fences:
            raise res.error("fences", f"more than the {fences} fences of [memory]")
    else:
        aperture = gm_size = _mib(mem, "framebuffer_mib")
        fences = 0
        reserved = (_mib(res, "framebuffer_mib", lo=0), 0, 0)
        if reserved[0] >= aperture:
            raise res.error("framebuffer_mib", "host reservation leaves no framebuffer for vGPUs")
    mem.finish()
    res.finish()
    types = _parse_types(root, kind=kind, driver=driver, low_free=aperture - reserved[0])
    root.finish()
    return GpuModel(
        name=name,
        kind=kind,
        driver=driver,
        description=description,
        vendor_id=vendor_id,
        device_id=device_id,
        subsystem_vendor_id=subsystem_vendor_id,
        subsystem_id=subsystem_id,
        revision=revision,
        aperture_size=aperture,
        gm_size=gm_size,
        num_fences=fences,
        reserved_low_gm=reserved[0],
        reserved_high_gm=reserved[1],
        reserved_fences=reserved[2],
        max_vgpus=max_vgpus,
        homogeneous=homogeneous,
        engines=engines,
        types=types,
        source=root.file,
    )


def _parse_types(root: TomlTable, *, kind: ModelKind, driver: str, low_free: int) -> tuple[VgpuType, ...]:
    parsed: list[VgpuType] = []
    for t in root.tables("type"):
        name = t.string("name", pattern=_TYPE_NAME_RE)
        if any(p.name == name for p in parsed):
            raise t.error("name", f"duplicate type name {name!r}")
        pretty = t.string("pretty_name", name)
        weight = t.integer("weight", lo=1, hi=16)
        width, height = _resolution(t)
        if kind is ModelKind.GVT:
            low, high, fences = (
                _mib(t, "low_gm_mib"),
                _mib(t, "high_gm_mib"),
                t.integer("fences", lo=0, hi=64),
            )
            max_instances = None
            description = (
                f"low_gm_size: {low // MIB}MB\nhigh_gm_size: {high // MIB}MB\nfence: {fences}\n"
                f"resolution: {width}x{height}\nweight: {weight}\n"
            )
        else:
            low, high, fences = _mib(t, "framebuffer_mib"), 0, 0
            max_instances = t.integer("max_instances", lo=1, hi=64)
            description = (
                f"num_heads=4, frl_config=60, framebuffer={low // MIB}M, "
                f"max_resolution={width}x{height}, max_instance={max_instances}"
            )
        t.finish()
        parsed.append(
            VgpuType(
                name=name,
                type_id=f"{driver}-{name}",
                pretty_name=pretty,
                description=description,
                low_gm=low,
                high_gm=high,
                fences=fences,
                weight=weight,
                width=width,
                height=height,
                max_instances=max_instances,
            )
        )
    # i915 intel_gvt_init_vgpu_types: stop at the first type whose low GM does not fit.
    exposed: list[VgpuType] = []
    for vt in parsed:
        if low_free // vt.low_gm == 0:
            break
        exposed.append(vt)
    if not exposed:
        raise root.error("type", "no type fits in the memory left after the host reservation")
    return tuple(exposed)
