"""oci-genai-batch: documents in, embeddings and summaries out, resumable.

Quick start::

    from pipeline import JobConfig, run

    config = JobConfig(source="docs.parquet", output="out/run1", backend="local")
    result = run(config)
    print(result.report["counts"])

Outputs (Parquet datasets readable without this package): ``OUTPUT/embeddings/``,
``OUTPUT/summaries/``, ``OUTPUT/failures/`` and ``OUTPUT/report.json``. Running again with
the same source and output resumes and only processes new, changed or unfinished documents.

Importing this package has no side effects and never imports Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.config import JobConfig
from pipeline.errors import (
    ConfigError,
    GenAIError,
    LockedError,
    OutageError,
    PermanentError,
    PipelineError,
    RetryableError,
    SourceError,
    StorageError,
)
from pipeline.models import PIPELINE_VERSION

if TYPE_CHECKING:
    from pipeline.runner import RunResult, ShardSpec

__version__ = PIPELINE_VERSION

__all__ = [
    "ConfigError",
    "GenAIError",
    "JobConfig",
    "LockedError",
    "OutageError",
    "PermanentError",
    "PipelineError",
    "RetryableError",
    "RunResult",
    "ShardSpec",
    "SourceError",
    "StorageError",
    "__version__",
    "commit",
    "plan",
    "run",
    "run_shard",
]


def __getattr__(name: str) -> Any:
    # the runner pulls in numpy, pyarrow and the sources: load it on first use only
    if name in ("run", "plan", "run_shard", "commit", "RunResult", "ShardSpec"):
        from pipeline import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
