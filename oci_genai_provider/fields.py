"""The ``oci_genai`` connection's form and its mapping to the core's settings.

No Airflow here: the declarations are plain data read by ProvidersManager, and
:func:`settings_from_extra` is a plain function, so both are testable on their own.

A connection's extras (the form's fields) become ``JobConfig`` keys: ``auth``,
``oci_config``/``oci_profile``, ``region``, ``genai_endpoint``, ``os_endpoint``,
``compartment``, default models and limits. Inline API-key material (user, tenancy,
fingerprint, private key) is not a JobConfig key: :func:`write_inline_profile` writes it
as an OCI config profile into a private directory (0700, files 0600) that the caller
removes when the task ends, and the settings point ``oci_config`` at it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

AUTH_TYPES = [
    "api_key",
    "instance_principal",
    "resource_principal",
    "security_token",
    "workload_identity",
]


def _text(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "label": label,
        "description": description,
        "schema": {"type": ["string", "null"], **schema},
    }


def _int(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "label": label,
        "description": description,
        "schema": {"type": ["integer", "null"], **schema},
    }


CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth": _text(
        "Auth type",
        "How requests are signed. api_key: a config file profile or the inline fields below.",
        enum=AUTH_TYPES,
        default="api_key",
    ),
    "oci_config": _text(
        "OCI config file",
        "Path on the workers (default ~/.oci/config). Leave empty when the key is inline.",
    ),
    "oci_profile": _text("Profile", "Profile in the config file.", default="DEFAULT"),
    "user": _text("User OCID", "Inline api_key auth: the user's OCID."),
    "tenancy": _text("Tenancy OCID", "Inline api_key auth: the tenancy's OCID."),
    "fingerprint": _text("Key fingerprint", "Inline api_key auth: the API key's fingerprint."),
    "private_key": _text(
        "Private key (PEM)",
        "Inline api_key auth: the PEM private key. Masked in the UI and in logs.",
        format="password",
    ),
    # named so that Airflow's secrets masker hides it ("passphrase" is one of its words)
    "passphrase": _text("Key pass phrase", "Only for an encrypted private key.", format="password"),
    "region": _text(
        "Region", "e.g. us-chicago-1; needed with an inline key unless an endpoint is set."
    ),
    "genai_endpoint": _text(
        "GenAI endpoint",
        "Inference endpoint URL (default: the region's); the emulator's URL in tests.",
    ),
    "os_endpoint": _text(
        "Object Storage endpoint", "Object Storage endpoint URL (default: the region's)."
    ),
    "compartment": _text(
        "Compartment OCID", "Compartment whose Generative AI quota the calls use."
    ),
    "embed_model": _text(
        "Default embedding model", "Used when a job names none.", default="cohere.embed-v4.0"
    ),
    "summary_model": _text("Default summary model", "Used when a job names none."),
    "output_dimensions": _int(
        "Default output dimensions",
        "256, 512, 1024 or 1536 (embed v4 only).",
        enum=[None, 256, 512, 1024, 1536],
    ),
    "max_rpm": _int("Default max requests/min", "Rate ceiling when a job sets none.", minimum=1),
    "max_tpm": _int("Default max tokens/min", "Token ceiling when a job sets none.", minimum=1),
    "max_in_flight": _int(
        "Default max in flight", "Concurrent requests per shard task.", minimum=1
    ),
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # every setting is one of the fields above; the generic ones would only confuse
    "hidden-fields": ["host", "schema", "login", "password", "port"],
    "relabeling": {},
    "placeholders": {
        "compartment": "ocid1.compartment.oc1..",
        "genai_endpoint": "https://inference.generativeai.us-chicago-1.oci.oraclecloud.com",
        "region": "us-chicago-1",
        "oci_config": "~/.oci/config",
    },
}

# extras that map 1:1 onto JobConfig keys
_SETTINGS = (
    "auth",
    "oci_config",
    "oci_profile",
    "region",
    "genai_endpoint",
    "os_endpoint",
    "compartment",
    "embed_model",
    "summary_model",
    "output_dimensions",
    "max_rpm",
    "max_tpm",
    "max_in_flight",
)
_INTS = ("output_dimensions", "max_rpm", "max_tpm", "max_in_flight")
INLINE_FIELDS = ("user", "tenancy", "fingerprint", "private_key")


class ConnectionFieldError(ValueError):
    """A connection lacks a field its auth type needs, or holds a bad value. The message
    names the connection and the field, never a secret's value."""


def _get(extra: Mapping[str, Any], name: str) -> Any:
    # the UI may store a form field under its prefixed name
    value = extra.get(name, extra.get(f"extra__oci_genai__{name}"))
    if isinstance(value, str):
        value = value.strip()
    return None if value in ("", None) else value


def settings_from_extra(
    conn_id: str, extra: Mapping[str, Any], *, genai: bool = True
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """``(settings, inline)``: the JobConfig keys the connection sets (unset ones left
    out), and the inline key material when the key is in the connection (else None).
    ``genai=False``: the settings only sign Object Storage requests (``oci://`` sources
    and outputs of a local or hash run), so no compartment is needed.
    Raises ConnectionFieldError naming the missing or bad field."""
    where = f"connection {conn_id!r} (type oci_genai)"
    settings: dict[str, Any] = {}
    for name in _SETTINGS:
        value = _get(extra, name)
        if value is None:
            continue
        if name in _INTS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ConnectionFieldError(
                    f"{where}: {name} must be an integer, got {value!r}"
                ) from None
        settings[name] = value
    auth = settings.setdefault("auth", "api_key")
    if auth not in AUTH_TYPES:
        raise ConnectionFieldError(f"{where}: auth {auth!r} is not one of {', '.join(AUTH_TYPES)}")
    if genai and not settings.get("compartment"):
        raise ConnectionFieldError(f"{where}: compartment is required (the compartment OCID)")
    given = [n for n in INLINE_FIELDS if _get(extra, n) is not None]
    if not given:
        return settings, None
    if auth != "api_key":
        raise ConnectionFieldError(
            f"{where}: {', '.join(given)} only apply to auth api_key (auth is {auth})"
        )
    if settings.get("oci_config"):
        raise ConnectionFieldError(
            f"{where}: set either oci_config (a config file) or the inline key fields, not both"
        )
    for name in INLINE_FIELDS:
        if _get(extra, name) is None:
            raise ConnectionFieldError(f"{where}: {name} is required for an inline api_key")
    if not settings.get("region") and not settings.get("genai_endpoint"):
        raise ConnectionFieldError(
            f"{where}: region is required for an inline api_key (or set genai_endpoint)"
        )
    inline = {n: str(_get(extra, n)) for n in INLINE_FIELDS}
    passphrase = _get(extra, "passphrase")
    if passphrase is not None:
        inline["pass_phrase"] = str(passphrase)
    inline["private_key"] = normalize_pem(inline["private_key"])
    return settings, inline


_PEM = re.compile(r"(-----BEGIN [A-Z ]+-----)(.*?)(-----END [A-Z ]+-----)", re.S)


def normalize_pem(text: str) -> str:
    """A PEM key pasted into a one-line field (newlines lost, or written as ``\\n``)
    back in PEM form; a well-formed key is returned unchanged (plus a final newline)."""
    text = text.replace("\\n", "\n").strip()
    match = _PEM.search(text)
    if match is None or "\n" in match.group(2).strip():
        return text + "\n"
    body = "".join(match.group(2).split())
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([match.group(1), *lines, match.group(3)]) + "\n"


def write_inline_profile(directory: str, inline: Mapping[str, str], region: str | None) -> str:
    """Write the inline key and a ``[DEFAULT]`` profile naming it into ``directory`` (made
    private: 0700, files 0600); return the config file's path."""
    os.chmod(directory, 0o700)
    key_path = os.path.join(directory, "key.pem")
    _write_private(key_path, inline["private_key"])
    lines = ["[DEFAULT]"]
    lines += [f"{n}={inline[n]}" for n in ("user", "tenancy", "fingerprint")]
    lines.append(f"key_file={key_path}")
    if inline.get("pass_phrase"):
        lines.append(f"pass_phrase={inline['pass_phrase']}")
    if region:
        lines.append(f"region={region}")
    config_path = os.path.join(directory, "config")
    _write_private(config_path, "\n".join(lines) + "\n")
    return config_path


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
