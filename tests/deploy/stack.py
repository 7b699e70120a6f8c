"""A real Airflow 3 CeleryExecutor deployment on this machine, for tests and benches.

:class:`CeleryStack` creates its own PostgreSQL database (127.0.0.1:5432) and claims an
empty Redis database number (127.0.0.1:6379), migrates a fresh metadata database in a
temporary ``AIRFLOW_HOME``, creates the ``oci_genai`` pool and the default connection, and
starts api-server, scheduler, dag-processor and Celery workers, each in a session of its
own (``setsid``) whose id (= its PID = its process group) is recorded.

Every process is stopped by session, not by name: the Task SDK puts each task runner in a
process group of its own (so that it can signal a task's children), so a worker's process
group alone does not hold its running tasks; its session does. :meth:`kill_worker` SIGKILLs
a worker's whole session, the way a worker machine dies. :meth:`close` stops everything
it started, drops the database and flushes the Redis database; it is safe to call twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
AIRFLOW = os.path.join(BIN, "airflow")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = ("127.0.0.1", 6379)
# Redis database numbers a stack may claim (0..6 are left to others)
REDIS_DBS = range(7, 16)
CLAIM_KEY = "oci-genai-batch:deploy-test"

# The workers name themselves through [core] hostname_callable, so that a task instance's
# `hostname` says which worker ran it (both run on this one host).
_WORKER_NAME_MODULE = '''"""The Celery worker's name as its task instances' hostname."""
import os


def worker_name() -> str:
    return os.environ["OGB_WORKER_NAME"]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """Live processes (not zombies) of the session ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if state != "Z":
            found.append(pid)
    return found


def signal_session(sid: int, sig: signal.Signals) -> int:
    """Send ``sig`` to every process of the session ``sid``; how many got it."""
    sent = 0
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent += 1
    return sent


def processes_with_env(marker: str) -> list[int]:
    """Processes whose environment contains ``marker`` (e.g. ``AIRFLOW_HOME=...``)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def _pg_connect(dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=10, **PG)


def _redis(db: int) -> Any:
    import redis

    return redis.Redis(host=REDIS[0], port=REDIS[1], db=db, socket_timeout=10)


def claim_redis_db(token: str) -> int:
    """An empty Redis database number, claimed with a key (so two stacks never share one)."""
    for db in REDIS_DBS:
        client = _redis(db)
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True):
                return db
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database among {list(REDIS_DBS)} at {REDIS}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: str
    hostname: str | None = None  # workers: the name their task instances record

    @property
    def sid(self) -> int:
        return self.popen.pid  # started with setsid: session id = process group id = PID


@dataclass
class CeleryStack:
    """See the module docstring. ``env`` adds to (or overrides) every Airflow process's
    environment; ``pool_slots`` sizes the ``oci_genai`` pool; ``connection`` is the extra
    of the ``oci_genai_default`` connection. With ``emulator_args`` the project's emulator
    is started first (verifying ``oci_config``'s key) and the connection points at it."""

    env: dict[str, str] = field(default_factory=dict)
    pool_slots: int = 4
    connection: dict[str, Any] = field(default_factory=dict)
    # the emulator: OCI config whose key it verifies, and its other options (None: none)
    oci_config: str | None = None
    emulator_args: list[str] | None = None
    emulator_url: str = ""
    home: str = ""
    database: str = ""
    redis_db: int = -1
    api_port: int = 0
    procs: list[Proc] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # every session ever started
    timings: dict[str, float] = field(default_factory=dict)
    _token: str = ""

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Database, Redis, home, migration, pool and connection (no servers yet)."""
        t0 = time.monotonic()
        self._token = secrets.token_hex(6)
        self.home = tempfile.mkdtemp(prefix="ogb-celery-home-")
        os.makedirs(os.path.join(self.home, "plugins"))
        with open(os.path.join(self.home, "ogb_worker_name.py"), "w") as f:
            f.write(_WORKER_NAME_MODULE)
        self.database = f"airflow_ogb_test_{self._token}"
        with _pg_connect() as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.redis_db = claim_redis_db(self._token)
        _redis(self.redis_db).flushdb()
        self.api_port = free_port()
        if self.emulator_args is not None:
            assert self.oci_config, "the emulator needs oci_config"
            self.emulator_url = self.start_emulator(self.oci_config, *self.emulator_args)
            self.connection = {**self.connection, "genai_endpoint": self.emulator_url}
        self.run(["db", "migrate"], timeout=300)
        self.timings["migrate"] = time.monotonic() - t0
        conn_json = json.dumps({"conn_type": "oci_genai", "extra": self.connection})
        jobs = [
            self.spawn_cli(["pools", "set", "oci_genai", str(self.pool_slots), "OCI GenAI shards"]),
            self.spawn_cli(["connections", "add", "oci_genai_default", "--conn-json", conn_json]),
        ]
        for argv, job in jobs:
            out, _ = job.communicate(timeout=300)
            if job.returncode != 0:
                raise RuntimeError(f"airflow {' '.join(argv[:2])} failed:\n{out.decode()[-3000:]}")
        self.timings["setup"] = time.monotonic() - t0

    def base_env(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "OCI_GENAI", "OGB_", "PYTEST"))
        }
        where = f"{PG['user']}@{PG['host']}:{PG['port']}/{self.database}"
        api = f"http://127.0.0.1:{self.api_port}"
        env = {
            **inherited,
            "AIRFLOW_HOME": self.home,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ROOT, "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": os.path.join(self.home, "plugins"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(self._token),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{where}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{self.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{where}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": "api-" + self._token,
            "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-" + self._token * 4,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
        env.update(self.env)
        return env

    def spawn_cli(self, argv: list[str]) -> tuple[list[str], subprocess.Popen[bytes]]:
        job = subprocess.Popen(
            [AIRFLOW, *argv],
            env=self.base_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions.append(job.pid)
        return argv, job

    def run(self, argv: list[str], timeout: float = 120) -> str:
        """An ``airflow`` CLI command to its end; its output, or RuntimeError."""
        _, job = self.spawn_cli(argv)
        try:
            out, _ = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_session(job.pid, signal.SIGKILL)
            raise
        if job.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(argv)} exited {job.returncode}:\n"
                               f"{out.decode()[-3000:]}")
        return out.decode()

    # ------------------------------------------------------------------ processes
    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, exe: str = AIRFLOW
    ) -> Proc:
        """``exe argv`` in a session of its own, output to ``HOME/<name>.log``."""
        log = os.path.join(self.home, f"{name}.log")
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [exe, *argv],
                env={**self.base_env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # setsid: its own session and process group
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        self.sessions.append(popen.pid)
        return proc

    def start_emulator(self, oci_config: str, *args: str, timeout: float = 60) -> str:
        """The project's emulator (``oci-genai-batch emulator``, signatures verified against
        ``oci_config``, a free port) as one more process of the stack; its URL."""
        proc = self.start(
            "emulator",
            ["emulator", "--port", "0", "--oci-config", oci_config, *args],
            exe=os.path.join(BIN, "oci-genai-batch"),
        )
        url = ""

        def listening() -> bool:
            nonlocal url
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log_text(proc.name))
            url = m.group(1) if m else ""
            return bool(url)

        self.wait_for("emulator", listening, timeout)
        return url

    def start_servers(self) -> None:
        self.start("api-server", ["api-server"])
        self.start("scheduler", ["scheduler"])
        self.start("dag-processor", ["dag-processor"])

    def start_worker(self, name: str, concurrency: int) -> Proc:
        """A Celery worker ``name@<host>`` with its own log-server port; the task instances
        it runs record ``name`` as their hostname."""
        env = {
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ogb_worker_name.worker_name",
            "OGB_WORKER_NAME": name,
            "PYTHONPATH": self.home,
        }
        argv = ["celery", "worker", "--concurrency", str(concurrency),
                "--celery-hostname", f"{name}@%h"]
        proc = self.start(name, argv, env)
        proc.hostname = name
        return proc

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.hostname]

    def worker(self, hostname: str) -> Proc:
        return next(p for p in self.workers() if p.hostname == hostname)

    def kill_worker(self, hostname: str) -> int:
        """SIGKILL every process of the worker's session (main, pool, task supervisors and
        task runners, log server), as when its machine dies. Returns how many."""
        proc = self.worker(hostname)
        killed = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sent = signal_session(proc.sid, signal.SIGKILL)
            killed += sent
            if not sent:
                break
            time.sleep(0.2)
        proc.popen.wait(timeout=10)
        self.procs.remove(proc)
        return killed

    def log_text(self, name: str) -> str:
        with open(os.path.join(self.home, f"{name}.log"), errors="replace") as f:
            return f.read()

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(
                    f"{p.name} exited with {p.popen.returncode}:\n{self.log_text(p.name)[-4000:]}"
                )

    # ------------------------------------------------------------------ REST
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v2"

    def get(self, path: str) -> Any:
        r = httpx.get(self.api + path, timeout=30)
        r.raise_for_status()
        return r.json()

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float) -> float:
        """Poll ``ready`` (every 0.5 s, a crashed process fails at once); seconds taken."""
        t0 = time.monotonic()
        while True:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what}: not after {timeout:.0f} s")
            time.sleep(0.5)

    def wait_ready(self, dag_id: str, timeout: float = 240) -> float:
        """Until the scheduler and dag-processor are healthy, ``dag_id`` is in the API and
        every worker has logged that it is ready."""

        def ready() -> bool:
            health = self.get("/monitor/health")
            if any(health.get(c, {}).get("status") != "healthy"
                   for c in ("metadatabase", "scheduler", "dag_processor")):
                return False
            dag = httpx.get(f"{self.api}/dags/{dag_id}", timeout=30)
            if dag.status_code != 200 or dag.json().get("is_paused"):
                return False
            return all(f"{w.hostname}@" in (t := self.log_text(w.name)) and " ready." in t
                       for w in self.workers())

        took = self.wait_for("stack ready", ready, timeout)
        self.timings["ready"] = took
        return took

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        r = httpx.post(
            f"{self.api}/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf},
            timeout=30,
        )
        if r.status_code >= 300:
            raise RuntimeError(f"trigger {dag_id}: {r.status_code} {r.text}")
        return str(r.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500")
                    ["task_instances"])

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of every map index of ``task_id``, from the task-instance history."""
        rows = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["task_id"] != task_id:
                continue
            path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{ti['map_index']}"
            rows.extend(self.get(path + "/tries")["task_instances"])
        return rows

    def wait_run(self, dag_id: str, run_id: str, timeout: float,
                 tick: Callable[[], None] | None = None) -> str:
        """Until the run is no longer queued/running; its final state."""
        state = ""

        def done() -> bool:
            nonlocal state
            if tick:
                tick()
            state = self.run_state(dag_id, run_id)
            return state not in ("queued", "running")

        self.wait_for(f"run {run_id}", done, timeout)
        return state

    # ------------------------------------------------------------------ tear-down
    def stop_all(self, grace: float = 20) -> None:
        """SIGTERM every session started, then SIGKILL what is left after ``grace``."""
        t0 = time.monotonic()
        for sid in self.sessions:
            signal_session(sid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(session_pids(s) for s in self.sessions):
            time.sleep(0.3)
        for sid in self.sessions:
            signal_session(sid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=10)
        self.procs.clear()
        self.timings["stop"] = time.monotonic() - t0

    def leftovers(self) -> list[int]:
        """Processes of any session this stack started, or with its AIRFLOW_HOME."""
        pids = {pid for sid in self.sessions for pid in session_pids(sid)}
        if self.home:
            pids |= set(processes_with_env(f"AIRFLOW_HOME={self.home}"))
        return sorted(pids)

    def close(self) -> None:
        """Stop everything, drop the database, flush and release the Redis database."""
        errors: list[str] = []
        try:
            self.stop_all()
        except Exception as exc:  # keep tearing down
            errors.append(f"stop: {exc!r}")
        if self.database:
            try:
                with _pg_connect() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
                self.database = ""
            except Exception as exc:
                errors.append(f"drop database {self.database}: {exc!r}")
        if self.redis_db >= 0:
            try:
                _redis(self.redis_db).flushdb()
                self.redis_db = -1
            except Exception as exc:
                errors.append(f"flush redis: {exc!r}")
        if errors:
            raise RuntimeError("; ".join(errors))

    def remove_home(self) -> None:
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


def _fernet_key(token: str) -> str:
    import base64
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).decode()


def database_exists(name: str) -> bool:
    with _pg_connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None


def redis_db_size(db: int) -> int:
    return int(_redis(db).dbsize())


@contextlib.contextmanager
def celery_stack(**kwargs: Any) -> Iterator[CeleryStack]:
    """A :class:`CeleryStack` after :meth:`~CeleryStack.setup`; closed on exit (even on
    failure), its home removed."""
    stack = CeleryStack(**kwargs)
    try:
        stack.setup()
        yield stack
    finally:
        try:
            stack.close()
        finally:
            stack.remove_home()
