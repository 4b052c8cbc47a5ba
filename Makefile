# `make run` and `make test` work from a fresh clone: they create .venv with the pinned
# toolchain when it is missing, build the extension (incrementally, with ninja), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2

DEPS_STAMP := $(VENV)/.fastadv-deps
BUILD_STAMP := $(VENV)/.fastadv-build
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml

WHEEL_CHECK := .wheel-check

.PHONY: all build test test-triton run bench wheel wheel-check clean
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

# Everything but the Triton kernels, then the Triton kernels in their own process (the
# interpreter must be switched on before triton is first imported), then the wheel, installed
# alone, as a user gets it.
test: build
	$(PY) -m pytest -m "not triton"
	$(MAKE) test-triton
	$(MAKE) wheel-check

test-triton: build
	TRITON_INTERPRET=1 $(PY) -m pytest -m triton

# TRADES on the embedded digits, then its robustness table (about 3 minutes on 2 CPU cores).
run: build
	$(VENV)/bin/fastadv info
	$(VENV)/bin/fastadv train --overwrite --run-dir runs/make-run
	$(VENV)/bin/fastadv eval runs/make-run

bench: build
	$(VENV)/bin/fastadv bench

# The extension's objects are shared with the editable build (build/temp, ninja): only what
# changed since `make build` is compiled again.
wheel: $(BUILD_STAMP)
	rm -rf dist
	$(PY) -m build --wheel --no-isolation --outdir dist

# The wheel installed with --no-deps into an empty folder and run from an empty directory by a
# Python that sees the toolchain's packages (torch, ...) but not this checkout: a fresh venv
# whose only path to .venv's site-packages is a plain .pth line, so the editable install's own
# .pth finder is never run. Each command must import fastadv from the wheel's folder.
wheel-check: wheel
	rm -rf $(WHEEL_CHECK)
	mkdir -p $(WHEEL_CHECK)/empty
	$(PY) -m pip install --quiet --no-deps --target $(WHEEL_CHECK)/target dist/fastadv-*.whl
	$(PY) -m venv --without-pip $(WHEEL_CHECK)/venv
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> $$($(WHEEL_CHECK)/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/toolchain.pth
	cd $(WHEEL_CHECK)/empty && export PYTHONPATH=$(CURDIR)/$(WHEEL_CHECK)/target PYTHONNOUSERSITE=1 \
		&& ../venv/bin/python -c "import sys, fastadv; assert fastadv.__file__.startswith(sys.argv[1]), fastadv.__file__; print('fastadv imported from', fastadv.__file__)" $$PYTHONPATH \
		&& ../venv/bin/python ../target/bin/fastadv info \
		&& ../venv/bin/python ../target/bin/fastadv train --epochs 1 --run-dir run --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv eval run --attacks pgd20 --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv train --method als --members 2 --epochs 1 --eval-size 64 \
			--run-dir ensemble --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv eval ensemble --attacks pgd20 --size 64 --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv attack ensemble --losses ce --steps 5 --size 64 --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv train --method ascl --strategy leaked-ls --epochs 1 --eval-size 64 \
			--run-dir ascl --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv eval ascl --attacks pgd20 --size 64 --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv train --method udr_trades --epochs 1 --eval-size 64 \
			--run-dir udr --no-progress \
		&& ../venv/bin/python ../target/bin/fastadv eval udr --attacks pgd20 --size 64 --no-progress
	@echo "wheel check passed: $$(ls dist/fastadv-*.whl)"

clean:
	rm -rf build dist *.egg-info fastadv/_C*.so $(BUILD_STAMP) $(WHEEL_CHECK)
