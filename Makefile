# Pulse: `make demo` runs the whole pipeline on embedded defaults; `make test` runs every test.
SHELL := /bin/bash
export PULSE_HOME ?= $(CURDIR)/.pulse
export DAGSTER_HOME ?= $(PULSE_HOME)/dagster
# uv comes from PyPI into the machine's Python; it then installs the locked environment into .venv.
UV := python3 -m uv
VENV := .venv/.synced

.PHONY: install system-deps demo test lint format clean services services-stop

$(VENV): pyproject.toml uv.lock
	$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --python 3.11
	touch $@

install: $(VENV)

# Debian packages the tests and the production profile need (CI runs as root; apt-get update runs once).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

# Redis, PostgreSQL and an MLflow tracking server on loopback under $(PULSE_HOME)/services.
services: install system-deps
	$(UV) run --frozen python -m ops.services start

services-stop:
	$(UV) run --frozen python -m ops.services stop

demo: install
	$(UV) run --frozen pulse simulate --if-missing
	$(UV) run --frozen pulse materialize --missing
	$(UV) run --frozen pulse up

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

format: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

test: install system-deps lint
	$(UV) run --frozen pytest -q

clean:
	rm -rf $(PULSE_HOME) dbt_project/target
