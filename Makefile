# Each target sets itself up from scratch: a .venv with the CPU build of torch, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-floors lint setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,export,tune]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/memae-dist demo --out demo_out

# Tests run in one xdist worker process, not in make's pytest: the tests are Ray drivers, and a
# Ray daemon that dies can end its driver with no word. The controller then names the test, and
# --reruns 1 runs a test that took its worker down once more on a fresh worker; ordinary failures
# are never rerun (--only-rerun matches only the crash report).
PYTEST_ARGS := -q -m "not soak" --timeout=1800 -n 1 --reruns 1 --only-rerun "crashed while running"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The same suite at the lowest versions pyproject.toml declares (.ci/floors.py pins them; torch
# stays the CPU build), in a venv of its own. Not part of `make test`: it doubles the time.
FLOORS := .venv-floors
test-floors: $(STAMP)
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(BIN)/python .ci/floors.py $(TORCH) > $(FLOORS)/floors.txt
	$(FLOORS)/bin/pip install -q -c $(FLOORS)/floors.txt $(TORCH)
	$(FLOORS)/bin/pip install -q -c $(FLOORS)/floors.txt -e ".[dev,export,tune]"
	$(FLOORS)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(FLOORS) demo_out runs
