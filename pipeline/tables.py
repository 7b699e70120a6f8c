"""Assembling output rows into Arrow tables that follow the schemas in ``models``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipeline.models import FAILURES_SCHEMA, Failure, embeddings_schema


def to_json_text(obj: object) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def embeddings_table(
    columns: dict[str, list[Any]],
    constants: dict[str, Any],
    vectors: Sequence[np.ndarray],
    dim: int,
) -> pa.Table:
    """The embeddings table of ``len(vectors)`` rows: each field of the schema but the
    embedding from ``columns`` (a value per row) or ``constants`` (one value for all)."""
    schema = embeddings_schema(dim)
    n = len(vectors)
    stacked = np.stack(vectors) if n else np.empty((0, dim), np.float32)
    flat = pa.array(stacked.astype(np.float32, copy=False).reshape(-1), type=pa.float32())
    arrays: list[pa.Array] = []
    for f in schema:
        if f.name == "embedding":
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, dim))
        elif f.name in columns:
            arrays.append(pa.array(columns[f.name], type=f.type))
        else:
            arrays.append(pa.repeat(pa.scalar(constants[f.name], type=f.type), n))
    return pa.Table.from_arrays(arrays, schema=schema)


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
