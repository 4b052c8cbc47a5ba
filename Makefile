# `make run` and `make test` work from a fresh clone: they create .venv with the pinned
# toolchain when it is missing, build the extension (incrementally, with ninja), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

DEPS_STAMP := $(VENV)/.fastadv-deps
BUILD_STAMP := $(VENV)/.fastadv-build
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: all build test test-triton run bench wheel clean
all: build

$(DEPS_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)

# Everything but the Triton kernels, then the Triton kernels in their own process: the
# interpreter must be switched on before triton is first imported.
test: build
	$(PY) -m pytest -m "not triton"
	$(MAKE) test-triton

test-triton: build
	TRITON_INTERPRET=1 $(PY) -m pytest -m triton

# TRADES on the embedded digits, then its robustness table (about 3 minutes on 2 CPU cores).
run: build
	$(VENV)/bin/fastadv info
	$(VENV)/bin/fastadv train --overwrite --run-dir runs/make-run
	$(VENV)/bin/fastadv eval runs/make-run

bench: build
	$(VENV)/bin/fastadv bench

wheel: $(DEPS_STAMP)
	$(PY) -m build --wheel --no-isolation

clean:
	rm -rf build dist *.egg-info fastadv/_C*.so $(BUILD_STAMP)
