"""Airflow tests: a private AIRFLOW_HOME on SQLite, set before Airflow is imported.

The environment is set when this file is imported (pytest imports a conftest before the
test modules of its folder), so the DAG files read the short retry delay and Airflow
writes its config and database into a temporary home that is removed at the end.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAGS = os.path.join(ROOT, "dags")
HOME = tempfile.mkdtemp(prefix="oci-genai-airflow-home-")
atexit.register(shutil.rmtree, HOME, ignore_errors=True)

os.environ.update(
    {
        "AIRFLOW_HOME": HOME,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
        # dag.test() waits out retry delays in-process: keep them short
        "OCI_GENAI_RETRY_DELAY_S": "1",
        "OCI_GENAI_SHARD_RETRIES": "2",
    }
)
# the default connection, as `make airflow` will create it (imports no Airflow)
from oci_genai_provider import DEFAULT_CONNECTION  # noqa: E402

os.environ["AIRFLOW_CONN_OCI_GENAI_DEFAULT"] = json.dumps(DEFAULT_CONNECTION)


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Iterator[None]:
    """A fresh metadata database with the ``oci_genai`` pool."""
    from airflow.models.pool import Pool
    from airflow.utils.db import resetdb

    resetdb(skip_init=False)
    Pool.create_or_update_pool(
        "oci_genai", 4, "OCI Generative AI shard tasks", include_deferred=False
    )
    yield


@pytest.fixture
def dagbag() -> Any:
    """A DagBag parsed for this test alone: ``dag.test()`` in-process leaves a run's conf
    in the DAG object's params, so a DAG object must not serve two tests."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=DAGS)
