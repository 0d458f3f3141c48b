#!/usr/bin/env bash
# Builds localhost/vgpusim (the Dockerfile) offline:
#   1. wheels/ <- the project's own wheel (pip wheel --no-deps) and every dependency as a binary
#      wheel for the image's Python (3.11, CPython, this machine's architecture, glibc manylinux),
#      via `pip download --only-binary=:all:` (pip's usual index and configuration);
#   2. `podman build --network=none` of the Dockerfile, which installs from wheels/ with
#      `pip install --no-index --find-links`.
# The base image localhost/vgpusim-base must exist: scripts/build-base-image.sh.
#
# usage: scripts/build-image.sh [--tag IMAGE]     (default localhost/vgpusim:latest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAG=localhost/vgpusim:latest
while (($#)); do
    case $1 in
        --tag) TAG=${2:?--tag needs a name}; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build-image: error: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman not found (apt-get install -y podman runc)"
podman image exists localhost/vgpusim-base || die "localhost/vgpusim-base missing: run scripts/build-base-image.sh"
PYTHON=${PYTHON:-python3}
if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi

arch=$(uname -m)
rm -rf wheels
mkdir -p wheels
echo '*' >wheels/.gitignore # a build output: never committed

echo "build-image: pip wheel --no-deps . -> wheels/"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir wheels .
project_wheel=$(ls wheels/vgpusim-*.whl)

echo "build-image: pip download --only-binary=:all: (cp311, $arch) -> wheels/"
# The image's glibc is Debian 12's 2.36: every manylinux_2_X up to it fits (2_17 = manylinux2014).
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
"$PYTHON" -m pip download --quiet --only-binary=:all: --dest wheels \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "${platforms[@]}" --platform "manylinux2014_$arch" \
    "$project_wheel"

echo "build-image: podman build --network=none -t $TAG"
podman build --network=none --pull=never -f Dockerfile -t "$TAG" .
echo "build-image: built $TAG"
