# Pulse: `make demo` runs the whole pipeline on embedded defaults; `make test` runs every test.
SHELL := /bin/bash
export PULSE_HOME ?= $(CURDIR)/.pulse
export DAGSTER_HOME ?= $(PULSE_HOME)/dagster
# uv comes from PyPI into the machine's Python; it then installs the locked environment into .venv.
UV := python3 -m uv
VENV := .venv/.synced

.PHONY: install system-deps browser demo live test lint format clean check-defs services services-stop bench-serving \
	bench-forecast bench-pipeline bench-live bench-intake bench-decisions

$(VENV): pyproject.toml uv.lock
	$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --python 3.11
	touch $@

# dbt's manifest before the code location loads (tests and `pulse materialize` import it outside `dagster dev`):
# dagster-dbt's project preparation (`dbt parse` with the runs' --vars) into dbt_project/target, again whenever a
# file of the dbt project changes. Under `dagster dev`, DbtProject.prepare_if_dev() re-parses on every load.
DBT_MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := dbt_project/dbt_project.yml dbt_project/profiles.yml pulse_assets/resources.py \
	$(shell find dbt_project/models dbt_project/macros dbt_project/seeds dbt_project/tests -type f)

$(DBT_MANIFEST): $(VENV) $(DBT_SOURCES)
	$(UV) run --frozen dagster-dbt project prepare-and-package --file pulse_assets/resources.py
	touch $@

install: $(VENV) $(DBT_MANIFEST)

# Debian packages the tests and the production profile need: Redis, PostgreSQL's server binaries, NATS (make services
# and the integration tests run them under PULSE_HOME or a test's folder). CI runs as root; apt-get update runs only when one is missing.
SYSTEM_PACKAGES := redis-server postgresql nats-server
system-deps:
	@{ command -v redis-server >/dev/null && command -v nats-server >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); }

# Headless Chromium and its driver for the live map test (tests/test_map.py); Debian's packages, nothing fetched
# by a test tool.
browser:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Redis, PostgreSQL, an MLflow tracking server and NATS JetStream on loopback under $(PULSE_HOME)/services.
services: install system-deps
	$(UV) run --frozen python -m ops.services start

services-stop:
	$(UV) run --frozen python -m ops.services stop

demo: install
	$(UV) run --frozen pulse simulate --if-missing
	$(UV) run --frozen pulse materialize --missing
	$(UV) run --frozen pulse up

# The city after its history, live (README "Live"): builds the demo history when missing, then `pulse live` at 10x
# (a bucket every 90 s; SPEED=1 is real time). Ctrl-C stops the stream, the API and the Dagster UI.
# BUS=nats://127.0.0.1:4222 (after `make services`) sends the events through NATS JetStream and `pulse intake`.
SPEED ?= 10
BUS ?=
live: install
	$(UV) run --frozen pulse simulate --if-missing
	$(UV) run --frozen pulse materialize --missing
	$(UV) run --frozen pulse live --speed $(SPEED) $(if $(BUS),--bus $(BUS))

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

format: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

# The code location loads, as `dg` (Dagster's project CLI) sees it: every definition, check and resource.
check-defs: install
	$(UV) run --frozen dg check defs

# Two pytest workers: much of the suite waits on subprocesses, servers and the live city clock. Tests on one of
# the session's cities share a worker, so each city is built once (tests/conftest.py).
test: install system-deps browser lint check-defs
	$(UV) run --frozen pytest -q -n 2 --dist loadgroup

# The serving benchmark (README "Serving"): needs the demo city, builds it when missing.
bench-serving: install
	$(UV) run --frozen python -m bench.serving_bench --write-readme --json bench/results/serving.json

# The forecast-quality benchmark (README "Forecast quality"): backtests the simulated city (last 7 days), NAB's NYC
# taxi series (two windows) and Chicago's Divvy pickups (last two weeks), each city built under bench/results/tmp/
# when missing, and checks the goals at 60 minutes. DATASETS=simulated skips the real logs.
DATASETS ?= simulated,nyc_taxi,chicago_divvy
bench-forecast: install
	$(UV) run --frozen python -m bench.forecast_quality --write-readme --datasets $(DATASETS)

# The pipeline throughput benchmark (README "Pipeline throughput"): one simulated city day at 1×, 2× and 4×
# (1× ≈ 5.2 million events) through the real assets, per-stage events/s and peak memory, fixed cost, the
# hand-written DuckDB ceiling; writes bench/results/pipeline_throughput.{md,json}. About 10 minutes.
bench-pipeline: install
	$(UV) run --frozen python -m bench.pipeline_throughput

clean:
	rm -rf $(PULSE_HOME) dbt_project/target

# The bucket clock benchmark (README "Live"): close of a bucket to the API answering from it, on the demo city
# and on the large city of bench-pipeline (its 28-day history is built under bench/results/tmp/large when missing).
bench-live: install
	$(UV) run --frozen python -m bench.live_latency --write-readme

# Intake through NATS JetStream: sustained events/s of one `pulse intake` process with acknowledgements, then
# SIGKILL x10 and a nats-server restart under load (its own nats-server and folders; bench/results/intake.*).
bench-intake: install
	$(UV) run --frozen python -m bench.intake_throughput --write-readme
# Decisions out under faults (README "Decisions out"): the API on a built tiny city with its own Redis and NATS, a
# compressed bucket clock, Redis down for a minute during updates; writes bench/results/decisions.{md,json}.
bench-decisions: install
	$(UV) run --frozen python -m bench.decisions_faults --write-readme
