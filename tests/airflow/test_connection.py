"""The ``oci_genai`` connection type: registered through the provider entry point with a
declarative form, its hook's mapping to the core's settings, and ``test_connection``
against the emulator."""

from __future__ import annotations

import configparser
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.genai.emulator import Emulator, EmulatorConfig
from tests.oci_fixtures import make_oci_config, wrong_key_config

COMPARTMENT = "ocid1.compartment.oc1..test"
CONN_ID = "oci_genai_hooktest"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[tuple[Emulator, str]]:
    config_path, _ = make_oci_config(tmp_path_factory.mktemp("oci"))
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path) as emu:
        yield emu, config_path


def _profile(config_path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_path)
    return dict(parser["DEFAULT"])


def _inline(config_path: str, url: str | None = None) -> dict[str, Any]:
    """The extras of an inline-key connection equivalent to the profile in ``config_path``."""
    p = _profile(config_path)
    with open(p["key_file"], encoding="ascii") as fh:
        key = fh.read()
    extra = {
        "auth": "api_key",
        "user": p["user"],
        "tenancy": p["tenancy"],
        "fingerprint": p["fingerprint"],
        "private_key": key,
        "region": "us-chicago-1",
        "compartment": COMPARTMENT,
    }
    if url:
        extra["genai_endpoint"] = url
    return extra


def _set_connection(monkeypatch, extra: dict[str, Any]) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "oci_genai", "extra": extra})
    )


def _hook() -> Any:
    from oci_genai_provider.hooks import OciGenAIHook

    return OciGenAIHook(CONN_ID)


def test_the_connection_type_is_registered_declaratively() -> None:
    from airflow.providers_manager import ProvidersManager

    from oci_genai_provider.hooks import OciGenAIHook

    pm = ProvidersManager()
    assert pm.hooks["oci_genai"].hook_class_name == "oci_genai_provider.hooks.OciGenAIHook"
    assert "oci-genai-batch" in pm.providers
    widgets = pm.connection_form_widgets
    for name in ("auth", "oci_config", "oci_profile", "user", "tenancy", "fingerprint",
                 "private_key", "passphrase", "region", "genai_endpoint", "os_endpoint",
                 "compartment", "embed_model", "summary_model", "max_rpm", "max_tpm",
                 "max_in_flight"):  # fmt: skip
        assert f"extra__oci_genai__{name}" in widgets, name
    assert widgets["extra__oci_genai__private_key"].is_sensitive
    assert widgets["extra__oci_genai__passphrase"].is_sensitive
    assert not widgets["extra__oci_genai__region"].is_sensitive
    auth = widgets["extra__oci_genai__auth"].field["schema"]["enum"]
    assert auth == [
        "api_key", "instance_principal", "resource_principal", "security_token",
        "workload_identity",
    ]  # fmt: skip
    assert "password" in pm.field_behaviours["oci_genai"]["hidden_fields"]
    # the deprecated hook methods are not what declares the form
    assert "get_connection_form_widgets" not in vars(OciGenAIHook)
    assert "get_ui_field_behaviour" not in vars(OciGenAIHook)


def test_secrets_are_masked_by_name() -> None:
    from airflow.sdk._shared.secrets_masker.secrets_masker import should_hide_value_for_key

    assert should_hide_value_for_key("private_key")
    assert should_hide_value_for_key("passphrase")


@pytest.mark.parametrize(
    "field", ["compartment", "user", "tenancy", "fingerprint", "private_key", "region"]
)
def test_each_required_field_is_named_when_missing(emulator, monkeypatch, field) -> None:
    from oci_genai_provider.fields import ConnectionFieldError

    extra = _inline(emulator[1])
    del extra[field]
    _set_connection(monkeypatch, extra)
    with pytest.raises(ConnectionFieldError) as err, _hook().job_settings():
        pass
    message = str(err.value)
    assert field in message and CONN_ID in message
    assert "PRIVATE KEY" not in message


def test_bad_values_are_named(emulator, monkeypatch) -> None:
    from oci_genai_provider.fields import ConnectionFieldError

    for change, named in (
        ({"auth": "password"}, "auth"),
        ({"max_rpm": "many"}, "max_rpm"),
        ({"oci_config": "/x/config"}, "oci_config"),
        ({"auth": "instance_principal"}, "user"),
    ):
        _set_connection(monkeypatch, {**_inline(emulator[1]), **change})
        with pytest.raises(ConnectionFieldError, match=named), _hook().job_settings():
            pass


def test_a_config_file_connection_maps_to_jobconfig_keys(monkeypatch) -> None:
    from pipeline.config import JobConfig

    extra = {
        "oci_config": "/etc/oci/config",
        "oci_profile": "BATCH",
        "compartment": COMPARTMENT,
        "region": "eu-frankfurt-1",
        "os_endpoint": "https://objectstorage.example",
        "embed_model": "cohere.embed-v4.0",
        "max_rpm": "120",
        "max_in_flight": 4,
    }
    _set_connection(monkeypatch, extra)
    with _hook().job_settings() as settings:
        config = JobConfig.from_mapping({"source": "s", "output": "o", **settings})
    assert settings["backend"] == "oci"
    assert (config.oci_config, config.oci_profile, config.region) == (
        "/etc/oci/config",
        "BATCH",
        "eu-frankfurt-1",
    )
    assert (config.max_rpm, config.max_in_flight, config.auth) == (120, 4, "api_key")


def test_an_inline_key_lives_in_a_private_file_for_the_task_only(emulator, monkeypatch) -> None:
    _set_connection(monkeypatch, _inline(emulator[1]))
    with _hook().job_settings() as settings:
        path = settings["oci_config"]
        folder = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for name in os.listdir(folder):
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600
        assert "private_key" not in settings
    assert not os.path.exists(folder)


def test_shard_tasks_take_only_the_key_from_the_connection(emulator, monkeypatch) -> None:
    # the plan fixed the run's settings (a job's max_rpm beats the connection's default);
    # a shard task needs only its own copy of an inline key
    _set_connection(monkeypatch, {**_inline(emulator[1]), "max_rpm": 100})
    with _hook().job_settings(key_only=True) as settings:
        assert set(settings) == {"oci_config", "oci_profile"}
        assert os.path.exists(settings["oci_config"])
    _set_connection(monkeypatch, {"oci_config": "/etc/oci/config", "compartment": COMPARTMENT})
    with _hook().job_settings(key_only=True) as settings:
        assert settings == {}


def test_test_connection_makes_one_signed_call(emulator, monkeypatch) -> None:
    emu, config_path = emulator
    emu.reset()
    _set_connection(monkeypatch, _inline(config_path, emu.url))
    ok, message = _hook().test_connection()
    assert ok, message
    stats = emu.stats()
    assert stats["requests"] == 1 and stats["inputs_embedded"] == 1
    assert stats["unauthenticated"] == 0
    assert "signed embed call succeeded" in message


def test_a_key_pasted_on_one_line_still_signs(emulator, monkeypatch) -> None:
    emu, config_path = emulator
    extra = _inline(config_path, emu.url)
    extra["private_key"] = " ".join(extra["private_key"].split("\n"))
    _set_connection(monkeypatch, extra)
    ok, message = _hook().test_connection()
    assert ok, message


def test_test_connection_reports_refused_credentials(emulator, tmp_path, monkeypatch) -> None:
    emu, config_path = emulator
    wrong, _ = wrong_key_config(tmp_path, good_config=config_path)
    extra = _inline(wrong, emu.url)
    _set_connection(monkeypatch, extra)
    emu.reset()
    ok, message = _hook().test_connection()
    assert not ok
    assert "AuthError" in message and "401" in message
    assert "PRIVATE KEY" not in message
    assert emu.stats()["requests"] == 1  # a refused signature is not retried


def test_the_default_connection_asks_for_oci_fields_only_when_used() -> None:
    from oci_genai_provider.dagtasks import connection_settings
    from oci_genai_provider.fields import ConnectionFieldError

    for backend in ("local", "hash"):
        with connection_settings("oci_genai_default", backend) as settings:
            assert settings == {}
        with connection_settings("no_such_connection", backend) as settings:
            assert settings == {}
    with (
        pytest.raises(ConnectionFieldError, match="compartment is required"),
        connection_settings("oci_genai_default", "oci"),
    ):
        pass


def test_oci_storage_takes_the_connection_without_its_backend_or_a_compartment(
    emulator, monkeypatch
) -> None:
    """A local or hash run whose source or output is ``oci://`` is signed with the
    connection's settings; the connection does not turn the run into an oci one."""
    from oci_genai_provider.dagtasks import connection_settings

    extra = _inline(emulator[1])
    del extra["compartment"]  # storage needs none
    _set_connection(monkeypatch, {**extra, "os_endpoint": "http://127.0.0.1:9"})
    with connection_settings(CONN_ID, "local", uris=("docs.parquet", "oci://b@ns/out")) as s:
        assert "backend" not in s and "compartment" not in s
        assert s["os_endpoint"] == "http://127.0.0.1:9" and os.path.exists(s["oci_config"])
    with connection_settings(CONN_ID, "hash", key_only=True, uris=("oci://b@ns/in", None)) as s:
        assert set(s) == {"oci_config", "oci_profile"}
    with connection_settings(CONN_ID, "local", uris=("docs.parquet", "out/")) as s:
        assert s == {}  # nothing on OCI: the embedded default needs no connection
    with connection_settings("no_such_connection", "hash", uris=("oci://b@ns/in",)) as s:
        assert s == {}  # then the job's own settings (auth, oci_config) sign


def test_the_ui_form_lists_the_fields(monkeypatch) -> None:
    """What the UI's connection form is built from (GET /ui/connections/hook_meta)."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app

    response = TestClient(create_app()).get("/ui/connections/hook_meta")
    assert response.status_code == 200
    (meta,) = [h for h in response.json() if h["connection_type"] == "oci_genai"]
    assert meta["hook_name"] == "OCI Generative AI"
    assert meta["standard_fields"]["password"]["hidden"] is True
    fields = meta["extra_fields"]
    assert {"auth", "private_key", "compartment", "genai_endpoint", "region"} <= set(fields)
    assert fields["auth"]["schema"]["enum"][0] == "api_key"
    assert fields["private_key"]["schema"]["format"] == "password"
