"""Exit codes a scheduler can trust, from real CLI processes: 75 while documents are
pending on retryable errors, 74 when the output cannot be written (found before any model
call where possible), 143 on SIGTERM with a resumable state; one line, no traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds

from tests.conftest import CLI, write_corpus
from tests.oci_fixtures import running_emulator

COMPARTMENT = "ocid1.compartment.oc1..test"


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("oci-genai-batch: error:")]


def _corpus(path: Path, n: int, words: int = 8) -> str:
    rows = [
        {"doc_id": f"doc-{i:05d}", "text": f"Copy {i}. " + "rivers and lakes " * words}
        for i in range(n)
    ]
    return write_corpus(str(path), rows)


def _doc_ids(out: Path, table: str = "embeddings") -> Counter[str]:
    path = out / table
    if not path.exists():
        return Counter()
    t = ds.dataset(str(path), format="parquet").to_table(columns=["doc_id"])
    return Counter(t.column("doc_id").to_pylist())


def _oci_args(url: str, config: str) -> list[str]:
    return [
        "--backend",
        "oci",
        "--genai-endpoint",
        url,
        "--oci-config",
        config,
        "--compartment",
        COMPARTMENT,
        "--output-dimensions",
        "256",
        "--no-progress",
    ]


def test_pending_documents_exit_75_then_a_rerun_exits_0(tmp_path) -> None:
    src = _corpus(tmp_path / "d.parquet", 10)
    out = tmp_path / "out"
    with running_emulator(tmp_path / "oci", fault_rate=1.0) as (emu, config):
        args = ["run", "--source", src, "--output", str(out), *_oci_args(emu.url, config)]
        down = _cli(*args, "--max-attempts", "2", "--timeout-s", "5", "--batch-docs", "5")
        assert down.returncode == 75, down.stderr
        assert "Traceback" not in down.stderr
        errors = _error_lines(down.stderr)
        assert len(errors) == 1 and "run again" in errors[0], down.stderr
        assert emu.stats()["requests"] > 0  # it did try
        assert _doc_ids(out) == Counter()  # nothing committed for the pending documents
        assert _doc_ids(out, "summaries") == Counter()
        emu.configure(fault_rate=0.0)
        up = _cli(*args)
        assert up.returncode == 0, up.stderr
        assert _error_lines(up.stderr) == []
    ids = _doc_ids(out)
    assert set(ids) == {f"doc-{i:05d}" for i in range(10)} and set(ids.values()) == {1}


def test_unwritable_output_exits_74_before_any_model_call(tmp_path) -> None:
    src = _corpus(tmp_path / "d.parquet", 5)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    out = blocker / "out"  # unwritable even for root: its parent is a regular file
    with running_emulator(tmp_path / "oci") as (emu, config):
        res = _cli("run", "--source", src, "--output", str(out), *_oci_args(emu.url, config))
        assert emu.stats()["requests"] == 0  # the probe failed before any paid call
    assert res.returncode == 74, res.stderr
    assert "Traceback" not in res.stderr
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.stderr
    assert str(out) in errors[0] and "not writable" in errors[0]
    assert "Not a directory" in errors[0]


@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A filesystem that fills up: tmpfs of ``size`` (these tests run as root)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_mid_run_exits_74_with_one_line(tmp_path) -> None:
    # hex text does not compress: 400 documents of 1.2 kB need far more than 192 kB
    rows = [{"doc_id": f"d{i:04d}", "text": os.urandom(600).hex()} for i in range(400)]
    src = write_corpus(str(tmp_path / "d.parquet"), rows)
    with _tiny_tmpfs(tmp_path / "mnt", "192k") as mnt:
        args = ["run", "--source", src, "--backend", "hash", "--no-summaries", "--no-progress"]
        args += ["--batch-docs", "20"]
        res = _cli(*args, "--output", str(mnt / "out"))
        assert res.returncode == 74, res.stderr
        assert "Traceback" not in res.stderr
        errors = _error_lines(res.stderr)
        assert len(errors) == 1, res.stderr
        assert str(mnt / "out") in errors[0] and "No space left on device" in errors[0]
        # -v shows the traceback of the same failure
        verbose = _cli(*args, "--output", str(mnt / "out2"), "-v")
        assert verbose.returncode == 74
        assert "Traceback" in verbose.stderr


def test_sigterm_stops_promptly_and_a_rerun_completes(tmp_path) -> None:
    n = 3000
    src = _corpus(tmp_path / "d.parquet", n, words=20)
    out = tmp_path / "out"
    cmd = [CLI, "run", "--source", src, "--output", str(out), "--backend", "hash"]
    cmd += ["--batch-docs", "25", "--part-rows", "100", "--no-progress", "--run-id", "r"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    planned = proc.stderr.readline()  # "run r: 1 shard(s), about 3000 documents"
    assert "shard(s)" in planned, planned
    # mid-run: preferably once a part is committed (so the re-run has work to keep),
    # but at most 1.5 s after planning, whatever the part size
    commits = out / "_state" / "commits"
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and proc.poll() is None:
        if commits.exists() and any(commits.rglob("*.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    stderr = planned + rest
    stopped_in = time.monotonic() - sent
    assert proc.returncode == 143, stderr
    assert stopped_in < 5, stopped_in
    assert "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert errors == [
        "oci-genai-batch: error: interrupted; committed parts are kept, run again to resume"
    ]
    partial = _doc_ids(out)
    assert sum(partial.values()) < n and set(partial.values()) <= {1}
    again = _cli(*cmd[1:])
    assert again.returncode == 0, again.stderr
    skipped = next(x for x in again.stdout.splitlines() if "skipped" in x)
    assert int(skipped.split()[-1]) == len(partial)  # committed work was kept
    ids = _doc_ids(out)
    assert len(ids) == n and set(ids.values()) == {1}  # no duplicate, none lost


def test_no_per_request_log_lines_unless_verbose(tmp_path) -> None:
    src = _corpus(tmp_path / "d.parquet", 6)
    with running_emulator(tmp_path / "oci") as (emu, config):
        base = ["run", "--source", src, *_oci_args(emu.url, config)]
        quiet = _cli(*base, "--output", str(tmp_path / "q"))
        verbose = _cli(*base, "--output", str(tmp_path / "v"), "-v")
        requests = emu.stats()["requests"]
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert requests >= 4  # two runs, each with embed and chat calls
    assert "HTTP Request" not in quiet.stderr and "httpx" not in quiet.stderr
    assert len(quiet.stderr.splitlines()) <= 3, quiet.stderr
    assert "HTTP Request: POST" in verbose.stderr  # -v shows them


def test_each_error_branch_maps_to_its_status_with_one_line(capsys) -> None:
    # errors other helpers raise (a held lock, a sustained outage) map like the rest;
    # the subprocess tests above cover the statuses a run can reach today end to end
    from pipeline import cli, errors

    cases: list[tuple[BaseException, int | None]] = [
        (errors.ConfigError("max_rpm: bad"), 2),
        (errors.SourceError("source x: missing"), 2),
        (errors.LockedError("output o: held by host h, pid 1, run r, since t"), 2),
        (errors.AuthError("401 on every call"), 2),
        (errors.StorageError("output o: not writable"), 74),
        (OSError(28, "No space left on device", "/o/x"), 74),
        (errors.OutageError("the service failed the last 20 calls"), 75),
        (KeyboardInterrupt(), 130),
        (RuntimeError("a bug"), None),
    ]
    for exc, status in cases:
        assert cli._exit_code(exc) == status, exc
        err = capsys.readouterr().err
        if status is None:
            assert err == ""  # main() prints the traceback for a bug
            continue
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("oci-genai-batch: error: "), err
        if status == 75:
            assert "run again" in lines[0]  # a scheduler's log says what to do
    assert "/o/x" in cli._io_message(OSError(28, "No space left on device", "/o/x"))
