# `make run` and `make test` set everything up on a fresh machine (Python 3.11 and venv needed).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) run.py serve

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache
