# Two commands on a fresh machine with Python 3.11 and pip:  make demo  /  make test
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
# a new stamp name makes an environment synced before bytecode was compiled sync once more
STAMP := $(VENV)/.synced-bytecode
DEMO_CORPUS := out/demo-corpus/stdlib-docs.parquet

.PHONY: setup demo test lint bench clean airflow-home airflow airflow-stop

setup: $(STAMP)

# uv is bootstrapped with pip into .tools/ when it is not on PATH
.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

# Bytecode is compiled at install time: these machines set PYTHONDONTWRITEBYTECODE, so
# without it every process (the CLI, each Airflow task) recompiles every module it imports.
# --compile-bytecode covers site-packages; the project itself is installed editable, so its
# sources are compiled in place (the __pycache__ dirs are ignored by git).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	$(BIN)/python -m compileall -q pipeline oci_genai_provider dags plugins
	touch $(STAMP)

$(DEMO_CORPUS): | $(STAMP)
	$(BIN)/python -m pipeline.demo $(DEMO_CORPUS)

# --- Airflow: the main job is the DAG oci_genai_backfill. One project-local home, .airflow/
# on SQLite, for demo / airflow / airflow-stop: scripts/airflow_home.py writes this
# project's settings into .airflow/airflow.cfg (dags/ and plugins/ folders, no examples, the
# API on 127.0.0.1:$(AIRFLOW_PORT), ...) and adds the pool and the default connection, so a
# plain `AIRFLOW_HOME=.airflow .venv/bin/airflow dags trigger|list-runs ...` from here works.
AIRFLOW_HOME_DIR ?= $(CURDIR)/.airflow
AIRFLOW_PORT ?= 8080
AIRFLOW_LOG_PORT ?= 8793
AIRFLOW := AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) $(BIN)/airflow
AIRFLOW_ENV := AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) AIRFLOW_PORT=$(AIRFLOW_PORT) BIN=$(CURDIR)/$(BIN)
# another corpus, output or backend: make demo DEMO_CORPUS=... DEMO_OUT=... DEMO_BACKEND=hash
DEMO_OUT ?= out/demo
DEMO_BACKEND ?= local
DEMO_SHARDS ?= 4

airflow-home: $(STAMP)
	$(AIRFLOW_ENV) $(BIN)/python scripts/airflow_home.py --port $(AIRFLOW_PORT) --log-port $(AIRFLOW_LOG_PORT)

# the DAG end to end in one process (`airflow dags test`; exits non-zero when the run
# fails), then the summary table from the run's report.json
demo: $(STAMP) $(DEMO_CORPUS) airflow-home
	$(AIRFLOW) dags test oci_genai_backfill -c '{"source": "$(abspath $(DEMO_CORPUS))", "output": "$(abspath $(DEMO_OUT))", "backend": "$(DEMO_BACKEND)", "shards": $(DEMO_SHARDS)}'
	$(BIN)/python -m pipeline.report_table $(DEMO_OUT)

# airflow standalone in the background (UI http://127.0.0.1:$(AIRFLOW_PORT)); prints the login.
# The demo corpus is the default source of the oci_genai_backfill form and of the nightly DAG.
airflow: airflow-home $(DEMO_CORPUS)
	$(AIRFLOW_ENV) scripts/airflow-standalone.sh start

# stops exactly the process group `make airflow` started (.airflow/standalone.pid)
airflow-stop:
	$(AIRFLOW_ENV) scripts/airflow-standalone.sh stop

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy pipeline

test: $(STAMP) lint test-tools
	$(BIN)/pytest

# Test tools from Debian, installed when missing (apt-get update only if the first try
# fails): docker-compose validates docker-compose.yaml (tests/deploy), headless chromium
# renders the runs page (tests/airflow), LibreOffice (soffice, from
# libreoffice-writer-nogui) converts a manual page to DOCX and PDF for
# tests/pipeline/test_documents.py, whose real documents scripts/test-documents.sh then
# fetches into .cache/test-documents (Debian's postgresql-doc-15 and bash-doc; once).
# Without them those tests fail and say why. Each entry is command:package.
TEST_TOOLS := docker-compose:docker-compose chromium:chromium soffice:libreoffice-writer-nogui
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: test-tools
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	  || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
	  || { echo "make test-tools: cannot install$$missing from Debian" >&2; exit 1; }; fi
	@scripts/test-documents.sh .cache/test-documents

bench: $(STAMP)
	$(BIN)/python bench/bench_local.py
	$(BIN)/python bench/bench_demo.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_client_cpu.py
	$(BIN)/python bench/bench_throughput.py
	$(BIN)/python bench/bench_cpu.py
	$(BIN)/python bench/bench_pipe.py
	$(BIN)/python bench/bench_celery.py
	$(BIN)/python bench/bench_compact.py
	$(BIN)/python bench/bench_airflow_demo.py
	$(BIN)/python bench/bench_documents.py
	$(BIN)/python bench/bench_objectstore.py
	$(BIN)/python bench/bench_object_output.py
	$(BIN)/python bench/bench_object_io.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .cache
