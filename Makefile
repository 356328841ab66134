# Two commands do everything: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras, rebuilt when pyproject.toml changes.
$(VENV)/.demo: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[video]'
	@touch $@

$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[video,gui,tui,export,test]'
	@touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(VENV)/bin/ardiff demo

test: $(VENV)/.test
	$(PY) -m pytest -q

bench: $(VENV)/.test
	$(PY) bench/schedulers.py

lint: $(VENV)/.test
	$(PIP) ruff && $(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
