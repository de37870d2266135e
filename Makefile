# Two entry points: `make demo` (main job) and `make test` (test suite). Both create their own
# virtual environment in .venv and install the project into it; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo_output

.PHONY: venv test test-external ci-deploy-env demo lint clean benchmark

# Separately built environments for the ecosystem tests (tests/apps): a fresh venv with only the bundle's
# metadata.json packages (built by `make test`), MONAI Deploy and MONAI Label (built by `make test-external`).
ENVS := $(abspath .envs)
export TAT_BUNDLE_ENV ?= $(ENVS)/bundle
export TAT_DEPLOY_ENV ?= $(ENVS)/deploy
export MONAILABEL_ENV ?= $(ENVS)/monailabel
BUNDLE_STAMP := $(TAT_BUNDLE_ENV)/.installed

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(BUNDLE_STAMP): bundle/configs/metadata.json scripts/build_bundle_env.sh
	PYTHON=$(PYTHON) bash scripts/build_bundle_env.sh $(TAT_BUNDLE_ENV)
	touch $(BUNDLE_STAMP)

DEPLOY_STAMP := $(TAT_DEPLOY_ENV)/.installed

$(DEPLOY_STAMP): bundle/configs/metadata.json scripts/build_deploy_env.sh
	DEPLOY_ENV=$(TAT_DEPLOY_ENV) PYTHON=$(PYTHON) bash scripts/build_deploy_env.sh
	touch $(DEPLOY_STAMP)

# In CI (CI=true) the MONAI Deploy environment is built too (~2-4 min), so that its end-to-end test runs there;
# if it cannot be built, CI says so and that test skips with its reason. MONAI Label's environment (~12 min,
# ~5.5 GB) does not fit the suite's time: `make test-external` builds it; its test says so when skipped.
ci-deploy-env:
	@$(MAKE) --no-print-directory $(DEPLOY_STAMP) || { rm -rf $(TAT_DEPLOY_ENV); \
	  echo "CI: the MONAI Deploy environment could not be built (output above): tests/apps/test_deploy_app.py skips"; }

TEST_PREREQS := $(STAMP) $(BUNDLE_STAMP)
ifeq ($(CI),true)
TEST_PREREQS += ci-deploy-env
endif

test: $(TEST_PREREQS)
	$(BIN)/python -m pytest -q tests

test-external: $(STAMP) $(BUNDLE_STAMP) $(DEPLOY_STAMP)
	PYTHON=$(PYTHON) bash scripts/build_monailabel_env.sh
	$(BIN)/python -m pytest -q tests/apps

demo: $(STAMP)
	$(BIN)/python -m custom.demo --output_dir $(DEMO_DIR)

# The model zoo's format check (runtests.sh --codeformat: black --skip-magic-trailing-comma, isort, flake8 at line
# length 120, settings in pyproject.toml / setup.cfg) and its pre-commit JSON format (pretty-format-json, indent 4).
PY_SOURCES := custom tests benchmarks apps scripts
lint: $(STAMP)
	$(BIN)/python -m black --check --diff $(PY_SOURCES)
	$(BIN)/python -m isort --check-only --diff $(PY_SOURCES)
	$(BIN)/python -m flake8 $(PY_SOURCES)
	$(BIN)/pretty-format-json --no-sort-keys --indent=4 $$(find bundle -name '*.json')

benchmark: $(STAMP)
	$(BIN)/python benchmarks/network.py

clean:
	rm -rf $(VENV) $(ENVS) $(DEMO_DIR) build *.egg-info
