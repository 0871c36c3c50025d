# hermes-sft: the two commands a fresh machine needs are `make demo` and `make test`.
# Each creates .venv and installs what it needs first (torch is pinned and installed before anything
# that depends on it, so pip never pulls a multi-GB CUDA build onto a CPU machine by accident).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
export HERMES_SFT_CACHE     ?= $(CURDIR)/.cache/hermes
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-unit lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup          ## the whole pipeline on the bundled sample data, tiny model, CPU
	$(VENV)/bin/hermes-sft demo

test: setup          ## every test: unit + integration (2-process ZeRO-3 on CPU); GPU tests skip
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .cache outputs .pytest_cache
