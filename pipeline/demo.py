"""The demo corpus: the documentation of Python's own standard library.

Real prose nobody on this project wrote, present wherever Python is: the docstrings of
the standard library's modules and of their public classes and functions. Built
offline, in about a second, into one Parquet file with ``doc_id``, ``title``, ``uri`` and
``text`` columns.

    python -m pipeline.demo out/demo-corpus/stdlib-docs.parquet
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import sys
import warnings

import pyarrow as pa
import pyarrow.parquet as pq

# Modules with side effects on import (a browser, a GUI, printing) or none of interest.
_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "venv",
    "xxlimited",
    "xxlimited_35",
    "xxsubtype",
}
MIN_MODULE_DOC = 200
MIN_MEMBER_DOC = 400


def _modules() -> list[str]:
    names = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in _SKIP)
    return names


def collect() -> list[dict[str, str]]:
    """One row per documented module, class or function (long docstrings only)."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    warnings.simplefilter("ignore")
    for name in _modules():
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                module = importlib.import_module(name)
        except Exception:  # a platform-specific module that is not built here
            continue
        doc = inspect.getdoc(module) or ""
        if len(doc) >= MIN_MODULE_DOC:
            rows.append(_row(name, f"module {name}", doc))
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__module__", None) != name:
                continue
            qual = f"{name}.{attr}"
            member_doc = inspect.getdoc(obj) or ""
            if len(member_doc) >= MIN_MEMBER_DOC and qual not in seen:
                seen.add(qual)
                rows.append(_row(qual, qual, member_doc))
    return rows


def _row(doc_id: str, title: str, doc: str) -> dict[str, str]:
    return {
        "doc_id": doc_id,
        "title": title,
        "uri": f"python-stdlib:{doc_id}",
        "text": f"{title}\n\n{doc}",
    }


def build(path: str) -> int:
    """Write the corpus to ``path`` (Parquet); returns the number of documents."""
    rows = collect()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return table.num_rows


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "out/demo-corpus/stdlib-docs.parquet"
    n = build(target)
    print(f"demo corpus: {n} documents of Python standard library documentation -> {target}")
