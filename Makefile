# pgvirt: `make verify` and `make test` do all set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: verify test install bench crosscheck slow notebook guests emulators clean lint footprints \
        frame-status

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[test,notebook]'
	touch $(STAMP)

install: $(STAMP)

# The main job: Theorem 1 and 3 verdicts for every profile.  x86 failing the theorem is the
# expected finding, not an error; unknown verdicts or bad input (exit 2) still fail.
verify: $(STAMP)
	$(BIN)/pgvirt verify --all-profiles; rc=$$?; [ $$rc -le 1 ]

# Real guest binaries and the browser come from Debian packages, installed by the project's
# own scripts (idempotent; quiet when already there).
guests:
	bash tests/setup-guests.sh
	sh tests/setup-browser.sh

# QEMU and Bochs, the full-system oracles (tests/setup-emulators.sh; idempotent).
emulators:
	bash tests/setup-emulators.sh

# The layering contracts first: an upward import fails the build with the offending line.
# The tests run on both cores (pytest-xdist; tests/conftest.py keeps each module on one worker
# unless its tests are independent).
JOBS    ?= 2
test: $(STAMP) guests emulators
	$(BIN)/python tools/lint_imports.py
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/python tools/lint_imports.py

bench: $(STAMP) guests emulators
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/hardware.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/crosscheck.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/oracles.py

slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info

# JupyterLab on notebooks/ (outputs are stripped in git: run the cells to see the answers).
notebook: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

# The model cross-checked against Unicorn: >= 100,000 random valid states over every form, plus
# the compiled model against Form.execute (tests marked slow in tests/test_crosscheck.py); and
# against Bochs and QEMU on a Dask LocalCluster, every witness replayed on them
# (tests/test_oracles.py).
crosscheck: $(STAMP) emulators
	$(BIN)/python -m pytest -q -m slow tests/test_crosscheck.py tests/test_oracles.py

# The derived forms' table from the installed iced-x86 (model/ never imports iced-x86; a test
# requires the committed table to equal a fresh one).
footprints: $(STAMP)
	$(BIN)/python tools/footprints.py

# Frame test of every derived form on Unicorn; rewrites emulator/frame_status.json (which forms
# Unicorn ran) when no footprint lies.
frame-status: $(STAMP)
	$(BIN)/python -m pgvirt.emulator.frame
