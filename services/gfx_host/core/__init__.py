"""gfx_host domain core: GPU models, resource partitioning and the vGPU device model.

Pure Python, no grpc, no generated code: the servicer (``vgpusim.gfx_host.servicer``) translates
protos into calls on these objects, and every peer (``iommu_type2`` pinning, guest RAM access) is
an injected ``typing.Protocol``.  ``core/engine/`` (command parser, executor, scheduler) is built
on top of the GTT and register file defined here.

Modules, one concept each:
- ``schema``      validated reading of TOML tables (errors name the file and the key);
- ``models``      GPU models as data (``models/*.toml``): resources, engines, vGPU types;
- ``host_config`` which GPUs a host has (``[[gpu]] parent = ..., model = ...``);
- ``resources``   per-GPU partitioning: low/high GM ranges, fences, vGPU IDs, framebuffer;
- ``pci``         the vGPU's PCI configuration space (BARs, MSI capability);
- ``registers``   the BAR0 register layout (constants), write effects, record types;
- ``regfile``     the register file: guest reads/writes and the device side (rings, interrupts);
- ``gtt``         the GTT window of BAR0 and its shadow (guest pages pinned through iommu_type2);
- ``gmem``        the engine's ``GraphicsMemory`` implemented over the GTT shadow;
- ``display``     QueryGfxPlane / GetGfxDmabuf semantics over the display plane registers;
- ``vgpu``        one vGPU: lifecycle, MMIO dispatch, DMLR reset, failsafe;
- ``gpu``         a physical GPU (parent) and the host: type catalogue, create/remove vGPUs;
- ``fakes``       in-memory ``Pinner`` and ``HostMemory`` for tests.

Glossary:
- GM: graphics memory, the GPU's address space; low GM = aperture (CPU-mappable through BAR2),
  high GM = hidden (GPU-only).  A vGPU owns one low and one high GM range (its partition).
- GGTT / GTT: the global graphics translation table, one 8-byte entry per 4 KiB GM page.
- shadow: the host's copy of the guest's GTT, pointing at pinned host pages.
- DMLR: device-model-level reset (VFIO_DEVICE_RESET on a GVT-g vGPU).
"""
