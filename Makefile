# Two entry points: `make demo` (main job) and `make test` (test suite). Both create their own
# virtual environment in .venv and install the project into it; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo_output

.PHONY: venv test test-external ci-deploy-env demo lint clean benchmark zoo-ci monailabel-env test-monailabel

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

# The MONAI model zoo's own CI, offline, on the bundle zip (scripts/zoo_ci.py): the zip unzipped into a copy of the
# zoo's layout (models/<name>/, ZOO_CI_DIR, default ../shared/zoo-ci), prepare_schema, verify_bundle -m min and -m
# full in the bundle env (metadata packages only), black/isort/flake8 at the zoo's settings on every .py of the zip,
# JSON and text files as the zoo's pre-commit checks them, and the zoo-style ConfigWorkflow unit test.
zoo-ci: $(STAMP) $(BUNDLE_STAMP)
	$(BIN)/python scripts/zoo_ci.py --python $(TAT_BUNDLE_ENV)/bin/python

# MONAI Label's environment (6-20 min, ~8 GB: monailabel 0.8.5 + torch 2.14.1 CUDA build + torchvision 0.29.1) and
# its end-to-end test (tests/apps/test_monailabel_app.py, fails here instead of skipping when the env is missing).
MONAILABEL_STAMP := $(MONAILABEL_ENV)/.installed
$(MONAILABEL_STAMP): scripts/build_monailabel_env.sh
	PYTHON=$(PYTHON) bash scripts/build_monailabel_env.sh
	touch $(MONAILABEL_STAMP)

monailabel-env: $(MONAILABEL_STAMP)

test-monailabel: $(STAMP) $(MONAILABEL_STAMP)
	@mkdir -p $(ENVS); rc=0; $(BIN)/python -m pytest -q -rs tests/apps/test_monailabel_app.py \
	  > $(ENVS)/monailabel-test.log 2>&1 || rc=$$?; cat $(ENVS)/monailabel-test.log; \
	  if grep -q "skipped" $(ENVS)/monailabel-test.log; then echo "MONAI Label test skipped (see above)"; exit 1; fi; \
	  exit $$rc

demo: $(STAMP)
	$(BIN)/python -m custom.tools.demo --output_dir $(DEMO_DIR)

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
