# `make run` and `make test` set everything up on a fresh machine (Python 3.11 and venv needed).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The browser tests drive Debian's Chromium (never a browser that Playwright downloads).
CHROMIUM ?= /usr/bin/chromium
# tests/system/test_nginx.py runs Debian's nginx in front of the server (never as a system service).
NGINX ?= /usr/sbin/nginx

.PHONY: run test lint clean browser nginx

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) run.py serve

# Performance figures (bench/README.md), ~1-3 min; `make bench BENCH_ARGS=--quick` is a ~20 s smoke run.
.PHONY: bench
bench: $(VENV)/.installed
	$(PY) bench/bench.py $(BENCH_ARGS)

# The gates: ruff (style, imports, bugbear, pyupgrade) and mypy on chatserver/ (pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed browser nginx
	$(PY) -m pytest

# Chromium for tests/browser: installed with apt-get when missing and we are root; otherwise the
# browser tests are skipped, with a warning at the start and the end of the run.
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium fonts-noto-color-emoji >/dev/null) \
	  || echo "WARNING: apt-get could not install chromium: the browser tests will be skipped" >&2; \
	else \
	  echo "WARNING: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser tests will be skipped" >&2; \
	fi

# nginx for tests/system/test_nginx.py, the same way: installed with apt-get when missing and we are
# root; otherwise those tests are skipped, with a warning (an error under CI). Installing the
# package may start Debian's nginx service: it is stopped and disabled, the tests start their own.
nginx:
	@if [ -x "$(NGINX)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing nginx for the reverse-proxy tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) \
	  || echo "WARNING: apt-get could not install nginx: the nginx tests will be skipped" >&2; \
	  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi; \
	else \
	  echo "WARNING: $(NGINX) is missing and cannot be installed here (needs root and apt-get): the nginx tests will be skipped" >&2; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache
