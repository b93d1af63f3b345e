# Two commands on a fresh machine with only Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench chaos up clean graph

$(STAMP): setup.cfg pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is needed (python3.11 or python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/agoramesh demo

up: $(STAMP)
	$(BIN)/agoramesh up

test: $(STAMP)
	$(BIN)/pytest

# Everything but the CLI subprocesses, the chaos runs and the slow tests (tests/README.md).
test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not chaos and not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_bus.py && $(BIN)/python benchmarks/bench_node.py \
		&& $(BIN)/python benchmarks/bench_auction.py && $(BIN)/python benchmarks/bench_episodes.py \
		&& $(BIN)/python benchmarks/bench_e2e.py && $(BIN)/python benchmarks/bench_tls.py \
		&& $(BIN)/python benchmarks/bench_jobs.py && $(BIN)/python benchmarks/bench_peers.py \
		&& $(BIN)/python benchmarks/bench_hosting.py && $(BIN)/python benchmarks/bench_mcp.py \
		&& $(BIN)/python benchmarks/bench_a2a.py

# The chaos suite at ten times the size `make test` runs it (3,000 jobs a run, faults repeated).
chaos: $(STAMP)
	AGORAMESH_CHAOS_SCALE=10 $(BIN)/pytest -m chaos -s

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

graph: $(STAMP)
	$(BIN)/python -m agoramesh.testing.architecture > docs/import-graph.md
