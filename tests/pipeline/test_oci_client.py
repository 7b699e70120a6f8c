"""The ``--backend oci`` client and backend against a scripted HTTP server on loopback
(aiohttp, in a thread of its own): request bodies, serving modes, request ids, the error
classification table, response parsing, transport failures the server really causes
(stalls, resets, cut answers, a closed port), real RSA request signatures, config errors,
and that no key material ever reaches an error or a repr."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import CIMultiDict

from pipeline.config import JobConfig
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
from pipeline.genai.base import SummarySettings
from pipeline.genai.oci_backend import OciBackend, Utf8ByteCounter, build_prompt
from pipeline.genai.oci_client import OciGenAIClient, is_valid_request_id, load_embed_answer

COMPARTMENT = "ocid1.compartment.oc1..aaaatest"
USER = "ocid1.user.oc1..aaaatestuser"
TENANCY = "ocid1.tenancy.oc1..aaaatesttenancy"
PASS_PHRASE = "correct-horse-battery-staple"
DEDICATED = "ocid1.generativeaiendpoint.oc1.us-chicago-1.amaaaatest"

# --------------------------------------------------------------------------- keys, config


@dataclass
class Keys:
    private: rsa.RSAPrivateKey
    pem: bytes
    fingerprint: str


@pytest.fixture(scope="module")
def keys() -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASS_PHRASE.encode()),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fp = ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())
    return Keys(key, pem, fp)


def write_oci_config(tmp: Path, keys: Keys, **overrides: str | None) -> Path:
    """An OCI config file with a [DEFAULT] profile for ``keys`` (an encrypted key file);
    ``overrides`` replace or (with None) drop entries."""
    key_file = tmp / "key.pem"
    key_file.write_bytes(keys.pem)
    entries: dict[str, str | None] = {
        "user": USER,
        "tenancy": TENANCY,
        "region": "us-chicago-1",
        "fingerprint": keys.fingerprint,
        "key_file": str(key_file),
        "pass_phrase": PASS_PHRASE,
    }
    entries.update(overrides)
    lines = ["[DEFAULT]"] + [f"{k} = {v}" for k, v in entries.items() if v is not None]
    path = tmp / "config"
    path.write_text("\n".join(lines) + "\n")
    return path


def job(**kw: Any) -> JobConfig:
    values: dict[str, Any] = {
        "source": "in",
        "output": "out",
        "backend": "oci",
        "compartment": COMPARTMENT,
        "genai_endpoint": "https://genai.test",
    }
    values.update(kw)
    return JobConfig(**values)


# --------------------------------------------------------------------------- server


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    content: bytes

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]


@dataclass
class Reply:
    """An answer, or with ``fault`` none: ``stall`` (never answers), ``reset`` (TCP RST),
    ``cut`` (a 200 whose body stops short), ``garbage`` (not HTTP)."""

    status: int = 200
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None


@dataclass
class Script:
    """The server's behaviour: answers from ``respond(request, body)`` and records every
    request with its parsed JSON body."""

    respond: Callable[[Seen, dict[str, Any]], Reply]
    requests: list[Seen] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, request: Seen) -> Reply:
        body = orjson.loads(request.content)
        self.requests.append(request)
        self.bodies.append(body)
        return self.respond(request, body)


class Server:
    """An HTTP server on 127.0.0.1 (a free port) in a thread with its own event loop;
    each request goes to the current ``script``. Keeps every connection's transport, so a
    test can see which the client closed."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self.transports: list[asyncio.BaseTransport] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(ready),), daemon=True
        )
        self._thread.start()
        assert ready.wait(10)

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        handler = web.Server(self._handle)
        server = await self._loop.create_server(handler, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        await self._stop.wait()
        server.close()
        await handler.shutdown(1.0)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def open_connections(self) -> int:
        """Connections the client has not closed, after a moment for its FIN to arrive."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if all(t.is_closing() for t in self.transports):
                break
            time.sleep(0.01)
        return sum(1 for t in self.transports if not t.is_closing())

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None and self.script is not None
        if transport not in self.transports:
            self.transports.append(transport)
        seen = Seen(request.method, request.raw_path, CIMultiDict(request.headers), b"")
        seen.content = await request.read()
        reply = self.script(seen)
        if reply.fault == "stall":
            await self._stop.wait()
        elif reply.fault == "reset":  # SO_LINGER 0: close() sends RST, not FIN
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif reply.fault == "cut":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            transport.write(head + b'Content-Length: 1000\r\n\r\n{"embeddings": [[')
            transport.close()
        elif reply.fault == "garbage":
            transport.write(b"SPAM SPAM SPAM\r\n\r\n")
            transport.close()
        if reply.fault:
            raise asyncio.CancelledError()  # ends the request without writing an answer
        headers = {"content-type": "application/json", **reply.headers}
        return web.Response(status=reply.status, body=reply.content, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def answer(data: Any, status: int = 200, **headers: str) -> Reply:
    content = data if isinstance(data, bytes) else orjson.dumps(data)
    return Reply(status, content, headers)


def embed_ok(dim: int = 4) -> Callable[[Seen, dict[str, Any]], Reply]:
    def respond(request: Seen, body: dict[str, Any]) -> Reply:
        rows = [[float(i)] + [0.5] * (dim - 1) for i in range(len(body["inputs"]))]
        return answer(
            {"id": "x", "embeddings": rows, "modelVersion": "4.0", "usage": {"promptTokens": 7}}
        )

    return respond


def serve(server: Server, script: Script) -> str:
    """Make ``script`` the server's behaviour; the endpoint to reach it."""
    server.script = script
    return server.url


def backend_for(script: Script, keys: Keys, tmp: Path, server: Server, **kw: Any) -> OciBackend:
    endpoint = serve(server, script)
    config = job(oci_config=str(write_oci_config(tmp, keys)), genai_endpoint=endpoint, **kw)
    return OciBackend.from_config(config)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --------------------------------------------------------------------------- embeddings


def test_embed_body_vectors_and_request_id(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(embed_ok(dim=1536))
    backend = backend_for(script, keys, tmp_path, server)
    result = run(backend.embed(["first", "second", "third"]))

    (req,) = script.requests
    assert req.method == "POST"
    assert req.raw_path == "/20231130/actions/embedText"
    assert req.headers["host"] == server.host
    assert req.headers["content-type"] == "application/json"
    assert script.bodies[0] == {
        "inputs": ["first", "second", "third"],
        "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.embed-v4.0"},
        "compartmentId": COMPARTMENT,
        "truncate": "END",
        "inputType": "SEARCH_DOCUMENT",
        "isEcho": False,
    }
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (3, 1536)
    assert result.vectors[:, 0].tolist() == [0.0, 1.0, 2.0]  # input order kept
    assert result.model_id == "cohere.embed-v4.0"
    assert result.model_version == "4.0"
    assert result.input_tokens == 7
    assert result.truncated == [False, False, False]
    rid = req.headers["opc-request-id"]
    assert is_valid_request_id(rid) and result.request_id == rid


def test_dedicated_endpoint_and_output_dimensions(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(embed_ok(dim=256))
    backend = backend_for(
        script,
        keys,
        tmp_path,
        server,
        embed_model=DEDICATED,
        output_dimensions=256,
        truncate="NONE",
    )
    assert backend.dim == 256
    result = run(backend.embed(["a"]))
    body = script.bodies[0]
    assert body["servingMode"] == {"servingType": "DEDICATED", "endpointId": DEDICATED}
    assert body["outputDimensions"] == 256 and body["truncate"] == "NONE"
    assert result.vectors.shape == (1, 256)
    assert backend.fingerprint() == {
        "backend": "oci",
        "model_id": DEDICATED,
        "dim": 256,
        "input_type": "SEARCH_DOCUMENT",
        "truncate": "NONE",
        "serving": "DEDICATED",
    }


@pytest.mark.parametrize(
    ("model", "dim", "per_input", "per_call"),
    [
        ("cohere.embed-v4.0", 1536, 128_000, 128_000),
        ("cohere.embed-english-v3.0", 1024, 512, None),
        ("cohere.embed-multilingual-light-v3.0", 384, 512, None),
        (DEDICATED, 1024, 128_000, None),
    ],
)
def test_model_limits(
    model: str,
    dim: int,
    per_input: int,
    per_call: int | None,
    keys: Keys,
    tmp_path: Path,
    server: Server,
) -> None:
    backend = backend_for(Script(embed_ok()), keys, tmp_path, server, embed_model=model)
    assert (backend.dim, backend.max_input_tokens, backend.max_batch_tokens) == (
        dim,
        per_input,
        per_call,
    )
    assert backend.max_batch_inputs == 96


def test_truncation_is_estimated_from_bytes(keys: Keys, tmp_path: Path, server: Server) -> None:
    backend = backend_for(
        Script(embed_ok()), keys, tmp_path, server, embed_model="cohere.embed-english-v3.0"
    )
    long_text = "word " * 500  # 2,500 bytes > 4 x 512
    result = run(backend.embed(["short", long_text]))
    assert result.truncated == [False, True]


def test_embed_answers_are_read_into_one_array_as_orjson_would_read_them() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((96, 1024)).astype(np.float32)
    data = {
        "id": "x[1]",  # a bracket in a string is not a row
        "embeddings": vectors,
        "modelId": "cohere.embed-v4.0",
        "modelVersion": "4.0",
        "usage": {"promptTokens": 4000, "totalTokens": 4000},
        "other": [[1, 2], {"a": [None, True]}],
    }
    content = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    fast = load_embed_answer(content)
    plain = orjson.loads(content)
    assert isinstance(fast["embeddings"], np.ndarray)
    assert fast["embeddings"].dtype == np.float32 and fast["embeddings"].shape == (96, 1024)
    assert np.array_equal(fast["embeddings"], np.asarray(plain["embeddings"], np.float32))
    assert {k: v for k, v in fast.items() if k != "embeddings"} == {
        k: v for k, v in plain.items() if k != "embeddings"
    }
    # integers are numbers too
    assert load_embed_answer(b'{"embeddings": [[1, 2], [3, 4.5]]}')["embeddings"].tolist() == [
        [1.0, 2.0],
        [3.0, 4.5],
    ]


@pytest.mark.parametrize(
    "content",
    [
        b'{"embeddings": [[1.0, null]]}',
        b'{"embeddings": [[1.0, [2.0], 3.0]]}',
        b'{"embeddings": [[1.0, 2.0], [3.0]]}',
        b'{"embeddings": []}',
        b'{"embeddings": "none"}',
        b'{"id": "\\u005b", "embeddings": [[1.0]]}',  # an escaped bracket
        b"[[1.0, 2.0]]",
        b'{"embeddings": [[1.0, "2"]]}',  # numpy reads "2" as 2.0, as it always did
    ],
)
def test_other_embed_answers_are_read_by_orjson(content: bytes) -> None:
    got = load_embed_answer(content)
    want = orjson.loads(content)
    if isinstance(want, dict) and isinstance(got.get("embeddings"), np.ndarray):
        got = {**got, "embeddings": got["embeddings"].tolist()}
    assert got == want


@pytest.mark.parametrize("content", [b'{"embeddings": [[1.0, 2.0]', b'{"embeddings": [[1e400]]}'])
def test_an_embed_answer_orjson_refuses_is_a_json_error(content: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        load_embed_answer(content)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ({"embeddings": [[1.0, 2.0], [3.0]]}, "different lengths"),
        ({"embeddings": [[1.0, 2.0]]}, "1 embeddings for 2 inputs"),
        ({"embeddings": [[1.0, None], [1.0, 2.0]]}, "non-numeric"),
        # as many numbers as 2 x 3, but not as 2 rows of 3
        ({"embeddings": [[1.0, [2.0], 3.0], [1.0, 2.0, 3.0]]}, "non-numeric"),
        ({"embeddings": [[1.0], [2.0, 3.0, 4.0, 5.0, 6.0]]}, "1 embeddings|different lengths"),
        ({"embeddings": [[[1.0]], [[2.0]]]}, "non-numeric"),
        ({"embeddings": [[1e39, 2.0], [1.0, 2.0]]}, "infinite"),  # beyond float32
        ({"id": "no vectors"}, "no embeddings"),
    ],
)
def test_malformed_embeddings_are_bad_responses(
    data: dict[str, Any], what: str, keys: Keys, tmp_path: Path, server: Server
) -> None:
    backend = backend_for(Script(lambda r, b: answer(data)), keys, tmp_path, server)
    with pytest.raises(BadResponseError, match=what) as info:
        run(backend.embed(["a", "b"]))
    assert info.value.retryable and info.value.request_id


def test_a_text_that_cannot_be_json_is_a_bad_request_and_sends_nothing(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(embed_ok())
    backend = backend_for(script, keys, tmp_path, server)
    with pytest.raises(BadRequestError) as info:
        run(backend.embed(["ok", "lone \udc80 surrogate"]))
    assert not info.value.retryable and info.value.request_id
    assert script.requests == []


# --------------------------------------------------------------------------- summaries


def cohere_chat(request: Seen, body: dict[str, Any]) -> Reply:
    return answer(
        {
            "modelId": "cohere.command-a-03-2025",
            "modelVersion": "1.0",
            "chatResponse": {
                "apiFormat": "COHERE",
                "text": " The summary. ",
                "finishReason": "COMPLETE",
                "usage": {"promptTokens": 120, "completionTokens": 9, "totalTokens": 129},
            },
        }
    )


def generic_chat(request: Seen, body: dict[str, Any]) -> Reply:
    message = {"role": "ASSISTANT", "content": [{"type": "TEXT", "text": "- a\n- b"}]}
    return answer(
        {
            "modelId": "meta.llama-3.3-70b-instruct",
            "modelVersion": "3.3",
            "chatResponse": {
                "apiFormat": "GENERIC",
                "timeCreated": "2026-11-26T00:00:00Z",
                "choices": [{"index": 0, "message": message, "finishReason": "stop"}],
                "usage": {"promptTokens": 50, "completionTokens": 4},
            },
        }
    )


def test_chat_cohere_summary(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(cohere_chat)
    backend = backend_for(script, keys, tmp_path, server)
    settings = SummarySettings(length="MEDIUM", format="BULLETS", extractiveness="HIGH")
    result = run(backend.summarize("The document text.\nSecond line.", settings))

    req = script.requests[0]
    assert req.path == "/20231130/actions/chat"
    body = script.bodies[0]
    assert body["compartmentId"] == COMPARTMENT
    assert body["servingMode"] == {
        "servingType": "ON_DEMAND",
        "modelId": "cohere.command-a-03-2025",
    }
    chat = body["chatRequest"]
    assert chat["apiFormat"] == "COHERE"
    assert (chat["maxTokens"], chat["temperature"]) == (400, 0.2)
    instruction, document = chat["message"].split("\n---\n", 1)
    assert document == "The document text.\nSecond line."
    assert "3-5 sentences" in instruction and "bulleted list" in instruction
    assert "own sentences" in instruction
    assert result.summary == "The summary."
    assert (result.input_tokens, result.output_tokens) == (120, 9)
    assert (result.model_id, result.model_version) == ("cohere.command-a-03-2025", "1.0")
    assert result.request_id == req.headers["opc-request-id"]


def test_chat_generic_summary(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(generic_chat)
    backend = backend_for(
        script, keys, tmp_path, server, summary_model="meta.llama-3.3-70b-instruct"
    )
    result = run(backend.summarize("Doc.", SummarySettings(length="LONG")))
    chat = script.bodies[0]["chatRequest"]
    assert chat["apiFormat"] == "GENERIC"
    assert chat["maxTokens"] == 800
    (message,) = chat["messages"]
    assert message["role"] == "USER"
    assert message["content"][0]["type"] == "TEXT"
    assert message["content"][0]["text"].endswith("\n---\nDoc.")
    assert result.summary == "- a\n- b"
    assert (result.input_tokens, result.output_tokens) == (50, 4)


def test_chat_format_setting_overrides_the_model_guess(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(generic_chat)
    backend = backend_for(
        script, keys, tmp_path, server, summary_model=DEDICATED, chat_format="GENERIC"
    )
    run(backend.summarize("Doc.", SummarySettings()))
    body = script.bodies[0]
    assert body["servingMode"] == {"servingType": "DEDICATED", "endpointId": DEDICATED}
    assert body["chatRequest"]["apiFormat"] == "GENERIC"


@pytest.mark.parametrize("reason", ["ERROR_TOXIC", "ERROR"])
def test_refused_chat_is_permanent(reason: str, keys: Keys, tmp_path: Path, server: Server) -> None:
    data = {"modelVersion": "1", "chatResponse": {"text": "", "finishReason": reason}}
    backend = backend_for(Script(lambda r, b: answer(data)), keys, tmp_path, server)
    with pytest.raises(ServiceError, match=reason) as info:
        run(backend.summarize("Doc.", SummarySettings()))
    assert not info.value.retryable and info.value.code == reason


def test_summarize_text_api(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(lambda r, b: answer({"id": "s", "summary": "Short.", "modelVersion": "15.6"}))
    backend = backend_for(
        script, keys, tmp_path, server, summary_api="summarize_text", summary_model="cohere.command"
    )
    settings = SummarySettings("SHORT", "PARAGRAPH", "LOW", additional_command="focus on X")
    result = run(backend.summarize("Long text.", settings))
    assert script.requests[0].path == "/20231130/actions/summarizeText"
    assert script.bodies[0] == {
        "input": "Long text.",
        "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.command"},
        "compartmentId": COMPARTMENT,
        "length": "SHORT",
        "format": "PARAGRAPH",
        "extractiveness": "LOW",
        "temperature": 0.2,
        "additionalCommand": "focus on X",
    }
    assert (result.summary, result.model_version) == ("Short.", "15.6")


def test_prompt_wording() -> None:
    prompt = build_prompt("X", SummarySettings("SHORT", "PARAGRAPH", "LOW"))
    first, rest = prompt.split("\n", 1)
    assert "1-2 sentences" in first and "one paragraph" in first and "own words" in first
    assert rest == "---\nX"
    assert "concisely" in build_prompt("X", SummarySettings(length="AUTO", format="AUTO"))


# --------------------------------------------------------------------------- other actions


def test_generate_and_rerank(keys: Keys, tmp_path: Path, server: Server) -> None:
    def respond(request: Seen, body: dict[str, Any]) -> Reply:
        if request.path.endswith("/generateText"):
            runtime = body["inferenceRequest"]["runtimeType"]
            if runtime == "COHERE":
                inner = {"runtimeType": "COHERE", "generatedTexts": [{"text": "gen"}]}
            else:
                inner = {"runtimeType": "LLAMA", "choices": [{"index": 0, "text": "llama"}]}
            return answer({"modelVersion": "1", "inferenceResponse": inner})
        ranks = [
            {"index": 1, "relevanceScore": 0.9, "document": {"text": "b"}},
            {"index": 0, "relevanceScore": 0.1},
        ]
        return answer({"id": "r", "modelVersion": "3.5", "documentRanks": ranks})

    script = Script(respond)
    backend = backend_for(script, keys, tmp_path, server)
    gen = run(backend.generate("Say hi", 50))
    llama = run(backend.generate("Say hi", 20, model_id="meta.llama-2-70b-chat"))
    ranked = run(backend.rerank("query", ["a", "b"], 2, model_id="cohere.rerank-v3.5"))

    assert script.bodies[0] == {
        "compartmentId": COMPARTMENT,
        "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.command-a-03-2025"},
        "inferenceRequest": {
            "runtimeType": "COHERE",
            "prompt": "Say hi",
            "maxTokens": 50,
            "temperature": 0.2,
        },
    }
    assert script.bodies[1]["inferenceRequest"]["runtimeType"] == "LLAMA"
    assert script.requests[2].path == "/20231130/actions/rerankText"
    assert script.bodies[2] == {
        "input": "query",
        "documents": ["a", "b"],
        "compartmentId": COMPARTMENT,
        "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.rerank-v3.5"},
        "topN": 2,
    }
    assert (gen.text, llama.text) == ("gen", "llama")
    assert ranked.ranks == [(1, 0.9), (0, 0.1)]


# --------------------------------------------------------------------------- errors


def _error(code: str, message: str = "details") -> bytes:
    return orjson.dumps({"code": code, "message": message})


@pytest.mark.parametrize(
    ("status", "content", "headers", "cls", "retryable"),
    [
        (429, _error("TooManyRequests"), {"retry-after": "7"}, ThrottledError, True),
        (429, _error("TooManyRequests"), {}, ThrottledError, True),
        (500, _error("InternalServerError"), {}, ServerError, True),
        (502, b"<html>Bad Gateway</html>", {}, ServerError, True),
        (503, _error("ServiceUnavailable"), {}, ServerError, True),
        (504, b"", {}, ServerError, True),
        (501, _error("MethodNotImplemented"), {}, ServiceError, False),
        (409, _error("IncorrectState"), {}, ServerError, True),
        (409, _error("Conflict"), {}, ServiceError, False),
        (400, _error("InvalidParameter", "input 3 is too long"), {}, BadRequestError, False),
        (401, _error("NotAuthenticated"), {}, AuthError, False),
        (403, _error("NotAuthorized"), {}, AuthError, False),
        (404, _error("NotAuthorizedOrNotFound"), {}, ServiceError, False),
    ],
)
def test_status_classification(
    status: int,
    content: bytes,
    headers: dict[str, str],
    cls: type[GenAIError],
    retryable: bool,
    keys: Keys,
    tmp_path: Path,
    server: Server,
) -> None:
    script = Script(lambda r, b: answer(content, status, **headers))
    backend = backend_for(script, keys, tmp_path, server)
    with pytest.raises(GenAIError) as info:
        run(backend.embed(["a"]))
    err = info.value
    assert type(err) is cls and err.retryable is retryable
    assert err.status == status
    sent = script.requests[0].headers["opc-request-id"]
    assert err.request_id == sent and sent in str(err)
    assert f"status={status}" in str(err)
    body = orjson.loads(content) if content.startswith(b"{") else None
    if body:
        assert err.code == body["code"] and body["message"] in str(err)
    if status == 429:
        assert isinstance(err, ThrottledError)
        assert err.retry_after == (7.0 if headers else None)
    assert "authorization" not in str(err).lower() and "Signature" not in str(err)


def test_retry_after_as_http_date_and_long_messages_are_cut(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    later = formatdate(parsedate_to_datetime(formatdate(usegmt=True)).timestamp() + 30, usegmt=True)
    content = _error("TooManyRequests", "x" * 5000)
    script = Script(lambda r, b: answer(content, 429, **{"retry-after": later}))
    with pytest.raises(ThrottledError) as info:
        run(backend_for(script, keys, tmp_path, server).embed(["a"]))
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31
    assert len(str(info.value)) < 700


def test_the_service_request_id_is_kept_with_ours(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    def respond(request: Seen, body: dict[str, Any]) -> Reply:
        ours = request.headers["opc-request-id"]
        return answer(_error("InternalServerError"), 500, **{"opc-request-id": f"{ours}/SRV1"})

    script = Script(respond)
    with pytest.raises(ServerError) as info:
        run(backend_for(script, keys, tmp_path, server).embed(["a"]))
    assert info.value.request_id == script.requests[0].headers["opc-request-id"] + "/SRV1"


@pytest.mark.parametrize(
    ("content", "what"), [(b"{not json", "not valid JSON"), (b"[1, 2]", "a JSON list")]
)
def test_a_2xx_that_is_not_a_json_object(
    content: bytes, what: str, keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(lambda r, b: answer(content))
    with pytest.raises(BadResponseError, match=what) as info:
        run(backend_for(script, keys, tmp_path, server).embed(["a"]))
    assert info.value.retryable
    assert info.value.request_id == script.requests[0].headers["opc-request-id"]


def _closed_port() -> str:
    """An endpoint nothing listens on: a port bound, then let go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("fault", "names"),
    [
        ("stall", "SocketTimeoutError"),  # no answer within timeout_s
        ("reset", "ServerDisconnectedError|ClientOSError|ClientConnectionResetError"),
        ("cut", "ClientPayloadError"),  # a 200 whose body stops short
        ("garbage", "ClientResponseError|ServerDisconnectedError"),  # not HTTP
        ("refused", "ClientConnectorError"),  # nothing listens
    ],
)
def test_transport_failures(
    fault: str, names: str, keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(lambda r, b: Reply(fault=fault))
    endpoint = _closed_port() if fault == "refused" else serve(server, script)
    config = job(
        oci_config=str(write_oci_config(tmp_path, keys)), genai_endpoint=endpoint, timeout_s=0.5
    )
    backend = OciBackend.from_config(config)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        run(backend.embed(["a"]))
    assert time.monotonic() - started < 10
    err = info.value
    assert err.retryable and err.status is None
    sent = [r.headers["opc-request-id"] for r in script.requests]
    assert len(sent) == (0 if fault == "refused" else 1)
    assert is_valid_request_id(err.request_id or "") and err.request_id in str(err)
    assert sent == [] or err.request_id == sent[0]
    assert re.search(rf"embedText: ({names})\b.*\(request not answered\)", str(err)), str(err)
    assert err.__cause__ is None and err.__context__ is None  # holds no request


def test_a_proxy_from_the_environment_is_used(
    keys: Keys, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and NO_PROXY are honoured (as httpx honoured them): the loopback server
    stands in for the proxy and sees a request for the endpoint's host, signed for it. No
    name is resolved: only the proxy is connected to."""
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    script = Script(embed_ok())
    serve(server, script)
    oci_config = str(write_oci_config(tmp_path, keys))
    config = job(oci_config=oci_config, genai_endpoint="http://genai.test")
    run(OciBackend.from_config(config).embed(["via the proxy"]))
    (req,) = script.requests
    assert req.headers["host"] == "genai.test"
    _verify_signature(req, keys.private.public_key(), target="/20231130/actions/embedText")
    # an endpoint NO_PROXY names is reached directly (here: a closed port, refused)
    closed = _closed_port()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = job(oci_config=oci_config, genai_endpoint=closed)
    with pytest.raises(TransportError, match="ClientConnectorError"):
        run(OciBackend.from_config(direct).embed(["direct"]))
    monkeypatch.delenv("NO_PROXY")
    run(OciBackend.from_config(direct).embed(["proxied again"]))  # the proxy answers it
    assert len(script.requests) == 2


def test_request_ids_are_unique_and_valid(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(embed_ok())
    backend = backend_for(script, keys, tmp_path, server)

    async def many() -> None:
        await asyncio.gather(*(backend.embed([f"t{i}"]) for i in range(20)))
        await backend.aclose()

    run(many())
    ids = [r.headers["opc-request-id"] for r in script.requests]
    assert len(set(ids)) == 20
    assert all(is_valid_request_id(i) for i in ids)
    assert not is_valid_request_id("a/b/c/d") and not is_valid_request_id("x" * 33)
    assert not is_valid_request_id("has space")


def test_each_event_loop_closes_its_own_pool(keys: Keys, tmp_path: Path, server: Server) -> None:
    """``run_shard(spec, config, backend=...)`` is one ``asyncio.run`` per call, so a caller
    that passes one backend to several calls uses it from several event loops: each loop
    gets its own connection pool, closed when that loop ends, before the next one opens."""
    script = Script(embed_ok())
    backend = backend_for(script, keys, tmp_path, server)
    before = len(server.transports)
    for n in (1, 2, 3):
        assert run(backend.embed(["a"])).vectors.shape == (1, 4)
        assert len(server.transports) - before == n  # a new connection for each loop
        assert server.open_connections() == 0  # this loop's pool went with it
    run(backend.aclose())  # a loop that never used it: nothing left to close
    assert len(server.transports) - before == 3 and len(script.requests) == 3

    async def used_then_closed() -> None:
        await backend.embed(["b"])
        await backend.aclose()  # closes the pool at once, not at the loop's end
        assert server.open_connections() == 0

    run(used_then_closed())
    assert len(server.transports) - before == 4 and len(script.requests) == 4


# --------------------------------------------------------------------------- signing


def _verify_signature(
    request: Seen, public_key: rsa.RSAPublicKey, target: str | None = None
) -> dict[str, str]:
    """The signature's parameters, once it is checked against ``request`` (whose
    request-target is ``target`` when a proxy saw the absolute URL)."""
    auth = request.headers["authorization"]
    assert auth.startswith("Signature ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', auth))
    lines = []
    for name in params["headers"].split(" "):
        if name == "(request-target)":
            path = target or request.raw_path
            lines.append(f"(request-target): {request.method.lower()} {path}")
        else:
            lines.append(f"{name}: {request.headers[name]}")
    public_key.verify(
        base64.b64decode(params["signature"]),
        "\n".join(lines).encode("ascii"),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return params


def test_requests_carry_a_valid_oci_signature(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(embed_ok())
    run(backend_for(script, keys, tmp_path, server).embed(["signed body"]))
    req = script.requests[0]
    params = _verify_signature(req, keys.private.public_key())
    assert params["keyId"] == f"{TENANCY}/{USER}/{keys.fingerprint}"
    assert params["algorithm"] == "rsa-sha256" and params["version"] == "1"
    assert params["headers"] == (
        "date (request-target) host content-length content-type x-content-sha256"
    )
    digest = base64.b64encode(hashlib.sha256(req.content).digest()).decode()
    assert req.headers["x-content-sha256"] == digest
    assert req.headers["content-length"] == str(len(req.content))
    assert req.headers["host"] == server.host
    assert req.headers["date"].endswith("GMT")


def test_security_token_profile_signs_with_the_token(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("session-token-1\n")
    config = write_oci_config(tmp_path, keys, user=None, security_token_file=str(token_file))
    script = Script(embed_ok())
    backend = OciBackend.from_config(
        job(oci_config=str(config), auth="security_token", genai_endpoint=serve(server, script))
    )
    run(backend.embed(["a"]))
    params = _verify_signature(script.requests[0], keys.private.public_key())
    assert params["keyId"] == "ST$session-token-1"


class TokenRefreshingSigner:
    """Stands in for a principal signer (not an API-key type, so it signs in a worker
    thread): delegates to a real signer, or fails like a token refresh that could not
    reach the auth service."""

    def __init__(self, inner: Any, fail: bool = False) -> None:
        self.inner, self.fail = inner, fail
        self.threads: set[int] = set()

    def __call__(self, request: Any) -> Any:
        import threading

        self.threads.add(threading.get_ident())
        if self.fail:
            raise ConnectionError("auth service unreachable")
        return self.inner(request)


def test_principal_signers_sign_off_the_event_loop(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    import threading

    from pipeline.genai.oci_auth import load_signer

    config = job(oci_config=str(write_oci_config(tmp_path, keys)))
    signer = TokenRefreshingSigner(load_signer(config)[0])
    script = Script(embed_ok())
    config = job(oci_config=config.oci_config, genai_endpoint=serve(server, script))
    run(OciBackend.from_config(config, signer=signer).embed(["a"]))
    _verify_signature(script.requests[0], keys.private.public_key())
    assert signer.threads and threading.get_ident() not in signer.threads


def test_a_failed_signing_is_a_retryable_transport_error(
    keys: Keys, tmp_path: Path, server: Server
) -> None:
    script = Script(embed_ok())
    backend = OciBackend.from_config(
        job(genai_endpoint=serve(server, script)), signer=TokenRefreshingSigner(None, fail=True)
    )
    with pytest.raises(TransportError, match="signing the request failed") as info:
        run(backend.embed(["a"]))
    assert info.value.retryable and info.value.request_id
    assert script.requests == []


# --------------------------------------------------------------------------- config errors


def test_compartment_is_required_before_anything_is_read(tmp_path: Path) -> None:
    config = job(compartment=None, oci_config=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"compartment: required for --backend oci"):
        OciBackend.from_config(config)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config"
    with pytest.raises(ConfigError, match="no OCI config file") as info:
        OciBackend.from_config(job(oci_config=str(missing)))
    assert str(missing) in str(info.value)


def test_missing_profile_is_named_with_the_known_ones(keys: Keys, tmp_path: Path) -> None:
    config = write_oci_config(tmp_path, keys)
    with pytest.raises(ConfigError) as info:
        OciBackend.from_config(job(oci_config=str(config), oci_profile="PROD"))
    text = str(info.value)
    assert "'PROD'" in text and str(config) in text and "DEFAULT" in text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"key_file": "/no/such/key.pem"}, "/no/such/key.pem does not exist"),
        ({"user": None}, "lacks user"),
        ({"fingerprint": "not-a-fingerprint"}, "malformed fingerprint"),
        ({"pass_phrase": None}, "encrypted and the profile has no pass_phrase"),
        ({"pass_phrase": "wrong-phrase"}, "pass_phrase is wrong"),
    ],
)
def test_bad_profiles_are_config_errors_without_secrets(
    overrides: dict[str, str | None], expected: str, keys: Keys, tmp_path: Path
) -> None:
    config = write_oci_config(tmp_path, keys, **overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        OciBackend.from_config(job(oci_config=str(config)))
    _assert_no_secrets(str(info.value), repr(info.value), keys)


def test_a_principal_mode_outside_oci_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_VERSION", raising=False)
    with pytest.raises(ConfigError, match="resource_principal"):
        OciBackend.from_config(job(auth="resource_principal"))


def test_region_comes_from_the_profile_or_the_job(keys: Keys, tmp_path: Path) -> None:
    config = str(write_oci_config(tmp_path, keys))
    backend = OciBackend.from_config(job(oci_config=config, genai_endpoint=None))
    assert backend.client.base_url == (
        "https://inference.generativeai.us-chicago-1.oci.oraclecloud.com/20231130"
    )
    other = OciBackend.from_config(
        job(oci_config=config, genai_endpoint=None, region="eu-frankfurt-1")
    )
    assert "eu-frankfurt-1" in other.client.base_url
    given = OciBackend.from_config(job(oci_config=config, genai_endpoint="http://h:1/20231130/"))
    assert given.client.base_url == "http://h:1/20231130"
    no_region = str(write_oci_config(tmp_path, keys, region=None))
    with pytest.raises(ConfigError, match="region"):
        OciBackend.from_config(job(oci_config=no_region, genai_endpoint=None))


def _assert_no_secrets(text: str, other: str, keys: Keys) -> None:
    body = b"".join(keys.pem.splitlines()[1:-1]).decode()
    for chunk in (PASS_PHRASE, body[:40], body[-40:], "PRIVATE KEY"):
        assert chunk not in text and chunk not in other


def test_no_key_material_in_reprs_or_errors(keys: Keys, tmp_path: Path, server: Server) -> None:
    script = Script(lambda r, b: answer(_error("NotAuthenticated", "bad signature"), 401))
    backend = backend_for(script, keys, tmp_path, server)
    with pytest.raises(AuthError) as info:
        run(backend.embed(["a"]))
    texts = [str(info.value), repr(info.value), repr(backend), repr(backend.client)]
    texts.append(repr(backend.client._auth))
    for text in texts:
        _assert_no_secrets(text, "", keys)
        assert keys.fingerprint not in text


# --------------------------------------------------------------------------- token counter


def test_utf8_byte_counter() -> None:
    counter = Utf8ByteCounter()
    assert counter.spans("ab") == [(0, 1), (1, 2)]
    # é is 2 bytes, € 3, 😀 4: one span per byte, all covering the character
    assert counter.spans("é€😀") == [(0, 1)] * 2 + [(1, 2)] * 3 + [(2, 3)] * 4
    for text in ("plain", "naïve café €5 😀", "lone \udc80"):
        assert len(counter.spans(text)) == len(text.encode("utf-8", "surrogatepass"))
        assert counter.count(text) == len(counter.spans(text))


def test_utf8_byte_counter_extent_is_what_its_spans_give() -> None:
    from pipeline.chunking import _extent

    class SpansOnly:  # the same counter without its extent shortcut
        name, special_tokens = "utf8-bytes", 0
        spans = staticmethod(Utf8ByteCounter().spans)

    for text in ("a", "  padded  ", "naïve café €5 😀", "x" * 31, "é" * 40, "word " * 100, ""):
        assert Utf8ByteCounter().extent(text) == _extent(SpansOnly(), text)


def test_utf8_byte_counter_is_fast_on_big_texts() -> None:
    import time

    text = ("Ünïcödé prose, with accents: déjà vu. " * 55_000)[:2_000_000]
    started = time.process_time()
    spans = Utf8ByteCounter().spans(text)
    assert time.process_time() - started < 1.0
    assert len(spans) == len(text.encode())


def test_client_rejects_a_non_http_endpoint() -> None:
    with pytest.raises(ConfigError, match="genai_endpoint"):
        OciGenAIClient("ftp://example.com")


def test_security_token_profile_opens_object_storage(keys: Keys, tmp_path: Path) -> None:
    """oci:// with auth=security_token: the session signer is one the SDK's clients take
    without an API-key profile (ocifs builds an ObjectStorageClient from it), and it signs
    streamed uploads (``without_content_headers``) with the token too."""
    import requests

    from pipeline.storage import StorageSettings, resolve

    token_file = tmp_path / "token"
    token_file.write_text("session-token-2\n")
    config = write_oci_config(tmp_path, keys, user=None, security_token_file=str(token_file))
    settings = StorageSettings(
        auth="security_token", oci_config=str(config), os_endpoint="http://127.0.0.1:9"
    )
    where = resolve("oci://bkt@ns/prefix", settings)
    assert where.is_oci and where.path == "bkt@ns/prefix"
    client = where.fs.handler.fs.oci_client  # type: ignore[attr-defined]
    assert client.base_client.endpoint.startswith("http://127.0.0.1:9")
    put = requests.Request("PUT", "http://127.0.0.1:9/n/ns/b/bkt/o/x", data=b"abc").prepare()
    client.base_client.signer.without_content_headers(put)
    assert 'keyId="ST$session-token-2"' in put.headers["authorization"]
    assert "x-content-sha256" not in put.headers["authorization"]
