"""The core never imports Airflow, and importing it has no side effects."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_importing_the_core_loads_no_airflow() -> None:
    mods = _loaded_after(
        "import pipeline, pipeline.runner, pipeline.cli, pipeline.shard, pipeline.sources,"
        " pipeline.genai.local, pipeline.genai.hashembed, pipeline.checkpoint"
    )
    assert "pipeline.runner" in mods  # the imports really happened
    assert not {m for m in mods if m == "airflow" or m.startswith("airflow.")}


def test_import_pipeline_is_light() -> None:
    mods = _loaded_after("import pipeline")
    assert "pipeline" in mods
    assert "onnxruntime" not in mods
    assert "pipeline.runner" not in mods


def test_public_api_names_resolve() -> None:
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
