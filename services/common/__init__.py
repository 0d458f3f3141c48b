"""vgpusim.common: the runtime every vgpusim service shares.

Modules (one concept each):

- ``errors``: the domain error hierarchy (named after errnos) and its gRPC code table.
- ``paths``: the state dir and every path derived from it (sockets, status files, shm, logs).
- ``config``: one frozen dataclass per service from defaults, TOML, env vars and flags.
- ``logs``: JSON-lines (or text) logging.
- ``rpc``: domain errors on the wire (``@rpc_method``, rich status with ErrorInfo) and the shared
  channel/server options.
- ``clients``: channels, deadline-bound calls that raise domain errors, health waits.
- ``metrics``: the ``/metrics`` endpoint and the gRPC RED metrics interceptor.
- ``status``: the ``<state>/run/<svc>.json`` status file.
- ``server``: the bootstrap (``serve``, ``running_server``, ``run_service``).
- ``shm``: shared-memory segments, rings and notification.

Importing this package sets ``PROMETHEUS_DISABLE_CREATED_SERIES=True`` in the environment unless
it is already set, so that prometheus_client, imported later through ``vgpusim.common.metrics``,
exports no ``*_created`` series (they double the series count for nothing here).

Glossary:
- service: one of ``iommu_type2``, ``vgpu_bus``, ``gfx_host``, ``qemu_frontend``.
- stack: the four services sharing one state dir.
"""

import os

os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
