"""``OciGenAIHook``: an Airflow connection of type ``oci_genai`` turned into the core's
OCI settings. It holds no pipeline logic: the DAG tasks hand the settings to
``pipeline.tasks`` and the core signs and sends every request."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from airflow.sdk.bases.hook import BaseHook  # noqa: TID251 (the Airflow layer)

from oci_genai_provider import CONN_TYPE, DEFAULT_CONN_ID
from oci_genai_provider.fields import settings_from_extra, write_inline_profile


class OciGenAIHook(BaseHook):
    """Settings for ``--backend oci`` from an ``oci_genai`` connection.

    Use :meth:`job_settings` as a context manager around the work: with an inline API
    key, the key lives in a private temporary directory for exactly that long."""

    conn_name_attr = "oci_genai_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "OCI Generative AI"

    def __init__(self, oci_genai_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.oci_genai_conn_id = oci_genai_conn_id

    def get_conn(self) -> dict[str, Any]:
        """The connection's settings without key material (what a log may show)."""
        conn = self.get_connection(self.oci_genai_conn_id)
        settings, inline = settings_from_extra(self.oci_genai_conn_id, conn.extra_dejson)
        return {**settings, "inline_key": inline is not None}

    @contextlib.contextmanager
    def job_settings(
        self, *, key_only: bool = False, genai: bool = True
    ) -> Iterator[dict[str, Any]]:
        """JobConfig keys (``backend="oci"`` and the connection's OCI settings); an inline
        key is written to a 0600 file in a 0700 directory removed on exit.

        ``key_only``: only what is local to this process, the inline key's profile
        (``oci_config``, ``oci_profile``), or nothing for a config-file connection. The
        shard and commit tasks use this: the rest of a run's settings were fixed by its
        plan and travel in the run's config. ``genai=False``: the settings sign only
        Object Storage (``oci://`` with another backend): no ``backend`` key, and no
        compartment required."""
        conn = self.get_connection(self.oci_genai_conn_id)
        settings, inline = settings_from_extra(
            self.oci_genai_conn_id, conn.extra_dejson, genai=genai
        )
        if genai:
            settings["backend"] = "oci"
        if inline is None:
            yield {} if key_only else settings
            return
        directory = tempfile.mkdtemp(prefix="oci-genai-key-")
        try:
            profile = {
                "oci_config": write_inline_profile(directory, inline, settings.get("region")),
                "oci_profile": "DEFAULT",
            }
            yield profile if key_only else {**settings, **profile}
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap signed call: a one-input embed with the connection's settings."""
        from pipeline.config import JobConfig
        from pipeline.genai.oci_backend import OciBackend

        async def ping(backend: OciBackend) -> int:
            try:
                result = await backend.embed(["connection test"])
                return int(result.vectors.shape[1])
            finally:
                await backend.aclose()

        try:
            with self.job_settings() as settings:
                config = JobConfig.from_mapping(
                    {"source": "-", "output": "-", "max_attempts": 1, **settings},
                    origin=f"connection {self.oci_genai_conn_id!r}",
                )
                backend = OciBackend.from_config(config)
                dim = asyncio.run(ping(backend))
        except Exception as exc:  # the UI shows the message; the core's never hold secrets
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"signed embed call succeeded ({config.embed_model_id}, {dim} dimensions)"
