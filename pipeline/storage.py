"""One storage seam: every source and output URI becomes a pyarrow filesystem here.

- a plain path (or ``file://``): the local filesystem;
- ``oci://bucket@namespace/prefix``: OCI Object Storage through ``ocifs``, signed with the
  same settings as the GenAI client (``auth``, ``oci_config``, ``oci_profile``, ``region``)
  and sent to ``os_endpoint`` when one is set (the emulator, a private endpoint);
- anything else pyarrow knows (``s3://``, ``gs://``, ``hdfs://``), then anything fsspec
  knows. The S3 compatibility endpoint of OCI is reached as ``s3://`` with the usual AWS
  settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).

Credentials are per process: an entry point (the CLI, an Airflow task) calls
:func:`configure` with the job's settings once, and every later :func:`resolve` in that
process uses them. A unit path keeps its scheme, so another process reopens it from the
shard spec alone (after configuring itself from the same job).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import JobConfig

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OCI_SCHEMES = ("oci",)
#: Object Storage calls are retried (connection errors, timeouts, 429, 5xx) this many
#: times within this many seconds
OS_RETRY_ATTEMPTS = 5
OS_RETRY_SECONDS = 30


@dataclass(frozen=True)
class StorageSettings:
    """What opening an object store needs: the OCI auth settings and endpoint."""

    auth: str = "api_key"
    oci_config: str | None = None
    oci_profile: str = "DEFAULT"
    region: str | None = None
    os_endpoint: str | None = None

    @classmethod
    def of(cls, config: JobConfig) -> StorageSettings:
        return cls(
            auth=config.auth,
            oci_config=config.oci_config,
            oci_profile=config.oci_profile,
            region=config.region,
            os_endpoint=config.os_endpoint,
        )


_lock = threading.Lock()
_settings = StorageSettings()


def configure(settings: StorageSettings | JobConfig) -> None:
    """Set this process's storage credentials (from a job's settings)."""
    global _settings
    if not isinstance(settings, StorageSettings):
        settings = StorageSettings.of(settings)
    with _lock:
        _settings = settings


def current_settings() -> StorageSettings:
    return _settings


@dataclass(frozen=True)
class Resolved:
    """A URI as a filesystem sees it.

    ``path`` is the path inside ``fs``; ``prefix`` turns a path of ``fs`` back into a URI
    (``"oci://"``, ``"s3://"``; ``""`` locally), so ``prefix + path`` can be reopened with
    :func:`resolve` by any process.
    """

    fs: pafs.FileSystem
    path: str
    prefix: str
    local: bool
    scheme: str  # "" locally

    @property
    def is_oci(self) -> bool:
        return self.scheme in OCI_SCHEMES


def scheme_of(uri: str) -> str:
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def resolve(uri: str, settings: StorageSettings | None = None) -> Resolved:
    """Resolve ``uri`` (a path or URI, no glob) to a filesystem and a path in it.

    Raises :class:`ConfigError` naming the URI when no filesystem can be made for it.
    """
    settings = settings or _settings
    scheme = scheme_of(uri)
    if not scheme or scheme == "file":
        path = uri.split("://", 1)[1] if scheme else uri
        local = os.path.abspath(os.path.expanduser(path or "."))
        return Resolved(pafs.LocalFileSystem(), _trim(local), "", True, "")
    if scheme in OCI_SCHEMES:
        fs = _oci_filesystem(settings)
        return Resolved(fs, _trim(uri.split("://", 1)[1]), f"{scheme}://", False, scheme)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return _fsspec(uri, scheme, exc)
    if isinstance(fs, pafs.LocalFileSystem):
        return Resolved(fs, _trim(path), "", True, "")
    return Resolved(fs, _trim(path), f"{scheme}://", False, scheme)


def _fsspec(uri: str, scheme: str, why: BaseException) -> Resolved:
    try:
        import fsspec

        ffs, _, paths = fsspec.get_fs_token_paths(uri)
    except Exception as exc:
        raise ConfigError(
            f"{uri}: unsupported URI ({_short(why)}; fsspec: {_short(exc)})"
        ) from None
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
    return Resolved(fs, _trim(paths[0]), f"{scheme}://", False, scheme)


@functools.lru_cache(maxsize=8)
def _oci_filesystem(settings: StorageSettings) -> pafs.FileSystem:
    """One ocifs filesystem per settings (signers refresh their own tokens)."""
    from pipeline.genai.oci_auth import load_signer

    try:
        import ocifs
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("oci:// needs the ocifs package") from None
    signer, region = load_signer(settings)
    region = settings.region or region
    config: dict[str, Any] = {}
    if settings.auth == "api_key":
        # the SDK's client checks the config for an API-key identity even when it is
        # handed the signer (it waives that only for its token and principal signers);
        # load_signer has just read the same profile, so this cannot fail differently
        import oci

        profile = oci.config.from_file(
            file_location=settings.oci_config or oci.config.DEFAULT_LOCATION,
            profile_name=settings.oci_profile,
        )
        # only the identity it checks, never the pass phrase: ocifs logs its config at DEBUG
        config = {
            k: profile[k] for k in ("user", "tenancy", "fingerprint", "key_file") if k in profile
        }
    if region:
        config["region"] = region
    # the SDK's default retries a refused connection for ~95 s; a batch job that cannot
    # reach its bucket should say so sooner (Airflow retries the task on its own schedule)
    config_kwargs: dict[str, Any] = {"retry_strategy": _retry_strategy()}
    if settings.os_endpoint:
        config_kwargs["service_endpoint"] = settings.os_endpoint.rstrip("/")
    try:
        fs = ocifs.OCIFileSystem(
            config=config,
            signer=signer,
            region=region,
            config_kwargs=config_kwargs,
            skip_instance_cache=True,
            # every listing asks the store: other processes write the same prefixes
            # (a long-lived reader, the runs page, would otherwise never see new files)
            use_listings_cache=False,
        )
    except Exception as exc:
        raise ConfigError(
            f"oci://: could not set up Object Storage with auth {settings.auth} "
            f"({type(exc).__name__}: {_short(exc)})"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _retry_strategy() -> Any:
    """Up to 5 attempts within 30 s on connection errors, timeouts, 429 and 5xx
    (``OS_RETRY_*`` below); the SDK's default allows 8 attempts and 10 minutes."""
    import oci

    return oci.retry.RetryStrategyBuilder(
        max_attempts_check=True,
        max_attempts=OS_RETRY_ATTEMPTS,
        total_elapsed_time_check=True,
        total_elapsed_time_seconds=OS_RETRY_SECONDS,
        retry_max_wait_between_calls_seconds=8,
        retry_base_sleep_time_seconds=1,
        service_error_check=True,
        service_error_retry_on_any_5xx=True,
        service_error_retry_config={429: []},
    ).get_retry_strategy()


def fsspec_of(fs: pafs.FileSystem) -> Any | None:
    """The fsspec filesystem under a wrapped pyarrow one (ocifs, s3fs), else None."""
    if isinstance(fs, pafs.PyFileSystem):
        handler = fs.handler
        return getattr(handler, "fs", None)
    return None


def _trim(path: str) -> str:
    return path.rstrip("/") or path[:1]


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "OCI_SCHEMES",
    "Resolved",
    "StorageSettings",
    "configure",
    "current_settings",
    "fsspec_of",
    "resolve",
    "scheme_of",
]
