"""The Airflow layer of the two DAGs: TaskFlow tasks wrapping ``pipeline.tasks``.

Each task: resolve the ``oci_genai`` connection (only for ``backend: oci``), call the core,
return a small dict. The core raises its own errors; here they are mapped for Airflow:
a permanent error (bad settings, a missing source, refused credentials, a locked output,
a missing or incomplete connection) becomes ``AirflowFailException`` (failed at once, no
retry); anything else is re-raised as it is, so Airflow's retries run, and a retried
shard resumes from its checkpoint in the output.

Knobs read from the environment when the DAG file is parsed (no I/O):
``OCI_GENAI_SHARD_RETRIES`` (3), ``OCI_GENAI_RETRY_DELAY_S`` (60),
``OCI_GENAI_PROGRESS_EVERY_S`` (30), ``OCI_GENAI_POOL`` (oci_genai).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, get_current_context, task  # noqa: TID251
from airflow.sdk.exceptions import (  # noqa: TID251
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

from oci_genai_provider import DEFAULT_CONN_ID
from oci_genai_provider.fields import ConnectionFieldError
from pipeline import tasks as core
from pipeline.storage import OCI_SCHEMES, scheme_of

log = logging.getLogger("oci_genai")

POOL = os.environ.get("OCI_GENAI_POOL", "oci_genai")
SHARD_RETRIES = int(os.environ.get("OCI_GENAI_SHARD_RETRIES", "3"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("OCI_GENAI_RETRY_DELAY_S", "60")))
PROGRESS_EVERY_S = float(os.environ.get("OCI_GENAI_PROGRESS_EVERY_S", "30"))
OUTPUT_ALIAS = AssetAlias("oci_genai_output")

# errors of the Airflow layer that another try cannot fix either
_PERMANENT = (ConnectionFieldError, AirflowNotFoundException)

# Params that steer the DAG, not the job
_DAG_PARAMS = ("conn_id",)


def output_uri(output: str) -> str:
    """The Asset URI of an output: URIs as they are, local paths as ``file://`` URIs."""
    if "://" in output:
        return output.rstrip("/")
    return "file://" + os.path.abspath(output)


@contextlib.contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    """Permanent errors → AirflowFailException (no retries); the rest unchanged."""
    try:
        yield
    except AirflowFailException:
        raise
    except Exception as exc:
        if not (core.is_permanent(exc) or isinstance(exc, _PERMANENT)):
            raise
        message = f"{type(exc).__name__}: {exc}"
        log.error("permanent error, failing without retry: %s", message)
        raise AirflowFailException(message) from exc


@contextlib.contextmanager
def connection_settings(
    conn_id: str | None,
    backend: str | None,
    *,
    key_only: bool = False,
    uris: Iterable[str | None] = (),
) -> Iterator[dict[str, Any]]:
    """The connection's OCI settings for ``backend: oci``, or for a run whose source or
    output (``uris``) is on OCI Object Storage (``oci://``), which is signed with the same
    settings; nothing otherwise (the embedded default needs no connection). For ``oci://``
    alone a missing connection is no error: the job's own settings (``auth``, ...) sign.
    ``key_only``: see ``OciGenAIHook.job_settings`` (the plan fixed the other settings; a
    shard task only needs its own key file)."""
    on_oci = any(scheme_of(u or "") in OCI_SCHEMES for u in uris)
    if backend != "oci" and not on_oci:
        yield {}
        return
    from oci_genai_provider.hooks import OciGenAIHook

    hook = OciGenAIHook(conn_id or DEFAULT_CONN_ID)
    if backend != "oci":
        try:
            hook.get_connection(hook.oci_genai_conn_id)
        except AirflowNotFoundException:
            yield {}
            return
    with hook.job_settings(key_only=key_only, genai=backend == "oci") as settings:
        yield settings


def _uris(config: Mapping[str, Any]) -> tuple[Any, Any]:
    return config.get("source"), config.get("output")


def job_conf(params: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JobConfig keys from the run's params (conf keys equal the Params); ``extra``
    (e.g. a Variable's settings) fills what the params leave unset."""
    conf = {k: v for k, v in (extra or {}).items() if v is not None}
    conf.update({k: v for k, v in params.items() if k not in _DAG_PARAMS and v is not None})
    return conf


@task(retries=2, retry_delay=RETRY_DELAY)
def plan(variable: str | None = None, defaults: dict[str, Any] | None = None) -> list[Any]:
    """Validate the run's settings, mint its run id, list the source and write the plan
    into the output. Settings, first set wins: the params (conf keys equal the Params),
    the JSON Variable ``variable`` (if given and set), ``defaults``, and the connection
    for OCI settings. A bad value fails here, at once, with JobConfig's message.

    Returns the shard refs (what ``run_shard`` is mapped over: Airflow maps only over a
    task's return value); ``run_id``, ``config``, ``output``, ``counts`` (and a dry run's
    ``preview``) are pushed as XComs of their own keys."""
    context = get_current_context()
    params = dict(context["params"])
    extra = dict(defaults or {})
    if variable:
        from airflow.sdk import Variable  # noqa: TID251

        stored = Variable.get(variable, default=None, deserialize_json=True)
        if stored is not None and not isinstance(stored, dict):
            raise AirflowFailException(f"Variable {variable}: expected a JSON object of settings")
        extra.update({k: v for k, v in (stored or {}).items() if v is not None})
    conf = job_conf(params, extra)
    with (
        fail_fast_on_permanent_errors(),
        connection_settings(
            params.get("conn_id"),
            conf.get("backend", "local"),
            uris=(conf.get("source"), conf.get("output")),
        ) as overrides,
    ):
        planned = core.plan_job(conf, overrides=overrides)
    if planned.get("dry_run"):
        log.info("dry run, nothing sent: %s", planned["preview"])
    else:
        log.info("run %s: %s", planned["run_id"], planned["counts"])
    for key, value in planned.items():
        if key != "shards":
            context["ti"].xcom_push(key=key, value=value)
    return list(planned["shards"])


@task(
    pool=POOL,
    multiple_outputs=False,
    retries=SHARD_RETRIES,
    retry_delay=RETRY_DELAY,
    map_index_template="{{ shard_label }}",
)
def run_shard(config: dict[str, Any], shard: dict[str, Any] | str) -> dict[str, Any]:
    """Run one shard (resumable; committed documents are skipped) and return its counts.
    Documents left pending fail the task so that a retry resumes them."""
    context = get_current_context()
    shard_id = shard if isinstance(shard, str) else shard["shard_id"]
    context["shard_label"] = shard_id  # type: ignore[typeddict-unknown-key]
    conn_id = dict(context["params"]).get("conn_id")
    with (
        fail_fast_on_permanent_errors(),
        connection_settings(
            conn_id, config.get("backend"), key_only=True, uris=_uris(config)
        ) as overrides,
    ):
        return core.run_shard_task(
            config, shard, overrides=overrides, progress_every=PROGRESS_EVERY_S, emit=log.info
        )


@task(
    outlets=[OUTPUT_ALIAS],
    multiple_outputs=False,
    retries=2,
    retry_delay=RETRY_DELAY,
    # a plan of no shards (a modified window that selects nothing) maps run_shard over
    # nothing, which Airflow marks skipped: the commit still writes the (empty) report
    trigger_rule="none_failed",
)
def commit(config: dict[str, Any]) -> dict[str, Any]:
    """Merge the shard reports found in the output (not in XCom) into
    ``OUTPUT/report.json`` and emit an Asset event for the output's URI. Runs unless a
    shard failed, so also after a plan of no shards; skipped after a dry run, which
    writes nothing."""
    if config.get("dry_run"):
        raise AirflowSkipException("dry run: nothing to commit")
    context = get_current_context()
    conn_id = dict(context["params"]).get("conn_id")
    with (
        fail_fast_on_permanent_errors(),
        connection_settings(
            conn_id, config.get("backend"), key_only=True, uris=_uris(config)
        ) as overrides,
    ):
        result = core.commit_job(config, overrides=overrides)
    uri = output_uri(result["output"])
    context["outlet_events"][OUTPUT_ALIAS].add(
        Asset(uri), extra={"run_id": result["run_id"], "report": result["report"]}
    )
    log.info(
        "run %s committed: %d documents, %d chunks, report %s",
        result["run_id"],
        result["documents_completed"],
        result["chunks_embedded"],
        result["report"],
    )
    return result


def _core_call(config: dict[str, Any], fn: Any) -> dict[str, Any]:
    context = get_current_context()
    conn_id = dict(context["params"]).get("conn_id")
    with (
        fail_fast_on_permanent_errors(),
        connection_settings(
            conn_id, config.get("backend"), key_only=True, uris=_uris(config)
        ) as overrides,
    ):
        result: dict[str, Any] = fn(config, overrides=overrides)
        return result


@task(retries=2, retry_delay=RETRY_DELAY, trigger_rule="none_failed")
def deletions(config: dict[str, Any]) -> dict[str, Any]:
    """Record the documents that left the source since the last complete run in
    ``OUTPUT/deletions/``. Runs once every shard succeeded; skipped after a dry run."""
    if config.get("dry_run"):
        raise AirflowSkipException("dry run: nothing to record")
    result = _core_call(config, core.deletions_job)
    log.info("deletions: %s", result)
    return result


@task(retries=2, retry_delay=RETRY_DELAY)
def compact(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the output to its current rows (newest version per document, nothing of
    deleted ones, only outstanding failures). A retry finishes what a killed try left."""
    if config.get("dry_run"):
        raise AirflowSkipException("dry run: nothing to compact")
    result = _core_call(config, core.compact_job)
    log.info(
        "compacted: %d -> %d parts, embeddings %s -> %s rows, %d deleted document(s) dropped",
        result["records_before"],
        result["records_after"],
        result["rows_before"].get("embeddings", 0),
        result["rows_after"].get("embeddings", 0),
        result["deleted_documents"],
    )
    return result


__all__ = [
    "OUTPUT_ALIAS",
    "commit",
    "compact",
    "connection_settings",
    "deletions",
    "fail_fast_on_permanent_errors",
    "job_conf",
    "output_uri",
    "plan",
    "run_shard",
]
