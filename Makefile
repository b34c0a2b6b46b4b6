# Two commands for a new machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test install install-dev system-deps lint checkpoints bench clean-venv

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# Debian's chromium drives the browser tests (Playwright cannot download its own browser here).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }

run: install
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

test: install-dev system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

lint: install-dev
	$(PY) -m ruff check .

# Rebuilds both bundled demo checkpoints from scratch, then measures and attaches their evaluation reports
# (long: see assets/checkpoints/README.md).
PALM_DATA ?= ../shared/data/palm-training400-224
EVAL := $(PY) -m dprotonet_core evaluate --split test --limit 4 --attach --no-progress
checkpoints: install
	$(PY) -m dprotonet_core make-demo --out assets/checkpoints --palm $(PALM_DATA)
	$(EVAL) --checkpoint assets/checkpoints/rsna-pneumonia --dataset rsna --data runs/synthetic-rsna --out runs/eval-rsna
	$(EVAL) --checkpoint assets/checkpoints/ichallenge-pm --dataset ichallenge-pm --data $(PALM_DATA) \
		--out runs/eval-palm

bench: install-dev
	$(PY) bench/mdm.py
	$(PY) bench/app.py
	$(PY) bench/backbones.py
