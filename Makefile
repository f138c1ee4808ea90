# Two commands on a fresh machine (Python 3.11, no GPU):
#   make smoke   scaled-down GLM pretraining on the embedded multilingual corpus
#   make test    the test suite
# Both create .venv from the project's own files first (CPU torch pinned in requirements/cpu.txt,
# then the package with its [dev] extra: everything the tests need).
# On a GPU box, after the README's GPU install:  make gpu-check   (bench/gpu_check.py, < 8 min)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install smoke test bench gpu-check floors clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

smoke: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 -m pretrain train --config configs/smoke.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)  # every benchmark; results and how to read them: docs/benchmarks.md
	for name in collator data attention train_step generate loss plan_check; do $(PY) -m pretrain bench $$name || exit 1; done

# Runs in the environment the GPU install went into (GPU_PYTHON), not in the CPU .venv; without a
# GPU it is the reduced CPU dry run that the test suite also runs.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m pretrain bench gpu_check --out runs/gpu-check

floors:  # setup.cfg's lower bounds of numpy/tokenizers/datasets/mimesis, in a fresh venv (a few minutes)
	scripts/check_floors.sh

clean:
	rm -rf $(VENV) runs
