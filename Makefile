# Two commands on a fresh machine with Python 3.11 and pip:  make demo  /  make test
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
# a new stamp name makes an environment synced before bytecode was compiled sync once more
STAMP := $(VENV)/.synced-bytecode
DEMO_CORPUS := out/demo-corpus/stdlib-docs.parquet

.PHONY: setup demo test lint bench clean

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

demo: $(STAMP) $(DEMO_CORPUS)
	$(BIN)/oci-genai-batch run --source $(DEMO_CORPUS) --output out/demo --backend local --batch-docs 64

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy pipeline

test: $(STAMP) lint test-tools
	$(BIN)/pytest

# Test tools from Debian, installed when missing (apt-get update only if the first try
# fails): docker-compose validates docker-compose.yaml (tests/deploy), headless chromium
# renders the runs page (tests/airflow). Without them those tests fail and say why.
TEST_TOOLS := docker-compose chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: test-tools
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	  || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
	  || { echo "make test-tools: cannot install$$missing from Debian" >&2; exit 1; }; fi

bench: $(STAMP)
	$(BIN)/python bench/bench_local.py
	$(BIN)/python bench/bench_demo.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_client_cpu.py
	$(BIN)/python bench/bench_throughput.py
	$(BIN)/python bench/bench_cpu.py
	$(BIN)/python bench/bench_pipe.py
	$(BIN)/python bench/bench_celery.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
