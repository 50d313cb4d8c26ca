# Two entry points for a fresh machine: `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.balancemix-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test test-all bench clean

$(STAMP): setup.py setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt torch torchvision
	$(PY) -m pip install -c constraints.txt -e '.[dev,plot,pretrain]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m balancemix_timm.demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q --runslow

clean:
	rm -rf runs demo_data .pytest_cache
