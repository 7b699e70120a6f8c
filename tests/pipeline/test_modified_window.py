"""The modified window (``--modified-since`` / ``--modified-until``): parsed once in
JobConfig, applied to every listed file or object by its time modified, on local
directories, Parquet datasets and object stores alike; and what a document of a file
records (uri, time modified, size, etag, md5) reaching the output rows through
``--passthrough``. Real files with set mtimes, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.sources import SourceOptions, list_units, read_source
from tests.conftest import CLI

JAN = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)
MAR = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def _touch(path: Path, text: str, when: datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def _corpus(root: Path) -> Path:
    _touch(root / "jan.txt", "written in January", JAN)
    _touch(root / "sub" / "feb.md", "written in February", FEB)
    _touch(root / "mar.jsonl", '{"text": "written in March"}\n', MAR)
    return root


def _names(units: list) -> list[str]:
    return [os.path.basename(u.path) for u in units]


def _window(since: datetime | None = None, until: datetime | None = None) -> SourceOptions:
    return SourceOptions(modified_since=since, modified_until=until)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("2026-01-31", "2026-01-31T00:00:00Z"),
        ("2026-01-31T06:00", "2026-01-31T06:00:00Z"),
        ("2026-01-31T06:00:00Z", "2026-01-31T06:00:00Z"),
        ("2026-01-31 08:00:00+02:00", "2026-01-31T06:00:00Z"),
        ("2026-01-31T06:00:00.250000Z", "2026-01-31T06:00:00.250000Z"),
        (date(2026, 1, 31), "2026-01-31T00:00:00Z"),  # what YAML makes of 2026-01-31
        (datetime(2026, 1, 31, 6), "2026-01-31T06:00:00Z"),
        ("", None),  # an emptied form field
    ],
)
def test_window_values_are_iso_8601_and_utc_when_no_zone(given: object, canonical: str) -> None:
    config = JobConfig.from_mapping({"source": "s", "output": "o", "modified_since": given})
    assert config.modified_since == canonical
    assert JobConfig.from_json(config.to_json()) == config
    assert JobConfig.from_json(json.dumps(config.to_json())) == config


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "31/01/2026", "1706659200"])
def test_a_bad_window_value_names_the_setting_and_the_form(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        JobConfig.from_mapping({"source": "s", "output": "o", "modified_until": bad})
    assert str(caught.value).startswith(
        f"modified_until: {bad!r} is not an ISO 8601 date or date-time"
    )


@pytest.mark.parametrize("until", ["2026-01-01", "2025-12-31T23:00:00Z"])
def test_since_must_come_before_until(until: str) -> None:
    with pytest.raises(ConfigError, match="modified_since: 2026-01-01T00:00:00Z is not before"):
        JobConfig(source="s", output="o", modified_since="2026-01-01", modified_until=until)


def test_yaml_job_file_takes_the_window(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"source": "s", "output": "o"})
        + "modified_since: 2026-02-01\nmodified-until: 2026-03-01T00:00:00+01:00\n"
    )
    config = JobConfig.from_yaml(str(job))
    assert (config.modified_since, config.modified_until) == (
        "2026-02-01T00:00:00Z",
        "2026-02-28T23:00:00Z",
    )
    assert config.modified_window == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 2, 28, 23, tzinfo=UTC),
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=180)


def test_cli_refuses_a_bad_window_with_exit_2_and_one_line(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "docs")
    base = ["run", "--source", str(src), "--output", str(tmp_path / "out"), "--backend", "hash"]
    res = _cli(*base, "--modified-since", "last tuesday")
    assert res.returncode == 2
    errors = [x for x in res.stderr.splitlines() if x.startswith("oci-genai-batch: error:")]
    assert errors == [
        "oci-genai-batch: error: modified_since: 'last tuesday' is not an ISO 8601 date or"
        " date-time (for example 2026-01-31, 2026-01-31T06:00:00Z or 2026-01-31T08:00:00+02:00)"
    ]
    assert "Traceback" not in res.stderr
    res = _cli(*base, "--modified-since", "2026-03-01", "--modified-until", "2026-02-01")
    assert res.returncode == 2
    assert "modified_since: 2026-03-01T00:00:00Z is not before modified_until" in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- listing


def test_window_selects_local_files_by_mtime_since_inclusive_until_exclusive(
    tmp_path: Path,
) -> None:
    src = _corpus(tmp_path / "docs")
    assert _names(list_units(str(src), _window())) == ["jan.txt", "mar.jsonl", "feb.md"]
    assert _names(list_units(str(src), _window(since=FEB))) == ["mar.jsonl", "feb.md"]
    assert _names(list_units(str(src), _window(until=FEB))) == ["jan.txt"]
    assert _names(list_units(str(src), _window(since=FEB, until=MAR))) == ["feb.md"]
    # the unit records the time the listing saw (UTC, ISO 8601)
    (unit,) = list_units(str(src), _window(since=FEB, until=MAR))
    assert unit.mtime == FEB.isoformat()


def test_window_and_glob_together(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "docs")
    _touch(src / "late.txt", "also March", MAR)
    options = SourceOptions(glob="*.txt", modified_since=FEB)
    assert _names(list_units(str(src), options)) == ["late.txt"]
    assert _names(list_units(f"{src}/*.txt", _window(until=FEB))) == ["jan.txt"]


def test_an_empty_window_is_an_empty_plan_not_an_error(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "docs")
    assert list_units(str(src), _window(since=datetime(2027, 1, 1, tzinfo=UTC))) == []
    # a source with nothing usable is still refused, window or not
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="has no usable files"):
        list_units(str(tmp_path / "empty"), _window(since=FEB))


def test_a_dataset_stays_a_dataset_when_the_window_leaves_out_its_parquet_files(
    tmp_path: Path,
) -> None:
    src = tmp_path / "ds"
    src.mkdir()
    for name, when in (("a.parquet", JAN), ("b.parquet", MAR)):
        pq.write_table(pa.table({"doc_id": [name], "text": [f"row of {name}"]}), src / name)
        os.utime(src / name, (when.timestamp(), when.timestamp()))
    april = datetime(2026, 4, 1, tzinfo=UTC)
    _touch(src / "notes.txt", "not part of the dataset", april)
    assert _names(list_units(str(src), _window(since=FEB))) == ["b.parquet"]
    # only the notes are in this window: still a dataset, so nothing to read
    assert list_units(str(src), _window(since=april)) == []


def test_an_entry_whose_time_is_unknown_is_kept() -> None:
    options = _window(since=FEB, until=MAR)
    assert options.in_window(None)
    assert options.in_window(FEB) and not options.in_window(MAR)
    with pytest.raises(ConfigError, match="time zone"):
        SourceOptions(modified_since=datetime(2026, 1, 1))


# ----------------------------------------------------------------------------- runs


def test_cli_run_with_an_empty_window_exits_0_with_nothing_done(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "docs")
    out = tmp_path / "out"
    res = _cli(
        "run", "--source", str(src), "--output", str(out), "--backend", "hash",
        "--modified-since", "2027-01-01", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["counts"].get("documents_read", 0) == 0
    assert report["config"]["modified_since"] == "2027-01-01T00:00:00Z"


def test_documents_record_their_file_and_passthrough_carries_it(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "docs")
    out = tmp_path / "out"
    res = _cli(
        "run", "--source", str(src), "--output", str(out), "--backend", "hash",
        "--modified-since", "2026-02-01", "--no-progress",
        "--passthrough", "uri,updated_at,size,etag",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = ds.dataset(str(out / "summaries"), format="parquet").to_table().to_pylist()
    got = {r["doc_id"]: (r["uri"], r["updated_at"], r["size"], r["etag"]) for r in rows}
    feb, mar = src / "sub" / "feb.md", src / "mar.jsonl"
    assert got == {
        "sub/feb.md": (str(feb), FEB, feb.stat().st_size, None),
        "mar.jsonl#1": (str(mar), MAR, mar.stat().st_size, None),
    }
    chunks = ds.dataset(str(out / "embeddings"), format="parquet").to_table()
    assert set(chunks.column("uri").to_pylist()) == {str(feb), str(mar)}


def test_a_json_field_of_the_same_name_wins_over_the_file_metadata(tmp_path: Path) -> None:
    src = tmp_path / "docs"
    _touch(
        src / "r.jsonl", '{"text": "one", "uri": "https://example.org/1"}\n{"text": "two"}\n', FEB
    )
    docs = [
        d
        for batch in read_source(str(src), SourceOptions(passthrough=("uri", "updated_at")))
        for d in batch.documents
    ]
    assert [(d.doc_id, d.uri, d.extra["uri"], d.extra["updated_at"]) for d in docs] == [
        ("r.jsonl#1", "https://example.org/1", "https://example.org/1", FEB),
        ("r.jsonl#2", str(src / "r.jsonl"), str(src / "r.jsonl"), FEB),
    ]
