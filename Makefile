# vgpusim developer and CI entry points. `make help` lists the targets.
#
# Everything runs from the project virtualenv .venv, which `make venv` creates from nothing
# (python3 -m venv + pip install -e '.[dev]'), so `make test` and `make demo` work on a fresh clone.
# pip's global configuration (constraint file, find-links) is left alone and applies as usual.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.vgpusim-dev.stamp

# Only the folders that exist: git does not keep empty ones, so a fresh clone may lack some.
LINT_PATHS := $(wildcard services tests scripts examples)
# mypy --strict targets; mypy_path=src in pyproject.toml resolves the import package vgpusim.
MYPY_TARGETS := -p vgpusim
PYTEST_ARGS ?=
STATE_DIR ?=

step = @printf '\n==> %s\n' "$(1)"

.PHONY: help venv gen check-gen lint fmt typecheck buf buf-breaking compose-check pytest test \
        demo bench up down status image base-image clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# ---- environment -------------------------------------------------------------------------------

venv: $(VENV_STAMP) ## create .venv and install the project with its dev extras (idempotent)

$(VENV_STAMP): pyproject.toml
	$(call step,venv: $(PYTHON) -m venv $(VENV) && pip install -e '.[dev]')
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $@

# ---- generated code ----------------------------------------------------------------------------

gen: venv ## regenerate services/gen/ from proto/
	$(call step,gen: scripts/gen_protos.py)
	$(BIN)/python scripts/gen_protos.py

check-gen: venv ## fail if regenerating services/gen/ would change anything
	$(call step,check-gen: scripts/gen_protos.py --check)
	$(BIN)/python scripts/gen_protos.py --check

# ---- static checks -----------------------------------------------------------------------------

lint: venv ## ruff check + ruff format --check
	$(call step,lint: ruff check + ruff format --check on $(LINT_PATHS))
	$(BIN)/ruff check --force-exclude $(LINT_PATHS)
	$(BIN)/ruff format --check --force-exclude $(LINT_PATHS)

fmt: venv ## ruff format + ruff check --fix (rewrites files)
	$(BIN)/ruff format --force-exclude $(LINT_PATHS)
	$(BIN)/ruff check --fix --force-exclude $(LINT_PATHS)

typecheck: venv ## mypy --strict on the vgpusim package
	$(call step,typecheck: mypy $(MYPY_TARGETS))
	$(BIN)/mypy $(MYPY_TARGETS)

buf: venv ## buf lint of proto/ (buf.yaml: STANDARD)
	$(call step,buf: buf lint)
	$(BIN)/buf lint

# Not part of `make test`: compares proto/ with the committed main branch (FILE rules).
buf-breaking: venv ## buf breaking against the main branch of this repository
	$(call step,buf-breaking: buf breaking --against .git#branch=main)
	$(BIN)/buf breaking --against '.git#branch=main'

compose-check: venv ## validate docker-compose.yml (compose-spec schema, docker-compose 1.29.2, cross-references)
	$(call step,compose-check: scripts/check-compose.sh)
	scripts/check-compose.sh

# ---- tests -------------------------------------------------------------------------------------

# pytest exit 5 means it collected no test: this project always has tests, so that is a failure
# with a clear message rather than a silent pass.
pytest: venv ## run the test suite
	$(call step,pytest)
	@rc=0; $(BIN)/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 ]]; then echo "error: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	exit $$rc

test: venv lint typecheck buf check-gen compose-check pytest ## everything CI runs

# ---- running -----------------------------------------------------------------------------------

demo: venv ## start a stack, run a guest workload end to end, tear down
	$(call step,demo: vgpusim demo)
	$(BIN)/vgpusim demo

bench: venv ## run the benchmark (ratios against same-run baselines)
	$(call step,bench: vgpusim bench)
	$(BIN)/vgpusim bench

up: venv ## start the stack as local processes in the background (STATE_DIR=... to choose)
	$(BIN)/vgpusim up --detach $(if $(STATE_DIR),--state-dir $(STATE_DIR))

down: venv ## stop the stack started by `make up`
	$(BIN)/vgpusim down $(if $(STATE_DIR),--state-dir $(STATE_DIR))

status: venv ## show the state of the local stack
	$(BIN)/vgpusim status $(if $(STATE_DIR),--state-dir $(STATE_DIR))

# ---- container image (needs podman + debootstrap; see Dockerfile) --------------------------------

base-image: ## build localhost/vgpusim-base offline with debootstrap (podman)
	scripts/build-base-image.sh

image: ## build localhost/vgpusim from wheels/ with podman build --network=none
	scripts/build-image.sh

# ---- cleaning ----------------------------------------------------------------------------------

clean: ## remove caches and build outputs (keeps the virtualenvs)
	rm -rf build dist wheels .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find services tests scripts examples -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

distclean: clean ## also remove .venv and .venv-compose
	rm -rf $(VENV) .venv-compose
