# Two commands on a fresh machine: `make quickstart` (the main job) and `make test` (the suite).
# Both create .venv when missing: torch first (CPU wheel by default; GPU users override TORCH_SPEC),
# then the package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# the suite on two workers (pytest-xdist), a test file per worker: its fixtures and ports stay in one process;
# PYTEST_ARGS= runs it in one process
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: quickstart test lint clean-venv

$(BIN)/atp-latent: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

quickstart: $(BIN)/atp-latent
	$(BIN)/atp-latent quickstart $(ARGS)

test: $(BIN)/atp-latent
	$(BIN)/ruff check src tests benchmarks gpu
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/atp-latent
	$(BIN)/ruff check src tests benchmarks gpu

clean-venv:
	rm -rf $(VENV)
