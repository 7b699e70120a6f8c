"""The Airflow overhead: ``make demo``'s DAG run beside the plain CLI on the same corpus.

    .venv/bin/python bench/bench_airflow_demo.py [--backend local hash]

For each backend, with a fresh output each time and the same settings (4 shards):
1. ``airflow dags test oci_genai_backfill -c {...}`` in a migrated private Airflow home
   (the command ``make demo`` runs; the home's one-off set-up is timed apart);
2. ``oci-genai-batch run --shards 4`` (the plain command line).
Both are timed as whole processes (wall seconds, interpreter start included). Prints each
figure and the ratio Airflow / CLI; ``local`` is the demo itself, ``hash`` (no model)
shows the fixed cost Airflow adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline import demo  # noqa: E402

BIN = os.path.join(ROOT, ".venv", "bin")
SHARDS = 4


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def _documents(output: str) -> int:
    with open(os.path.join(output, "report.json")) as f:
        return int(json.load(f)["counts"]["documents_completed"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", nargs="+", default=["local", "hash"])
    args = parser.parse_args()

    work = os.path.join(ROOT, "out", "bench-airflow-demo")
    corpus = os.path.join(work, "stdlib-docs.parquet")
    os.makedirs(work, exist_ok=True)
    n_docs = demo.build(corpus)
    home = os.path.join(work, "airflow-home")
    shutil.rmtree(home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    setup = _timed([f"{BIN}/python", "scripts/airflow_home.py", "--home", home], env)

    rows = []
    for backend in args.backend:
        dag_out = os.path.join(work, f"dag-{backend}")
        cli_out = os.path.join(work, f"cli-{backend}")
        for path in (dag_out, cli_out):
            shutil.rmtree(path, ignore_errors=True)
        conf = {"source": corpus, "output": dag_out, "backend": backend, "shards": SHARDS}
        dag_s = _timed(
            [f"{BIN}/airflow", "dags", "test", "oci_genai_backfill", "-c", json.dumps(conf)],
            {**env, "AIRFLOW_HOME": home},
        )
        cli_s = _timed(
            [
                f"{BIN}/oci-genai-batch",
                "run",
                "--source",
                corpus,
                "--output",
                cli_out,
                "--backend",
                backend,
                "--shards",
                str(SHARDS),
                "--no-progress",
            ],
            env,
        )
        assert _documents(dag_out) == _documents(cli_out) == n_docs
        rows.append((backend, dag_s, cli_s))

    print(
        f"demo corpus: {n_docs} documents, {SHARDS} shards, {os.cpu_count()} cores;"
        f" one-off Airflow home set-up (config + migrate + pool + connection): {setup:.1f} s"
    )
    print(
        f"{'backend':<8} {'airflow dags test s':>20} {'plain CLI s':>12} {'ratio':>6}"
        f" {'overhead s':>11}"
    )
    for backend, dag_s, cli_s in rows:
        print(
            f"{backend:<8} {dag_s:>20.1f} {cli_s:>12.1f} {dag_s / cli_s:>6.2f}"
            f" {dag_s - cli_s:>11.1f}"
        )


if __name__ == "__main__":
    main()
