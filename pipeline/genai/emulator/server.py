"""The emulator's HTTP server (aiohttp.web) and :class:`Emulator`, which runs it either in
the foreground (``serve_forever``, for the CLI) or in a background thread with its own
event loop (a context manager, for tests).

Request flow of ``POST /20231130/actions/{action}``: authenticate (401), parse and
validate (400), admit against the rate windows (429), draw a fault, sleep the drawn
latency, do the model work, answer. ``/n/...`` is Object Storage, served from a directory
when one is given (``objectstore``). ``/_emulator/*`` is the unsigned control API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import web

from pipeline.genai.emulator import actions
from pipeline.genai.emulator.actions import ApiError, Engine, Job
from pipeline.genai.emulator.auth import AuthError, SignatureVerifier
from pipeline.genai.emulator.behaviour import Behaviour, EmulatorConfig
from pipeline.genai.emulator.objectstore import (
    DEFAULT_NAMESPACE,
    REQUEST_ID,
    ObjectStorageApi,
    ObjectStore,
)

log = logging.getLogger("oci_genai_batch.emulator")

API_PREFIX = "/20231130/actions/"
ACTIONS = ("embedText", "chat", "summarizeText", "generateText", "rerankText")
_CODES = {
    400: "InvalidParameter",
    401: "NotAuthenticated",
    404: "NotFound",
    405: "MethodNotAllowed",
    412: "PreconditionFailed",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
_JSON = "application/json"
# Embed requests of 96 long inputs (with truncate START/END) can be a few MB.
_MAX_BODY = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    body = orjson.dumps({"code": code, "message": message})
    return web.Response(status=status, body=body, content_type=_JSON)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=_JSON)


def _abort(request: web.Request) -> None:
    """Close the connection with a TCP RST and no response, like a dropped load balancer
    connection: SO_LINGER 0 makes close() send RST instead of FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # the peer may already be gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Dropped(Exception):
    """Raised after the connection was aborted on purpose: no response is written."""


class EmulatorApp:
    """The aiohttp application and the state it serves from."""

    def __init__(
        self,
        behaviour: Behaviour,
        verifier: SignatureVerifier | None,
        missing_models: set[str] | None = None,
        store: ObjectStore | None = None,
        denied_buckets: set[str] | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.verifier = verifier
        # model ids (or endpoint OCIDs) answered 404, as the service answers an unknown
        # model; shared with Emulator.missing_models, so a test may change it at any time
        self.missing_models = missing_models if missing_models is not None else set()
        self.engine = Engine()
        self.app = web.Application(client_max_size=_MAX_BODY, middlewares=[self._middleware])
        self.app.router.add_post(API_PREFIX + "{action}", self._action)
        tenancy = verifier.key_id.split("/")[0] if verifier else None
        self.objectstore = ObjectStorageApi(
            store,
            verifier,
            denied_buckets=denied_buckets,
            count=self.behaviour.count,
            **({"tenancy": tenancy} if tenancy else {}),
        )
        self.objectstore.add_routes(self.app)
        self.app.router.add_get("/_emulator/stats", self._stats)
        self.app.router.add_get("/_emulator/config", self._get_config)
        self.app.router.add_post("/_emulator/config", self._set_config)
        self.app.router.add_post("/_emulator/reset", self._reset)
        self.app.router.add_get("/_emulator/objectstore", self._get_objectstore)
        self.app.router.add_post("/_emulator/objectstore", self._set_objectstore)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """opc-request-id on every answer, OCI error bodies for every error, counting."""
        # control and Object Storage requests are not GenAI requests: they are left out of
        # requests/statuses (Object Storage counts its operations in object_storage)
        path = request.path
        control = path.startswith(("/_emulator/", "/n/", "/workRequests/")) or path == "/n"
        if not control:
            self.behaviour.count("requests")
        # the SDK's id (32 hex) or a caller's own is echoed; otherwise one is made up
        # (kept on the request for handlers that stream, whose headers go out early)
        request_id = request.headers.get("opc-request-id") or uuid.uuid4().hex.upper()
        request[REQUEST_ID] = request_id
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _error(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:  # the router's 404 / 405, too-large bodies
            code = _CODES.get(exc.status, "InternalServerError")
            response = _error(exc.status, code, exc.reason)
        except _Dropped:
            # aiohttp cannot answer on an aborted transport; this ends the request quietly
            raise asyncio.CancelledError() from None
        except Exception:  # a bug or a model failure: still an OCI-shaped 500
            log.exception("emulator: %s %s failed", request.method, request.path)
            response = _error(500, "InternalServerError", "internal error in the emulator")
        if not response.prepared:
            response.headers["opc-request-id"] = request_id
        if not control:
            self.behaviour.count("statuses", response.status)
        return response

    # ----------------------------------------------------------------- inference API

    async def _action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise ApiError(404, "NotFound", f"unknown action {action!r}")
        body = await request.read()
        self._authenticate(request, body)
        cfg = self.behaviour.config
        job = self._prepare(action, body, cfg)
        if self.missing_models:
            self._check_model(body)
        if not await self.behaviour.admit(job.tokens):
            self.behaviour.count("throttled")
            response = _error(429, "TooManyRequests", "Too many requests for the tenancy")
            if cfg.retry_after:
                response.headers["retry-after"] = f"{cfg.retry_after:g}"
            return response
        self.behaviour.count("actions", action)
        self.behaviour.count("tokens", None, job.tokens)
        fault = self.behaviour.draw_fault(action)
        if fault is not None:
            self.behaviour.count("faults", fault)
        if fault == "fault":
            status = self.behaviour.draw_5xx()
            return _error(status, _CODES[status], "injected fault")
        if fault == "reset":
            _abort(request)
            raise _Dropped()
        if fault == "timeout":
            await asyncio.sleep(cfg.timeout_s)
        delay = self.behaviour.draw_latency()
        if delay:
            await asyncio.sleep(delay)
        payload = await job.run(self.engine)
        if action == "embedText":
            payload = self._embed_fault(payload, fault)
            if fault is None:  # only inputs whose vectors reached the client intact
                self.behaviour.count("inputs_embedded", None, job.inputs)
        data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        if fault == "malformed":
            data = data[: max(1, len(data) // 2)]  # cut mid-value: not parseable JSON
        return web.Response(body=data, content_type=_JSON)

    def _authenticate(self, request: web.Request, body: bytes) -> None:
        headers = request.headers
        try:
            if self.verifier is not None:
                self.verifier.verify(request.method, request.raw_path, headers, body)
            elif not headers.get("authorization"):
                raise AuthError("the request has no authorization header")
        except AuthError as exc:
            self.behaviour.count("unauthenticated")
            raise ApiError(401, "NotAuthenticated", str(exc)) from None

    def _check_model(self, body: bytes) -> None:
        """404 for a model in ``missing_models`` (the body was validated by _prepare)."""
        mode = orjson.loads(body).get("servingMode") or {}
        model = mode.get("modelId") or mode.get("endpointId")
        if model in self.missing_models:
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                f"Authorization failed or requested resource not found: model {model!r}",
            )

    @staticmethod
    def _prepare(action: str, body: bytes, cfg: EmulatorConfig) -> Job:
        try:
            details = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400, "CannotParseRequest", "the request body is not valid JSON"
            ) from None
        if not isinstance(details, dict):
            raise ApiError(400, "CannotParseRequest", "the request body is not a JSON object")
        if action == "embedText":
            return actions.prepare_embed(details, cfg.embedder, cfg.dim, cfg.reject_substring)
        if action == "rerankText":
            return actions.prepare_rerank(details, cfg.embedder)
        prepare = {
            "chat": actions.prepare_chat,
            "summarizeText": actions.prepare_summarize,
            "generateText": actions.prepare_generate,
        }[action]
        return prepare(details, cfg.embedder, cfg.context_tokens)

    @staticmethod
    def _embed_fault(payload: dict[str, Any], fault: str | None) -> dict[str, Any]:
        vectors = payload["embeddings"]
        if fault == "wrong_count":
            payload["embeddings"] = vectors[:-1]
        elif fault == "wrong_dim":
            # orjson serialises only C-contiguous arrays
            payload["embeddings"] = vectors[:, :-1].copy()
        return payload

    # ----------------------------------------------------------------- control API

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.behaviour.stats())

    async def _get_config(self, request: web.Request) -> web.Response:
        return _json(self.behaviour.config.as_dict())

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            fields = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "CannotParseRequest", "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "CannotParseRequest", "the body is not a JSON object")
        try:
            cfg = self.behaviour.configure(**fields)
        except ValueError as exc:
            raise ApiError(400, "InvalidParameter", str(exc)) from None
        return _json(cfg.as_dict())

    async def _get_objectstore(self, request: web.Request) -> web.Response:
        return _json({"denied_buckets": sorted(self.objectstore.denied_buckets)})

    async def _set_objectstore(self, request: web.Request) -> web.Response:
        """``{"denied_buckets": [...]}`` replaces the buckets answered 403."""
        try:
            fields = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "CannotParseRequest", "the body is not valid JSON") from None
        denied = fields.get("denied_buckets") if isinstance(fields, dict) else None
        if not isinstance(denied, list) or not all(isinstance(b, str) for b in denied):
            raise ApiError(400, "InvalidParameter", 'expected {"denied_buckets": [names]}')
        self.objectstore.denied_buckets.clear()
        self.objectstore.denied_buckets.update(denied)
        return await self._get_objectstore(request)

    async def _reset(self, request: web.Request) -> web.Response:
        self.behaviour.reset()
        return _json(self.behaviour.stats())


class Emulator:
    """A local OCI Generative AI inference endpoint (API 20231130), and with ``os_root``
    OCI Object Storage (API 20160918) of namespace ``os_namespace`` from that directory.

    ``with Emulator(EmulatorConfig(embedder="hash"), oci_config=path) as emu:`` serves
    on ``emu.url`` from a background thread until the block ends; :meth:`serve_forever`
    serves in the calling thread until SIGINT/SIGTERM. With ``oci_config`` every request
    must be signed by that profile's key; without it any ``authorization`` header is
    accepted. :meth:`stats`, :meth:`configure` and :meth:`reset` are thread-safe;
    ``missing_models`` and ``denied_buckets`` may be changed while it serves.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        oci_config: str | None = None,
        profile: str = "DEFAULT",
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 1024,
        missing_models: Collection[str] = (),
        os_root: str | os.PathLike[str] | None = None,
        os_namespace: str = DEFAULT_NAMESPACE,
        denied_buckets: Collection[str] = (),
    ) -> None:
        self.behaviour = Behaviour(config or EmulatorConfig())
        #: model ids answered 404 NotAuthorizedOrNotFound (mutable while serving)
        self.missing_models: set[str] = set(missing_models)
        #: Object Storage from this directory (each subdirectory a bucket), or none
        self.store = ObjectStore(os_root, os_namespace) if os_root is not None else None
        #: buckets answered 403 NotAuthorized (mutable while serving)
        self.denied_buckets: set[str] = set(denied_buckets)
        self.verifier = SignatureVerifier(oci_config, profile) if oci_config else None
        self.host = host
        self.port = port
        self.backlog = backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the port is known once started): pass it to the SDK as
        ``service_endpoint``; the SDK appends ``/20231130`` itself."""
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> EmulatorConfig:
        return self.behaviour.config

    def stats(self) -> dict[str, Any]:
        return self.behaviour.stats()

    def configure(self, **fields: Any) -> EmulatorConfig:
        return self.behaviour.configure(**fields)

    def reset(self) -> None:
        self.behaviour.reset()

    # ----------------------------------------------------------------- running

    async def _serve(self, on_ready: Callable[[], None], handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = EmulatorApp(
            self.behaviour,
            self.verifier,
            self.missing_models,
            store=self.store,
            denied_buckets=self.denied_buckets,
        )
        # no access log: at thousands of requests/s it costs more than the answers;
        # a short shutdown_timeout so requests parked by the timeout fault end on stop
        runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=self.backlog)
            await site.start()
            self.port = runner.addresses[0][1]
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.add_signal_handler(sig, self._stop.set)
            if self.verifier is None:
                log.warning("emulator: request signatures are NOT verified (no --oci-config)")
            signatures = "verified" if self.verifier else "not verified"
            storage = (
                f", object storage: namespace {self.store.namespace} from {self.store.root}"
                if self.store
                else ""
            )
            print(
                f"emulator listening on {self.url} (signatures: {signatures},"
                f" embedder: {self.config.embedder}{storage})",
                flush=True,
            )
            on_ready()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            server.engine.close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until SIGINT or SIGTERM."""
        asyncio.run(self._serve(lambda: None, handle_signals=True))

    def start(self, timeout: float = 30.0) -> Self:
        """Serve from a background thread; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._thread_main, name="genai-emulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the emulator did not start")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve(self._ready.set, handle_signals=False))
        except BaseException as exc:  # reported to start(); nothing else can catch it
            self._error = exc
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a background server (in-flight requests get about a second to finish)."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            # the loop may close between the check and the call
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_from_args(args: argparse.Namespace) -> int:
    """Build the emulator from the parsed flags of ``oci-genai-batch emulator`` (see
    ``pipeline.cli``) and serve until SIGINT/SIGTERM. Exit status 2 for bad settings."""
    names = {f for f in EmulatorConfig.__dataclass_fields__ if f != "embedder"}
    fields = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        config = EmulatorConfig(embedder=args.embedder).replace(**fields)
        emulator = Emulator(
            config,
            oci_config=args.oci_config,
            profile=args.oci_profile,
            host=args.host,
            port=args.port,
            os_root=args.os_root,
            os_namespace=args.os_namespace,
        )
    except (ValueError, OSError) as exc:  # bad flag values, an unreadable config or key
        print(f"oci-genai-batch emulator: error: {exc}", file=sys.stderr)
        return 2
    try:
        emulator.serve_forever()
    except OSError as exc:  # e.g. the port is taken
        print(f"oci-genai-batch emulator: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["Emulator", "EmulatorApp", "run_from_args"]
