# One image for the four vgpusim services (iommu_type2, vgpu_bus, gfx_host, qemu_frontend);
# docker-compose.yml picks the service with its `command`.
#
# Built offline, with no registry (shared/reference/containers.md):
#   scripts/build-base-image.sh   localhost/vgpusim-base: Debian 12 minbase + python3 + python3-venv,
#                                 made with debootstrap and `podman import` (~45 s, ~180 MB)
#   scripts/build-image.sh        fills wheels/ (the project wheel + `pip download --only-binary=:all:`
#                                 of its dependencies), then `podman build --network=none` of this file
# or `make base-image image`. The build context is the repository root; .dockerignore lets only
# wheels/ and scripts/vgpusim-service in.
#
# Run a service by hand:  podman run --rm localhost/vgpusim vgpusim-service gfx_host --state-dir /run/vgpusim
FROM localhost/vgpusim-base

ENV PATH=/opt/vgpusim/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VGPUSIM_STATE_DIR=/run/vgpusim

# Debian's python3 is externally managed (PEP 668): the project gets its own venv.
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/vgpusim \
    && /opt/vgpusim/bin/python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels vgpusim \
    && rm -rf /tmp/wheels \
    && /opt/vgpusim/bin/python -c "import grpc, vgpusim" \
    && mkdir -p /run/vgpusim/run /run/vgpusim/shm

COPY scripts/vgpusim-service /usr/local/bin/vgpusim-service

WORKDIR /run/vgpusim
# Metrics ports of iommu_type2, vgpu_bus, gfx_host, qemu_frontend (VGPUSIM_<SVC>_METRICS_PORT in docker-compose.yml).
EXPOSE 9401 9402 9403 9404
STOPSIGNAL SIGTERM
CMD ["vgpusim-service", "--help"]
