"""
### oci_genai_backfill: embed (and summarize) a corpus on demand

Trigger it from the form (**Trigger DAG** in the UI) or with a conf whose keys are the
Params below (`airflow dags trigger oci_genai_backfill -c '{"source": ..., "output": ...}'`).
The Param names are `JobConfig` settings: the same keys as the command line and YAML.

Tasks:
- `plan`: validates the settings (a bad value fails here at once, with no retry), mints
  the run id, lists the source and writes `OUTPUT/_state/runs/<run_id>/plan.json`.
- `run_shard` (mapped, pool `oci_genai`): embeds and summarizes one shard, logging
  progress every 30 s. Resumable: committed documents are skipped, so a retry or a
  cleared task pays only for what is left.
- `commit`: merges the shard reports found in the output into `OUTPUT/report.json` and
  emits an Asset event for the output URI (through the alias `oci_genai_output`).

With `backend: oci` the `conn_id` connection (type `oci_genai`) supplies credentials, region,
endpoints, compartment and default models and limits; `local` (the embedded default) and
`hash` need no connection. `dry_run: true` only counts documents, characters and cost.

A prefix or date-range backfill: put the prefix in `source`
(`oci://bucket@namespace/docs/2026/`), narrow by name with `glob` (`*.jsonl`) and by time
modified with `modified_since` / `modified_until` (ISO 8601, UTC when no zone;
`[since, until)`). A window that selects nothing is a run with nothing to do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag

from oci_genai_provider.dagtasks import commit, plan, run_shard


def _opt(kind: str, description: str, **schema: Any) -> Param:
    # no range checks here: JobConfig validates every value, with one message per setting
    return Param(None, type=[kind, "null"], description=description, **schema)


@dag(
    dag_id="oci_genai_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["oci-genai"],
    doc_md=__doc__,
    params={
        "source": Param(
            "out/demo-corpus/stdlib-docs.parquet",
            type="string",
            description="Parquet file, dataset directory or glob, or a directory of documents",
        ),
        "output": Param("out/demo", type="string", description="Where the datasets go"),
        "glob": _opt("string", "Only source files matching this pattern (prefix/date range)"),
        "modified_since": _opt(
            "string",
            "Only files / objects modified at or after this instant: an ISO 8601 date or"
            " date-time, UTC when it has no zone (2026-01-31, 2026-01-31T06:00:00Z)",
        ),
        "modified_until": _opt(
            "string",
            "Only files / objects modified before this instant (ISO 8601, UTC when no zone);"
            " with modified_since a date range [since, until)",
        ),
        "backend": Param("local", type="string", enum=["local", "oci", "hash"]),
        "embed_model": _opt("string", "Embedding model (default: the backend's)"),
        "summary_model": _opt("string", "Summary model (default: the backend's)"),
        "output_dimensions": _opt("integer", "256, 512, 1024 or 1536 (OCI embed v4)"),
        "summaries": Param(True, type="boolean", description="Summarize each document"),
        "shards": Param(4, type="integer", description="Parallel shard tasks (at least 1)"),
        "max_rpm": _opt("integer", "Requests per minute ceiling"),
        "max_tpm": _opt("integer", "Tokens per minute ceiling"),
        "max_in_flight": _opt("integer", "Concurrent requests per shard"),
        "dry_run": Param(False, type="boolean", description="Count and price only"),
        "price_per_million_chars": _opt("number", "Price per million characters embedded"),
        "max_cost": _opt("number", "Refuse to start above this estimated cost"),
        "conn_id": Param("oci_genai_default", type="string", description="oci_genai connection"),
    },
)
def oci_genai_backfill() -> None:
    refs: Any = plan()  # returns the shard refs; refs["config"] is its "config" XCom
    shards = run_shard.partial(config=refs["config"]).expand(shard=refs)
    shards >> commit(refs["config"])


oci_genai_backfill()
