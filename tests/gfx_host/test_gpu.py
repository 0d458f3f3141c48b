"""Physical GPUs and the host: type catalogue, create/remove, lookups, UUID rules."""

from __future__ import annotations

import pytest

from tests.gfx_host.helpers import GVT, NV, PARENT, U1, U2
from vgpusim.common.errors import AlreadyExists, Busy, Exhausted, InvalidArgument, NotFound
from vgpusim.gfx_host.core.fakes import FakePinner
from vgpusim.gfx_host.core.gpu import GfxHost, PhysicalGpu, canonical_uuid
from vgpusim.gfx_host.core.host_config import default_host_config
from vgpusim.gfx_host.core.vgpu import VgpuState


def test_type_catalogue() -> None:
    gpu = PhysicalGpu(PARENT, GVT)
    types = {t.type_id: t for t in gpu.types()}
    assert list(types) == ["i915-GVTg_V5_8", "i915-GVTg_V5_4", "i915-GVTg_V5_2", "i915-GVTg_V5_1"]
    t4 = types["i915-GVTg_V5_4"]
    assert (t4.name, t4.device_api, t4.available_instances) == ("GVTg_V5_4", "vfio-pci", 5)
    assert t4.description.startswith("low_gm_size: 128MB\n")
    assert PhysicalGpu("0000:65:00.0", NV).types()[3].name == "NVIDIA A10-4Q"


def test_create_and_remove_return_resources() -> None:
    gpu = PhysicalGpu(PARENT, GVT)
    vgpu = gpu.create_vgpu(U1.upper(), "i915-GVTg_V5_4")
    assert vgpu.uuid == U1 and vgpu.parent == PARENT and vgpu.vgpu_id == 1
    assert gpu.available_instances("i915-GVTg_V5_4") == 4 and gpu.get_vgpu(U1) is vgpu
    with pytest.raises(AlreadyExists) as exc:
        gpu.create_vgpu(U1, "i915-GVTg_V5_8")
    assert exc.value.reason == "UUID_IN_USE"
    gpu.remove_vgpu(U1)
    assert gpu.available_instances("i915-GVTg_V5_4") == 5 and gpu.vgpus() == ()
    assert vgpu.state is VgpuState.DESTROYED
    with pytest.raises(NotFound) as nf:
        gpu.get_vgpu(U1)
    assert nf.value.reason == "DEVICE_NOT_FOUND"


def test_vendor_errors_pass_through() -> None:
    gpu = PhysicalGpu(PARENT, GVT)
    gpu.create_vgpu(U1, "i915-GVTg_V5_1")
    with pytest.raises(Exhausted) as exc:
        gpu.create_vgpu(U2, "i915-GVTg_V5_1")
    assert exc.value.reason == "LOW_GM_EXHAUSTED" and exc.value.metadata["parent"] == PARENT
    assert len(gpu.vgpus()) == 1
    with pytest.raises(NotFound):
        gpu.create_vgpu(U2, "i915-GVTg_V5_3")


async def test_remove_of_an_open_vgpu_is_busy() -> None:
    gpu = PhysicalGpu(PARENT, GVT)
    vgpu = gpu.create_vgpu(U1, "GVTg_V5_8")
    vgpu.open("c", FakePinner())
    assert gpu.open_vgpus() == (vgpu,)
    with pytest.raises(Busy):
        gpu.remove_vgpu(U1)
    await vgpu.release()
    gpu.remove_vgpu(U1)
    assert gpu.statistics().vgpus == 0 and gpu.statistics().resources.frees_total == 1


def test_uuid_rules() -> None:
    assert canonical_uuid(U1.upper()) == U1
    for bad in ("", "not-a-uuid", U1.replace("-", ""), "{" + U1 + "}", U1 + "\n"):
        with pytest.raises(InvalidArgument) as exc:
            canonical_uuid(bad)
        assert exc.value.reason == "UUID_INVALID"


def test_host_from_default_config() -> None:
    host = GfxHost(default_host_config())
    assert [g.parent for g in host.gpus()] == ["0000:00:02.0", "0000:65:00.0"]
    vgpu = host.gpu("0000:65:00.0").create_vgpu(U2, "nvidia-A10-8Q")
    assert host.find_vgpu(U2) is vgpu
    with pytest.raises(NotFound) as exc:
        host.gpu("0000:99:00.0")
    assert exc.value.reason == "PARENT_NOT_FOUND"
    with pytest.raises(NotFound):
        host.find_vgpu(U1)
