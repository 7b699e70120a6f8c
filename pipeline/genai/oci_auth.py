"""OCI request signing: a signer for every auth mode of a job, and a request signer that
signs with it.

The ``oci`` SDK does the cryptography and the token handling (instance / resource
principal tokens refresh themselves inside its signers); this module only maps a
:class:`~pipeline.config.JobConfig` to the right SDK signer, turns the SDK's setup errors into
:class:`~pipeline.errors.ConfigError` naming the file, profile or setting at fault, and bridges
the SDK's ``requests``-style signer to the client's plain (method, URL, headers, body) requests.

Secrets: messages name files, profiles and settings, never key contents, pass phrases or
tokens; signers are never put into a message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import configparser
import functools
import os
import threading
import time
from typing import Any, Protocol

from pipeline.errors import ConfigError, GenAIError, TransportError

__all__ = ["AuthSettings", "OciRequestSigner", "load_signer"]


class AuthSettings(Protocol):
    """The settings a signer is made from (a JobConfig, or storage settings)."""

    @property
    def auth(self) -> str: ...
    @property
    def oci_config(self) -> str | None: ...
    @property
    def oci_profile(self) -> str: ...


_DEFAULT_CONFIG = os.path.join("~", ".oci", "config")
_REQUIRED_API_KEY = ("user", "tenancy", "fingerprint", "key_file")
_REQUIRED_SESSION = ("tenancy", "fingerprint", "key_file", "security_token_file")
# A session token file is looked at again at most this often, so `oci session refresh`
# run beside a long job is picked up without a stat() per request.
_TOKEN_RECHECK_S = 10.0


def load_signer(config: AuthSettings) -> tuple[Any, str | None]:
    """The ``oci`` signer for ``config.auth`` and the region it implies (None if unknown).

    api_key and security_token read ``config.oci_config`` (default ``~/.oci/config``, with
    the SDK's fallbacks) at ``config.oci_profile``; the principal modes ask the environment
    (metadata service, resource principal variables, the OKE service account token).
    Raises ConfigError naming what is missing or wrong.
    """
    mode = config.auth
    if mode == "api_key":
        return _api_key_signer(config.oci_config, config.oci_profile)
    if mode == "security_token":
        return _session_signer(config.oci_config, config.oci_profile)
    import oci

    factories = {
        "instance_principal": oci.auth.signers.InstancePrincipalsSecurityTokenSigner,
        "resource_principal": oci.auth.signers.get_resource_principals_signer,
        "workload_identity": oci.auth.signers.get_oke_workload_identity_resource_principal_signer,
    }
    factory = factories.get(mode)
    if factory is None:
        raise ConfigError(f"auth: {mode!r} is not a supported OCI auth mode")
    try:
        signer = factory()
    except Exception as exc:
        # these read the environment or the metadata service; their messages name
        # variables and endpoints, never key material
        raise ConfigError(
            f"auth: could not set up {mode} authentication ({type(exc).__name__}: {_short(exc)})"
        ) from None
    region = getattr(signer, "region", None)
    return signer, str(region) if region else None


# --------------------------------------------------------------------------- config file


def _read_profile(config_file: str | None, profile: str) -> tuple[dict[str, Any], str]:
    """The profile's settings and the config file's path (as the SDK resolved it)."""
    import oci

    wanted = config_file or _DEFAULT_CONFIG
    shown = os.path.expanduser(wanted)
    try:
        cfg = oci.config.from_file(file_location=wanted, profile_name=profile)
    except oci.exceptions.ConfigFileNotFound:
        extra = "" if config_file else " (nor at $OCI_CONFIG_FILE or ~/.oraclebmc/config)"
        raise ConfigError(f"oci_config: no OCI config file at {shown}{extra}") from None
    except oci.exceptions.ProfileNotFound:
        known = _profiles(shown)
        raise ConfigError(
            f"oci_profile: profile {profile!r} not found in {shown}"
            + (f" (profiles: {', '.join(known)})" if known else "")
        ) from None
    except oci.exceptions.InvalidKeyFilePath:
        raise ConfigError(
            f"oci_config: profile {profile!r} in {shown}: key_file"
            f" {_raw_value(shown, profile, 'key_file')} does not exist"
        ) from None
    except configparser.Error as exc:
        # ParsingError quotes the offending lines, which may hold a pasted key: line
        # numbers only
        lines = getattr(exc, "errors", None) or [(getattr(exc, "lineno", "?"), "")]
        numbers = ", ".join(str(n) for n, _ in lines)
        raise ConfigError(
            f"oci_config: {shown} is not a valid config file (line {numbers})"
        ) from None
    except ValueError as exc:
        # the SDK's own checks (a forbidden key_content, a bad boolean); they name keys
        raise ConfigError(f"oci_config: profile {profile!r} in {shown}: {_short(exc)}") from None
    return cfg, shown


def _profiles(path: str) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error:
        return []
    # configparser keeps [DEFAULT] apart from the sections; OCI uses it as a profile
    return (["DEFAULT"] if parser.defaults() else []) + parser.sections()


def _raw_value(path: str, profile: str, key: str) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
        return os.path.expanduser(parser.get(profile, key))
    except (configparser.Error, KeyError):
        return "(unreadable)"


def _require(cfg: dict[str, Any], keys: tuple[str, ...], where: str, mode: str) -> None:
    missing = [k for k in keys if not cfg.get(k)]
    if missing:
        raise ConfigError(f"oci_config: {where} lacks {', '.join(missing)} (needed for {mode})")


def _key_errors(path: str, where: str, call: Any) -> Any:
    """``call()``, with the SDK's key-loading errors turned into ConfigError naming
    ``path``. The SDK's messages are generic; the key itself is never quoted."""
    import oci

    try:
        return call()
    except OSError as exc:
        raise ConfigError(
            f"oci_config: {where}: key_file {path} cannot be read ({exc.strerror})"
        ) from None
    except oci.exceptions.MissingPrivateKeyPassphrase:
        raise ConfigError(
            f"oci_config: {where}: key_file {path} is encrypted and the profile has no pass_phrase"
        ) from None
    except (oci.exceptions.InvalidPrivateKey, ValueError, TypeError):
        raise ConfigError(
            f"oci_config: {where}: key_file {path} is not a PEM private key, or its"
            " pass_phrase is wrong"
        ) from None


def _api_key_signer(config_file: str | None, profile: str) -> tuple[Any, str | None]:
    import oci

    cfg, path = _read_profile(config_file, profile)
    where = f"profile {profile!r} in {path}"
    _require(cfg, _REQUIRED_API_KEY, where, "auth=api_key")
    bad = [k for k, pattern in oci.config.PATTERNS.items() if not pattern.match(str(cfg[k]))]
    if bad:
        raise ConfigError(f"oci_config: {where}: malformed {', '.join(sorted(bad))}")
    key_file = os.path.expanduser(cfg["key_file"])
    signer = _key_errors(
        key_file,
        where,
        lambda: oci.signer.Signer(
            cfg["tenancy"], cfg["user"], cfg["fingerprint"], key_file, cfg.get("pass_phrase")
        ),
    )
    return signer, cfg.get("region") or None


def _session_signer(config_file: str | None, profile: str) -> tuple[Any, str | None]:
    import oci

    cfg, path = _read_profile(config_file, profile)
    where = f"profile {profile!r} in {path}"
    _require(cfg, _REQUIRED_SESSION, where, "auth=security_token")
    token_file = os.path.expanduser(cfg["security_token_file"])
    key_file = os.path.expanduser(cfg["key_file"])
    pass_phrase = cfg.get("pass_phrase")
    key = _key_errors(
        key_file, where, lambda: oci.signer.load_private_key_from_file(key_file, pass_phrase)
    )
    signer = _file_token_signer_class()(token_file, key, where)
    return signer, cfg.get("region") or None


def _read_token(path: str, where: str) -> tuple[str, float]:
    try:
        with open(path, encoding="ascii") as fh:
            token = fh.read().strip()
        mtime = os.stat(path).st_mtime
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not ASCII text"
        raise ConfigError(
            f"oci_config: {where}: security_token_file {path} cannot be read ({reason})"
        ) from None
    if not token:
        raise ConfigError(f"oci_config: {where}: security_token_file {path} is empty")
    return token, mtime


@functools.cache
def _file_token_signer_class() -> type:
    """The session-token signer class, made on first use (``oci`` is imported lazily).

    It is an SDK ``SecurityTokenSigner``: the SDK's clients (Object Storage through ocifs)
    accept it without an API-key profile, and sign streamed uploads with
    ``without_content_headers`` as they do for their own token signers."""
    import oci

    class FileSecurityTokenSigner(oci.auth.signers.SecurityTokenSigner):
        """A session-token signer (``oci session authenticate``) that re-reads the token
        file when it changes, so a job outlives the token's hour when ``oci session
        refresh`` runs beside it."""

        def __init__(self, token_file: str, private_key: Any, where: str) -> None:
            token, mtime = _read_token(token_file, where)
            self._path = token_file
            self._where = where
            self._key = private_key
            self._mtime = mtime
            self._checked = time.monotonic()
            self._lock = threading.Lock()
            super().__init__(token, private_key)

        def __repr__(self) -> str:
            return f"<session token signer {self._path}>"

        def _maybe_reload(self) -> None:
            now = time.monotonic()
            if now - self._checked < _TOKEN_RECHECK_S:
                return
            with self._lock:
                self._checked = now
                try:
                    mtime = os.stat(self._path).st_mtime
                except OSError:
                    return  # keep signing with the token we have; the service will say 401
                if mtime != self._mtime:
                    try:
                        token, self._mtime = _read_token(self._path, self._where)
                    except ConfigError:
                        return  # caught mid-write: keep the old token, look again later
                    oci.auth.signers.SecurityTokenSigner.__init__(self, token, self._key)

        def __call__(self, request: Any, enforce_content_headers: bool = True) -> Any:
            self._maybe_reload()
            return super().__call__(request, enforce_content_headers)

    return FileSecurityTokenSigner


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- request bridge


def _is_static(signer: Any) -> bool:
    """Whether signing never blocks: API keys and file session tokens sign in ~0.2 ms of
    CPU. Principal signers may refresh their token over the network inside the call."""
    import oci

    return type(signer) in (oci.signer.Signer, _file_token_signer_class()) or (
        type(signer) is oci.auth.signers.SecurityTokenSigner
    )


class OciRequestSigner:
    """Signs each request the way the ``oci`` SDK does (draft-cavage HTTP signature over
    date, (request-target), host, and for bodies content-length, content-type,
    x-content-sha256).

    The request is put into an SDK ``PreparedRequest`` (same method, URL, headers and
    body), the SDK signer adds ``date``, ``x-content-sha256`` and ``authorization`` to it, and
    the signed headers are returned: the caller sends exactly those, Host and
    Content-Length included, so what is signed is what goes on the wire. API-key signing
    runs inline (~0.2 ms); signers that may refresh a token over the network run in a
    worker thread so the event loop never blocks on them. A signer failure (e.g. a token
    refresh that could not reach the auth service) raises
    :class:`~pipeline.errors.TransportError`: retryable, the request was never sent.
    """

    def __init__(self, signer: Any) -> None:
        self._signer = signer
        self._inline = _is_static(signer)

    def __repr__(self) -> str:
        return f"OciRequestSigner({type(self._signer).__name__})"

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """``headers`` plus the OCI signature headers. ``url`` is ``scheme://host/path``
        with the host as the Host header says and the path byte-for-byte as sent (the
        signed request-target); ``headers`` must hold ``host`` and, for a body,
        ``content-length`` and ``content-type``."""
        from oci._vendor.requests import PreparedRequest
        from oci._vendor.requests.structures import CaseInsensitiveDict

        prepared = PreparedRequest()
        prepared.method = method
        # set by hand, not with prepare(): prepare() re-quotes the URL, and the signed
        # (request-target) must be byte-for-byte the path that is sent
        prepared.url = url
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = body
        try:
            self._signer(prepared)
        except GenAIError:
            raise
        except Exception as exc:
            raise TransportError(
                f"signing the request failed ({type(exc).__name__}: {_short(exc, 200)})"
            ) from None
        return dict(prepared.headers.items())

    async def signed(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        """:meth:`sign`, off the event loop when the signer may block."""
        if self._inline:
            return self.sign(method, url, headers, body)
        return await asyncio.to_thread(self.sign, method, url, headers, body)
