"""Helpers for the Airflow tests: run a DAG with ``dag.test()``, read back its task
instances and XComs, and re-run chosen task instances the way a clear in the UI does."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_parts(root: Any, rows: list[dict[str, Any]], parts: int) -> str:
    """``rows`` as ``parts`` Parquet files in the directory ``root`` (one shard each)."""
    root.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // parts)
    for k in range(parts):
        chunk = rows[k * size : (k + 1) * size]
        pq.write_table(pa.Table.from_pylist(chunk), str(root / f"part{k}.parquet"))
    return str(root)


def task_instances(dr: Any) -> dict[tuple[str, int], Any]:
    """``{(task_id, map_index): (state, try_number)}`` of a dag run, read fresh."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id == dr.run_id
        )
        return {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in rows}


def xcoms(dr: Any) -> dict[tuple[str, int, str], Any]:
    """Every XCom of a dag run: ``{(task_id, map_index, key): value}``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id
        )
        return {(x.task_id, x.map_index, x.key): x.value for x in rows}


def xcom_size(value: Any) -> int:
    return len(value if isinstance(value, str) else json.dumps(value))


def rerun(dag: Any, dr: Any, wanted: set[tuple[str, int]]) -> str:
    """Clear the task instances ``wanted`` (task_id, map_index) of a finished run, as
    "Clear" in the UI does, and run the run again in-process the way ``dag.test()`` does
    (its scheduling loop, its task runner) until it finishes. Returns the run's state."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState

    session = settings.Session()
    try:
        run = session.query(DagRun).filter(DagRun.id == dr.id).one()
        # the scheduler's view of the DAG, as dag.test() builds it
        run.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        tis = [
            ti
            for ti in run.get_task_instances(session=session)
            if (ti.task_id, ti.map_index) in wanted
        ]
        assert {(ti.task_id, ti.map_index) for ti in tis} == wanted
        clear_task_instances(tis, session, dag_run_state=DagRunState.RUNNING)
        session.commit()
        for _ in range(50):
            session.expire_all()
            if run.state != DagRunState.RUNNING:
                break
            schedulable, _ = run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in run.get_task_instances(session=session):
                if ti.state == TaskInstanceState.SCHEDULED:
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        return str(run.state)
    finally:
        session.close()
