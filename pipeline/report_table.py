"""Print the summary table of a finished run from its ``OUTPUT/report.json``.

    python -m pipeline.report_table OUTPUT

The same table ``oci-genai-batch run`` prints (``pipeline.cli``'s), for a run made
elsewhere: an Airflow DAG run (``make demo`` runs ``oci_genai_backfill``). The time row is
the shards' working time (``shard_seconds``), the report holds no wall time.
Exit status: 0, or 2 when the output has no readable report.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import _pending_documents, _summary_table
from pipeline.sinks import OutputStore


def table(output: str) -> str:
    """The summary table of the last run committed into ``output`` (a path or URI).

    Raises OSError when the report cannot be read, ValueError when it is not a report."""
    report = OutputStore(output).read_json("report.json")
    if not isinstance(report, dict) or "counts" not in report or "calls" not in report:
        raise ValueError("report.json is not a run report (no counts/calls)")
    seconds = float(report.get("shard_seconds", 0.0))
    return _summary_table(report, seconds, output, _pending_documents(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report_table")
    parser.add_argument("output", help="the run's output (a path or URI)")
    args = parser.parse_args(argv)
    try:
        print(table(args.output))
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        print(f"report_table: error: output {args.output}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
