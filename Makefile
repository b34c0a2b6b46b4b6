# Two commands for a new machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test install install-dev system-deps lint checkpoints bench clean-venv

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e . --no-deps
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# Debian's chromium drives the browser tests (Playwright cannot download its own browser here); dicom3tools'
# dciodvfy validates the DICOM objects the app exports.
system-deps:
	@command -v chromium >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 || \
		{ apt-get update -q && apt-get install -y -q chromium dicom3tools; }

run: install
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

test: install-dev system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

lint: install-dev
	$(PY) -m ruff check .

# Rebuilds both bundled demo checkpoints from scratch (the chest backbone's Kermany pretraining first, when its
# file is absent), then measures and attaches their evaluation reports (long: see assets/checkpoints/README.md).
SHARED_DATA ?= ../shared/data
PALM_DATA ?= $(SHARED_DATA)/palm-training400-224
RSNA_DATA ?= $(SHARED_DATA)/rsna-real $(SHARED_DATA)/rsna-real-256
EVAL := $(PY) -m dprotonet_core evaluate --split test --attach --no-progress --threads 2
# The iChallenge-PM checkpoint trains on all 400 PALM photographs (no test split exists in the data): its
# explanation figures are on training images (the report says so), its accuracy is the cross-validation's.
EVAL_ALL := $(PY) -m dprotonet_core evaluate --split all --attach --no-progress --threads 2
# The finished 5-fold cross-validation of its recipe (python -m dprotonet_core cross-validate; make-demo refuses an
# unfinished one before training). A rebuild also needs its fold models (the out-of-distribution threshold is
# measured with them on the out-of-fold photographs): git keeps only the figures, so pass PALM_CV=<a cross-validate
# --out folder> that still holds fold-N/; make-demo says so before training otherwise.
PALM_CV ?= bench/results/cv-palm-small_resnet-stacked-20ep-oof
checkpoints: install
	rm -f assets/backbones/chest-small_resnet-kermany.safetensors
	$(PY) -m dprotonet_core make-demo --out assets/checkpoints --palm $(PALM_DATA) --rsna-data $(RSNA_DATA) \
		--kermany $(SHARED_DATA)/kermany-chest-224 --palm-cross-validation $(PALM_CV)
	$(EVAL) --limit 40 --checkpoint assets/checkpoints/rsna-pneumonia --dataset rsna --data $(RSNA_DATA) \
		--methods mdm-standard gradcam gradcam++ scorecam ablationcam --out runs/eval-rsna
	$(EVAL_ALL) --limit 4 --checkpoint assets/checkpoints/ichallenge-pm --dataset ichallenge-pm --data $(PALM_DATA) \
		--methods mdm-thorough mdm-paper gradcam gradcam++ scorecam ablationcam --out runs/eval-palm

bench: install-dev
	$(PY) -m bench.mdm_speed
	$(PY) -m bench.app
	$(PY) -m bench.backbones
