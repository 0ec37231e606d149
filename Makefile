# Developer entry points. `make test` is what CI runs (see .ci/run) and what the README shows.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?= -v -m "not soak"

.PHONY: help venv servers servers-down status lint test test-soak demo clean

help:
	@echo "make demo      install, then run the ingest daemon on the bundled sample (no servers needed)"
	@echo "make test      install, start the real servers (deploy/local) and run lint + the whole test suite"
	@echo "make servers   start the test bed (Kafka x2, PostgreSQL, OpenSearch, Prometheus)"
	@echo "make servers-down / status / lint"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

servers:
	$(PYTHON) -m deploy.local up

servers-down:
	$(PYTHON) -m deploy.local down

status:
	$(PYTHON) -m deploy.local status

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The servers' endpoints are exported from the env file `up` writes, so tests use them directly.
test: venv
	$(PYTHON) -m deploy.local up > $(VENV)/testbed.env
	$(MAKE) lint
	. $(VENV)/testbed.env && $(VENV)/bin/pytest $(PYTEST_ARGS)

# The long chaos soaks (repeated random faults, repeated broker restarts): not part of CI.
test-soak: venv
	$(PYTHON) -m deploy.local up > $(VENV)/testbed.env
	. $(VENV)/testbed.env && $(VENV)/bin/pytest -v -m soak

demo: venv
	$(VENV)/bin/ingestd replay --sample

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
