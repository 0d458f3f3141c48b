"""The mdev sysfs of the bus as a FUSE filesystem, for the unmodified ``mdevctl`` (issue 9).

A pyfuse3 filesystem, served by the vgpu_bus process, that shows the bus as the kernel's mdev
sysfs and mdevctl's ``/etc/mdevctl.d``, both computed live from the one
:class:`~vgpusim.vgpu_bus.core.VgpuBus`: writing a UUID to ``create`` calls the same
``create_device`` as the gRPC ``CreateDevice``, in the same loop, under the same locks, so a
device made either way is seen both ways and in the event stream. See ``docs/sysfs.md``.

Modules:

- ``layout``: the tree's shape, node records, relative link targets, ``FsError``;
- ``sysview``: ``sys/`` from the bus (parents, types, devices, iommu groups);
- ``stores``: what a write to ``create``, ``remove`` or a vendor attribute does;
- ``confview``: ``etc/mdevctl.d``, the bus's definitions as mdevctl's JSON files;
- ``tree``: both views behind one interface, plus the fixed directories;
- ``bridge``: trio handler -> asyncio bus loop calls, errno translation;
- ``handles``: inode numbers with lookup counts, open files;
- ``fs``: the pyfuse3 operations (timeouts 0, ``direct_io``, errno rules);
- ``mounts``: finding and detaching (dead) FUSE mounts, ``unmount_recorded`` for ``vgpusim down``;
- ``server``: ``SysfsServer``, the FUSE thread.

Glossary:
- mount root: the directory given as mount point; it holds ``sys/`` and ``etc/mdevctl.d``, so it
  is an mdevctl environment root (``MDEVCTL_ENV_ROOT`` in mdevctl >= 1.3.0).
- bus loop: the asyncio loop the bus runs on; every tree computation happens there.

Imports: ``from vgpusim.vgpu_bus.sysfs.server import SysfsServer`` (needs the ``sysfs`` extra:
pyfuse3, trio); ``from vgpusim.vgpu_bus.sysfs.mounts import unmount_recorded, unmount_stale``
(standard library only, for ``vgpusim down``). This package's ``__init__`` imports neither.
"""
