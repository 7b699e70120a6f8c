"""docker-compose.yaml and the Dockerfile, validated without an engine.

No image can be pulled or built on these machines (no daemon, no registry), so the files
are checked statically: Debian's ``docker-compose`` (v1.29, installed by ``make test``
through ``make tools-deploy``) validates the compose file and resolves it (anchors, merges,
variable defaults), and the resolved configuration is checked for what the stack needs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
EXPECTED_SERVICES = AIRFLOW_SERVICES | {"airflow-init", "postgres", "redis", "emulator"}
BASE_IMAGE = "apache/airflow:3.3.2-python3.11"
OCI_DEV = "/opt/airflow/oci-dev"


def _compose_bin() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(
            "docker-compose is not installed, so docker-compose.yaml cannot be validated: "
            "run `make tools-deploy` as root (it runs apt-get install -y docker-compose, "
            "Debian's v1.29 package), or install that package yourself"
        )
    return found


def _compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    # a clean environment: the file's own defaults are what is checked, not this shell's
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [_compose_bin(), "-f", str(file), *args],
        cwd=file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The configuration as compose resolves it (merges applied, defaults filled in)."""
    done = _compose("config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), f"environment should resolve to a mapping, got {env!r}"
    return {str(k): str(v) for k, v in env.items()}


def _init_script(config: dict[str, Any]) -> str:
    init = config["services"]["airflow-init"]
    assert init["entrypoint"] in ("/bin/bash", ["/bin/bash"]), init["entrypoint"]
    command = init["command"]
    assert command[0] == "-c", command
    return str(command[1])


def _conn_extra(script: str) -> dict[str, Any]:
    match = re.search(r"--conn-extra\s+'([^']*)'", script)
    assert match, "airflow-init adds the connection with --conn-extra '<json>'"
    extra = json.loads(match.group(1))
    assert isinstance(extra, dict)
    return extra


# --------------------------------------------------------------------- the validator


def test_compose_file_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, f"docker-compose config -q failed:\n{done.stderr}"
    # every variable the file uses has a default: nothing resolves to an empty string
    assert "is not set" not in done.stderr, done.stderr


def test_compose_lists_every_service() -> None:
    done = _compose("config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == EXPECTED_SERVICES


def test_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: the same file with a misspelt depends_on condition (as a
    typo would leave it) is refused."""
    text = COMPOSE.read_text()
    assert "condition: service_completed_successfully" in text
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(
        text.replace(
            "condition: service_completed_successfully",
            "condition: service_completed_succesfully",
            1,
        )
    )
    done = _compose("config", "-q", file=broken)
    assert done.returncode != 0
    assert "succesfully" in done.stderr


# ------------------------------------------------------------ the resolved configuration


def test_airflow_services_share_one_celery_configuration(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    image = services["airflow-apiserver"]["image"]
    project = {name for name, svc in services.items() if svc.get("image") == image}
    # the emulator and the init step run from the same image as the Airflow components
    assert project == AIRFLOW_SERVICES | {"airflow-init", "emulator"}
    shared = (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
    )
    values: dict[str, set[str]] = {key: set() for key in shared}
    for name in project:
        svc = services[name]
        assert "build" in svc, f"{name} is built from ./Dockerfile"
        env = _env(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert (
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
            == "http://airflow-apiserver:8080/execution/"
        ), name
        for key in shared:
            assert env.get(key), f"{name} lacks {key}"
            values[key].add(env[key])
    for key, seen in values.items():
        assert len(seen) == 1, f"{key} differs between services: one value for all is needed"
    assert values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == {
        "postgresql+psycopg2://airflow:airflow@postgres/airflow"
    }
    assert next(iter(values["AIRFLOW__CELERY__BROKER_URL"])).startswith("redis://")
    # a Fernet key is 32 url-safe base64 bytes
    assert len(next(iter(values["AIRFLOW__CORE__FERNET_KEY"]))) == 44


def test_every_service_waits_for_init(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in AIRFLOW_SERVICES | {"emulator"}:
        depends = services[name].get("depends_on") or {}
        assert depends.get("airflow-init") == {"condition": "service_completed_successfully"}, name
    init_depends = services["airflow-init"]["depends_on"]
    assert init_depends["postgres"] == {"condition": "service_healthy"}
    assert init_depends["redis"] == {"condition": "service_healthy"}
    worker = services["airflow-worker"]["depends_on"]
    assert worker["airflow-apiserver"] == {"condition": "service_healthy"}
    assert worker["emulator"] == {"condition": "service_healthy"}


def test_healthchecks(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("postgres", "redis", "airflow-apiserver", "emulator", *AIRFLOW_SERVICES):
        test = (services[name].get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert any(
        "8080/api/v2/version" in part
        for part in services["airflow-apiserver"]["healthcheck"]["test"]
    )
    probe = services["emulator"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    compile(probe[3], "emulator healthcheck", "exec")  # a syntax error would never pass


def test_init_migrates_and_creates_the_pool_and_connection(resolved: dict[str, Any]) -> None:
    script = _init_script(resolved)
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, f"the init script is not valid bash: {done.stderr}"
    commands = [" ".join(shlex.split(line)) for line in script.replace("\\\n", " ").splitlines()]
    assert "airflow db migrate" in commands
    pool = [c for c in commands if c.startswith("airflow pools set oci_genai ")]
    assert pool, "airflow-init creates the pool oci_genai"
    assert int(shlex.split(pool[0])[4]) >= 1
    add = [c for c in commands if c.startswith("airflow connections add oci_genai_default ")]
    assert add and "--conn-type oci_genai" in add[0]
    extra = _conn_extra(script)
    assert extra["genai_endpoint"] == "http://emulator:8431"
    assert extra["auth"] == "api_key"
    assert extra["compartment"].startswith("ocid1.compartment.")
    # the connection signs with the dev profile the init step writes and the emulator checks
    assert extra["oci_config"] == f"{OCI_DEV}/oci_config"
    assert f"oci-genai-batch emulator --write-dev-config {OCI_DEV}" in commands
    # the UI login: the simple auth manager's passwords file, written by a python one-liner
    env = _env(resolved["services"]["airflow-init"])
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "airflow:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(
        "/opt/airflow/config/"
    )
    assert env["AIRFLOW_ADMIN_PASSWORD"] == "airflow"
    assert resolved["services"]["airflow-init"]["user"] == "0:0"


def test_init_writes_the_login_file_the_api_server_reads(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """The init step's passwords one-liner, run as written, gives the JSON the simple auth
    manager reads: {user: password}."""
    script = _init_script(resolved).replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "json.dump" in x)
    argv = shlex.split(line)
    assert argv[:2] == ["python", "-c"]
    target = tmp_path / "passwords.json"
    env = {**os.environ, "AIRFLOW_ADMIN_USER": "airflow", "AIRFLOW_ADMIN_PASSWORD": "s3cret"}
    done = subprocess.run(
        [sys.executable, "-c", argv[2], str(target)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text()) == {"airflow": "s3cret"}


def test_the_init_connection_signs_calls_the_emulator_service_accepts(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """What the stack wires up, run here over loopback with the paths moved into tmp:
    the init step's ``--write-dev-config`` (the real CLI), the emulator service's command
    (the real CLI, verifying signatures), and the connection's extras as the core's OCI
    settings (the oci_genai fields map 1:1 onto JobConfig keys): one signed embed call
    is accepted and counted."""
    import asyncio

    from pipeline.config import JobConfig
    from pipeline.genai.oci_backend import OciBackend

    script = _init_script(resolved)
    dev = tmp_path / "oci-dev"
    done = subprocess.run(
        [CLI, "emulator", "--write-dev-config", str(dev)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (dev / "oci_config").is_file(), "the compose file names DIR/oci_config"

    service = resolved["services"]["emulator"]
    argv = [*service["entrypoint"], *service["command"]]
    argv = argv[argv.index("oci-genai-batch") :]
    argv[0] = CLI
    argv = [a.replace(OCI_DEV, str(dev)) for a in argv]
    argv[argv.index("--host") + 1] = "127.0.0.1"  # loopback only in tests
    argv[argv.index("--port") + 1] = "0"  # a free port, printed
    emulator = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert emulator.stdout is not None
        line = emulator.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+) \(signatures: verified", line)
        assert match, f"emulator did not start: {line!r}"
        url = match.group(1)

        extra = _conn_extra(script)
        extra["oci_config"] = extra["oci_config"].replace(OCI_DEV, str(dev))
        assert extra.pop("genai_endpoint") == "http://emulator:8431"
        config = JobConfig.from_mapping(
            {"source": "-", "output": "-", "backend": "oci", "genai_endpoint": url, **extra},
            origin="connection oci_genai_default",
        )

        async def embed_one() -> int:
            backend = OciBackend.from_config(config)
            try:
                result = await backend.embed(["a document about the standard library"])
                return int(result.vectors.shape[0])
            finally:
                await backend.aclose()

        assert asyncio.run(embed_one()) == 1
        with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as answer:
            stats = json.loads(answer.read())
        assert stats["requests"] == 1, stats
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    assert emulator.returncode == 0


def test_emulator_service(resolved: dict[str, Any]) -> None:
    emulator = resolved["services"]["emulator"]
    argv = [*emulator["entrypoint"], *emulator["command"]]
    assert "oci-genai-batch" in argv
    tail = argv[argv.index("oci-genai-batch") + 1 :]
    assert tail[0] == "emulator"
    flags = dict(zip(tail[1::2], tail[2::2], strict=False))
    assert flags["--host"] == "0.0.0.0"
    assert flags["--port"] == "8431"
    assert flags["--oci-config"] == f"{OCI_DEV}/oci_config"
    assert flags["--embedder"] in ("local", "hash")
    mounts = {v.split(":")[1] for v in emulator["volumes"]}
    assert OCI_DEV in mounts


def test_mounts_ports_and_outputs(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in AIRFLOW_SERVICES:
        mounts = {}
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            mounts[target] = source
        assert mounts["/opt/airflow/dags"] == str(ROOT / "dags"), name
        assert mounts["/opt/airflow/plugins"] == str(ROOT / "plugins"), name
        assert mounts["/opt/airflow/out"] == str(ROOT / "out" / "compose"), name
        assert mounts[OCI_DEV] == "oci-dev", name
    ports = services["airflow-apiserver"]["ports"]
    assert any(str(p).startswith("127.0.0.1:8080:8080") for p in ports), ports
    assert {"postgres-db-volume", "oci-dev"} <= set(resolved["volumes"])


# ---------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _locked_versions() -> dict[str, str]:
    lock = (ROOT / "uv.lock").read_text()
    pairs = re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', lock)
    return dict(pairs)


def test_dockerfile_extends_the_official_image_and_installs_the_project() -> None:
    lines = _dockerfile_instructions()
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert froms, "no FROM line"
    assert froms[-1] == BASE_IMAGE, "the runtime image is the official Airflow 3.3.2 image"
    assert all(f == BASE_IMAGE for f in froms)
    # the image's Airflow is the locked one
    assert _locked_versions()["apache-airflow"] == BASE_IMAGE.split(":")[1].split("-")[0]
    runs = " ".join(line for line in lines if line.upper().startswith("RUN "))
    # the project from uv.lock: the locked set exported, the project's wheel built and installed
    assert "uv export --frozen --no-dev" in runs
    assert "uv build --wheel" in runs
    assert re.search(r"pip install [^&]*--no-deps [^&]*oci_genai_batch-\*\.whl", runs)
    assert "compileall" in runs
    # the console script and the provider entry point are checked at build time
    assert "oci-genai-batch --help" in runs
    assert "apache_airflow_provider" in runs


def test_dockerfile_pins_the_providers_consistently_with_the_lock() -> None:
    runs = " ".join(line for line in _dockerfile_instructions() if line.upper().startswith("RUN "))
    pins = dict(re.findall(r"(apache-airflow-providers-[a-z-]+)==([0-9][0-9.]*)", runs))
    assert set(pins) >= {"apache-airflow-providers-celery", "apache-airflow-providers-postgres"}
    locked = _locked_versions()
    for name, version in pins.items():
        if name in locked:
            assert locked[name] == version, f"{name}: Dockerfile {version}, uv.lock {locked[name]}"
    assert "apache-airflow==${AIRFLOW_VERSION}" in runs  # pip may not move the image's Airflow


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "out", ".airflow", ".git"} <= ignored
    assert any("__pycache__" in entry for entry in ignored)
    # what the build needs is not ignored
    for needed in ("pyproject.toml", "uv.lock", "README.md", "pipeline"):
        assert needed not in ignored
