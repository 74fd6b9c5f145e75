# Quick start:  make demo   (set up, fetch models, run the main job on a built-in photo)
#               make test   (set up, fetch models, run the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps test-deps models broker broker-stop demo test test-fast lint clean

setup: $(STAMP) models

# System packages from Debian, installed only when missing (needs root):
# a C++ compiler and Python headers, because insightface builds an extension;
# Mosquitto, the local broker the service publishes to (and the tests' broker);
# npm, whose `npm pack` fetches face-api's age/gender weights (`edge models fetch`):
# Debian's package, unless an npm (say, NodeSource's) is already on the PATH.
# The tests also drive the display player in a real headless Chromium, and step the
# wall clock of a running service with libfaketime (faketime); head office tests run
# PostgreSQL and sign a TLS certificate for the central broker (openssl).
RUN_DEBS  := mosquitto mosquitto-clients
TEST_DEBS := chromium chromium-driver shellcheck faketime postgresql openssl
apt_need = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing from Debian:" $$missing; apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

system-deps:
	@command -v g++ >/dev/null && $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ python3-dev python3-venv; }
	@$(call apt_need,$(RUN_DEBS))
	@command -v npm >/dev/null || { $(call apt_need,npm); }

test-deps:
	@$(call apt_need,$(TEST_DEBS))

# A local broker for the demo on 127.0.0.1:1883, unless one listens there already
# (state, log and pid file in .run/). `make broker-stop` stops it.
RUN_DIR := $(CURDIR)/.run
broker: system-deps
	@if $(PYTHON) -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", 1883)) != 0)'; then \
	  echo "broker: one already listens on 127.0.0.1:1883"; else \
	  mkdir -p $(RUN_DIR) && printf '%s\n' "user $$(id -un)" "listener 1883 127.0.0.1" \
	    "allow_anonymous true" "persistence true" "persistence_location $(RUN_DIR)/" \
	    "pid_file $(RUN_DIR)/mosquitto.pid" "log_dest file $(RUN_DIR)/mosquitto.log" \
	    > $(RUN_DIR)/mosquitto.conf && /usr/sbin/mosquitto -d -c $(RUN_DIR)/mosquitto.conf \
	  && echo "broker: started on 127.0.0.1:1883 (log $(RUN_DIR)/mosquitto.log)"; fi

broker-stop:
	@[ -f $(RUN_DIR)/mosquitto.pid ] && kill $$(cat $(RUN_DIR)/mosquitto.pid) && rm -f $(RUN_DIR)/mosquitto.pid || true

# The venv is rebuilt whenever a lock file changes. Installed from the lock files
# (requirements/*.lock, `make lock`): every file's hash is checked (--require-hashes),
# so a replaced upload on the index cannot slip in.
LOCKS := requirements/runtime.lock requirements/dev.lock requirements/insightface.lock
PIP_LOCKED := $(BIN)/pip install --quiet --disable-pip-version-check --require-hashes
$(STAMP): $(LOCKS) pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/runtime.lock -r requirements/dev.lock
	$(PIP_LOCKED) --no-deps -r requirements/insightface.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Regenerate the lock files from requirements/*.txt (after editing one of them):
# uv resolves for every platform (--universal) and writes each file's hashes; the dev
# tools are resolved against the runtime's versions; insightface's set as listed
# (--no-deps, as it is installed: see requirements/insightface.txt).
UV_COMPILE := $(BIN)/uv pip compile --quiet --universal --generate-hashes \
	--python-version 3.11 --custom-compile-command "make lock"
.PHONY: lock
lock: $(STAMP)
	$(UV_COMPILE) requirements/runtime.txt -o requirements/runtime.lock
	$(UV_COMPILE) requirements/dev.txt -c requirements/runtime.lock -o requirements/dev.lock
	$(UV_COMPILE) --no-deps requirements/insightface.txt -o requirements/insightface.lock

models: $(STAMP)
	$(BIN)/edge models fetch

# Main job on an embedded default: the group photo that insightface ships, shown
# as the entrance camera of config.yaml; the service publishes to the local broker
# and serves the display player (http://127.0.0.1:8080/display/window).
# Its state (audience store, MQTT outbox) goes to a folder of its own, emptied on each
# run, so the demo's six people never land in a real store's counts.
DEMO_SECONDS ?= 15
DEMO_STATE := $(RUN_DIR)/demo-state
demo: setup broker
	rm -rf $(DEMO_STATE) && mkdir -p $(DEMO_STATE)
	STATE_DIRECTORY=$(DEMO_STATE) $(BIN)/edge --config config.yaml run --duration $(DEMO_SECONDS) \
	  --source "$$($(BIN)/python -c 'import edge.samples as s; print(s.group_photo())')" --realtime

# Four workers (pytest-xdist): the suite mostly waits on brokers, outages and timeouts;
# the CPU-bound tests (marker `cpu`) run one at a time on one of them.
test: setup test-deps
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup

# The inner loop: everything but the slow, broker and browser tests (pytest markers,
# tests/conftest.py), in well under a minute.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not broker and not browser"

# Lint rules and formatting (ruff), types (mypy), and the layers of docs/architecture.md
# (lint-imports: the contracts in pyproject.toml); .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check edge tests tools
	$(BIN)/ruff format --check edge tests tools
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo --no-cache

clean: broker-stop
	rm -rf $(VENV) models/*.onnx models/*.bin models/*-weights_manifest.json .pytest_cache $(RUN_DIR)

# Install onto this box as a systemd service, or remove it (needs root; the
# scripts say what they do, and keep /etc/edge: tools/install.sh --help).
.PHONY: install uninstall
install:
	tools/install.sh

uninstall:
	tools/uninstall.sh

# Training is a development tool (tools/train_classifier.py): PyTorch 2.13 CPU in a
# venv of its own, so the service's venv and CI never install it.
TRAIN_VENV := .venv-train
$(TRAIN_VENV)/.installed: requirements/runtime.txt requirements/train.txt
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/runtime.txt -r requirements/train.txt
	touch $@

.PHONY: train-env
train-env: $(TRAIN_VENV)/.installed models

# The training's bytes on other CPUs: a short run natively and under QEMU's emulation of
# an SSE4.2 Intel and an AMD EPYC (needs Debian's qemu-user; about 20 minutes).
.PHONY: repro-check
repro-check: train-env
	tools/repro_check.sh
