# Everything from nothing: `make test` and `make run` create the virtual environment,
# install the package (building its native fast path with cargo) and fetch the Kafka broker
# jars themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JARS   := $(CURDIR)/tools/kafka/jars

.PHONY: all install kafka-jars test unit integration lint format run bench soak clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs) | $(BIN)/python
	command -v cargo >/dev/null || { echo "Rust (cargo) is required to build the native fast path: https://rustup.rs"; exit 1; }
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
	cargo fmt --manifest-path native/Cargo.toml --check
	cargo clippy --quiet --manifest-path native/Cargo.toml --release --all-targets -- -D warnings

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

unit: install
	cargo test --quiet --manifest-path native/Cargo.toml --release
	$(BIN)/pytest tests/unit

integration: install kafka-jars
	$(BIN)/pytest tests/integration

test: lint kafka-jars
	cargo test --quiet --manifest-path native/Cargo.toml --release
	$(BIN)/pytest

run: install kafka-jars
	$(BIN)/python tools/run_demo.py

# Bytecode first, as an installed package has it (PYTHONDONTWRITEBYTECODE would otherwise make
# every process the benchmark starts compile poller/ again).
bench: install kafka-jars
	$(BIN)/python -m compileall -q poller
	$(BIN)/python bench/run.py

# The chaos soak (tools/soak.py): SOAK_MINUTES of chaos (default 10), then the catch-up and the
# comparison; SOAK_SEED makes the plan reproducible (default: random, printed).
SOAK_MINUTES ?= 10
SOAK_SEED ?=
soak: install kafka-jars
	$(BIN)/python tools/soak.py --minutes $(SOAK_MINUTES) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

clean:
	rm -rf $(VENV) $(JARS) .run .pytest_cache .mypy_cache .ruff_cache native/target poller/_fastpath.*.so
