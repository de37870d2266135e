# Two entry points: `make demo` (main job) and `make test` (test suite). Both create their own
# virtual environment in .venv and install the project into it; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo_output

.PHONY: venv test demo lint clean benchmark

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m custom.demo --output_dir $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/python -m flake8 custom tests benchmarks
	$(BIN)/python -m isort --check-only --diff custom tests benchmarks

benchmark: $(STAMP)
	$(BIN)/python benchmarks/network.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
