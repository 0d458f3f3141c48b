#!/usr/bin/env bash
# Validates docker-compose.yml without a container engine, three ways:
#   1. check-jsonschema against the compose-spec schema it vendors (precise paths; from .venv);
#   2. `docker-compose config -q` of docker-compose 1.29.2 (its own 2021 schema and the
#      cross-references: depends_on, ipc: service:x, volumes), from a separate .venv-compose;
#   3. tests/deploy/test_compose.py (what neither checks: healthchecks, host ports, profiles, ...).
# Used by `make compose-check` (and so by CI) and by developers alike.
#
# docker-compose 1.29.2 is end-of-life and needs pins to install on Python 3.11:
# PyYAML 5.4.1 only builds with Cython<3, and newer docker/requests break it. The pins go through
# PIP_CONSTRAINT (so the isolated build of PyYAML sees them too), next to whatever constraint files
# pip's own configuration already sets: PIP_CONSTRAINT replaces global.constraint, so those are
# added back explicitly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_FILE=${COMPOSE_FILE:-docker-compose.yml}
VENV=.venv
COMPOSE_VENV=.venv-compose
COMPOSE_PINS=('docker-compose==1.29.2' 'Cython<3' 'docker==6.1.3' 'requests<2.32')
PYTHON=${PYTHON:-python3}

die() { echo "check-compose: error: $*" >&2; exit 1; }

[[ -x $VENV/bin/check-jsonschema ]] || die "$VENV is missing check-jsonschema: run 'make venv' first"
[[ -f $COMPOSE_FILE ]] || die "$COMPOSE_FILE not found"

install_compose() {
    local stamp=$COMPOSE_VENV/.stamp want
    want=$(printf '%s\n' "${COMPOSE_PINS[@]}")
    if [[ -x $COMPOSE_VENV/bin/docker-compose && -f $stamp && $(<"$stamp") == "$want" ]]; then
        return 0
    fi
    echo "check-compose: installing docker-compose 1.29.2 into $COMPOSE_VENV"
    rm -rf "$COMPOSE_VENV"
    "$PYTHON" -m venv "$COMPOSE_VENV"
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    printf '%s\n' "${COMPOSE_PINS[@]:1}" >"$tmp/constraints.txt"
    local constraints=("$tmp/constraints.txt") f configured
    # The constraint files pip is already configured with: `<section>.constraint` in any pip.conf
    # and PIP_CONSTRAINT (listed as `:env:.constraint`).
    configured=$("$COMPOSE_VENV/bin/python" -m pip config list 2>/dev/null \
        | sed -n "s/^[^=]*\.constraint='\(.*\)'\$/\1/p" | tr ' ' '\n' | sort -u)
    for f in $configured; do
        if [[ -f $f ]]; then constraints+=("$f"); fi
    done
    echo "check-compose: pip constraint files: ${constraints[*]}"
    PIP_CONSTRAINT="${constraints[*]}" \
        "$COMPOSE_VENV/bin/python" -m pip install --quiet --progress-bar off "${COMPOSE_PINS[0]}" \
        || die "installing docker-compose 1.29.2 into $COMPOSE_VENV failed"
    printf '%s\n' "$want" >"$stamp"
}

echo "check-compose: [1/3] check-jsonschema --builtin-schema vendor.compose-spec $COMPOSE_FILE"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE_FILE"

echo "check-compose: [2/3] docker-compose 1.29.2 config -q"
install_compose
# A bogus DOCKER_HOST keeps docker-compose from looking for an engine: `config` needs none.
DOCKER_HOST=unix:///nonexistent "$COMPOSE_VENV/bin/docker-compose" -f "$COMPOSE_FILE" config -q
services=$(DOCKER_HOST=unix:///nonexistent "$COMPOSE_VENV/bin/docker-compose" -f "$COMPOSE_FILE" \
    --profile observability config --services | sort | tr '\n' ' ')
echo "check-compose: services (with profile observability): $services"

echo "check-compose: [3/3] tests/deploy/test_compose.py"
"$VENV/bin/pytest" -q -p no:cacheprovider tests/deploy/test_compose.py
