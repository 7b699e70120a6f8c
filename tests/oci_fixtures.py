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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.genai.emulator.devconfig import (
    CONFIG_NAME,
    new_key,
    write_dev_config,
    write_key,
    write_profile,
)


def make_oci_config(tmp_dir: str | os.PathLike[str], profile: str = "DEFAULT") -> tuple[str, str]:
    """A fresh key and OCI config profile in ``tmp_dir`` (see ``write_dev_config``)."""
    return write_dev_config(tmp_dir, profile)


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
    write_key(key_path, new_key())
    values = dict(parser[profile])
    values["key_file"] = str(key_path)
    config_path = root / f"wrong_{CONFIG_NAME}"
    write_profile(config_path, profile, values)
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
