# The two commands of the README: `make demo` (simulated ALOHA + tiny OFT policy + executor) and
# `make test`. Both create or refresh .venv first (idempotent, seconds when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test lint format bench clean

venv:
	@bash scripts/bootstrap.sh

demo: venv
	$(VENV)/bin/vla-demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

format: venv
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(VENV)/bin/vla-bench transport --update-docs

clean:
	rm -rf build install log .pytest_cache
