"""Shared helpers for tests that talk OCI to the local emulator.

Plain functions (import them: ``from tests.oci_fixtures import running_emulator``):

- :func:`make_oci_config` writes a fresh RSA-2048 key and an OCI config profile for it;
- :func:`wrong_key_config` writes a profile with the same user/tenancy/fingerprint as a
  good one but another key (its signatures must be refused);
- :func:`running_emulator` runs an :class:`~pipeline.genai.emulator.Emulator` that
  verifies signatures against such a profile;
- :func:`sdk_client` / :func:`async_sdk_client` build the real SDK clients aimed at it,
  with SDK retries and the process-wide circuit breaker switched off (see the reference:
  the default breaker is shared by every client and would leak between tests).
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.genai.emulator import Emulator, EmulatorConfig

TENANCY = "ocid1.tenancy.oc1..aaaaemulatortenancy"
USER = "ocid1.user.oc1..aaaaemulatoruser"
COMPARTMENT = "ocid1.compartment.oc1..aaaaemulatorcompartment"
REGION = "us-chicago-1"
CONFIG_NAME = "oci_config"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def fingerprint(key: rsa.RSAPrivateKey) -> str:
    """OCI's fingerprint of an API key: MD5 of the DER public key, colon-separated hex."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_profile(config_path: Path, profile: str, values: dict[str, str]) -> None:
    """Add or replace ``profile`` in the config file (other profiles are kept)."""
    parser = configparser.ConfigParser(interpolation=None)
    if config_path.exists():
        parser.read(config_path)
    if profile == "DEFAULT":
        parser["DEFAULT"] = values
    else:
        parser[profile] = values
    with config_path.open("w") as fh:
        parser.write(fh)


def make_oci_config(tmp_dir: str | os.PathLike[str], profile: str = "DEFAULT") -> tuple[str, str]:
    """Write a new RSA-2048 key ``key_<profile>.pem`` and the ``profile`` section of
    ``<tmp_dir>/oci_config`` (user, tenancy, region us-chicago-1, the key's fingerprint,
    key_file). Returns ``(config_path, key_path)``."""
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    key_path = root / f"key_{profile}.pem"
    _write_key(key_path, key)
    config_path = root / CONFIG_NAME
    values = {
        "user": USER,
        "tenancy": TENANCY,
        "region": REGION,
        "fingerprint": fingerprint(key),
        "key_file": str(key_path),
    }
    _write_profile(config_path, profile, values)
    return str(config_path), str(key_path)


def wrong_key_config(
    tmp_dir: str | os.PathLike[str],
    profile: str = "DEFAULT",
    good_config: str | os.PathLike[str] | None = None,
) -> tuple[str, str]:
    """A config whose ``profile`` claims the identity (user, tenancy, fingerprint) of a
    good config but holds another key, so its signatures must be refused. The good config
    is ``good_config``, else ``<tmp_dir>/oci_config``, else ``<tmp_dir>/../oci_config``
    (so ``wrong_key_config(oci_dir / "wrong")`` mimics the config in ``oci_dir``); if none
    exists, one is made in ``tmp_dir`` first. The result is written as
    ``<tmp_dir>/wrong_oci_config`` and ``<tmp_dir>/wrong_key_<profile>.pem``.
    Returns ``(config_path, key_path)``."""
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    candidates = (
        [Path(good_config)] if good_config else [root / CONFIG_NAME, root.parent / CONFIG_NAME]
    )
    parser = configparser.ConfigParser(interpolation=None)
    found = next((c for c in candidates if c.exists() and _has_profile(c, profile)), None)
    if found is None:
        found = Path(make_oci_config(root, profile)[0])
    parser.read(found)
    key_path = root / f"wrong_key_{profile}.pem"
    _write_key(key_path, _new_key())
    values = dict(parser[profile])
    values["key_file"] = str(key_path)
    config_path = root / f"wrong_{CONFIG_NAME}"
    _write_profile(config_path, profile, values)
    return str(config_path), str(key_path)


def _has_profile(path: Path, profile: str) -> bool:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser.has_option(profile, "fingerprint")


@contextlib.contextmanager
def running_emulator(
    tmp_dir: str | os.PathLike[str], profile: str = "DEFAULT", **config_fields: Any
) -> Iterator[tuple[Emulator, str]]:
    """An emulator verifying signatures of a fresh profile in ``tmp_dir``; yields
    ``(emulator, config_path)``. ``config_fields`` are :class:`EmulatorConfig` fields;
    the embedder defaults to ``hash`` here (fast; pass ``embedder="local"`` for
    semantic vectors)."""
    config_path, _ = make_oci_config(tmp_dir, profile)
    config_fields.setdefault("embedder", "hash")
    with Emulator(EmulatorConfig(**config_fields), oci_config=config_path, profile=profile) as emu:
        yield emu, config_path


def _client_kwargs(url: str, timeout: Any) -> dict[str, Any]:
    import oci

    return {
        "service_endpoint": url,
        "timeout": timeout,
        "retry_strategy": oci.retry.NoneRetryStrategy(),
        "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
    }


def sdk_client(
    config_path: str, url: str, profile: str = "DEFAULT", timeout: Any = (5, 30), **kw: Any
) -> Any:
    """The real sync ``GenerativeAiInferenceClient`` for ``url``, without SDK retries
    or circuit breaker."""
    import oci
    from oci.generative_ai_inference import GenerativeAiInferenceClient

    cfg = oci.config.from_file(config_path, profile)
    return GenerativeAiInferenceClient(cfg, **{**_client_kwargs(url, timeout), **kw})


def async_sdk_client(
    config_path: str, url: str, profile: str = "DEFAULT", timeout: Any = 30, **kw: Any
) -> Any:
    """The real ``AsyncGenerativeAiInferenceClient`` (use ``async with``), as above."""
    import oci
    from oci.generative_ai_inference import AsyncGenerativeAiInferenceClient

    cfg = oci.config.from_file(config_path, profile)
    return AsyncGenerativeAiInferenceClient(cfg, **{**_client_kwargs(url, timeout), **kw})
