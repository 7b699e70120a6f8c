"""The core never imports Airflow, importing it has no side effects, and its public names
are what ``__all__`` says they are."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pipeline
from pipeline import errors

ROOT = Path(pipeline.__file__).parent.parent

# Modules whose ``__all__`` is their contract: each must keep one.
PUBLIC_MODULES = (
    "pipeline",
    "pipeline.runner",
    "pipeline.sources",
    "pipeline.genai.emulator",
    "pipeline.genai.oci_auth",
    "pipeline.genai.oci_backend",
    "pipeline.genai.oci_client",
)

# The package's documented API: the quick start (JobConfig, run), the entry points an
# Airflow task calls (plan → run_shard → commit, with their ShardSpec / RunResult), and the
# version.
ENTRY_POINTS = {"JobConfig", "RunResult", "ShardSpec", "commit", "plan", "run", "run_shard"}


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


def _all_modules() -> list[types.ModuleType]:
    names = ["pipeline"] + [
        info.name for info in pkgutil.walk_packages(pipeline.__path__, prefix="pipeline.")
    ]
    return [importlib.import_module(name) for name in names]


def test_every_name_in_every_all_exists() -> None:
    modules = _all_modules()
    with_all = {m.__name__: m for m in modules if hasattr(m, "__all__")}
    assert set(PUBLIC_MODULES) <= set(with_all), "a public module lost its __all__"
    for name, module in with_all.items():
        exported = list(module.__all__)
        assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
        for attr in exported:
            assert isinstance(attr, str), f"{name}.__all__ holds {attr!r}"
            # hasattr goes through a lazy module __getattr__, as an import would
            assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it lacks"
            assert not attr.startswith("_") or attr == "__version__", f"{name}.{attr}"


def test_star_import_gives_exactly_all() -> None:
    for name in PUBLIC_MODULES:
        namespace: dict[str, object] = {}
        exec(f"from {name} import *", namespace)  # resolves every name, lazy ones too
        namespace.pop("__builtins__")
        assert set(namespace) == set(importlib.import_module(name).__all__), name


def test_the_package_exports_its_documented_api() -> None:
    exported = set(pipeline.__all__)
    assert ENTRY_POINTS | {"__version__"} <= exported
    assert isinstance(pipeline.__version__, str) and pipeline.__version__
    # every entry point is the runner's own object, not a stale copy
    from pipeline import runner

    for name in ENTRY_POINTS - {"JobConfig"}:
        assert getattr(pipeline, name) is getattr(runner, name), name
    # names the docs import from the package (README, the package docstring)
    documented: set[str] = set()
    for text in ((ROOT / "README.md").read_text(), pipeline.__doc__ or ""):
        for group in re.findall(r"from pipeline import (\([^)]*\)|[^\n]*)", text):
            documented |= {n.strip(" \n()") for n in group.split(",")} - {""}
    assert {"JobConfig", "run"} <= documented  # the quick start was found
    assert documented <= exported, documented - exported
    # the error tree a caller of run() tells failures apart by: every class under
    # PipelineError down to the retryable / permanent split
    tree = {
        cls.__name__
        for cls in vars(errors).values()
        if inspect.isclass(cls)
        and issubclass(cls, errors.PipelineError)
        and (cls.__bases__[0] in (Exception, errors.PipelineError, errors.GenAIError))
    }
    assert {"PipelineError", "ConfigError", "GenAIError", "RetryableError"} <= tree
    assert tree <= exported, tree - exported
    for name in tree:
        assert getattr(pipeline, name) is getattr(errors, name)


def test_the_package_binds_no_public_name_outside_all() -> None:
    # what the package module itself defines or imports at top level (not TYPE_CHECKING)
    source = Path(pipeline.__file__).read_text()
    bound: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            bound |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    public = {n for n in bound if not n.startswith("_")} - {"TYPE_CHECKING", "Any"}
    assert public - {"PIPELINE_VERSION"} <= set(pipeline.__all__), public - set(pipeline.__all__)
