"""Create or update the project-local Airflow home (``.airflow/`` on SQLite).

    .venv/bin/python scripts/airflow_home.py [--home .airflow] [--port 8080] [--log-port 8793]

The one place where this project's local Airflow settings live: they are written into
``HOME/airflow.cfg``, so every later command needs only ``AIRFLOW_HOME`` —
``make demo``, ``make airflow`` and, from the repository root, a plain
``AIRFLOW_HOME=.airflow .venv/bin/airflow dags trigger oci_genai_backfill -c '{...}'``.

Steps (each is idempotent, so ``make`` runs this every time):
1. ``airflow.cfg``: Airflow writes its default file (with a generated Fernet key and JWT
   secret) on first use; then the keys below are set in place, comments kept.
2. the metadata database is created or migrated (``airflow db migrate``);
3. the pool ``oci_genai`` is created if missing (an operator's slot count is kept);
4. the connection ``oci_genai_default`` (``oci_genai_provider.DEFAULT_CONNECTION``, for
   the embedded default) is added if missing (an operator's edits are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = "oci_genai"
POOL_SLOTS = 4


def settings(home: str, port: int, log_port: int, parallelism: int) -> dict[str, dict[str, str]]:
    """The airflow.cfg keys this project sets, by section (absolute paths throughout:
    Airflow refuses a relative SQLite path, and tasks may run in another directory)."""
    return {
        "core": {
            "dags_folder": os.path.join(ROOT, "dags"),
            "plugins_folder": os.path.join(ROOT, "plugins"),
            "load_examples": "False",
            "executor": "LocalExecutor",
            # LocalExecutor starts this many workers up front (~140 MB each)
            "parallelism": str(parallelism),
            "dags_are_paused_at_creation": "False",
            # standalone's API answers here; tasks reach the Execution API through it
            "execution_api_server_url": f"http://127.0.0.1:{port}/execution/",
        },
        "database": {"sql_alchemy_conn": "sqlite:///" + os.path.join(home, "airflow.db")},
        "api": {"host": "127.0.0.1", "port": str(port)},
        "logging": {
            "worker_log_server_port": str(log_port),
            "trigger_log_server_port": str(log_port + 1),
        },
    }


def set_keys(text: str, values: dict[str, dict[str, str]]) -> str:
    """``text`` (an airflow.cfg) with each ``key = value`` set in its section: an existing
    line (commented out or not) is replaced in place, a missing key is added at the end of
    its section, a missing section at the end of the file. Other lines are left alone."""
    lines = text.splitlines()
    for section, keys in values.items():
        start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
        if start is None:
            lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in keys.items()]
            continue
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines)
        )
        for key, value in keys.items():
            pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
            if hit is None:
                lines.insert(end, f"{key} = {value}")
                end += 1
            else:
                lines[hit] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def write_config(home: str, values: dict[str, dict[str, str]]) -> str:
    path = os.path.join(home, "airflow.cfg")
    if not os.path.exists(path):
        os.makedirs(home, exist_ok=True)
        # Airflow's own first-use write: the full commented default with generated secrets
        subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "airflow"),
                "config",
                "get-value",
                "core",
                "executor",
            ],
            env={**os.environ, "AIRFLOW_HOME": home},
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    updated = set_keys(text, values)
    if updated != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(updated)
    return path


def prepare_database() -> None:
    """Migrate the metadata database, then add the pool and the default connection when
    missing. Imports Airflow: call after ``AIRFLOW_HOME`` and the config are in place."""
    from airflow.models.connection import Connection  # noqa: TID251 (the Airflow layer)
    from airflow.models.pool import Pool  # noqa: TID251 (the Airflow layer)
    from airflow.utils.db import initdb  # noqa: TID251 (the Airflow layer)
    from airflow.utils.session import create_session  # noqa: TID251 (the Airflow layer)

    from oci_genai_provider import DEFAULT_CONN_ID, DEFAULT_CONNECTION

    initdb()  # creates the tables on a new database, migrates an older one
    with create_session() as session:
        if session.query(Pool).filter(Pool.pool == POOL).one_or_none() is None:
            session.add(
                Pool(
                    pool=POOL,
                    slots=POOL_SLOTS,
                    description="OCI Generative AI shard tasks",
                    include_deferred=False,
                )
            )
        exists = session.query(Connection).filter(Connection.conn_id == DEFAULT_CONN_ID)
        if exists.one_or_none() is None:
            session.add(
                Connection(
                    conn_id=DEFAULT_CONN_ID,
                    conn_type=DEFAULT_CONNECTION["conn_type"],
                    description=DEFAULT_CONNECTION.get("description"),
                    extra=json.dumps(DEFAULT_CONNECTION.get("extra", {})),
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/airflow_home.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--home", default=os.environ.get("AIRFLOW_HOME", os.path.join(ROOT, ".airflow"))
    )
    parser.add_argument("--port", type=int, default=8080, help="API / UI port (standalone)")
    parser.add_argument(
        "--log-port",
        type=int,
        default=8793,
        help="worker log server port (the triggerer's is the next one)",
    )
    parser.add_argument("--parallelism", type=int, default=4)
    args = parser.parse_args(argv)
    home = os.path.abspath(args.home)
    values = settings(home, args.port, args.log_port, args.parallelism)
    path = write_config(home, values)
    # this process reads the same settings (Airflow is imported only below)
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # no migration chatter
    for section, keys in values.items():
        for key, value in keys.items():
            os.environ[f"AIRFLOW__{section.upper()}__{key.upper()}"] = value
    prepare_database()
    print(f"airflow home {home}: {path}, pool {POOL}, connection oci_genai_default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
