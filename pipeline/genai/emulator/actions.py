"""The five inference actions: request validation, the model work, and OCI's JSON shapes.

Each ``prepare_*`` function validates a parsed request body and returns a :class:`Job`
(estimated tokens, for the rate limiter, and a coroutine that does the work), or raises
:class:`ApiError` with OCI's status/code. Validation happens before admission, so a bad
request never spends rate-limit quota and never waits for the model.

Tokens are estimated as ceil(UTF-8 bytes / 4), OCI's rule of thumb; the emulator does not
tokenize. A chat, generateText or summarizeText prompt whose estimate plus ``maxTokens``
exceeds the model's context window (:func:`context_window`) is a 400 InvalidParameter.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.genai.base import SummarySettings
from pipeline.genai.hashembed import hash_vectors, lead_summary

MAX_INPUTS = 96
MAX_INPUT_TOKENS = 512
OUTPUT_DIMS = (256, 512, 1024, 1536)
MODEL_VERSION = "emulator-1"
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_N_SENTENCES = re.compile(r"(\d+)\s+sentences?", re.IGNORECASE)
_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
# what a DEDICATED endpoint is taken to host (the request names no model)
_DEDICATED_MODELS = {
    "embedText": "cohere.embed-v4.0",
    "rerankText": "cohere.rerank-v3.5",
    "COHERE": "cohere.command-r-08-2024",
    "GENERIC": "meta.llama-3.3-70b-instruct",
    "summarizeText": "cohere.command",
    "generateText": "cohere.command",
}


# The service's context windows (tokens) by model id prefix; the longest prefix wins.
CONTEXT_WINDOWS = {
    "cohere.command-a": 256_000,
    "cohere.command-r": 128_000,
    "cohere.command": 4_096,  # the legacy command / command-light
    "meta.llama-3-": 8_192,
    "meta.llama-3.": 128_000,
    "meta.llama-4": 128_000,
    "openai.gpt": 128_000,
    "xai.grok": 128_000,
}
DEFAULT_CONTEXT_WINDOW = 128_000


def context_window(model_id: str, override: int = 0) -> int:
    """``override`` when set (the emulator's --context-tokens), else the model's window."""
    if override:
        return override
    matches = [p for p in CONTEXT_WINDOWS if model_id.startswith(p)]
    return CONTEXT_WINDOWS[max(matches, key=len)] if matches else DEFAULT_CONTEXT_WINDOW


def _check_context(model: str, prompt_tokens: int, max_tokens: Any, override: int) -> None:
    """A 400 like the service's for a prompt that does not fit the model's context."""
    answer = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    limit = context_window(model, override)
    if prompt_tokens + answer > limit:
        raise bad(
            f"The input is too long for model {model}: {prompt_tokens} prompt tokens and"
            f" maxTokens {answer} exceed its context window of {limit} tokens. Shorten the"
            " input or lower maxTokens."
        )


class ApiError(Exception):
    """An OCI error answer: HTTP ``status`` with body ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


def missing(name: str) -> ApiError:
    return ApiError(400, "MissingParameter", f"{name} is required")


@dataclass(slots=True)
class Job:
    """A validated request: its token estimate, its inputs (embed only) and its work."""

    tokens: int
    run: Callable[[Engine], Awaitable[dict[str, Any]]]
    inputs: int = 0


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


def default_dim(model_id: str) -> int:
    """The native output size of an embedding model id (unknown ids: embed-v4's 1536)."""
    if model_id == "cohere.embed-v4.0":
        return 1536
    if "light" in model_id:
        return 384
    if model_id.startswith("cohere.embed-"):
        return 1024
    return 1536


class Engine:
    """The models: LocalEmbedder/LocalSummarizer (loaded on first use, run one call at a
    time in one worker thread so the event loop keeps serving) or the hash stand-ins
    (run inline: cheaper than a thread hop)."""

    def __init__(self) -> None:
        self._local: Any = None
        self._summarizer: Any = None
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emulator-model")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def embed(self, texts: list[str], dim: int, embedder: str) -> np.ndarray:
        """Unit vectors ``(len(texts), dim)`` float32."""
        if embedder == "hash":
            return hash_vectors(texts, dim)
        if self._local is None:
            from pipeline.genai.local import LocalEmbedder

            self._local = LocalEmbedder()
        vectors: np.ndarray = await self._in_thread(self._local.embed, texts)
        return _fit(vectors, dim)

    async def summarize(self, text: str, settings: SummarySettings, embedder: str) -> str:
        if embedder == "hash":
            return lead_summary(text)
        if self._summarizer is None:
            from pipeline.genai.local import LocalEmbedder, LocalSummarizer

            if self._local is None:
                self._local = LocalEmbedder()
            self._summarizer = LocalSummarizer(self._local)
        summary: str = await self._in_thread(self._summarizer.summarize, text, settings)
        return summary


def _fit(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` zero-padded or truncated to ``dim`` columns, rows re-normalised. Zero
    padding keeps every cosine exactly; truncation only approximately."""
    n, have = vectors.shape
    if have == dim:
        return vectors
    out = np.zeros((n, dim), dtype=np.float32)
    keep = min(have, dim)
    out[:, :keep] = vectors[:, :keep]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
    return out


# ----------------------------------------------------------------- common validation


def _model_id(details: dict[str, Any], kind: str) -> str:
    """The model the request is served by; validates compartmentId and servingMode."""
    if not isinstance(details.get("compartmentId"), str) or not details["compartmentId"]:
        raise missing("compartmentId")
    mode = details.get("servingMode")
    if mode is None:
        raise missing("servingMode")
    if not isinstance(mode, dict):
        raise bad("servingMode must be an object")
    serving = mode.get("servingType")
    if serving == "ON_DEMAND":
        if not isinstance(mode.get("modelId"), str) or not mode["modelId"]:
            raise missing("servingMode.modelId")
        return str(mode["modelId"])
    if serving == "DEDICATED":
        if not isinstance(mode.get("endpointId"), str) or not mode["endpointId"]:
            raise missing("servingMode.endpointId")
        return _DEDICATED_MODELS[kind]
    if serving is None:
        raise missing("servingMode.servingType")
    raise bad(f"servingMode.servingType {serving!r} is not one of ON_DEMAND, DEDICATED")


def _string(details: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = details.get(name)
    if value is None:
        if required:
            raise missing(name)
        return ""
    if not isinstance(value, str):
        raise bad(f"{name} must be a string")
    return value


def _enum(details: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = details.get(name, default)
    if value is None:
        return default
    if value not in allowed:
        raise bad(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _after_separator(text: str) -> str:
    """What follows the first line that is exactly "---" (our client puts its
    instructions above it), or the whole text."""
    m = _SEPARATOR.search(text)
    return text[m.end() :].lstrip("\n") if m else text


def _chat_settings(text: str) -> SummarySettings:
    """Summary settings read from the instructions above the "---" line, if any."""
    m = _SEPARATOR.search(text)
    head = text[: m.start()] if m else ""
    fmt = "BULLETS" if "bullet" in head.lower() else "PARAGRAPH"
    n = _N_SENTENCES.search(head)
    length = "SHORT"
    if n:
        k = int(n.group(1))
        length = "SHORT" if k <= 2 else "MEDIUM" if k <= 4 else "LONG"
    return SummarySettings(length=length, format=fmt)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "promptTokens": prompt,
        "completionTokens": completion,
        "totalTokens": prompt + completion,
    }


# ----------------------------------------------------------------- embedText


def prepare_embed(details: dict[str, Any], embedder: str, dim: int, reject: str | None) -> Job:
    """Validate an EmbedTextDetails body. ``dim`` (0: the model's default) is the
    emulator's --dim; ``reject``: inputs containing it are refused (a test hook)."""
    model = _model_id(details, "embedText")
    texts = _embed_texts(details)
    if not texts:
        raise bad("inputs must contain at least one string")
    if len(texts) > MAX_INPUTS:
        raise bad(f"inputs has {len(texts)} entries; at most {MAX_INPUTS} are allowed")
    truncate = _enum(details, "truncate", ("NONE", "START", "END"), "NONE")
    out_dim = details.get("outputDimensions")
    if out_dim is not None:
        if out_dim not in OUTPUT_DIMS or isinstance(out_dim, bool):
            raise bad(f"outputDimensions must be one of {OUTPUT_DIMS}, got {out_dim!r}")
        dim = int(out_dim)
    dim = dim or default_dim(model)
    types = details.get("embeddingTypes") or []
    if not isinstance(types, list) or any(t not in _EMBEDDING_TYPES for t in types):
        raise bad(f"embeddingTypes must be a list of {', '.join(_EMBEDDING_TYPES)}")
    tokens = 0
    cut = MAX_INPUT_TOKENS * 4  # bytes kept of a truncated input (the estimate's inverse)
    for i, text in enumerate(texts):
        if reject and reject in text:
            raise bad(f"Invalid input at index {i}: the emulator rejects this input")
        n = estimate_tokens(text)
        if n > MAX_INPUT_TOKENS:
            if truncate == "NONE":
                raise bad(
                    f"Input at index {i} has {n} tokens, more than the maximum of"
                    f" {MAX_INPUT_TOKENS}; shorten it or set truncate to START or END"
                )
            raw = text.encode("utf-8", "surrogatepass")
            raw = raw[:cut] if truncate == "END" else raw[-cut:]
            texts[i] = raw.decode("utf-8", "ignore")
            n = MAX_INPUT_TOKENS
        tokens += n
    echo = bool(details.get("isEcho"))

    async def run(engine: Engine) -> dict[str, Any]:
        vectors = await engine.embed(texts, dim, embedder)
        out: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "embeddings": vectors,
            "modelId": model,
            "modelVersion": MODEL_VERSION,
            "usage": _usage(tokens, 0),
        }
        if types:
            out["embeddingsByType"] = {t: _typed(vectors, t) for t in types}
        if echo:
            out["inputs"] = texts
        return out

    return Job(tokens=tokens, run=run, inputs=len(texts))


def _embed_texts(details: dict[str, Any]) -> list[str]:
    inputs = details.get("inputs")
    contents = details.get("embedContents")
    if inputs is None and contents is None:
        raise missing("inputs")
    if inputs is not None:
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise bad("inputs must be a list of strings")
        return list(inputs)
    if not isinstance(contents, list):
        raise bad("embedContents must be a list")
    texts = []
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or c.get("type") != "TEXT" or not isinstance(c.get("text"), str):
            raise bad(f"embedContents[{i}]: the emulator supports only TEXT contents")
        texts.append(c["text"])
    return texts


def _typed(vectors: np.ndarray, kind: str) -> Any:
    """Cohere's compressed embedding types, computed from the float vectors."""
    if kind == "float":
        return vectors
    if kind == "int8":
        return np.clip(np.rint(vectors * 127), -128, 127).astype(np.int8)
    if kind == "uint8":
        return np.clip(np.rint(vectors * 127) + 128, 0, 255).astype(np.uint8)
    bits = np.packbits(vectors > 0, axis=1)
    if kind == "ubinary":
        return bits
    if kind == "binary":
        return (bits.astype(np.int16) - 128).astype(np.int8)
    return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]


# ----------------------------------------------------------------- chat & generation


def prepare_chat(details: dict[str, Any], embedder: str, context_tokens: int = 0) -> Job:
    """Validate a ChatDetails body (apiFormat COHERE or GENERIC); ``context_tokens`` (0:
    per model) is the context window."""
    request = details.get("chatRequest")
    if request is None:
        raise missing("chatRequest")
    if not isinstance(request, dict):
        raise bad("chatRequest must be an object")
    fmt = request.get("apiFormat")
    if fmt not in ("COHERE", "GENERIC"):
        raise bad(f"chatRequest.apiFormat {fmt!r} is not emulated (COHERE, GENERIC are)")
    model = _model_id(details, fmt)
    if request.get("isStream"):
        raise bad("streaming chat (isStream) is not emulated")
    if fmt == "COHERE":
        text = _string(request, "message")
        prompt_tokens = (
            estimate_tokens(text)
            + sum(
                estimate_tokens(str(m.get("message", "")))
                for m in request.get("chatHistory") or []
                if isinstance(m, dict)
            )
            + estimate_tokens(str(request.get("preambleOverride") or ""))
        )
    else:
        text, prompt_tokens = _generic_user_text(request)
    n_choices = request.get("numGenerations") or 1
    if not isinstance(n_choices, int) or not 1 <= n_choices <= 5:
        raise bad("numGenerations must be an integer from 1 to 5")
    _check_context(model, prompt_tokens, request.get("maxTokens"), context_tokens)
    settings = _chat_settings(text)

    async def run(engine: Engine) -> dict[str, Any]:
        summary = await engine.summarize(_after_separator(text), settings, embedder)
        usage = _usage(prompt_tokens, estimate_tokens(summary))
        response: dict[str, Any]
        if fmt == "COHERE":
            response = {
                "apiFormat": "COHERE",
                "text": summary,
                "finishReason": "COMPLETE",
                "usage": usage,
            }
        else:
            message = {"role": "ASSISTANT", "content": [{"type": "TEXT", "text": summary}]}
            choices = [
                {"index": i, "message": message, "finishReason": "stop"} for i in range(n_choices)
            ]
            response = {
                "apiFormat": "GENERIC",
                "timeCreated": _now(),
                "choices": choices,
                "usage": usage,
            }
        return {"modelId": model, "modelVersion": MODEL_VERSION, "chatResponse": response}

    return Job(tokens=prompt_tokens, run=run)


def _generic_user_text(request: dict[str, Any]) -> tuple[str, int]:
    """The TEXT of the last USER message, and the token estimate of all messages."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise missing("chatRequest.messages")
    user: str | None = None
    tokens = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise bad(f"chatRequest.messages[{i}] must be an object with a role")
        content = m.get("content") or []
        if isinstance(content, str):  # tolerated: some clients send plain strings
            content = [{"type": "TEXT", "text": content}]
        texts = [
            c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "TEXT"
        ]
        joined = "\n".join(t for t in texts if isinstance(t, str))
        tokens += estimate_tokens(joined)
        if m["role"] == "USER":
            user = joined
    if user is None:
        raise bad("chatRequest.messages has no USER message with TEXT content")
    return user, tokens


def prepare_summarize(details: dict[str, Any], embedder: str, context_tokens: int = 0) -> Job:
    """Validate a SummarizeTextDetails body."""
    model = _model_id(details, "summarizeText")
    text = _string(details, "input")
    _check_context(model, estimate_tokens(text), 0, context_tokens)
    settings = SummarySettings(
        length=_enum(details, "length", ("SHORT", "MEDIUM", "LONG", "AUTO"), "AUTO"),
        format=_enum(details, "format", ("PARAGRAPH", "BULLETS", "AUTO"), "AUTO"),
        extractiveness=_enum(details, "extractiveness", ("LOW", "MEDIUM", "HIGH", "AUTO"), "AUTO"),
        additional_command=_string(details, "additionalCommand", required=False) or None,
    )
    echo = bool(details.get("isEcho"))

    async def run(engine: Engine) -> dict[str, Any]:
        summary = await engine.summarize(text, settings, embedder)
        out = {
            "id": str(uuid.uuid4()),
            "summary": summary,
            "modelId": model,
            "modelVersion": MODEL_VERSION,
        }
        if echo:
            out["input"] = text
        return out

    return Job(tokens=estimate_tokens(text), run=run)


def prepare_generate(details: dict[str, Any], embedder: str, context_tokens: int = 0) -> Job:
    """Validate a GenerateTextDetails body (runtimeType COHERE or LLAMA)."""
    model = _model_id(details, "generateText")
    request = details.get("inferenceRequest")
    if request is None:
        raise missing("inferenceRequest")
    if not isinstance(request, dict):
        raise bad("inferenceRequest must be an object")
    runtime = request.get("runtimeType")
    if runtime not in ("COHERE", "LLAMA"):
        raise bad(f"inferenceRequest.runtimeType {runtime!r} is not one of COHERE, LLAMA")
    prompt = _string(request, "prompt")
    _check_context(model, estimate_tokens(prompt), request.get("maxTokens"), context_tokens)
    n = request.get("numGenerations") or 1
    if not isinstance(n, int) or not 1 <= n <= 5:
        raise bad("numGenerations must be an integer from 1 to 5")
    settings = _chat_settings(prompt)

    async def run(engine: Engine) -> dict[str, Any]:
        text = await engine.summarize(_after_separator(prompt), settings, embedder)
        inference: dict[str, Any]
        if runtime == "COHERE":
            generated = [
                {"id": str(uuid.uuid4()), "text": text, "finishReason": "COMPLETE"}
                for _ in range(n)
            ]
            inference = {
                "runtimeType": "COHERE",
                "generatedTexts": generated,
                "timeCreated": _now(),
            }
        else:
            choices = [{"index": i, "text": text, "finishReason": "stop"} for i in range(n)]
            inference = {"runtimeType": "LLAMA", "created": _now(), "choices": choices}
        return {"modelId": model, "modelVersion": MODEL_VERSION, "inferenceResponse": inference}

    return Job(tokens=estimate_tokens(prompt), run=run)


# ----------------------------------------------------------------- rerankText


def prepare_rerank(details: dict[str, Any], embedder: str) -> Job:
    """Validate a RerankTextDetails body; documents are ranked by cosine with the query."""
    model = _model_id(details, "rerankText")
    query = _string(details, "input")
    docs = details.get("documents")
    if docs is None:
        raise missing("documents")
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise bad("documents must be a non-empty list of strings")
    top_n = details.get("topN")
    if top_n is None:
        top_n = len(docs)
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1:
        raise bad("topN must be a positive integer")
    tokens = estimate_tokens(query) + sum(estimate_tokens(d) for d in docs)

    async def run(engine: Engine) -> dict[str, Any]:
        vectors = await engine.embed([query, *docs], 384, embedder)
        scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind="stable")[:top_n]
        ranks = [
            {
                "index": int(i),
                "relevanceScore": float((scores[i] + 1) / 2),
                "document": {"text": docs[i]},
            }
            for i in order
        ]
        return {
            "id": str(uuid.uuid4()),
            "modelId": model,
            "modelVersion": MODEL_VERSION,
            "documentRanks": ranks,
        }

    return Job(tokens=tokens, run=run)
