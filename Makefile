# Everything from nothing: `make test` and `make run` create the virtual environment,
# install the package (pure Python) and fetch the Kafka broker jars themselves.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JARS   := $(CURDIR)/tools/kafka/jars

.PHONY: all install kafka-jars deploy-tools test unit integration lint format run bench soak clean mutate

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing glance-poller and its dependencies into $(VENV) (the first time takes a minute or two) ..."
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(JARS)/.fetched: tools/kafka/pom.xml
	command -v java >/dev/null || { echo "Java 17+ is required for the local Kafka broker"; exit 1; }
	command -v mvn >/dev/null || { echo "Maven is required to fetch the Kafka jars"; exit 1; }
	@echo "fetching the Apache Kafka broker jars from Maven Central into tools/kafka/jars (once) ..."
	rm -rf $(JARS)
	mvn --quiet --batch-mode -f tools/kafka/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=$(JARS) -DincludeScope=runtime
	touch $@

kafka-jars: $(JARS)/.fetched

# What the deploy/ tests run (tests/unit/test_deploy.py, tests/unit/test_alert_rules.py): helm
# and kubeconform built from their Go modules into .tools/bin (a few minutes, once; a stamp per
# version makes later runs instant), promtool from Debian's prometheus package (as root).
TOOLS              := $(CURDIR)/.tools
HELM_VERSION       := v3.22.0
KUBECONFORM_VERSION := v0.8.0

$(TOOLS)/.helm-$(HELM_VERSION) $(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION):
	command -v go >/dev/null || { echo "Go is required to build helm and kubeconform"; exit 1; }
	mkdir -p $(TOOLS)/bin && echo '*' > $(TOOLS)/.gitignore
	GOBIN=$(TOOLS)/bin go install $(if $(findstring helm,$@),helm.sh/helm/v3/cmd/helm@$(HELM_VERSION),github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION))
	touch $@

deploy-tools: $(TOOLS)/.helm-$(HELM_VERSION) $(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION)
	@command -v promtool >/dev/null || { \
		command -v apt-get >/dev/null || { echo "promtool is required: install Prometheus's promtool"; exit 1; }; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

unit: install deploy-tools
	$(BIN)/pytest tests/unit

integration: install kafka-jars
	$(BIN)/pytest tests/integration

# The 3-minute seeded chaos soak mostly waits on its processes: it runs beside the rest of the
# suite (each pytest with its own temporary folder), and both must pass. The suite itself runs
# in two workers (pytest-xdist), each with its own broker: its tests mostly wait on processes
# too. Work stealing keeps the long ones from ending up in one worker.
SUITE_WORKERS ?= 2
SOAK_TEST := tests/integration/test_soak.py::test_a_three_minute_seeded_soak_loses_nothing
test: lint kafka-jars deploy-tools
	@rm -rf .pytest-soak .pytest-suite
	@echo "the 3-minute chaos soak runs beside the suite; its output follows the suite's"
	@$(BIN)/pytest -p no:cacheprovider --basetemp=.pytest-soak $(SOAK_TEST) > .soak-test.log 2>&1 & \
	soak=$$!; \
	$(BIN)/pytest -p no:cacheprovider --basetemp=.pytest-suite --deselect $(SOAK_TEST) \
		-n $(SUITE_WORKERS) --dist worksteal | tee .suite-test.log; suite=$${PIPESTATUS[0]}; \
	wait $$soak; soaked=$$?; \
	echo "--- the chaos soak (tests/integration/test_soak.py) ---"; cat .soak-test.log; \
	echo "--- the suite, again its last line ---"; tail -n 1 .suite-test.log; \
	test $$suite -eq 0 && test $$soaked -eq 0

run: install kafka-jars
	$(BIN)/python tools/run_demo.py

# Bytecode first, as an installed package has it (PYTHONDONTWRITEBYTECODE would otherwise make
# every process the benchmark starts compile poller/ again).
bench: install kafka-jars
	$(BIN)/python -m compileall -q poller
	$(BIN)/python bench/run.py

# Mutation testing of the core against the unit tests ([tool.mutmut] in pyproject.toml); the
# survivors, and why each cannot change behaviour, are in tests/MUTANTS.md.
mutate: install
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results > .mutmut-results.txt || true
	$(BIN)/python tools/mutation_score.py .mutmut-results.txt

# The chaos soak (tools/soak.py): SOAK_MINUTES of chaos (default 10), then the catch-up and the
# comparison; SOAK_SEED makes the plan reproducible (default: random, printed).
SOAK_MINUTES ?= 10
SOAK_SEED ?=
soak: install kafka-jars
	$(BIN)/python tools/soak.py --minutes $(SOAK_MINUTES) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

clean:
	rm -rf $(VENV) $(JARS) .run .pytest_cache .mypy_cache .ruff_cache mutants .mutmut-results.txt \
		.pytest-soak .pytest-suite .soak-test.log .suite-test.log
