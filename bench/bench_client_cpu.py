"""Client CPU per embed call: the oci SDK's default path against ours (a script, not a test).

    .venv/bin/python bench/bench_client_cpu.py [--calls 30]

A local server in a separate process (so its CPU is not counted) answers every POST with
one precomputed EmbedTextResult of 96 x 1024 floats (~1.2 MB of JSON). Each path makes one
warm-up call and then ``--calls`` sequential calls of 96 inputs, signed with a throw-away
RSA-2048 key, and turns the answer into a float32 (96, 1024) array:

- ``oci SDK embed_text``: ``GenerativeAiInferenceClient.embed_text`` with its model
  deserialization (retries and circuit breaker off, so only one request is timed), then
  ``np.asarray(result.data.embeddings, float32)``;
- ``oci SDK skip_deserialization``: the same client returning a plain dict (for scale);
- ``ours``: ``OciBackend.embed`` (aiohttp + simdjson + the SDK signer);
- ``ours, parse only``: the JSON-to-array step alone, on the same bytes.

CPU is ``time.process_time()`` of this process. The target is ours <= 1/5 of the SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import JobConfig
from pipeline.genai.oci_backend import OciBackend, _vectors
from pipeline.genai.oci_client import load_embed_answer

N_INPUTS, DIM = 96, 1024
COMPARTMENT = "ocid1.compartment.oc1..aaaabench"
MODEL = "cohere.embed-english-v3.0"

# The server: stdlib only plus numpy/orjson to build the body once. It prints its port.
_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np, orjson

rng = np.random.default_rng(0)
vectors = (rng.standard_normal((%(n)d, %(dim)d)) * 0.03).astype(np.float32)
BODY = orjson.dumps(
    {"id": "bench", "embeddings": vectors, "modelId": "%(model)s", "modelVersion": "3.0",
     "usage": {"promptTokens": 4000, "totalTokens": 4000}},
    option=orjson.OPT_SERIALIZE_NUMPY,
)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service does

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.send_header("opc-request-id", self.headers.get("opc-request-id") or "srv")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True

server = Server(("127.0.0.1", 0), Handler)
print(server.server_port, len(BODY), flush=True)
server.serve_forever()
"""


def start_server() -> tuple[subprocess.Popen[str], str, int]:
    code = _SERVER % {"n": N_INPUTS, "dim": DIM, "model": MODEL}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port, size = proc.stdout.readline().split()
    return proc, f"http://127.0.0.1:{port}", int(size)


def write_dummy_config(folder: str) -> str:
    """A throw-away RSA-2048 key and an OCI config file pointing at it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = os.path.join(folder, "key.pem")
    with open(key_file, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())
    path = os.path.join(folder, "config")
    with open(path, "w") as fh:
        fh.write(
            "[DEFAULT]\nuser=ocid1.user.oc1..aaaabench\ntenancy=ocid1.tenancy.oc1..aaaabench\n"
            f"region=us-chicago-1\nfingerprint={fingerprint}\nkey_file={key_file}\n"
        )
    return path


def texts() -> list[str]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"] * 2
    return [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(N_INPUTS)]


def timed(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call after one warm-up call."""
    fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (
        (time.process_time() - cpu) * 1000 / calls,
        (time.perf_counter() - wall) * 1000 / calls,
    )


def sdk_path(config_file: str, url: str, *, skip: bool) -> Callable[[], np.ndarray]:
    import oci
    from oci.generative_ai_inference import GenerativeAiInferenceClient
    from oci.generative_ai_inference import models as m

    client = GenerativeAiInferenceClient(
        oci.config.from_file(config_file),
        service_endpoint=url,
        timeout=(5, 60),
        retry_strategy=oci.retry.NoneRetryStrategy(),
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        skip_deserialization=skip,  # a client setting: answers stay json.loads dicts
    )
    details = m.EmbedTextDetails(
        inputs=texts(),
        compartment_id=COMPARTMENT,
        truncate="END",
        input_type="SEARCH_DOCUMENT",
        serving_mode=m.OnDemandServingMode(model_id=MODEL),
    )

    def call() -> np.ndarray:
        data = client.embed_text(details).data
        rows = data["embeddings"] if skip else data.embeddings
        out = np.asarray(rows, dtype=np.float32)
        assert out.shape == (N_INPUTS, DIM)
        return out

    return call


def our_path(config_file: str, url: str) -> tuple[Callable[[], np.ndarray], Callable[[], None]]:
    config = JobConfig(
        source="-",
        output="-",
        backend="oci",
        embed_model=MODEL,
        compartment=COMPARTMENT,
        oci_config=config_file,
        genai_endpoint=url,
    )
    backend = OciBackend.from_config(config)
    loop = asyncio.new_event_loop()
    inputs = texts()

    def call() -> np.ndarray:
        out = loop.run_until_complete(backend.embed(inputs)).vectors
        assert out.shape == (N_INPUTS, DIM) and out.dtype == np.float32
        return out

    def close() -> None:
        loop.run_until_complete(backend.aclose())
        loop.close()

    return call, close


def parse_only(body: bytes) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        return _vectors(load_embed_answer(body), N_INPUTS, "bench")

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    proc, url, size = start_server()
    try:
        with tempfile.TemporaryDirectory() as folder:
            config_file = write_dummy_config(folder)
            rows: list[tuple[str, float, float]] = []
            rows.append(
                ("oci SDK embed_text", *timed(sdk_path(config_file, url, skip=False), args.calls))
            )
            rows.append(
                (
                    "oci SDK skip_deserialization",
                    *timed(sdk_path(config_file, url, skip=True), args.calls),
                )
            )
            call, close = our_path(config_file, url)
            rows.append(("ours (OciBackend.embed)", *timed(call, args.calls)))
            close()
            import httpx

            body = httpx.post(f"{url}/20231130/actions/embedText", content=b"{}").content
            rows.append(("ours, parse only", *timed(parse_only(body), args.calls)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    sdk_cpu = rows[0][1]
    print(f"96 x 1024 embed answer, {size:,} bytes of JSON; {args.calls} calls per path")
    print(f"{'path':32} {'CPU ms/call':>12} {'wall ms/call':>13} {'CPU vs SDK':>11}")
    for name, cpu, wall in rows:
        print(f"{name:32} {cpu:12.2f} {wall:13.2f} {cpu / sdk_cpu:11.3f}")
    ratio = rows[2][1] / sdk_cpu
    verdict = "meets" if ratio <= 0.2 else "MISSES"
    print(f"ours/SDK CPU = {ratio:.3f} ({verdict} the <= 0.20 target)")


if __name__ == "__main__":
    main()
