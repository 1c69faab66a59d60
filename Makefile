# The verbs a newcomer types. `make demo` and `make test` set everything up on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# The app runs on Python 3.11 here (the CPU torch wheel on these machines is 3.11-only);
# the Lambda image and the layer target 3.12, which `make build-zip` uses.
PYTHON ?= python3.11
PYTHON312 ?= python3.12
export PYENV_VERSION ?= 3.11.7:3.12.1
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
PIP_QUIET := -q
# torch (the MiniLM example, tests only) from PyPI is a multi-GB CUDA build on an ordinary
# machine: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU one.
TORCH_INDEX ?=
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: help setup demo example-keras test unit lint fmt template-check build-zip bench bench-endpoint clean

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# The app venv in two steps: what the demo needs (the runtime, the tools, the local stack; no
# torch), then what the tests add (dev tools and the MiniLM example with torch).
$(VENV)/.stamp-app: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip 2>/dev/null
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[local]' 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-app
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[dev,examples]' $(TORCH_INDEX_ARGS) \
		2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

# aws-sam-cli and checkov pin boto3/packaging against the app's: each gets its own venv.
$(SAM_VENV)/.stamp:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install $(PIP_QUIET) 'aws-sam-cli>=1.120' 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

$(CHECKOV_VENV)/.stamp:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install $(PIP_QUIET) 'checkov>=3.2' 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

setup: $(VENV)/.stamp-dev $(SAM_VENV)/.stamp $(CHECKOV_VENV)/.stamp ## create the app venv and the tool venvs

demo: $(VENV)/.stamp-app $(SAM_VENV)/.stamp ## model -> quantize -> publish to local S3 -> start-api -> a real prediction
	$(VENV)/bin/python scripts/demo.py

example-keras: $(VENV)/.stamp-dev $(SAM_VENV)/.stamp ## the article's case: Keras SavedModel -> convert -> quantize -> publish -> start-api -> curl
	$(VENV)/bin/python scripts/keras_example.py

test: setup ## lint, type-check, then every test (unit, functional, integration, template checks)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

unit: $(VENV)/.stamp-dev ## the fast tests only
	$(VENV)/bin/pytest tests/unit

lint: $(VENV)/.stamp-dev ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.stamp-dev ## format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

template-check: $(SAM_VENV)/.stamp $(CHECKOV_VENV)/.stamp ## sam validate --lint, cfn-lint, checkov
	$(SAM_VENV)/bin/sam validate --lint --template template.yaml
	$(SAM_VENV)/bin/cfn-lint template.yaml
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml

build-zip: $(SAM_VENV)/.stamp ## sam build of the zip variant (function + layer), no Docker needed
	$(SAM_VENV)/bin/sam build PredictZipFunction --template template.yaml

bench: $(VENV)/.stamp-dev $(SAM_VENV)/.stamp ## warm path per layer vs InferenceSession.run; cold start (digits, MiniLM, MiniLM with its tokenizer, 320 MB) + warm invoke vs a naive script; binary vs JSON request decode; many models: load on demand and reload vs a raw GET + session
	$(VENV)/bin/python scripts/bench_local.py
	$(VENV)/bin/python scripts/bench_function.py
	$(VENV)/bin/python scripts/bench_codecs.py
	$(VENV)/bin/python scripts/bench_repository.py

bench-endpoint: $(VENV)/.stamp-dev ## req/s of the SageMaker endpoint server vs Flask and BentoML (peers in their own venvs)
	$(VENV)/bin/python scripts/bench_endpoint.py --json .onnxkit/bench-endpoint.json

clean: ## remove venvs, builds and caches
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .onnxkit .pytest_cache .mypy_cache .ruff_cache
