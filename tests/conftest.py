from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")


@pytest.fixture(scope="session")
def stdlib_docs() -> list[dict[str, str]]:
    """Real prose: the demo corpus rows (Python standard library documentation)."""
    from pipeline import demo

    return demo.collect()


def write_corpus(path: str, rows: list[dict[str, object]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def small_corpus(tmp_path, stdlib_docs) -> str:
    """60 real documents, whole (several chunks each for the longer ones)."""
    return write_corpus(str(tmp_path / "docs.parquet"), stdlib_docs[:60])
