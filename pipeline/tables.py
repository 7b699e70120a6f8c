"""Assembling output rows into Arrow tables that follow the schemas in ``models``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipeline.models import FAILURES_SCHEMA, Failure, embeddings_schema


def to_json_text(obj: object) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def embeddings_table(rows: list[dict[str, Any]], dim: int) -> pa.Table:
    schema = embeddings_schema(dim)
    vectors = np.stack([r["embedding"] for r in rows]).astype(np.float32, copy=False)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns: dict[str, pa.Array] = {}
    for f in schema:
        if f.name == "embedding":
            columns[f.name] = pa.FixedSizeListArray.from_arrays(flat, dim)
        else:
            columns[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
    return pa.Table.from_pydict(columns, schema=schema)


def add_passthrough(
    table: pa.Table, rows: list[dict[str, Any]], names: tuple[str, ...]
) -> pa.Table:
    """Source columns carried into the output, typed as Arrow infers them (string when a
    part holds only nulls). A name that clashes with an output column is prefixed."""
    for name in names:
        values = [r.get(name) for r in rows]
        column = pa.array(values)
        if pa.types.is_null(column.type):
            column = pa.array(values, type=pa.string())
        out = name if name not in table.column_names else f"source_{name}"
        table = table.append_column(out, column)
    return table


def failures_table(failures: list[Failure], run_id: str) -> pa.Table:
    now = datetime.now(UTC)
    rows = [
        {
            "doc_id": f.doc_id,
            "chunk_id": f.chunk_id,
            "chunk_index": f.chunk_index,
            "stage": f.stage,
            "error_class": f.error_class,
            "permanent": f.permanent,
            "http_status": f.http_status,
            "oci_code": f.oci_code,
            "message": f.message,
            "opc_request_id": f.opc_request_id,
            "attempts": f.attempts,
            "source": f.source,
            "run_id": run_id,
            "failed_at": now,
        }
        for f in failures
    ]
    return pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA)
