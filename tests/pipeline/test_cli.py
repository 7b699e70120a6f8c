"""The command as a user runs it: exit codes, one clear message, the summary table."""

from __future__ import annotations

import subprocess

from tests.conftest import CLI, write_corpus


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


def test_run_prints_summary_and_outputs(tmp_path, stdlib_docs) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:20])
    res = _cli("run", "--source", src, "--output", str(tmp_path / "o"), "--backend", "hash")
    assert res.returncode == 0, res.stderr
    assert "documents read" in res.stdout and "20" in res.stdout
    assert "progress: 20/20 documents" in res.stderr  # plain log lines off a terminal
    again = _cli("run", "--source", src, "--output", str(tmp_path / "o"), "--backend", "hash")
    line = next(x for x in again.stdout.splitlines() if "skipped" in x)
    assert line.split()[-1] == "20"


def test_missing_source_exits_2_with_one_message(tmp_path) -> None:
    res = _cli("run", "--source", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "o"))
    assert res.returncode == 2
    errors = [x for x in res.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and "nope.parquet" in errors[0]
    assert not (tmp_path / "o").exists()  # nothing was done


def test_missing_text_column_names_it(tmp_path) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), [{"doc_id": "a", "body": "x"}])
    res = _cli("run", "--source", src, "--output", str(tmp_path / "o"), "--backend", "hash")
    assert res.returncode == 2
    assert "'text'" in res.stderr and "--text-column" in res.stderr
    ok = _cli(
        "run",
        "--source",
        src,
        "--output",
        str(tmp_path / "o"),
        "--backend",
        "hash",
        "--text-column",
        "body",
        "--no-summaries",
    )
    assert ok.returncode == 0, ok.stderr


def test_bad_config_values_exit_2(tmp_path) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("source: x\noutput: y\nmax_in_flight: 0\n")
    res = _cli("run", "--config", str(cfg))
    assert res.returncode == 2 and "max_in_flight" in res.stderr
    cfg.write_text("source: x\noutput: y\nmax_inflight: 3\n")
    res = _cli("run", "--config", str(cfg))
    assert res.returncode == 2 and "unknown setting 'max_inflight'" in res.stderr


def test_dry_run_makes_no_output(tmp_path, stdlib_docs) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:10])
    chars = sum(len(r["text"]) for r in stdlib_docs[:10])
    res = _cli(
        "run",
        "--source",
        src,
        "--output",
        str(tmp_path / "o"),
        "--dry-run",
        "--price-per-million-chars",
        "1.0",
    )
    assert res.returncode == 0, res.stderr
    assert f"10 documents, {chars:,} characters" in res.stdout
    assert not (tmp_path / "o").exists()


def test_emulator_dev_config_then_a_signed_run(tmp_path, stdlib_docs) -> None:
    import re
    import signal

    res = _cli("emulator", "--write-dev-config", str(tmp_path / "dev"))
    assert res.returncode == 0, res.stderr
    config = str(tmp_path / "dev" / "oci_config")
    assert config in res.stdout
    emu = subprocess.Popen(
        [CLI, "emulator", "--port", "0", "--oci-config", config, "--embedder", "hash"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emu.stdout is not None
        line = emu.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url and "verified" in line, line
        src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:12])
        run = _cli(
            "run",
            "--source",
            src,
            "--output",
            str(tmp_path / "o"),
            "--backend",
            "oci",
            "--genai-endpoint",
            url.group(0),
            "--oci-config",
            config,
            "--compartment",
            "ocid1.compartment.oc1..dev",
            "--output-dimensions",
            "256",
        )
        assert run.returncode == 0, run.stderr
        assert "summaries                         12" in run.stdout
    finally:
        emu.send_signal(signal.SIGTERM)
        emu.wait(timeout=30)


def test_cost_ceiling_refuses_before_any_call(tmp_path, stdlib_docs) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:10])
    chars = sum(len(r["text"]) for r in stdlib_docs[:10])
    price = 1_000_000 / chars  # the whole source costs exactly 1.0

    def capped(cost: str) -> subprocess.CompletedProcess[str]:
        return _cli(
            "run",
            "--source",
            src,
            "--output",
            str(tmp_path / "o"),
            "--backend",
            "hash",
            "--price-per-million-chars",
            str(price),
            "--max-cost",
            cost,
        )

    over = capped("0.5")
    assert over.returncode == 2 and "max_cost" in over.stderr and str(chars) in over.stderr
    assert not (tmp_path / "o").exists()
    under = capped("1.5")
    assert under.returncode == 0, under.stderr
    no_price = _cli("run", "--source", src, "--output", str(tmp_path / "o2"), "--max-cost", "1")
    assert no_price.returncode == 2 and "price_per_million_chars" in no_price.stderr


def test_bad_inputs_exit_2_naming_the_setting_and_writing_nothing(tmp_path) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), [{"doc_id": "a", "text": "one doc"}])
    base = ["run", "--source", src, "--output", str(tmp_path / "o"), "--backend", "hash"]
    cases = [
        (["--run-id", "../../x"], "run_id: '../../x' is not allowed"),
        (["--max-rpm", "1234567890123456789012345"], "max_rpm: must be an integer from 1 to"),
        (["--max-in-flight", "99999999"], "max_in_flight: must be an integer from 1 to"),
        (["--price-per-million-chars", "-2"], "price_per_million_chars"),
        (["--timeout-s", "nan"], "timeout_s"),
    ]
    for extra, fragment in cases:
        res = _cli(*base, *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert "Traceback" not in res.stderr
        errors = [x for x in res.stderr.splitlines() if x.startswith("oci-genai-batch: error:")]
        assert len(errors) == 1 and fragment in errors[0], (extra, res.stderr)
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_max_rpm_of_one_runs(tmp_path) -> None:
    # one document, no summaries: one embed request, which a 1-per-minute budget lets go
    src = write_corpus(str(tmp_path / "d.parquet"), [{"doc_id": "a", "text": "one doc"}])
    res = _cli(
        "run",
        "--source",
        src,
        "--output",
        str(tmp_path / "o"),
        "--backend",
        "hash",
        "--no-summaries",
        "--max-rpm",
        "1",
    )
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if "documents completed" in x)
    assert line.split()[-1] == "1"
