# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := $(PYTHON) deploy/local/services.py

.PHONY: install demo test unit lint bench services-up services-down clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

demo: install
	$(SERVICES) run -- $(BIN)/iotcrm demo

test: install lint
	$(SERVICES) run -- $(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(SERVICES) run -- $(BIN)/iotcrm bench

services-up:
	$(SERVICES) start

services-down:
	$(SERVICES) stop

clean: services-down
	rm -rf .state $(VENV)
