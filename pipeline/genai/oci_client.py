"""The OCI Generative AI inference client: one signed POST per call, classified outcomes.

``OciGenAIClient`` speaks the REST wire format of the 20231130 API directly with aiohttp
(its HTTP parser is C: a 1.2 MB embed answer costs a few Python calls, not one per 64 KB
read) and orjson: the SDK's ``GenerativeAiInferenceClient`` deserializes a 96x1024 embed
answer into model objects at ~7x the CPU of plain JSON parsing (reference §4), and brings
a retry strategy and a process-wide circuit breaker that fight the pipeline's own limiter.

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

An embedText answer is read by :func:`load_embed_answer`: its vectors go from the JSON
text straight into one float32 array (simdjson), not through a Python float per number.

Every request carries an ``opc-request-id`` of our own (``OGB-<client prefix>-<n>``), and
every error carries it (or the service's, which OCI derives from it) as ``request_id``.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import math
import os
import re
import secrets
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import numpy as np
import orjson
import simdjson
from yarl import URL

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

if TYPE_CHECKING:
    from pipeline.genai.oci_auth import OciRequestSigner

__all__ = [
    "API_VERSION",
    "OciGenAIClient",
    "endpoint_for_region",
    "is_valid_request_id",
    "load_embed_answer",
]

#: one INFO line per answered request (``HTTP Request: POST <url> "HTTP/1.1 200 OK"``);
#: the CLI keeps it at WARNING unless ``-v``
log = logging.getLogger(__name__)

API_VERSION = "20231130"
_ENDPOINT_TEMPLATE = "https://inference.generativeai.{region}.oci.{secondLevelDomain}"
_MESSAGE_LIMIT = 500
_RETRYABLE_409 = frozenset({"IncorrectState", "ExternalServerIncorrectState"})
# OCI's rule for a client opc-request-id (SDK base_client.py): at most 3 segments of
# ASCII letters, digits, '_' and '-', each at most 32 characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,32}(?:/[A-Za-z0-9_-]{1,32}){0,2}")
_USER_AGENT = f"oci-genai-batch aiohttp/{aiohttp.__version__}"
_CONNECT_S = 10.0  # connect quickly or not at all


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
    """An async client of the inference API. Owns one ``aiohttp.ClientSession`` (at most
    ``max_in_flight`` connections, keep-alive, timeouts from ``timeout_s``); an async
    context manager. ``auth`` signs requests (an
    :class:`~pipeline.genai.oci_auth.OciRequestSigner`; None sends them unsigned).

    Timeouts: a connection must be made within ``min(10, timeout_s)`` s, and a free one
    found within ``timeout_s``; once the request is sent, the answer must begin, and keep
    coming, with no gap longer than ``timeout_s`` (a long chat may take all of it). The
    whole exchange is capped at ``2 * timeout_s + 10`` s, which a live answer never
    reaches: aiohttp has no timeout of its own for a stalled upload.

    TLS trusts ``$SSL_CERT_FILE`` or ``$SSL_CERT_DIR`` when set, else certifi's bundle
    (as httpx does). A proxy comes from the environment (``HTTPS_PROXY``, ``NO_PROXY``,
    ...), read once per session. Cookies are neither kept nor sent; redirects are not
    followed.

    The session is bound to the event loop that first uses it. The runner reuses a
    backend across several ``asyncio.run`` calls (one per shard), so a call on a new loop
    gets a new session. The old one was already closed: each session is closed in the
    ``finally`` of an async generator parked on its loop, which ``asyncio.run`` finalizes
    (``shutdown_asyncgens``) while that loop still runs, so no socket outlives its loop.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        auth: OciRequestSigner | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 60.0,
    ) -> None:
        self.base_url = _base_url(endpoint)
        url = URL(self.base_url)
        # the Host header is sent as signed (aiohttp keeps a Host header it is given)
        self._host = url.host_port_subcomponent or ""
        self._origin = f"{url.scheme}://{self._host}"
        self._path = url.raw_path.rstrip("/")
        self._https = url.scheme == "https"
        self._auth = auth
        self._limit = max(1, max_in_flight)
        self._timeout = aiohttp.ClientTimeout(
            total=2 * timeout_s + 10,
            connect=timeout_s,  # waiting for a free connection, then connecting
            sock_connect=min(_CONNECT_S, timeout_s),
            sock_read=timeout_s,
        )
        self._prefix = "OGB-" + secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = (None, None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None

    def __repr__(self) -> str:
        return f"OciGenAIClient({self.base_url!r})"

    def new_request_id(self) -> str:
        """A fresh opc-request-id: ``OGB-<8 hex, per client>-<counter>``."""
        return f"{self._prefix}-{next(self._counter)}"

    async def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                ssl=_ssl_context() if self._https else True,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"accept": "application/json", "user-agent": _USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            # once here, not per request as aiohttp's trust_env would (it also reads
            # ~/.netrc then, whose basic auth would clash with the signature)
            self._proxy = _env_proxy(URL(self.base_url))
            closer = _close_at_loop_end(session)
            await anext(closer)  # runs to its yield at once; now the loop knows it
            self._session, self._loop, self._closer = session, loop, closer
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool. A later call opens a new one."""
        closer, loop = self._closer, self._loop
        self._session = self._loop = self._closer = None
        if closer is not None and loop is asyncio.get_running_loop():
            await closer.aclose()
        # else: that loop has ended, and closed the session as it did

    async def __aenter__(self) -> Self:
        await self._http()
        return self

    # ------------------------------------------------------------------ actions

    async def embed_text(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """POST /actions/embedText (EmbedTextDetails) → (EmbedTextResult, request id);
        ``embeddings`` as :func:`load_embed_answer` reads it."""
        return await self.post("embedText", body, loads=load_embed_answer)

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

    async def post(
        self,
        action: str,
        body: Mapping[str, Any],
        *,
        loads: Callable[[bytes], Any] = orjson.loads,
    ) -> tuple[dict[str, Any], str]:
        """One signed POST of ``body`` as JSON to ``/actions/<action>``. Returns the JSON
        object of a 2xx answer (read by ``loads``) and the request id (the service's
        ``opc-request-id`` when it sends one, else ours); raises a classified
        :class:`~pipeline.errors.GenAIError`."""
        rid = self.new_request_id()
        try:
            content = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            # e.g. a lone surrogate in a text: that input can never be sent
            raise BadRequestError(
                f"{action}: the request cannot be encoded as JSON ({exc})", request_id=rid
            ) from None
        path = f"{self._path}/actions/{action}"
        headers = {
            "host": self._host,
            "content-type": "application/json",
            "content-length": str(len(content)),
            "opc-request-id": rid,
        }
        # Errors are raised after the except blocks so they chain nothing: a chained
        # exception would keep the request (the batch's texts, the signature) alive in
        # every stored failure.
        error: GenAIError | None = None
        url = self._origin + path
        try:
            if self._auth is not None:
                headers = await self._auth.signed("POST", url, headers, content)
            session = await self._http()
            async with session.post(
                URL(url, encoded=True),
                data=content,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy[0],
                proxy_auth=self._proxy[1],
            ) as response:
                data = await response.read()
                status, served = response.status, response.headers
                if log.isEnabledFor(logging.INFO):
                    v = response.version
                    version = f"HTTP/{v.major}.{v.minor}" if v else "HTTP"
                    log.info(
                        'HTTP Request: POST %s "%s %d %s"', url, version, status, response.reason
                    )
        except GenAIError as exc:  # from the signer
            exc.request_id = exc.request_id or rid
            error = exc
        except (aiohttp.ClientError, OSError) as exc:  # OSError: TimeoutError too
            # refused, reset, timed out, cut short, not HTTP: the request is not answered
            error = TransportError(f"{action}: {_transport_text(exc)}", request_id=rid)
        if error is not None:
            raise error
        return _parse(action, status, served, data, rid, loads)


async def _close_at_loop_end(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Parks until closed: by ``aclose()``, or by ``asyncio.run`` finalizing the async
    generators of its loop before closing it."""
    try:
        yield
    finally:
        await session.close()


def _env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment sets for ``url`` (``NO_PROXY`` honoured), or none."""
    from aiohttp.helpers import get_env_proxy_for_url

    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


def _ssl_context() -> ssl.SSLContext:
    """The CA bundle httpx would use: ``$SSL_CERT_FILE``, ``$SSL_CERT_DIR``, else
    certifi's."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _transport_text(exc: BaseException) -> str:
    """``SocketTimeoutError: ...`` without the request (at most host and port; no headers,
    no body)."""
    detail = _short(str(exc), 200)
    return f"{type(exc).__name__}" + (f": {detail}" if detail else "") + " (request not answered)"


def _parse(
    action: str,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    sent_id: str,
    loads: Callable[[bytes], Any],
) -> tuple[dict[str, Any], str]:
    served_id = headers.get("opc-request-id")
    request_id = served_id or sent_id
    if not 200 <= status < 300:
        # OCI normally extends the id it was sent; if not, keep ours findable in the logs
        note = f" (sent opc-request-id {sent_id})" if sent_id not in request_id else ""
        raise classify(action, status, content, headers, request_id, note)
    try:
        data = loads(content)
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


def load_embed_answer(content: bytes) -> Any:
    """An embedText answer, as ``orjson.loads`` reads it, except that ``embeddings``, when
    it is a list of equal-length lists of numbers, is one float32 ``(rows, dim)`` array.

    simdjson parses the text and copies the numbers into one buffer: no Python float per
    number (for 96x1024 floats ~1.4 ms of CPU, against ~5.5 ms for orjson, the array and
    freeing the floats). Any other shape, a null, a string or a nested list among the
    numbers, or text simdjson rejects, is read by orjson instead, so the caller's checks
    see (and name) exactly what the service sent; invalid JSON raises
    ``orjson.JSONDecodeError``."""
    try:
        doc = simdjson.Parser().parse(content)  # a parser per answer: no shared state
        rows = doc.get("embeddings") if isinstance(doc, simdjson.Object) else None
        vectors = _matrix(rows) if isinstance(rows, simdjson.Array) else None
        if vectors is not None and isinstance(doc, simdjson.Object):
            rest = {k: _plain(doc[k]) for k in doc.keys() if k != "embeddings"}  # noqa: SIM118
            # Each "[" of the text opens the matrix, one of its rows, or a list of the
            # rest: a list nested among the numbers (which the flat copy hides) adds one.
            brackets = 1 + len(vectors) + orjson.dumps(rest).count(b"[")
            if content.count(b"[") == brackets:
                rest["embeddings"] = vectors
                return rest
    except (ValueError, TypeError, RuntimeError, OverflowError):
        pass  # not for the fast path; orjson reads it, or says why it is not JSON
    return orjson.loads(content)


def _matrix(rows: simdjson.Array) -> np.ndarray | None:
    """``rows`` as float32 ``(n, dim)`` if they are n > 0 lists of one length dim > 0,
    holding only numbers; else None (TypeError from simdjson for a null or a string)."""
    n = len(rows)
    first = rows[0] if n else None
    dim = len(first) if isinstance(first, simdjson.Array) else 0
    if dim == 0 or any(not isinstance(r, simdjson.Array) or len(r) != dim for r in rows):
        return None
    flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    if flat.size != n * dim:
        return None
    with np.errstate(over="ignore"):  # beyond float32: infinite, which the caller refuses
        return flat.astype(np.float32).reshape(n, dim)


def _plain(value: Any) -> Any:
    """A simdjson value as the Python value orjson would give."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
