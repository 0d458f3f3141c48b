#!/usr/bin/env bash
# Builds localhost/vgpusim-base, the base of the Dockerfile, with no image registry:
# debootstrap a Debian 12 (bookworm) minbase rootfs with python3 + python3-venv from the machine's
# own Debian mirror, then `podman import` it (shared/reference/containers.md; ~45 s, ~180 MB).
#
# usage: scripts/build-base-image.sh [--force] [--save FILE.tar]
#   --force       rebuild even if the image exists
#   --save FILE   also `podman save` it to FILE (cache it; restore with `podman load -i FILE`)
# Needs root, podman and debootstrap (apt-get install -y podman runc debootstrap).
set -euo pipefail

IMAGE=${VGPUSIM_BASE_IMAGE:-localhost/vgpusim-base}
SUITE=bookworm
force=0 save=""
while (($#)); do
    case $1 in
        --force) force=1 ;;
        --save) save=${2:?--save needs a file}; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-base-image: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build-base-image: error: $*" >&2; exit 1; }
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y podman runc debootstrap)"
done
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"

if ((!force)) && podman image exists "$IMAGE"; then
    echo "build-base-image: $IMAGE exists (--force to rebuild)"
else
    # The mirror is read from the machine's apt sources at run time, never written down.
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [[ -z $mirror ]]; then
        mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or sources.list"

    rootfs=$(mktemp -d /tmp/vgpusim-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-base-image: debootstrap $SUITE into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$mirror"
    # Keep the image small and free of the host's mirror address.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    echo "build-base-image: podman import -> $IMAGE"
    tar -C "$rootfs" --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE"
fi

if [[ -n $save ]]; then
    podman save -o "$save" "$IMAGE"
    echo "build-base-image: saved $IMAGE to $save"
fi
