"""The OCI GenAI runs page: an Airflow 3 plugin (a FastAPI app under ``/oci-genai`` plus a
nav entry, Browse → OCI GenAI runs).

It lists recent DAG runs of ``oci_genai_backfill`` and ``oci_genai_nightly`` (newest first,
from Airflow's metadata database) with what their output says about them
(``pipeline.runview.run_view``): per-shard progress, throughput over time, retries and 429s,
dead letters with the top error codes, estimated cost, where the outputs are, and a link to
the DAG run in the Airflow UI. The page reloads itself every 30 s (a meta refresh).

Authentication: Airflow does not guard a plugin's FastAPI app, so every route depends on
Airflow's own ``get_user`` (the ``_token`` cookie of a UI session, or an
``Authorization: Bearer`` JWT from ``POST /auth/token``): no or a bad token is refused
(401/403), and only DAGs the user may read runs of (``is_authorized_dag``, RUN) are shown.

Where a DAG run's pipeline run is: the ``run_id`` / ``output`` / ``config`` XComs of its
``plan`` task; else ``output`` from the run's conf or the DAG's Param default, and the newest
run in that output planned after the DAG run started. A relative output path is resolved
against ``OCI_GENAI_PROJECT_DIR`` (default: the api-server's working directory). An
``oci://`` output is read with the run's own storage settings (its plan's config) and the
key of its ``oci_genai`` connection, as its tasks read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

from airflow.api_fastapi.app import API_ROOT_PATH, get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from airflow.models.dagrun import DagRun
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.xcom import XComModel
from airflow.plugins_manager import AirflowPlugin
from airflow.utils.session import create_session
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from oci_genai_runs_html import RunCard, page
from sqlalchemy import select

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.runview import run_view
from pipeline.storage import OCI_SCHEMES, StorageSettings, scheme_of

log = logging.getLogger(__name__)

DAG_IDS = ("oci_genai_backfill", "oci_genai_nightly")
PLAN_TASK = "plan"
URL_PREFIX = "/oci-genai"
DEFAULT_LIMIT = 5


def readable_dags(user: BaseUser) -> list[str]:
    """The pipeline DAGs whose runs ``user`` may read."""
    manager = get_auth_manager()
    return [
        dag_id
        for dag_id in DAG_IDS
        if manager.is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id),
            user=user,
        )
    ]


def _dag_links(dag_id: str, dag_run_id: str) -> tuple[str, str]:
    root = (API_ROOT_PATH or "").rstrip("/")
    run = quote(dag_run_id, safe="")
    return (
        f"{root}/dags/{quote(dag_id, safe='')}/runs/{run}",
        f"{root}{URL_PREFIX}/runs/{quote(dag_id, safe='')}/{run}",
    )


def _plan_xcoms(session: Any, dag_id: str, dag_run_id: str) -> dict[str, Any]:
    rows = session.execute(
        select(XComModel.key, XComModel.value).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == dag_run_id,
            XComModel.task_id == PLAN_TASK,
            XComModel.map_index == -1,
        )
    ).all()
    out = {}
    for row in rows:
        try:
            out[row.key] = XComModel.deserialize_value(row)
        except Exception:  # an XCom we cannot read is as good as none
            log.warning("XCom %s of %s/%s unreadable", row.key, dag_id, dag_run_id)
    return out


def _param_default(session: Any, dag_id: str, name: str) -> Any:
    try:
        dag = SerializedDagModel.get_dag(dag_id, session=session)
        value = dag.params.get(name) if dag is not None else None
        return getattr(value, "value", value)
    except Exception:
        return None


def _resolve(output: str) -> str:
    if "://" in output or os.path.isabs(output):
        return output
    return os.path.join(os.environ.get("OCI_GENAI_PROJECT_DIR", os.getcwd()), output)


_STORAGE_FIELDS = ("auth", "oci_config", "oci_profile", "region", "os_endpoint")


@contextlib.contextmanager
def _storage_settings(
    session: Any, dr: DagRun, config: dict[str, Any], output: str
) -> Iterator[StorageSettings | None]:
    """What reading an ``oci://`` output takes: the run's own settings (its plan's
    config), with the key of the run's ``oci_genai`` connection as its tasks had it (an
    inline key lives in a private file for this block only). None for other outputs:
    they are read with this process's settings."""
    if scheme_of(output) not in OCI_SCHEMES:
        yield None
        return
    from oci_genai_provider.dagtasks import connection_settings

    conn_id = (dr.conf or {}).get("conn_id") or _param_default(session, dr.dag_id, "conn_id")
    with connection_settings(conn_id, config.get("backend"), key_only=True, uris=(output,)) as key:
        fields = {k: config[k] for k in _STORAGE_FIELDS if config.get(k) is not None}
        yield StorageSettings(**{**fields, **key})


def _price(config: dict[str, Any], conf: dict[str, Any]) -> tuple[float | None, str]:
    """The embedding model's price and the currency, from the job the plan task recorded
    (the price table's entry for its model, else price_per_million_chars), else as the
    recorded settings or the DAG run's conf give them."""
    try:
        job = JobConfig.from_json(config)
    except ConfigError:  # no plan yet, or a config this version cannot read
        price = config.get("price_per_million_chars", conf.get("price_per_million_chars"))
        return price, str(config.get("currency") or conf.get("currency") or "USD")
    return job.embed_price, job.currency


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else None


def run_card(session: Any, dr: DagRun) -> RunCard:
    """A DAG run and, when its pipeline run can be found, that run's view."""
    link, detail = _dag_links(dr.dag_id, dr.run_id)
    xcoms = _plan_xcoms(session, dr.dag_id, dr.run_id)
    config = xcoms.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    config = config if isinstance(config, dict) else {}
    conf = dr.conf or {}
    output = (
        xcoms.get("output")
        or config.get("output")
        or conf.get("output")
        or _param_default(session, dr.dag_id, "output")
    )
    price, currency = _price(config, conf)
    card = RunCard(
        dag_id=dr.dag_id,
        dag_run_id=dr.run_id,
        state=str(dr.state or "queued"),
        started=_when(dr.start_date),
        link=link,
        detail_link=detail,
        output=output,
        run_id=xcoms.get("run_id"),
        view=None,
    )
    if not output:
        card.note = "Its output is not known yet (the plan task has not run)."
        return card
    where = _resolve(str(output))
    if card.run_id is None:
        # only the plan task's XCom names the run: a guess from the output could show another
        # DAG run's shards (a failed plan leaves none, and a later run may use the output)
        card.note = (
            "No pipeline run for this DAG run: its plan task has not run yet, or it failed"
            " (see the DAG run)."
        )
        return card
    try:
        with _storage_settings(session, dr, config, where) as settings:
            card.view = run_view(
                where,
                card.run_id,
                price_per_million_chars=price,
                currency=currency,
                settings=settings,
            )
    except Exception as exc:  # one unreadable output must not take the page down
        log.warning("run view of %s (%s): %s", dr.run_id, where, exc)
        card.note = f"The output {where} cannot be read: {type(exc).__name__}: {exc}"
    return card


def recent_cards(dag_ids: list[str], limit: int) -> list[RunCard]:
    with create_session() as session:
        runs = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id.in_(dag_ids))
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .limit(limit)
        ).all()
        return [run_card(session, dr) for dr in runs]


def one_card(dag_id: str, dag_run_id: str) -> RunCard | None:
    with create_session() as session:
        dr = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == dag_run_id)
        ).one_or_none()
        return None if dr is None else run_card(session, dr)


def _allowed(user: BaseUser) -> list[str]:
    dags = readable_dags(user)
    if not dags:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed to read the pipeline DAGs")
    return dags


# every route needs a valid Airflow session cookie or bearer token
app = FastAPI(title="OCI GenAI runs", dependencies=[Depends(get_user)])


@app.get("/", response_class=HTMLResponse)
def runs_page(
    user: GetUserDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=50),
) -> HTMLResponse:
    cards = recent_cards(_allowed(user), limit)
    note = f"The {len(cards)} most recent runs of {', '.join(DAG_IDS)}, newest first."
    return HTMLResponse(page(cards, note=note))


@app.get("/runs/{dag_id}/{dag_run_id}", response_class=HTMLResponse)
def run_page(dag_id: str, dag_run_id: str, user: GetUserDep) -> HTMLResponse:
    if dag_id not in _allowed(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed to read runs of {dag_id}")
    card = one_card(dag_id, dag_run_id)
    if card is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {dag_run_id} of {dag_id}")
    return HTMLResponse(page([card], title=f"OCI GenAI run {dag_run_id}"))


@app.get("/api/runs/{dag_id}/{dag_run_id}")
def run_json(dag_id: str, dag_run_id: str, user: GetUserDep) -> dict[str, Any]:
    """The same data as JSON (for scripts and tests)."""
    if dag_id not in _allowed(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed to read runs of {dag_id}")
    card = one_card(dag_id, dag_run_id)
    if card is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {dag_run_id} of {dag_id}")
    return {k: getattr(card, k) for k in card.__dataclass_fields__}


class OciGenAIRunsPlugin(AirflowPlugin):
    name = "oci_genai_runs"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "OCI GenAI runs"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "OCI GenAI runs",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "oci-genai-runs",
        }
    ]
