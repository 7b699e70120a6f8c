"""The OCI Generative AI emulator, driven by the real ``oci`` SDK (sync and async) and by
httpx: response shapes the SDK deserializes, signature checks, rate limits, faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import httpx
import numpy as np
import oci
import orjson
import pytest
from oci.generative_ai_inference import models as m

from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.genai.emulator.auth import SignatureVerifier, key_fingerprint
from pipeline.genai.emulator.devconfig import COMPARTMENT, TENANCY, USER
from tests.conftest import CLI
from tests.oci_fixtures import (
    async_sdk_client,
    make_oci_config,
    running_emulator,
    sdk_client,
    wrong_key_config,
)

EMBED_V4 = m.OnDemandServingMode(model_id="cohere.embed-v4.0")
EMBED_V4_WIRE = {"servingType": "ON_DEMAND", "modelId": "cohere.embed-v4.0"}
DUMMY_AUTH = {"authorization": 'Signature keyId="x",signature="x",headers="date"'}


_DEFAULTS = EmulatorConfig(embedder="hash").as_dict()


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, str]]:
    """One signature-verifying hash emulator shared by the module (and its config path);
    the ``emu`` fixture restores its defaults and zeroes its stats around each test."""
    with running_emulator(tmp_path_factory.mktemp("oci")) as pair:
        yield pair


@pytest.fixture
def emu(emu_dir: tuple[Emulator, str]) -> Iterator[Emulator]:
    emulator = emu_dir[0]
    emulator.reset()
    yield emulator
    emulator.configure(**_DEFAULTS)
    emulator.reset()


@pytest.fixture
def client(emu: Emulator, emu_dir: tuple[Emulator, str]) -> Any:
    return sdk_client(emu_dir[1], emu.url)


def _embed(
    client: Any, texts: list[str], mode: Any = EMBED_V4, request_id: str | None = None, **kw: Any
) -> Any:
    details = m.EmbedTextDetails(inputs=texts, compartment_id=COMPARTMENT, serving_mode=mode, **kw)
    if request_id:
        return client.embed_text(details, opc_request_id=request_id)
    return client.embed_text(details)


def _service_error(fn: Any, *args: Any, **kw: Any) -> oci.exceptions.ServiceError:
    with pytest.raises(oci.exceptions.ServiceError) as info:
        fn(*args, **kw)
    return info.value


# ----------------------------------------------------------------- the five actions


def test_embed_on_demand_and_dedicated(client: Any, emu: Emulator) -> None:
    r = _embed(client, ["alpha", "beta", "gamma"], request_id="MYJOB-batch0001")
    assert r.status == 200 and r.request_id == "MYJOB-batch0001"
    assert isinstance(r.data, m.EmbedTextResult)
    assert len(r.data.embeddings) == 3 and {len(v) for v in r.data.embeddings} == {1536}
    assert r.data.model_id == "cohere.embed-v4.0" and r.data.id
    assert r.data.usage.prompt_tokens == 5  # ceil(5/4) + ceil(4/4) + ceil(5/4)
    assert abs(np.linalg.norm(r.data.embeddings[0]) - 1) < 1e-5
    # model defaults and Matryoshka sizes
    dims = {
        "cohere.embed-english-v3.0": 1024,
        "cohere.embed-english-light-v3.0": 384,
        "someone.else": 1536,
    }
    for model, dim in dims.items():
        r = _embed(client, ["x"], m.OnDemandServingMode(model_id=model))
        assert len(r.data.embeddings[0]) == dim, model
    r = _embed(client, ["x", "y"], output_dimensions=256)
    assert len(r.data.embeddings[1]) == 256
    r = _embed(client, ["x"], m.DedicatedServingMode(endpoint_id="ocid1.generativeaiendpoint.x"))
    assert len(r.data.embeddings) == 1 and len(r.request_id) == 32
    r = _embed(client, ["x"], embedding_types=["float", "int8"])
    assert len(r.data.embeddings_by_type["int8"][0]) == 1536
    assert emu.stats()["actions"]["embedText"] == 7
    assert emu.stats()["inputs_embedded"] == 10


def test_chat_cohere_and_generic(client: Any) -> None:
    text = "Summarize in 2 sentences.\n---\nCats sleep a lot. Dogs bark. Birds sing."
    r = client.chat(
        m.ChatDetails(
            compartment_id=COMPARTMENT,
            serving_mode=m.DedicatedServingMode(endpoint_id="ocid1.generativeaiendpoint.x"),
            chat_request=m.CohereChatRequest(message=text, max_tokens=200),
        )
    )
    resp = r.data.chat_response
    assert isinstance(resp, m.CohereChatResponse) and resp.finish_reason == "COMPLETE"
    assert resp.text.startswith("Cats sleep a lot.") and "Summarize" not in resp.text
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert r.data.model_id and r.data.model_version
    r = client.chat(
        m.ChatDetails(
            compartment_id=COMPARTMENT,
            serving_mode=m.OnDemandServingMode(model_id="meta.llama-3.3-70b-instruct"),
            chat_request=m.GenericChatRequest(
                messages=[
                    m.SystemMessage(content=[m.TextContent(text="Be brief.")]),
                    m.UserMessage(content=[m.TextContent(text=text)]),
                ],
                temperature=0.2,
            ),
        )
    )
    resp = r.data.chat_response
    assert isinstance(resp, m.GenericChatResponse) and resp.time_created is not None
    (choice,) = resp.choices
    assert choice.finish_reason == "stop" and choice.message.role == "ASSISTANT"
    assert choice.message.content[0].text.startswith("Cats sleep a lot.")
    assert r.data.model_id == "meta.llama-3.3-70b-instruct"


def test_summarize_generate_rerank(client: Any) -> None:
    od = m.OnDemandServingMode(model_id="cohere.command")
    r = client.summarize_text(
        m.SummarizeTextDetails(
            input="First point here. Second point. Third.",
            compartment_id=COMPARTMENT,
            serving_mode=od,
            length="SHORT",
            format="PARAGRAPH",
        )
    )
    assert isinstance(r.data, m.SummarizeTextResult) and r.data.summary and r.data.id
    r = client.generate_text(
        m.GenerateTextDetails(
            compartment_id=COMPARTMENT,
            serving_mode=od,
            inference_request=m.CohereLlmInferenceRequest(
                prompt="Tell me. More.", num_generations=2
            ),
        )
    )
    inference = r.data.inference_response
    assert isinstance(inference, m.CohereLlmInferenceResponse)
    assert len(inference.generated_texts) == 2 and inference.generated_texts[0].text
    docs = ["apples", "the query", "bananas", "cherries"]
    r = client.rerank_text(
        m.RerankTextDetails(
            input="the query",
            documents=docs,
            top_n=2,
            compartment_id=COMPARTMENT,
            serving_mode=m.OnDemandServingMode(model_id="cohere.rerank-v3.5"),
        )
    )
    ranks = r.data.document_ranks
    assert len(ranks) == 2 and ranks[0].index == 1 and ranks[0].document.text == "the query"
    assert ranks[0].relevance_score >= ranks[1].relevance_score


def test_async_client_embed_chat_and_50_concurrent(emu: Emulator, emu_dir: Any) -> None:
    async def main() -> None:
        async with async_sdk_client(emu_dir[1], emu.url) as client:
            r = await client.embed_text(
                m.EmbedTextDetails(
                    inputs=["a", "b"], compartment_id=COMPARTMENT, serving_mode=EMBED_V4
                )
            )
            assert len(r.data.embeddings) == 2
            r = await client.chat(
                m.ChatDetails(
                    compartment_id=COMPARTMENT,
                    serving_mode=m.OnDemandServingMode(model_id="cohere.command-r-08-2024"),
                    chat_request=m.CohereChatRequest(message="Hello there. General Kenobi."),
                )
            )
            assert r.data.chat_response.text
            calls = [
                client.embed_text(
                    m.EmbedTextDetails(
                        inputs=[f"doc {i} {j}" for j in range(8)],
                        compartment_id=COMPARTMENT,
                        serving_mode=EMBED_V4,
                    )
                )
                for i in range(50)
            ]
            results = await asyncio.gather(*calls)
            assert all(len(x.data.embeddings) == 8 for x in results)

    asyncio.run(main())
    assert emu.stats()["actions"]["embedText"] == 51


# ----------------------------------------------------------------- errors and limits


def test_bad_requests(client: Any, emu: Emulator) -> None:
    err = _service_error(_embed, client, [f"t{i}" for i in range(97)])
    assert (err.status, err.code) == (400, "InvalidParameter") and "97" in err.message
    err = _service_error(_embed, client, [])
    assert (err.status, err.code) == (400, "InvalidParameter")
    long = "word " * 600  # 3000 bytes: 750 estimated tokens
    err = _service_error(_embed, client, ["ok", long])
    assert err.code == "InvalidParameter" and "index 1" in err.message
    assert len(_embed(client, ["ok", long], truncate="END").data.embeddings) == 2
    err = _service_error(_embed, client, ["x"], output_dimensions=300)
    assert err.code == "InvalidParameter" and "outputDimensions" in err.message
    emu.configure(reject_substring="POISON")
    err = _service_error(_embed, client, ["fine", "also fine", "a POISON pill"])
    assert (err.status, err.code) == (400, "InvalidParameter") and "index 2" in err.message
    assert err.request_id
    assert emu.stats()["statuses"]["400"] == 5


def test_malformed_and_incomplete_bodies(emu: Emulator) -> None:
    # unsigned bodies are refused before they are parsed, so use an unverified emulator
    with Emulator(EmulatorConfig(embedder="hash")) as open_emu:
        base = open_emu.url + "/20231130/actions/"
        ok = {
            "inputs": ["a"],
            "compartmentId": "c",
            "servingMode": {"servingType": "ON_DEMAND", "modelId": "m"},
        }
        cases: list[tuple[str, bytes | dict[str, Any], int, str]] = [
            ("embedText", b"{not json", 400, "CannotParseRequest"),
            (
                "embedText",
                {k: v for k, v in ok.items() if k != "compartmentId"},
                400,
                "MissingParameter",
            ),
            (
                "embedText",
                {k: v for k, v in ok.items() if k != "servingMode"},
                400,
                "MissingParameter",
            ),
            ("embedText", {**ok, "servingMode": {"servingType": "SPOT"}}, 400, "InvalidParameter"),
            ("chat", {**ok, "chatRequest": {"apiFormat": "NOPE"}}, 400, "InvalidParameter"),
            ("fooText", ok, 404, "NotFound"),
        ]
        with httpx.Client(headers=DUMMY_AUTH) as http:
            for action, body, status, code in cases:
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                r = http.post(base + action, content=data, headers={"opc-request-id": "abc"})
                assert (r.status_code, r.json()["code"]) == (status, code), (action, body)
                assert r.headers["opc-request-id"] == "abc"
                assert r.headers["content-type"].startswith("application/json")
            r = http.get(open_emu.url + "/nowhere")
            assert r.status_code == 404 and r.json()["code"] == "NotFound"
            assert re.fullmatch(r"[0-9A-F]{32}", r.headers["opc-request-id"])
            r = httpx.post(base + "embedText", json=ok)  # no authorization header at all
            assert r.status_code == 401 and r.json()["code"] == "NotAuthenticated"
        assert open_emu.stats()["unauthenticated"] == 1


def test_rate_limit_rpm_and_tpm(client: Any, emu: Emulator) -> None:
    emu.configure(rpm=5, burst_s=60)  # a bucket of 5 requests
    for _ in range(5):
        _embed(client, ["x"])
    err = _service_error(_embed, client, ["x"])
    assert (err.status, err.code) == (429, "TooManyRequests")
    stats = emu.stats()
    assert stats["throttled"] == 1 and stats["actions"]["embedText"] == 5
    assert stats["statuses"] == {"200": 5, "429": 1}
    emu.configure(rpm=0, tpm=10, burst_s=60, retry_after=7)
    emu.reset()
    _embed(client, ["x" * 32])  # 8 tokens
    err = _service_error(_embed, client, ["x" * 12])  # 3 more: over 10
    assert err.status == 429 and err.headers["retry-after"] == "7"
    _embed(client, ["x" * 8])  # 2 more fit exactly


def test_signatures(emu: Emulator, emu_dir: Any, tmp_path: Any) -> None:
    url, config_path = emu.url, emu_dir[1]
    wrong_path, _ = wrong_key_config(os.path.dirname(config_path))
    assert _identity(wrong_path) == _identity(config_path)
    nested, _ = wrong_key_config(os.path.join(os.path.dirname(config_path), "nested"))
    assert _identity(nested) == _identity(config_path)
    err = _service_error(_embed, sdk_client(wrong_path, url), ["x"])
    assert (err.status, err.code) == (401, "NotAuthenticated")
    assert "signature" in err.message and "BEGIN" not in err.message
    other, _ = make_oci_config(tmp_path)  # a different user key altogether
    err = _service_error(_embed, sdk_client(other, url), ["x"])
    assert err.status == 401 and "keyId" in err.message
    # a correctly signed request whose body or date was changed
    target = url + "/20231130/actions/embedText"
    body = orjson.dumps(
        {
            "inputs": ["a"],
            "compartmentId": "c",
            "servingMode": {"servingType": "ON_DEMAND", "modelId": "m"},
        }
    )
    good = _signed(config_path, target, body)
    assert httpx.post(target, content=body, headers=good).status_code == 200
    r = httpx.post(target, content=body.replace(b'"a"', b'"b"'), headers=good)
    assert r.status_code == 401 and "x-content-sha256" in r.json()["message"]
    stale = _signed(config_path, target, body, date=formatdate(time.time() - 600, usegmt=True))
    r = httpx.post(target, content=body, headers=stale)
    assert r.status_code == 401 and "date" in r.json()["message"]
    forged = dict(good, **{"x-content-sha256": _sha(body.replace(b'"a"', b'"b"'))})
    r = httpx.post(target, content=body.replace(b'"a"', b'"b"'), headers=forged)
    assert r.status_code == 401 and "does not verify" in r.json()["message"]
    r = httpx.post(target, content=body)
    assert r.status_code == 401
    assert emu.stats()["unauthenticated"] == 6


def _identity(config_path: str) -> tuple[str, str, str]:
    cfg = oci.config.from_file(config_path)
    return cfg["tenancy"], cfg["user"], cfg["fingerprint"]


def _sha(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def _signed(config_path: str, url: str, body: bytes, date: str | None = None) -> dict[str, str]:
    """Headers of ``body`` POSTed to ``url`` as the SDK's own signer signs them."""
    from oci._vendor import requests

    cfg = oci.config.from_file(config_path)
    signer = oci.signer.Signer(cfg["tenancy"], cfg["user"], cfg["fingerprint"], cfg["key_file"])
    headers = {"content-type": "application/json"}
    if date:
        headers["date"] = date
    prepared = requests.Request("POST", url, data=body, headers=headers).prepare()
    signer(prepared)
    return {k: v for k, v in prepared.headers.items() if k.lower() != "host"}


def test_verifier_reads_the_profile(tmp_path: Any) -> None:
    path, key_path = make_oci_config(tmp_path, profile="OTHER")
    verifier = SignatureVerifier(path, "OTHER")
    tenancy, user, fp = verifier.key_id.split("/")
    assert (tenancy, user) == (TENANCY, USER)
    from cryptography.hazmat.primitives import serialization

    with open(key_path, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), None)
    assert fp == key_fingerprint(key.public_key())  # type: ignore[arg-type]
    assert re.fullmatch(r"([0-9a-f]{2}:){15}[0-9a-f]{2}", fp)


# ----------------------------------------------------------------- faults


def test_faults_seen_by_the_sdk(emu: Emulator, emu_dir: Any) -> None:
    client = sdk_client(emu_dir[1], emu.url)
    emu.configure(fault_rate=1.0)
    seen = {_service_error(_embed, client, ["x"]).status for _ in range(12)}
    assert seen == {500, 503}
    emu.configure(fault_rate=0.0, wrong_count_rate=1.0)
    assert len(_embed(client, ["a", "b", "c"]).data.embeddings) == 2
    emu.configure(wrong_count_rate=0.0, wrong_dim_rate=1.0)
    assert {len(v) for v in _embed(client, ["a", "b"]).data.embeddings} == {1535}
    emu.configure(wrong_dim_rate=0.0, malformed_rate=1.0)
    # the body is cut mid-value: a 200 that is not JSON ...
    target = emu.url + "/20231130/actions/embedText"
    body = orjson.dumps(
        {"inputs": ["a"], "compartmentId": COMPARTMENT, "servingMode": EMBED_V4_WIRE}
    )
    raw = httpx.post(target, content=body, headers=_signed(emu_dir[1], target, body))
    assert raw.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw.content)
    # ... which the SDK (the locked 2.189) fails to deserialize: it never returns a result
    with pytest.raises(TypeError, match="string indices"):
        _embed(client, ["a", "b"])
    emu.configure(malformed_rate=0.0, reset_rate=1.0)
    with pytest.raises(oci.exceptions.RequestException, match=r"reset|aborted"):
        _embed(client, ["a"])
    emu.configure(reset_rate=0.0, timeout_rate=1.0, timeout_s=3.0)
    started = time.monotonic()
    with pytest.raises(oci.exceptions.RequestException, match=r"(?i)timed? ?out"):
        _embed(sdk_client(emu_dir[1], emu.url, timeout=(2, 0.5)), ["a"])
    assert time.monotonic() - started < 2.5
    faults = emu.stats()["faults"]
    assert faults == {
        "fault": 12,
        "wrong_count": 1,
        "wrong_dim": 1,
        "malformed": 2,
        "reset": 1,
        "timeout": 1,
    }
    assert emu.stats()["inputs_embedded"] == 0  # no clean embed answer was given


def test_fault_rates_are_seeded_and_latency_added(emu: Emulator, client: Any) -> None:
    def outcomes() -> list[int]:
        emu.reset()  # re-seeds
        codes = []
        for _ in range(20):
            try:
                codes.append(_embed(client, ["x"]).status)
            except oci.exceptions.ServiceError as exc:
                codes.append(exc.status)
        return codes

    emu.configure(fault_rate=0.3, seed=7)
    first = outcomes()
    assert first == outcomes() and 0 < first.count(200) < 20
    emu.configure(fault_rate=0.0, latency_ms=60)
    started = time.monotonic()
    for _ in range(5):
        _embed(client, ["x"])
    assert (time.monotonic() - started) / 5 > 0.02
    assert emu.configure(latency_ms=None, rpm=None).latency_ms == 0  # None: the default
    with pytest.raises(ValueError, match="add up"):
        emu.configure(fault_rate=0.6, reset_rate=0.6)


# ----------------------------------------------------------------- control, load, CLI


def test_control_endpoints(emu: Emulator) -> None:
    with httpx.Client(base_url=emu.url) as http:
        cfg = http.post("/_emulator/config", json={"rpm": 100, "latency_ms": 1}).json()
        assert cfg["rpm"] == 100 and emu.config.rpm == 100
        r = http.post("/_emulator/config", json={"rpmm": 1})
        assert r.status_code == 400 and "rpmm" in r.json()["message"]
        http.post("/20231130/actions/embedText", json={}, headers=DUMMY_AUTH)  # 401: signed API
        stats = http.get("/_emulator/stats").json()
        assert stats["requests"] == 1 and stats["unauthenticated"] == 1
        assert {"throttled", "actions", "statuses", "faults", "inputs_embedded"} <= set(stats)
        assert http.post("/_emulator/reset").json()["requests"] == 0


def test_300_concurrent_httpx_requests() -> None:
    # 300 connections at once: the listen backlog and the event loop must keep up. (Most
    # of this test's ~7 s is httpcore's pool, which rescans every connection for every
    # request: O(n^2) at 300 connections; aiohttp's client does the same in 0.6 s.)
    body = {
        "inputs": [f"text {i}" for i in range(16)],
        "compartmentId": "c",
        "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.embed-v4.0"},
        "outputDimensions": 256,
    }

    async def main(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            calls = [
                http.post("/20231130/actions/embedText", json=body, headers=DUMMY_AUTH)
                for _ in range(300)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    with Emulator(EmulatorConfig(embedder="hash", latency_ms=20)) as emu:
        assert asyncio.run(main(emu.url)) == [200] * 300
        assert emu.stats()["inputs_embedded"] == 300 * 16


def test_local_embedder_is_semantic(tmp_path: Any) -> None:
    with running_emulator(tmp_path, embedder="local") as (emu, config_path):
        client = sdk_client(config_path, emu.url)
        texts = ["The cat sat on the mat.", "A kitten rests on a rug.", "Quarterly revenue grew."]
        full = np.array(_embed(client, texts).data.embeddings)  # 1536: zero-padded 384
        assert full.shape == (3, 1536) and not full[:, 384:].any()
        sims = full @ full.T
        assert sims[0, 1] > sims[0, 2] + 0.2
        light = np.array(
            _embed(
                client, texts, m.OnDemandServingMode(model_id="cohere.embed-english-light-v3.0")
            ).data.embeddings
        )
        assert np.allclose(light @ light.T, sims, atol=1e-5)  # padding keeps the cosines
        r = client.summarize_text(
            m.SummarizeTextDetails(
                input=" ".join(texts * 3),
                compartment_id=COMPARTMENT,
                serving_mode=m.OnDemandServingMode(model_id="cohere.command"),
                format="BULLETS",
            )
        )
        assert r.data.summary.startswith("- ")


def test_cli_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [CLI, "emulator", "--port", "0", "--embedder", "hash", "--dim", "64", "--rpm", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=30)
        match = re.search(
            r"listening on (http://127\.0\.0\.1:\d+) \(signatures: not verified,"
            r" embedder: hash\)",
            line,
        )
        assert match, line
        r = httpx.post(
            match.group(1) + "/20231130/actions/embedText",
            json={
                "inputs": ["a"],
                "compartmentId": "c",
                "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.embed-v4.0"},
            },
            headers=DUMMY_AUTH,
        )
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 64
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert "NOT verified" in proc.stderr.read()  # type: ignore[union-attr]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError("the emulator printed nothing")
    return proc.stdout.readline()


class _ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test sets: the limiters read ``loop.time()``."""

    now = 1000.0

    def time(self) -> float:
        return self.now


def test_rate_limit_is_a_leaky_bucket() -> None:
    from pipeline.genai.emulator.behaviour import Behaviour, EmulatorConfig

    loop = _ClockLoop()
    try:

        def admit(tokens: int = 1, at: float | None = None) -> bool:
            if at is not None:
                loop.now = 1000.0 + at
            return loop.run_until_complete(b.admit(tokens))

        b = Behaviour(EmulatorConfig(embedder="hash", rpm=600, burst_s=1.0))  # 10/s, holds 10
        assert sum(admit(at=0.0) for _ in range(30)) == 10  # a burst takes the bucket
        assert not admit(at=0.05)
        assert admit(at=0.11)  # one request's worth drained after 0.1 s
        assert not admit(at=0.11)  # and taken
        # paced at exactly the rate, every request passes
        assert all(admit(at=1.0 + i * 0.1) for i in range(100))
        b.reset()  # a reset starts the window with all its capacity
        assert sum(admit() for _ in range(30)) == 10

        # tokens: 600 tpm, burst 1 s -> a bucket of 10 tokens draining 10 per second
        b.configure(rpm=0, tpm=600)
        assert admit(8, at=20.0) and not admit(3) and admit(2)
        assert not admit(1, at=20.05) and admit(1, at=20.1)
        # larger than the bucket: passes only once it has drained empty, and fills it
        assert not admit(50, at=20.9) and admit(50, at=21.1)
        assert not admit(1) and admit(1, at=21.2)
        assert sum(admit(0) for _ in range(5)) == 5  # nothing to take: never throttled
        assert admit(1000, at=30.0)  # (empty again: a fresh oversized request passes)
        b.configure(tpm=0)  # unlimited
        assert all(admit(10**6) for _ in range(50))
    finally:
        loop.close()
