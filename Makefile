# Everything from nothing: `make test` and `make run` create the virtual environment,
# install the package (pure Python) and fetch the Kafka broker jars themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JARS   := $(CURDIR)/tools/kafka/jars

.PHONY: all install kafka-jars test unit integration lint format run bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing glance-poller and its dependencies into $(VENV) ..."
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(JARS)/.fetched: tools/kafka/pom.xml
	command -v java >/dev/null || { echo "Java 17+ is required for the local Kafka broker"; exit 1; }
	command -v mvn >/dev/null || { echo "Maven is required to fetch the Kafka jars"; exit 1; }
	rm -rf $(JARS)
	mvn --quiet --batch-mode -f tools/kafka/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=$(JARS) -DincludeScope=runtime
	touch $@

kafka-jars: $(JARS)/.fetched

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

unit: install
	$(BIN)/pytest tests/unit

integration: install kafka-jars
	$(BIN)/pytest tests/integration

test: lint kafka-jars
	$(BIN)/pytest

run: install kafka-jars
	$(BIN)/python tools/run_demo.py

# Bytecode first, as an installed package has it (PYTHONDONTWRITEBYTECODE would otherwise make
# every process the benchmark starts compile poller/ again).
bench: install kafka-jars
	$(BIN)/python -m compileall -q poller
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(JARS) .run .pytest_cache .mypy_cache .ruff_cache
