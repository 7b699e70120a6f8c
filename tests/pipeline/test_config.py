from __future__ import annotations

import pytest

from pipeline.config import JobConfig
from pipeline.errors import ConfigError


def test_defaults_and_backend_models() -> None:
    c = JobConfig(source="a", output="b")
    assert c.backend == "local"
    assert c.embed_model_id.startswith("local/")
    assert JobConfig(source="a", output="b", backend="oci").embed_model_id == "cohere.embed-v4.0"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"backend": "gpu"}, "backend"),
        ({"max_rpm": 0}, "max_rpm"),
        ({"batch_docs": 0}, "batch_docs"),
        ({"chunk_overlap": 200, "chunk_tokens": 256}, "chunk_overlap"),
        ({"summary_length": "HUGE"}, "summary_length"),
        ({"auth": "password"}, "auth"),
        ({"max_in_flight": "many"}, "max_in_flight"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_bad_settings_name_the_setting(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        JobConfig.from_mapping({"source": "a", "output": "b", **values})


def test_missing_source_is_an_error() -> None:
    with pytest.raises(ConfigError, match="source"):
        JobConfig.from_mapping({"output": "b"})


def test_yaml_with_overrides(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("source: in.parquet\noutput: out\nmax-rpm: 60\npassthrough: [a, b]\n")
    c = JobConfig.from_yaml(str(path), {"max_rpm": 120})
    assert c.max_rpm == 120
    assert c.passthrough == ("a", "b")
    assert c.source.endswith("in.parquet")


def test_yaml_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        JobConfig.from_yaml(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        JobConfig.from_yaml(str(tmp_path / "missing.yaml"))


def test_config_is_frozen() -> None:
    c = JobConfig(source="a", output="b")
    with pytest.raises(AttributeError):
        c.backend = "hash"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"max_rpm": 10**25}, "max_rpm: must be an integer from 1 to 10000000"),
        ({"max_rpm": "1234567890123456789012345"}, "max_rpm: must be an integer from 1 to"),
        ({"max_tpm": 10**12}, "max_tpm: must be an integer from 1 to"),
        ({"max_in_flight": 10**6}, "max_in_flight: must be an integer from 1 to 10000"),
        ({"max_attempts": 0}, "max_attempts: must be an integer from 1 to 100"),
        ({"max_attempts": 1000}, "max_attempts: must be an integer from 1 to 100"),
        ({"shards": 10**9}, "shards: must be an integer from 1 to"),
        ({"batch_docs": 10**9}, "batch_docs: must be an integer from 1 to"),
        ({"dim": 10**7}, "dim: must be an integer from 1 to 65536"),
        ({"chunk_tokens": 8}, "chunk_tokens: must be an integer from 16 to"),
        ({"chunk_tokens": 10**9}, "chunk_tokens: must be an integer from 16 to"),
        ({"chunk_overlap": -1}, "chunk_overlap"),
        ({"timeout_s": 0}, "timeout_s: must be more than 0"),
        ({"timeout_s": 10**7}, "timeout_s: must be more than 0 and at most 86400"),
        ({"timeout_s": "nan"}, "timeout_s"),
        ({"price_per_million_chars": -0.01}, "price_per_million_chars: must be a finite"),
        ({"price_per_million_chars": "inf"}, "price_per_million_chars: must be a finite"),
        ({"max_cost": -1, "price_per_million_chars": 1}, "max_cost: must be a finite"),
        ({"max_rpm": 1.5}, "max_rpm"),
        ({"max_rpm": 1e30}, "max_rpm: must be an integer from 1 to"),
    ],
)
def test_out_of_range_settings_name_the_setting_and_the_range(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        JobConfig.from_mapping({"source": "a", "output": "b", **values})


@pytest.mark.parametrize(
    "values",
    [
        {"max_rpm": 1},
        {"max_rpm": 9},
        {"max_rpm": 10_000_000},
        {"max_in_flight": 10_000, "max_attempts": 100, "shards": 100_000},
        {"price_per_million_chars": 0, "max_cost": 0},
        {"timeout_s": 86_400},
        {"chunk_tokens": 16, "chunk_overlap": 0},
    ],
)
def test_bounds_themselves_are_accepted(values: dict) -> None:
    c = JobConfig.from_mapping({"source": "a", "output": "b", **values})
    for key, value in values.items():
        assert getattr(c, key) == value


@pytest.mark.parametrize(
    "run_id",
    ["../../x", "..", ".hidden", "a/b", "a\\b", "", "-leading-dash", "x" * 65, "tab\there", "é"],
)
def test_unsafe_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(ConfigError, match="run_id"):
        JobConfig.from_mapping({"source": "a", "output": "b", "run_id": run_id})


@pytest.mark.parametrize("run_id", ["r", "nightly-2026.11.26_01", "A" * 64, "0"])
def test_safe_run_ids_are_kept(run_id: str) -> None:
    assert JobConfig(source="a", output="b", run_id=run_id).run_id == run_id


def test_generated_run_ids_are_safe() -> None:
    from pipeline.config import RUN_ID_PATTERN, new_run_id

    assert all(RUN_ID_PATTERN.fullmatch(new_run_id()) for _ in range(20))
