"""vgpusim: a mediated vGPU stack that runs without a GPU.

The import package ``vgpusim`` is the repository's ``services/`` folder (``src/vgpusim`` links to it):

- ``vgpusim.common``: the shared runtime (server bootstrap, errors, config, metrics, shm).
- ``vgpusim.gen``: code generated from ``proto/`` (never edited by hand).
- ``vgpusim.iommu_type2``, ``vgpusim.vgpu_bus``, ``vgpusim.gfx_host``, ``vgpusim.qemu_frontend``: services.
- ``vgpusim.cli``: the ``vgpusim`` launcher and the ``vgpuctl`` client.
"""

__version__ = "0.1.0"
