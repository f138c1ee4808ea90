# Two commands on a fresh machine (Python 3.11, no GPU):
#   make smoke   scaled-down GLM pretraining on the embedded multilingual corpus
#   make test    the test suite
# Both create .venv from the project's own files first (CPU torch pinned in requirements/cpu.txt).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install smoke test bench clean

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
	for name in collator data attention train_step loss plan_check; do $(PY) -m pretrain bench $$name || exit 1; done

clean:
	rm -rf $(VENV) runs
