"""gfx_host's configuration: the common service fields plus the host's GPUs and engine knobs.

The GPUs come from ``host_config`` (a TOML file of ``[[gpu]]`` tables, see
:mod:`vgpusim.gfx_host.core.host_config`); when it is empty, the ``--config`` file itself is read
for ``[[gpu]]`` tables, and without any the embedded default host (two GPUs) is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgpusim.common.config import BaseServiceConfig, option


@dataclass(frozen=True, kw_only=True)
class GfxHostConfig(BaseServiceConfig):
    """gfx_host settings (env ``VGPUSIM_GFX_HOST_<FIELD>``, flags ``--<field>``, ``[gfx_host]``)."""

    host_config: str = option("", "TOML file with [[gpu]] tables; empty: the embedded default host")
    watchdog_ms: int = option(
        500, "a workload running longer than this (GPU time, or real time under load) is a hang of its vGPU"
    )
    iommu_target: str = option("", "gRPC target of iommu_type2; empty: its socket in the state dir")
    bus_target: str = option("", "gRPC target of vgpu_bus; empty: its socket in the state dir")
    dependency_timeout_s: float = option(30.0, "how long to wait for iommu_type2 and vgpu_bus at start")
