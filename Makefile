# The two commands a newcomer runs are `make run` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[hub,console]' --group test --group lint
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/estate

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/agent_collect.py
	$(PY) bench/hub_ingest.py
	$(PY) bench/console.py

lint: $(STAMP)
	$(VENV)/bin/ruff check agent inventory console tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
