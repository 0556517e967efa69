# Pulse: `make demo` runs the whole pipeline on embedded defaults; `make test` runs every test.
SHELL := /bin/bash
export PULSE_HOME ?= $(CURDIR)/.pulse
export DAGSTER_HOME ?= $(PULSE_HOME)/dagster
# uv comes from PyPI into the machine's Python; it then installs the locked environment into .venv.
UV := python3 -m uv
VENV := .venv/.synced

.PHONY: install demo test lint format clean

$(VENV): pyproject.toml uv.lock
	$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --python 3.11
	touch $@

install: $(VENV)

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

test: install lint
	$(UV) run --frozen pytest -q

clean:
	rm -rf $(PULSE_HOME) dbt_project/target
