# Two entry points for a fresh machine: `make demo` (the main job) and
# `make test`. Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skcflow-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Re-install only when the package's requirements change.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/skcflow compare --out skcflow-report

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) skcflow-report .pytest_cache
