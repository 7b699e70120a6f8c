"""``--backend oci``: embeddings and summaries from OCI Generative AI.

:class:`OciBackend` implements :class:`~pipeline.genai.base.Backend` on top of
:class:`~pipeline.genai.oci_client.OciGenAIClient`: it builds the request bodies (serving
mode, compartment, model parameters), turns answers into results, and counts tokens with
:class:`Utf8ByteCounter`. Like the client it never retries; the ``Caller`` does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import BadResponseError, ConfigError, ServiceError
from pipeline.genai.base import (
    AsyncClosing,
    EmbedResult,
    SummaryResult,
    SummarySettings,
    TokenCounter,
)
from pipeline.genai.oci_client import OciGenAIClient, endpoint_for_region

if TYPE_CHECKING:
    from pipeline.config import JobConfig

__all__ = [
    "PROMPT_VERSION",
    "GenerateResult",
    "OciBackend",
    "RerankResult",
    "Utf8ByteCounter",
    "build_prompt",
    "context_tokens",
    "default_summary_input_tokens",
    "embedding_dim",
    "serving_mode",
]

_DEDICATED_PREFIX = "ocid1.generativeaiendpoint"
_MAX_TOKENS = {"SHORT": 200, "MEDIUM": 400, "LONG": 800, "AUTO": 400}
_LENGTH_TEXT = {
    "SHORT": "in 1-2 sentences",
    "MEDIUM": "in 3-5 sentences",
    "LONG": "in one or two paragraphs",
    "AUTO": "concisely",
}
_FORMAT_TEXT = {
    "BULLETS": "as a bulleted list, one '- ' line per point",
    "PARAGRAPH": "as one paragraph",
}
_EXTRACTIVE_TEXT = {
    "HIGH": "Reuse the document's own sentences where possible.",
    "LOW": "Use your own words.",
}
# finish reasons after which another try gives the same refusal (Cohere and GENERIC)
_REFUSED = frozenset({"ERROR", "ERROR_TOXIC", "ERROR_LIMIT", "CONTENT_FILTER"})
_TEMPERATURE = 0.2  # what the OCI summarization page advises
#: bump when build_prompt, _MAX_TOKENS or the chat request change: the summary
#: fingerprint holds it, so a new prompt re-summarizes
PROMPT_VERSION = "1"
# Context windows (tokens) of the chat models, by model id prefix; the longest prefix
# wins. Unknown ids and dedicated endpoints (whose model the id does not name) get the
# conservative default; set --summary-input-tokens for them.
_CONTEXT_TOKENS = {
    "cohere.command-a": 256_000,
    "cohere.command-r": 128_000,
    "cohere.command": 4_096,  # the legacy command / command-light (summarizeText)
    "meta.llama-3-": 8_192,
    "meta.llama-3.1": 128_000,
    "meta.llama-3.2": 128_000,
    "meta.llama-3.3": 128_000,
    "meta.llama-4": 128_000,
    "openai.gpt": 128_000,
    "xai.grok": 128_000,
}
_DEFAULT_CONTEXT = 32_768
# room left in the context for the instructions (~100 tokens) and the answer (<= 800)
_PROMPT_RESERVE = 1_024


def _utf8_widths(text: str) -> np.ndarray:
    """The UTF-8 byte width of each character, from its code point (vectorised)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return 1 + (cps >= 0x80).astype(np.intp) + (cps >= 0x800) + (cps >= 0x10000)


class Utf8ByteCounter:
    """Counts one token per UTF-8 byte: an upper bound on any BPE or byte-fallback
    tokenizer, since every token covers at least one byte. It over-counts English about
    4x, on purpose: the service's tokenizers are not available offline, and a count may be
    too high but never too low against its per-input and per-call limits.

    ``spans`` gives one span per character, repeated once per byte of its UTF-8 encoding
    (``"é"`` gives two identical spans), so ``len(spans(t))`` is ``t``'s byte length. No
    special tokens.
    """

    name = "utf8-bytes"
    special_tokens = 0

    def spans(self, text: str) -> list[tuple[int, int]]:
        n = len(text)
        if text.isascii():
            return list(zip(range(n), range(1, n + 1), strict=True))
        # byte width of each character from its code point, vectorised; the tuples are
        # made once per character and repeated by reference (numpy object repeat), which
        # halves the cost of a 2 MB accented text against building one tuple per byte
        spans = np.fromiter(zip(range(n), range(1, n + 1), strict=True), dtype=object, count=n)
        return np.repeat(spans, _utf8_widths(text)).tolist()

    def span_bounds(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``spans(text)`` as two int arrays (starts, ends), without a tuple per byte: the
        chunker's path for long texts."""
        n = len(text)
        if text.isascii():
            starts = np.arange(n, dtype=np.intp)
        else:
            starts = np.repeat(np.arange(n, dtype=np.intp), _utf8_widths(text))
        return starts, starts + 1

    def extent(self, text: str) -> tuple[int, int] | None:
        """The first span's start and the last's end: every character is in a span, so
        the whole text (None when empty)."""
        return (0, len(text)) if text else None

    def count(self, text: str) -> int:
        """The byte length of ``text`` in UTF-8 (lone surrogates as 3 bytes)."""
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def serving_mode(model_id: str) -> dict[str, str]:
    """A dedicated endpoint OCID is served as DEDICATED, any other id as ON_DEMAND."""
    if model_id.startswith(_DEDICATED_PREFIX):
        return {"servingType": "DEDICATED", "endpointId": model_id}
    return {"servingType": "ON_DEMAND", "modelId": model_id}


def embedding_dim(model_id: str, output_dimensions: int | None = None) -> int:
    """The vector size: ``output_dimensions`` when set; else cohere.embed-v4.0 1536, the
    light models 384, other models 1024. A dedicated endpoint does not say which model it
    hosts: 1024 unless ``output_dimensions`` is set (set it for a v4 or light endpoint; a
    mismatch is caught on the first answer)."""
    if output_dimensions:
        return output_dimensions
    if model_id.startswith(_DEDICATED_PREFIX):
        return 1024
    if model_id.startswith("cohere.embed-v4"):
        return 1536
    if "light" in model_id:
        return 384
    return 1024


def _max_input_tokens(model_id: str) -> int:
    # the v3 text models read 512 tokens per input; v4 and the image-v3 models take up to
    # 128k tokens per call, so the per-input cap is the call's
    if "-v3" in model_id and "image" not in model_id:
        return 512
    return 128_000


def context_tokens(model_id: str, summary_api: str = "chat") -> int:
    """The context window of a summary model, in tokens (see ``_CONTEXT_TOKENS``). The
    legacy summarizeText action is only served by cohere.command, so a dedicated endpoint
    used with it gets that model's window."""
    matches = [p for p in _CONTEXT_TOKENS if model_id.startswith(p)]
    if matches:
        return _CONTEXT_TOKENS[max(matches, key=len)]
    if summary_api == "summarize_text":
        return _CONTEXT_TOKENS["cohere.command"]
    return _DEFAULT_CONTEXT


def default_summary_input_tokens(model_id: str, summary_api: str = "chat") -> int:
    """The most document tokens one summary call reads: 7/8 of the model's context less
    room for the instructions and the answer (command-a 222,976; 128k models 110,976;
    unknown ids 27,648). The pipeline counts them as UTF-8 bytes, an upper bound, so a
    piece of English holds about a quarter of that in real tokens: never too many."""
    context = context_tokens(model_id, summary_api)
    return context - context // 8 - _PROMPT_RESERVE


def build_prompt(text: str, settings: SummarySettings) -> str:
    """The chat summarization prompt: one instruction paragraph, a line ``---``, then the
    document (the emulator summarizes what follows the first ``---`` line)."""
    how = _LENGTH_TEXT.get(settings.length, "concisely")
    fmt = _FORMAT_TEXT.get(settings.format)
    parts = [f"Summarize the document below {how}" + (f", {fmt}." if fmt else ".")]
    if settings.extractiveness in _EXTRACTIVE_TEXT:
        parts.append(_EXTRACTIVE_TEXT[settings.extractiveness])
    if settings.additional_command:
        parts.append(f"Also: {settings.additional_command}")
    parts.append("Reply with the summary only.")
    return " ".join(parts) + "\n---\n" + text


@dataclass(frozen=True, slots=True)
class RerankResult:
    """``ranks``: ``(document index, relevance score)``, best first."""

    ranks: list[tuple[int, float]]
    model_id: str
    model_version: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    text: str
    model_id: str
    model_version: str | None = None
    request_id: str | None = None


def _bad(what: str, request_id: str) -> BadResponseError:
    return BadResponseError(f"the answer {what}", request_id=request_id)


def _get(data: Any, *path: str | int) -> Any:
    """``data[p0][p1]...`` or None when any step is missing or of the wrong type."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(data, list) or len(data) <= key:
                return None
        elif not isinstance(data, dict):
            return None
        data = data[key] if isinstance(key, int) else data.get(key)
    return data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _vectors(data: dict[str, Any], n: int, request_id: str) -> np.ndarray:
    """``data["embeddings"]`` as float32 ``(n, dim)``. Usually it is that array already
    (:func:`~pipeline.genai.oci_client.load_embed_answer`); else the JSON lists, which
    are checked to be ``n`` lists of one length first, so the flat ``fromiter`` (~20%
    cheaper than ``np.asarray`` on nested lists) cannot mis-shape a ragged answer."""
    rows = data.get("embeddings")
    if isinstance(rows, np.ndarray):
        flat = rows
        if len(rows) != n:
            raise _bad(f"holds {len(rows)} embeddings for {n} inputs", request_id)
    else:
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
            raise _bad("has no embeddings list", request_id)
        if len(rows) != n:
            raise _bad(f"holds {len(rows)} embeddings for {n} inputs", request_id)
        dim = len(rows[0])
        if dim == 0 or any(type(r) is not list or len(r) != dim for r in rows):
            raise _bad("has embeddings rows of different lengths", request_id)
        try:
            chain = itertools.chain.from_iterable(rows)
            flat = np.fromiter(chain, dtype=np.float32, count=n * dim).reshape(n, dim)
        except (TypeError, ValueError):
            raise _bad("has non-numeric embeddings", request_id) from None
    # numpy reads a JSON null as NaN; a NaN row written out would be silent corruption
    # (and a number beyond float32's range becomes infinite)
    if not np.isfinite(flat).all():
        raise _bad("has non-numeric embeddings (null, NaN or infinite)", request_id)
    return flat


class OciBackend(AsyncClosing):
    """The OCI Generative AI backend (``name = "oci"``). See the module doc.

    Embeddings: embedText with at most 96 inputs per call; for cohere.embed-v4.0 also at
    most 128,000 tokens per call (counted by :class:`Utf8ByteCounter`). ``truncated[i]`` is
    an estimate, as the service does not report truncation: True when ``truncate`` is not
    NONE and the input's UTF-8 bytes / 4 exceed ``max_input_tokens``.

    Summaries: the chat action with a prompt from :func:`build_prompt` (COHERE format for
    ``cohere.*`` models, GENERIC otherwise, unless ``chat_format`` says), or the legacy
    summarizeText action when ``summary_api == "summarize_text"``. One call reads one
    document; ``summary_input_tokens`` (default :func:`default_summary_input_tokens`) is
    where the caller switches to map-reduce (:mod:`pipeline.mapreduce`).
    """

    name = "oci"
    max_batch_inputs = 96

    def __init__(
        self,
        client: OciGenAIClient,
        *,
        compartment_id: str,
        embed_model_id: str = "cohere.embed-v4.0",
        summary_model_id: str = "cohere.command-a-03-2025",
        input_type: str = "SEARCH_DOCUMENT",
        truncate: str = "END",
        output_dimensions: int | None = None,
        summary_api: str = "chat",
        chat_format: str | None = None,
        summary_input_tokens: int | None = None,
    ) -> None:
        if not compartment_id:
            raise ConfigError(
                "compartment: required for --backend oci (the OCID of the compartment whose"
                " Generative AI quota and policies the calls use)"
            )
        self.client = client
        self.compartment_id = compartment_id
        self.embed_model_id = embed_model_id
        self.summary_model_id = summary_model_id
        self.input_type = input_type
        self.truncate = truncate
        self.output_dimensions = output_dimensions
        self.summary_api = summary_api
        self.chat_format = chat_format or (
            "COHERE" if summary_model_id.startswith("cohere.") else "GENERIC"
        )
        #: documents longer than this are summarized map-reduce (pipeline.mapreduce)
        self.summary_input_tokens: int | None = (
            summary_input_tokens or default_summary_input_tokens(summary_model_id, summary_api)
        )
        self.dim = embedding_dim(embed_model_id, output_dimensions)
        self.max_input_tokens = _max_input_tokens(embed_model_id)
        self.max_batch_tokens: int | None = (
            128_000 if embed_model_id.startswith("cohere.embed-v4") else None
        )
        self._bytes = Utf8ByteCounter()
        self.token_counter: TokenCounter = self._bytes
        self._embed_serving = serving_mode(embed_model_id)
        self._summary_serving = serving_mode(summary_model_id)

    @classmethod
    def from_config(
        cls,
        config: JobConfig,
        *,
        signer: Any = None,
    ) -> OciBackend:
        """The backend a job describes. The compartment is checked first, then the signer
        is built from ``config.auth`` (or ``signer``, an ``oci`` signer, is used), then
        the endpoint: ``genai_endpoint``, else the one of ``region`` or of the auth's
        region. Raises ConfigError naming what is missing. No request is sent."""
        from pipeline.genai.oci_auth import OciRequestSigner, load_signer

        if not config.compartment:
            raise ConfigError(
                "compartment: required for --backend oci (--compartment OCID, or compartment"
                " in the job's YAML)"
            )
        auth_region: str | None = None
        if signer is None:
            signer, auth_region = load_signer(config)
        endpoint = config.genai_endpoint
        if not endpoint:
            region = config.region or auth_region
            if not region:
                raise ConfigError(
                    "region: unknown for --backend oci (set region, genai_endpoint, or a"
                    " region in the OCI config profile)"
                )
            endpoint = endpoint_for_region(region)
        client = OciGenAIClient(
            endpoint,
            auth=OciRequestSigner(signer),
            # the shards of a local run share this backend and each has its own in-flight
            # cap: room for all of them, so a request never queues for a connection
            max_in_flight=config.max_in_flight * max(1, config.shards),
            timeout_s=config.timeout_s,
        )
        return cls(
            client,
            compartment_id=config.compartment,
            embed_model_id=config.embed_model_id,
            summary_model_id=config.summary_model_id,
            input_type=config.input_type,
            truncate=config.truncate,
            output_dimensions=config.output_dimensions,
            summary_api=config.summary_api,
            chat_format=config.chat_format,
            summary_input_tokens=config.summary_input_tokens,
        )

    def __repr__(self) -> str:
        return f"OciBackend({self.client.base_url!r}, embed={self.embed_model_id!r})"

    def fingerprint(self) -> dict[str, object]:
        return {
            "backend": "oci",
            "model_id": self.embed_model_id,
            "dim": self.dim,
            "input_type": self.input_type,
            "truncate": self.truncate,
            "serving": self._embed_serving["servingType"],
        }

    def summary_fingerprint(self, settings: SummarySettings) -> dict[str, object]:
        """The settings of this backend that change a summary (beside the model id and
        ``settings``, which the caller records): the action, the chat format, the prompt's
        version, temperature, the answer's token cap and the serving mode."""
        chat = self.summary_api == "chat"
        return {
            "summary_api": self.summary_api,
            "chat_format": self.chat_format if chat else None,
            "prompt_version": PROMPT_VERSION if chat else None,
            "temperature": _TEMPERATURE,
            "max_tokens": _MAX_TOKENS.get(settings.length, 400) if chat else None,
            "serving": self._summary_serving["servingType"],
        }

    # ------------------------------------------------------------------ embeddings

    async def embed(self, texts: list[str]) -> EmbedResult:
        """One embedText call for ``texts`` (the Caller keeps within the batch limits)."""
        if not texts:
            return EmbedResult(np.empty((0, self.dim), np.float32), [], self.embed_model_id)
        body: dict[str, Any] = {
            "inputs": texts,
            "servingMode": self._embed_serving,
            "compartmentId": self.compartment_id,
            "truncate": self.truncate,
            "inputType": self.input_type,
            "isEcho": False,
        }
        if self.output_dimensions:
            body["outputDimensions"] = self.output_dimensions
        data, rid = await self.client.embed_text(body)
        vectors = _vectors(data, len(texts), rid)
        if self.truncate == "NONE":
            truncated = [False] * len(texts)  # an over-long input is a 400, not a cut
        else:
            limit = 4 * self.max_input_tokens  # ~4 bytes per token: an estimate
            truncated = [self._bytes.count(t) > limit for t in texts]
        return EmbedResult(
            vectors=vectors,
            truncated=truncated,
            model_id=self.embed_model_id,
            model_version=_str(data.get("modelVersion")),
            input_tokens=_int(_get(data, "usage", "promptTokens")) or 0,
            request_id=rid,
        )

    # ------------------------------------------------------------------ summaries

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult:
        """One call: summarizeText or chat (see the class doc)."""
        if self.summary_api == "summarize_text":
            return await self._summarize_text(text, settings)
        prompt = build_prompt(text, settings)
        max_tokens = _MAX_TOKENS.get(settings.length, 400)
        data, rid, summary = await self._chat(prompt, max_tokens)
        usage = _get(data, "chatResponse", "usage")
        return SummaryResult(
            summary=summary,
            model_id=self.summary_model_id,
            model_version=_str(data.get("modelVersion")),
            input_tokens=_int(_get(usage, "promptTokens")),
            output_tokens=_int(_get(usage, "completionTokens")),
            request_id=rid,
        )

    async def _summarize_text(self, text: str, settings: SummarySettings) -> SummaryResult:
        body: dict[str, Any] = {
            "input": text,
            "servingMode": self._summary_serving,
            "compartmentId": self.compartment_id,
            "length": settings.length,
            "format": settings.format,
            "extractiveness": settings.extractiveness,
            "temperature": _TEMPERATURE,
        }
        if settings.additional_command:
            body["additionalCommand"] = settings.additional_command
        data, rid = await self.client.summarize_text(body)
        summary = _str(data.get("summary"))
        if summary is None:
            raise _bad("has no summary", rid)
        return SummaryResult(
            summary=summary,
            model_id=self.summary_model_id,
            model_version=_str(data.get("modelVersion")),
            request_id=rid,
        )

    async def _chat(self, prompt: str, max_tokens: int) -> tuple[dict[str, Any], str, str]:
        """One chat call; returns (answer, request id, reply text)."""
        request: dict[str, Any]
        if self.chat_format == "COHERE":
            request = {"apiFormat": "COHERE", "message": prompt}
        else:
            content = [{"type": "TEXT", "text": prompt}]
            request = {"apiFormat": "GENERIC", "messages": [{"role": "USER", "content": content}]}
        request["maxTokens"] = max_tokens
        request["temperature"] = _TEMPERATURE
        body = {
            "compartmentId": self.compartment_id,
            "servingMode": self._summary_serving,
            "chatRequest": request,
        }
        data, rid = await self.client.chat(body)
        if self.chat_format == "COHERE":
            reason = _get(data, "chatResponse", "finishReason")
            text = _get(data, "chatResponse", "text")
        else:
            reason = _get(data, "chatResponse", "choices", 0, "finishReason")
            text = _get(data, "chatResponse", "choices", 0, "message", "content", 0, "text")
        if isinstance(reason, str) and reason.upper() in _REFUSED:
            raise ServiceError(
                f"chat: the model stopped with finishReason {reason}", code=reason, request_id=rid
            )
        if not isinstance(text, str):
            raise _bad(f"has no {self.chat_format} chat text", rid)
        return data, rid, text.strip()

    # ------------------------------------------------------------------ other actions

    async def generate(
        self, prompt: str, max_tokens: int = 400, *, model_id: str | None = None
    ) -> GenerateResult:
        """One generateText call (legacy API) with the summary model or ``model_id``."""
        model = model_id or self.summary_model_id
        runtime = "COHERE" if model.startswith("cohere.") else "LLAMA"
        body = {
            "compartmentId": self.compartment_id,
            "servingMode": serving_mode(model),
            "inferenceRequest": {
                "runtimeType": runtime,
                "prompt": prompt,
                "maxTokens": max_tokens,
                "temperature": _TEMPERATURE,
            },
        }
        data, rid = await self.client.generate_text(body)
        answer = _get(data, "inferenceResponse")
        if runtime == "COHERE":
            text = _get(answer, "generatedTexts", 0, "text")
        else:
            text = _get(answer, "choices", 0, "text")
        if not isinstance(text, str):
            raise _bad("has no generated text", rid)
        return GenerateResult(text, model, _str(data.get("modelVersion")), rid)

    async def rerank(
        self, query: str, documents: list[str], top_n: int | None = None, *, model_id: str
    ) -> RerankResult:
        """One rerankText call: the ``top_n`` (default all) documents most relevant to
        ``query``, best first, by index into ``documents``."""
        body: dict[str, Any] = {
            "input": query,
            "documents": documents,
            "compartmentId": self.compartment_id,
            "servingMode": serving_mode(model_id),
        }
        if top_n is not None:
            body["topN"] = top_n
        data, rid = await self.client.rerank_text(body)
        ranks = data.get("documentRanks")
        if not isinstance(ranks, list):
            raise _bad("has no documentRanks", rid)
        out: list[tuple[int, float]] = []
        for r in ranks:
            index, score = _get(r, "index"), _get(r, "relevanceScore")
            if _int(index) is None or not isinstance(score, int | float):
                raise _bad("has a malformed document rank", rid)
            out.append((index, float(score)))
        return RerankResult(out, model_id, _str(data.get("modelVersion")), rid)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        await self.client.aclose()
