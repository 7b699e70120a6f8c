"""The OCI Generative AI inference client: one signed POST per call, classified outcomes.

``OciGenAIClient`` speaks the REST wire format of the 20231130 API directly with httpx and
orjson: the SDK's ``GenerativeAiInferenceClient`` deserializes a 96x1024 embed answer into
model objects at ~7x the CPU of plain JSON parsing (reference §4), and brings a retry
strategy and a process-wide circuit breaker that fight the pipeline's own limiter.

Contract of every call: exactly one HTTP request, no retry, and either ``(data, request_id)``
or one of the :mod:`pipeline.errors` classes (the ``Caller`` above decides about retries)::

    429                                 ThrottledError (retry_after from Retry-After)
    500 502 503 504, other 5xx but 501  ServerError
    409 IncorrectState                  ServerError
    400, 413                            BadRequestError (413: the batch is too big; split it)
    401 403                             AuthError
    501, other 4xx (404, 409 Conflict)  ServiceError
    timeout, refused, reset, ...        TransportError
    2xx but not a JSON object           BadResponseError

Every request carries an ``opc-request-id`` of our own (``OGB-<client prefix>-<n>``), and
every error carries it (or the service's, which OCI derives from it) as ``request_id``.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import math
import re
import secrets
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Self

import httpx
import orjson

from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    GenAIError,
    ServerError,
    ServiceError,
    ThrottledError,
    TransportError,
)
from pipeline.genai.base import AsyncClosing

__all__ = ["API_VERSION", "OciGenAIClient", "endpoint_for_region", "is_valid_request_id"]

API_VERSION = "20231130"
_ENDPOINT_TEMPLATE = "https://inference.generativeai.{region}.oci.{secondLevelDomain}"
_MESSAGE_LIMIT = 500
_RETRYABLE_409 = frozenset({"IncorrectState", "ExternalServerIncorrectState"})
# OCI's rule for a client opc-request-id (SDK base_client.py): at most 3 segments of
# ASCII letters, digits, '_' and '-', each at most 32 characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,32}(?:/[A-Za-z0-9_-]{1,32}){0,2}")
_USER_AGENT = f"oci-genai-batch httpx/{httpx.__version__}"


def is_valid_request_id(value: str) -> bool:
    """Whether ``value`` is an opc-request-id OCI accepts from a client."""
    return _REQUEST_ID.fullmatch(value) is not None


def endpoint_for_region(region: str) -> str:
    """The inference endpoint of ``region`` (short names like ``ord`` and other realms
    resolved by the SDK's region table), e.g.
    ``https://inference.generativeai.us-chicago-1.oci.oraclecloud.com``."""
    try:
        import oci

        return str(
            oci.regions.endpoint_for(
                "generative_ai_inference",
                region=region,
                service_endpoint_template=_ENDPOINT_TEMPLATE,
            )
        )
    except Exception:
        # an unknown region: the commercial realm's domain, as the SDK itself falls back to
        return f"https://inference.generativeai.{region}.oci.oraclecloud.com"


def _base_url(endpoint: str) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if not re.match(r"https?://[^/]+", endpoint):
        raise ConfigError(
            f"genai_endpoint: {endpoint!r} is not an http(s) URL (e.g."
            " https://inference.generativeai.us-chicago-1.oci.oraclecloud.com)"
        )
    # accept the endpoint with or without the API version, as users copy either form
    return endpoint if endpoint.endswith("/" + API_VERSION) else f"{endpoint}/{API_VERSION}"


def _short(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _error_fields(content: bytes) -> tuple[str | None, str]:
    """OCI's ``{"code", "message"}`` error body; anything else (a proxy's HTML page) gives
    no code and the body's text as the message."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        message = body.get("message")
        return (str(code) if code else None), _short(str(message) if message else "")
    return None, _short(content.decode("utf-8", "replace"))


def classify(
    action: str,
    status: int,
    content: bytes,
    headers: Mapping[str, str],
    request_id: str,
    note: str = "",
) -> GenAIError:
    """The error for a non-2xx answer (see the module table); ``note`` ends the message."""
    code, text = _error_fields(content)
    message = f"{action}: HTTP {status}" + (f": {text}" if text else "") + note
    kw: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
    if status == 429:
        return ThrottledError(message, retry_after=_retry_after(headers.get("retry-after")), **kw)
    if status in (400, 413):
        return BadRequestError(message, **kw)
    if status in (401, 403):
        return AuthError(message, **kw)
    if status == 409 and code in _RETRYABLE_409:
        return ServerError(message, **kw)
    if status >= 500 and status != 501:
        return ServerError(message, **kw)
    return ServiceError(message, **kw)


class OciGenAIClient(AsyncClosing):
    """An async client of the inference API. Owns one ``httpx.AsyncClient`` (pool sized for
    ``max_in_flight`` requests, keep-alive, timeouts of ``timeout_s``); an async context
    manager. ``auth`` signs requests (an :class:`~pipeline.genai.oci_auth.OciRequestSigner`);
    ``transport`` replaces the network (tests).

    The httpx client is bound to the event loop that first uses it. The runner reuses a
    backend across several ``asyncio.run`` calls (one per shard), so a call on a new loop
    gets a new httpx client. The old one was already closed: each client is closed in the
    ``finally`` of an async generator parked on its loop, which ``asyncio.run`` finalizes
    (``shutdown_asyncgens``) while that loop still runs, so no socket outlives its loop.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        auth: httpx.Auth | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _base_url(endpoint)
        self._auth = auth
        self._transport = transport
        n = max(1, max_in_flight)
        self._limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        # connect quickly or not at all; the read may take the whole budget (long chats).
        # A pool wait is bounded too: the Caller's budget keeps us under the pool size.
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._prefix = "OGB-" + secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None

    def __repr__(self) -> str:
        return f"OciGenAIClient({self.base_url!r})"

    def new_request_id(self) -> str:
        """A fresh opc-request-id: ``OGB-<8 hex, per client>-<counter>``."""
        return f"{self._prefix}-{next(self._counter)}"

    async def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                auth=self._auth,
                limits=self._limits,
                timeout=self._timeout,
                transport=self._transport,
                headers={"accept": "application/json", "user-agent": _USER_AGENT},
                follow_redirects=False,
            )
            closer = _close_at_loop_end(client)
            await anext(closer)  # runs to its yield at once; now the loop knows it
            self._client, self._loop, self._closer = client, loop, closer
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool. A later call opens a new one."""
        closer, loop = self._closer, self._loop
        self._client = self._loop = self._closer = None
        if closer is not None and loop is asyncio.get_running_loop():
            await closer.aclose()
        # else: that loop has ended, and closed the client as it did

    async def __aenter__(self) -> Self:
        await self._http()
        return self

    # ------------------------------------------------------------------ actions

    async def embed_text(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/embedText (EmbedTextDetails) → (EmbedTextResult, request id)."""
        return await self.post("embedText", body)

    async def chat(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/chat (ChatDetails) → (ChatResult, request id)."""
        return await self.post("chat", body)

    async def summarize_text(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/summarizeText (SummarizeTextDetails) → (SummarizeTextResult, id)."""
        return await self.post("summarizeText", body)

    async def generate_text(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/generateText (GenerateTextDetails) → (GenerateTextResult, id)."""
        return await self.post("generateText", body)

    async def rerank_text(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/rerankText (RerankTextDetails) → (RerankTextResult, request id)."""
        return await self.post("rerankText", body)

    async def post(self, action: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """One signed POST of ``body`` as JSON to ``/actions/<action>``. Returns the parsed
        JSON object and the request id (the service's ``opc-request-id`` when it sends
        one, else ours); raises a classified :class:`~pipeline.errors.GenAIError`."""
        rid = self.new_request_id()
        try:
            content = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            # e.g. a lone surrogate in a text: that input can never be sent
            raise BadRequestError(
                f"{action}: the request cannot be encoded as JSON ({exc})", request_id=rid
            ) from None
        # Errors are raised after the except blocks so they chain nothing: a chained httpx
        # exception would keep the request (the batch's texts, the signature) alive in
        # every stored failure.
        error: GenAIError | None = None
        try:
            response = await (await self._http()).post(
                f"/actions/{action}",
                content=content,
                headers={"content-type": "application/json", "opc-request-id": rid},
            )
        except GenAIError as exc:  # from the signer
            exc.request_id = exc.request_id or rid
            error = exc
        except httpx.TimeoutException as exc:
            error = TransportError(f"{action}: {_transport_text(exc)}", request_id=rid)
        except httpx.DecodingError as exc:
            error = BadResponseError(f"{action}: {_transport_text(exc)}", request_id=rid)
        except httpx.RequestError as exc:  # connect, read, write, protocol, proxy, ...
            error = TransportError(f"{action}: {_transport_text(exc)}", request_id=rid)
        if error is not None:
            raise error
        return _parse(action, response, rid)


async def _close_at_loop_end(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Parks until closed: by ``aclose()``, or by ``asyncio.run`` finalizing the async
    generators of its loop before closing it."""
    try:
        yield
    finally:
        await client.aclose()


def _transport_text(exc: httpx.RequestError) -> str:
    """``ReadTimeout: ...`` without the request (URL only; no headers, no body)."""
    detail = _short(str(exc), 200)
    return f"{type(exc).__name__}" + (f": {detail}" if detail else "") + " (request not answered)"


def _parse(action: str, response: httpx.Response, sent_id: str) -> tuple[dict[str, Any], str]:
    served_id = response.headers.get("opc-request-id")
    request_id = served_id or sent_id
    status = response.status_code
    if not 200 <= status < 300:
        # OCI normally extends the id it was sent; if not, keep ours findable in the logs
        note = f" (sent opc-request-id {sent_id})" if sent_id not in request_id else ""
        raise classify(action, status, response.content, response.headers, request_id, note)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        what = "not valid JSON" if data is None else f"a JSON {type(data).__name__}"
        raise BadResponseError(
            f"{action}: HTTP {status} answer is {what}, expected an object",
            status=status,
            request_id=request_id,
        )
    return data, request_id
