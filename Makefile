# Quick start:  make demo   (set up, fetch models, run the main job on a built-in photo)
#               make test   (set up, fetch models, run the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps models demo test clean

setup: $(STAMP) models

# System packages from Debian, installed only when missing (needs root):
# a C++ compiler and Python headers, because insightface builds an extension.
system-deps:
	@command -v g++ >/dev/null && $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ python3-dev python3-venv; }

# The venv is rebuilt whenever a requirements file changes.
$(STAMP): requirements/runtime.txt requirements/insightface.txt requirements/dev.txt pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/runtime.txt -r requirements/dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements/insightface.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

models: $(STAMP)
	$(BIN)/edge models fetch

# Main job on an embedded default: the group photo that insightface ships, shown
# as a still camera; the audience is logged as it changes, counts at the end.
DEMO_SECONDS ?= 15
demo: setup
	$(BIN)/edge --config config.yaml run --duration $(DEMO_SECONDS) \
	  --source "$$($(BIN)/python -c 'import edge.samples as s; print(s.group_photo())')" --realtime

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) models/*.onnx .pytest_cache
