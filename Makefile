# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := $(PYTHON) deploy/local/services.py

.PHONY: install demo test unit lint bench chaos services-up services-down clean

install: $(VENV)/.installed

# Two distributions, both editable: the runtime (iotcrm, the root) and the load
# tests (iotcrm-loadtest, loadtest/), which add simulate, score, demo, bench and
# chaos to `iotcrm` through the entry-point group iotcrm.commands.
$(VENV)/.installed: pyproject.toml loadtest/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e ./loadtest
	touch $@

# The demo runs on its own fresh Kafka and Cassandra (separate ports and data),
# so it never mixes with a previous run or with the test servers.
DEMO_ENV := IOTCRM_STATE_DIR=$(CURDIR)/.state/demo IOTCRM_LOCAL_KAFKA_PORT=29092 \
	IOTCRM_LOCAL_CASSANDRA_PORT=29042 IOTCRM_KAFKA_BOOTSTRAP=127.0.0.1:29092 \
	IOTCRM_CASSANDRA_PORT=29042 IOTCRM_WORKER_STATE_DIR=$(CURDIR)/.state/demo/worker \
	IOTCRM_WORKER_WEB_PORT=6067 IOTCRM_LOCAL_MQTT_PORT=21883 IOTCRM_MQTT_PORT=21883

demo: install
	rm -rf .state/demo
	$(DEMO_ENV) $(SERVICES) run -- $(BIN)/iotcrm demo

test: install lint
	$(SERVICES) run -- $(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: install
	$(SERVICES) run -- $(BIN)/iotcrm bench

# The fault suite (kills, rolling restart, broker and Cassandra outages): a
# benchmark-like run of about 20 minutes, not a test; writes loadtest/results/chaos.md.
chaos: install
	$(SERVICES) run -- $(BIN)/iotcrm chaos

services-up:
	$(SERVICES) start

services-down:
	$(SERVICES) stop

clean: services-down
	rm -rf .state $(VENV)
