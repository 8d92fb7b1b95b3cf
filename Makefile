# Each target sets itself up from scratch: a .venv with the CPU build of torch, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

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
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not soak" --timeout=1800 -n 1 --reruns 1 \
		--only-rerun "crashed while running"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_out runs
