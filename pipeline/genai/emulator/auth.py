"""Verification of OCI API-key request signatures (draft-cavage HTTP signatures, as the
``oci`` SDK's ``oci.signer.Signer`` makes them).

The signing string is one ``name: value`` line per header listed in the ``headers``
parameter, in that order, joined by newlines; ``(request-target)`` is the lower-cased
method, a space, and the path with its query exactly as sent. The signature is RSA
PKCS#1 v1.5 over SHA-256. Messages of :class:`AuthError` say what is wrong and never
contain key material or the signature itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

#: requests whose date is further than this from our clock are refused (OCI: 5 minutes)
MAX_CLOCK_SKEW_S = 300.0
_PARAM = re.compile(r'([A-Za-z]+)="([^"]*)"')
# what OCI requires a signature to cover; bodies must also be covered for PUT/POST/PATCH
_REQUIRED = ("(request-target)", "host")
_REQUIRED_BODY = ("content-length", "content-type", "x-content-sha256")


class AuthError(Exception):
    """The request is not authenticated; the message is safe to return to the client."""


def parse_authorization(value: str) -> dict[str, str]:
    """The parameters of a ``Signature k="v",...`` header (keys lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "signature":
        raise AuthError("the authorization header is not of the Signature scheme")
    params = {k.lower(): v for k, v in _PARAM.findall(rest)}
    for name in ("keyid", "signature", "headers"):
        if not params.get(name):
            raise AuthError(f"the authorization header has no {name} parameter")
    if params.get("algorithm", "rsa-sha256").lower() != "rsa-sha256":
        raise AuthError("unsupported signature algorithm (only rsa-sha256 is accepted)")
    if params.get("version", "1") != "1":
        raise AuthError("unsupported signature version")
    return params


def signing_string(
    signed: list[str], method: str, target: str, headers: Mapping[str, str]
) -> bytes:
    """The bytes that were signed, rebuilt from the listed headers of the request.
    ``headers`` must be a case-insensitive mapping."""
    lines = []
    for name in signed:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        elif name in headers:
            lines.append(f"{name}: {headers[name]}")
        else:
            raise AuthError(f"signed header {name!r} is missing from the request")
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise AuthError("a signed header has non-ASCII characters") from None


def key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """OCI's key fingerprint: MD5 of the DER SubjectPublicKeyInfo, colon-separated hex."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())


class SignatureVerifier:
    """Checks requests against one API-key profile of an OCI config file.

    :meth:`verify` raises :class:`AuthError` unless the request carries a valid
    ``authorization: Signature`` header whose keyId is ``tenancy/user/fingerprint`` of the
    profile, that covers date (or x-date), (request-target) and host (plus
    content-length, content-type and x-content-sha256 when there is a body), whose
    x-content-sha256 and content-length match the body, whose date is within 5 minutes,
    and whose signature verifies with the profile's public key.

    Object Storage's PutObject and UploadPart are the exception the SDK makes: their
    bodies are streamed and signed without the body headers (the SDK's
    ``enforce_content_headers=False``). For those pass ``body=None``; the body is then
    not required to be covered, and the caller checks an ``x-content-sha256`` the client
    sent anyway with :func:`check_streamed_body` once the body has arrived.
    """

    def __init__(self, config_file: str, profile: str = "DEFAULT") -> None:
        import oci  # the SDK's own parser, so the file means what it means to clients

        cfg = oci.config.from_file(file_location=config_file, profile_name=profile)
        self.profile = profile
        self.key_id = f"{cfg['tenancy']}/{cfg['user']}/{cfg['fingerprint']}"
        self._public_key = _load_public_key(cfg["key_file"], cfg.get("pass_phrase"))

    def verify(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> None:
        """Raise :class:`AuthError` if the request is not correctly signed by the profile.
        ``target`` is the path and query as sent; ``headers`` is case-insensitive;
        ``body`` is None for a streamed body that is signed without the body headers."""
        auth = headers.get("authorization")
        if not auth:
            raise AuthError("the request has no authorization header")
        params = parse_authorization(auth)
        if params["keyid"] != self.key_id:
            raise AuthError("unknown keyId (expected tenancy/user/fingerprint of the profile)")
        signed = params["headers"].lower().split()
        required = list(_REQUIRED)
        if body is not None and method.upper() in ("POST", "PUT", "PATCH"):
            required += _REQUIRED_BODY
        missing = [h for h in required if h not in signed]
        if "date" not in signed and "x-date" not in signed:
            missing.append("date")
        if missing:
            raise AuthError(f"the signature does not cover: {', '.join(missing)}")
        self._check_date(headers.get("x-date") or headers.get("date"))
        if body is not None:
            self._check_body(headers, body)
        try:
            raw = base64.b64decode(params["signature"], validate=True)
        except (binascii.Error, ValueError):
            raise AuthError("the signature is not valid base64") from None
        message = signing_string(signed, method, target, headers)
        try:
            self._public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise AuthError("the signature does not verify with the profile's key") from None

    @staticmethod
    def _check_date(value: str | None) -> None:
        if not value:
            raise AuthError("the request has no date header")
        try:
            sent = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            raise AuthError("the date header is not an HTTP date") from None
        skew = abs(time.time() - sent)
        if skew > MAX_CLOCK_SKEW_S:
            raise AuthError(f"the date header is {skew:.0f} s from the server clock (max 300)")

    @staticmethod
    def _check_body(headers: Mapping[str, str], body: bytes) -> None:
        digest = headers.get("x-content-sha256")
        if digest is not None:
            actual = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
            if digest != actual:
                raise AuthError("x-content-sha256 does not match the body")
        length = headers.get("content-length")
        if length is not None and length.strip() != str(len(body)):
            raise AuthError("content-length does not match the body")


def check_streamed_body(headers: Mapping[str, str], sha256: bytes, length: int) -> None:
    """For a body checked after it was streamed (``verify(..., body=None)``): raise
    :class:`AuthError` if the request's ``x-content-sha256`` or ``content-length`` does
    not match the SHA-256 digest and length of what arrived."""
    digest = headers.get("x-content-sha256")
    if digest is not None and digest != base64.b64encode(sha256).decode("ascii"):
        raise AuthError("x-content-sha256 does not match the body")
    declared = headers.get("content-length")
    if declared is not None and declared.strip() != str(length):
        raise AuthError("content-length does not match the body")


def _load_public_key(key_file: str, pass_phrase: str | None) -> rsa.RSAPublicKey:
    """The RSA public key of ``key_file``: a private key PEM (as OCI configs name) or a
    public key PEM."""
    import os

    with open(os.path.expanduser(key_file), "rb") as fh:
        pem = fh.read()
    password = pass_phrase.encode() if pass_phrase else None
    try:
        key = serialization.load_pem_private_key(pem, password=password).public_key()
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise ValueError(f"key_file {key_file} holds no usable PEM key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"key_file {key_file} does not hold an RSA key")
    return key
