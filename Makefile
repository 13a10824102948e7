# Two entry points for a fresh machine: `make demo` (the main job) and
# `make test`. Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skcflow-installed
# A second environment at the oldest scikit-learn and numpy of setup.py's
# supported range (the first has the newest), so that `make test` runs the
# suite at both ends of it.
OLDEST ?= .venv-oldest
OLDEST_PINS := scikit-learn==1.6.0 numpy==1.26.4
OLDEST_STAMP := $(OLDEST)/.skcflow-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Re-install only when the package's requirements change.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

$(OLDEST_STAMP): setup.py Makefile
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e '.[test,plot]' $(OLDEST_PINS)
	touch $(OLDEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/skcflow compare --out skcflow-report

test: $(STAMP) $(OLDEST_STAMP)
	$(PY) -m pytest
	$(OLDEST)/bin/python -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(OLDEST) skcflow-report .pytest_cache
