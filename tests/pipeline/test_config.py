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
