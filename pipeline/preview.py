"""What a run would send, cost and take, known before it starts (the dry run, the cost
ceiling), without a model call.

:func:`preview` reads and validates the source as the run does, chunks every document
with the backend's own token counter and chunk settings, packs the chunks into embed
requests as the pack stage does (at most the backend's inputs and tokens per request;
identical texts once), and counts summary requests (one per document; for a document
over the summary model's input budget, the map-reduce calls at most). An ``oci`` backend
is built without a client or credentials: nothing is sent.

Prices come from the job's per-model table ``prices`` (model id: price per million
characters, as OCI bills on-demand models), else ``price_per_million_chars`` for the
embedding model. Embeddings are priced by the characters of the chunks sent (overlaps
included), summaries by the characters of the documents read. Every document the source
holds is counted, including those a re-run would skip: an upper bound.

The duration is the time the requests and tokens take at the configured ``max_rpm`` and
``max_tpm`` (the whole job's: one budget however many shards draw on it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.chunking import chunk_document
from pipeline.config import JobConfig
from pipeline.genai import make_backend
from pipeline.genai.base import Backend
from pipeline.mapreduce import JOIN, MAX_LEVELS, split_text, upper_bound_tokens
from pipeline.report import format_money


@dataclass
class Preview:
    documents: int = 0
    rejected: int = 0
    #: characters of the valid documents
    characters: int = 0
    chunks: int = 0
    #: chunks sent (identical texts once), their characters and tokens
    embed_inputs: int = 0
    embed_characters: int = 0
    embed_tokens: int = 0
    embed_requests: int = 0
    summary_requests: int = 0
    summary_characters: int = 0
    summary_tokens: int = 0
    embed_model: str = ""
    summary_model: str | None = None
    #: what a summary request is: "chat", "summarizeText" (OCI) or "summary" (local)
    summary_kind: str = "summary"
    #: per million characters; None: no price configured for that model
    embed_price: float | None = None
    summary_price: float | None = None
    currency: str = "USD"
    #: the priced parts' sum; None when no request is priced
    estimated_cost: float | None = None
    #: models that are called but have no price (their part of the cost is unknown)
    unpriced: list[str] = field(default_factory=list)
    #: seconds at the configured limits (None: no max_rpm or max_tpm)
    expected_seconds: float | None = None
    #: the setting the duration is bound by: "max_rpm" or "max_tpm"
    bound_by: str | None = None

    @property
    def requests(self) -> int:
        return self.embed_requests + self.summary_requests

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["requests"] = self.requests
        out["estimated_cost_text"] = (
            format_money(self.estimated_cost, self.currency)
            if self.estimated_cost is not None
            else None
        )
        out["expected_duration"] = (
            format_duration(self.expected_seconds) if self.expected_seconds is not None else None
        )
        out["text"] = self.text()
        return out

    def text(self) -> str:
        """What the dry run prints."""
        lines = [
            f"dry run (no model call): {self.documents:,} documents, {self.characters:,}"
            f" characters, {self.rejected:,} rejected",
            f"  chunks: {self.chunks:,} ({self.embed_inputs:,} distinct, {self.embed_characters:,}"
            f" characters, {self.embed_tokens:,} tokens)",
            f"  requests: {self.embed_requests:,} embed ({self.embed_model})"
            + (
                f", {self.summary_requests:,} {self.summary_kind} ({self.summary_model})"
                if self.summary_model
                else ", no summaries"
            ),
        ]
        parts = []
        if self.embed_price is not None and self.embed_requests:
            cost = _cost(self.embed_characters, self.embed_price)
            parts.append(f"embeddings {format_money(cost, self.currency)}")
        if self.summary_model and self.summary_price is not None and self.summary_requests:
            cost = _cost(self.summary_characters, self.summary_price)
            parts.append(f"summaries {format_money(cost, self.currency)}")
        if self.estimated_cost is None:
            total = "unknown (no price for " + ", ".join(self.unpriced) + "; set prices)"
        else:
            total = format_money(self.estimated_cost, self.currency)
            if len(parts) > 1:
                total += f" ({', '.join(parts)})"
            if self.unpriced:
                total += f", plus {', '.join(self.unpriced)} (no price set)"
        lines.append(f"  estimated cost: {total}")
        if self.expected_seconds is None:
            lines.append(
                "  expected duration: no max_rpm or max_tpm set (the service's limits decide)"
            )
        else:
            took = format_duration(self.expected_seconds)
            lines.append(
                f"  expected duration at the configured limits: {took} ({self.bound_by} bound)"
            )
        return "\n".join(lines)


def _cost(characters: int, price_per_million: float) -> float:
    return characters / 1_000_000 * price_per_million


def format_duration(seconds: float) -> str:
    """``3 h 05 min``, ``2 min 15 s``, ``45 s``, ``0.4 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{sec} s"


def _shape_backend(config: JobConfig) -> Backend:
    """A backend that answers the questions of a preview (token counter, limits per
    request, summary budget) and sends nothing: an ``oci`` one has no client."""
    if config.backend == "oci":
        from pipeline.genai.oci_backend import OciBackend

        return OciBackend(
            None,  # type: ignore[arg-type]  # never used: a preview makes no call
            compartment_id=config.compartment or "ocid1.compartment.dry-run",
            embed_model_id=config.embed_model_id,
            summary_model_id=config.summary_model_id,
            input_type=config.input_type,
            truncate=config.truncate,
            output_dimensions=config.output_dimensions,
            summary_api=config.summary_api,
            chat_format=config.chat_format,
            summary_input_tokens=config.summary_input_tokens,
        )
    return make_backend(config)


def summary_calls(text: str, budget: int | None) -> int:
    """Calls one document's summary takes at most: one within the budget; beyond it,
    the map-reduce of :func:`pipeline.mapreduce.summarize_document` played out with every
    piece's summary as long as it may be (half the piece): its pieces level by level,
    then one final call."""
    if budget is None or upper_bound_tokens(text) <= budget:
        return 1
    calls = 0
    current = text
    for _ in range(MAX_LEVELS):
        pieces = split_text(current, budget, upper_bound_tokens)
        calls += len(pieces)
        current = JOIN.join(p.strip()[: len(p) // 2] for p in pieces)
        if upper_bound_tokens(current) <= budget:
            break
    return calls + 1


def preview(config: JobConfig) -> Preview:
    """Count, price and time what a run of ``config`` would send (see the module doc)."""
    from pipeline import storage
    from pipeline.runner import chunk_settings, source_options
    from pipeline.sources import read_source

    storage.configure(config)
    backend = _shape_backend(config)
    settings = chunk_settings(config, backend)
    counter = backend.token_counter
    max_inputs = backend.max_batch_inputs
    max_tokens = backend.max_batch_tokens
    summary_budget: int | None = getattr(backend, "summary_input_tokens", None)
    batched = getattr(backend, "summarize_many", None) is not None
    p = Preview(
        embed_model=config.embed_model_id,
        summary_model=config.summary_model_id if config.summaries else None,
        summary_kind=(
            ("chat" if config.summary_api == "chat" else "summarizeText")
            if config.backend == "oci"
            else "summary"
        ),
    )
    seen: set[int] = set()
    inputs = tokens = 0  # the request being filled
    summarized_in_batch = 0
    for batch in read_source(config.source, source_options(config)):
        p.documents += len(batch.documents)
        p.rejected += len(batch.failures)
        for doc in batch.documents:
            p.characters += len(doc.text)
            for c in chunk_document(doc, counter, settings):
                p.chunks += 1
                key = hash(c.text)
                if key in seen:
                    continue  # sent once per run
                seen.add(key)
                over = max_tokens is not None and inputs and tokens + c.token_count > max_tokens
                if inputs >= max_inputs or over:
                    p.embed_requests += 1
                    inputs = tokens = 0
                inputs += 1
                tokens += c.token_count
                p.embed_inputs += 1
                p.embed_characters += len(c.text)
                p.embed_tokens += c.token_count
            if config.summaries:
                p.summary_characters += len(doc.text)
                p.summary_tokens += max(1, len(doc.text) // 4)  # as the Caller charges
                within = summary_budget is None or upper_bound_tokens(doc.text) <= summary_budget
                if batched and within:
                    summarized_in_batch += 1  # local models: one pass per batch
                    if summarized_in_batch == config.batch_docs:
                        p.summary_requests += 1
                        summarized_in_batch = 0
                else:
                    p.summary_requests += summary_calls(doc.text, summary_budget)
        if batched and summarized_in_batch:
            p.summary_requests += 1
            summarized_in_batch = 0
    if inputs:
        p.embed_requests += 1
    _price(p, config)
    _time(p, config)
    return p


def _price(p: Preview, config: JobConfig) -> None:
    """Price what is priced; a local model without a price costs nothing, a remote one
    without a price is named as unknown."""
    prices = config.prices or {}
    free = config.backend != "oci"
    p.currency = config.currency
    p.embed_price = config.embed_price
    p.summary_price = prices.get(p.summary_model) if p.summary_model else None
    total: float | None = None
    for model, price, characters, requests in (
        (p.embed_model, p.embed_price, p.embed_characters, p.embed_requests),
        (p.summary_model, p.summary_price, p.summary_characters, p.summary_requests),
    ):
        if not model or not requests:
            continue
        if price is not None:
            total = (total or 0.0) + _cost(characters, price)
        elif free:
            total = total or 0.0
        else:
            p.unpriced.append(model)
    p.estimated_cost = round(total, 8) if total is not None else None


def _time(p: Preview, config: JobConfig) -> None:
    bounds = []
    if config.max_rpm:
        bounds.append((p.requests / config.max_rpm * 60.0, "max_rpm"))
    if config.max_tpm:
        bounds.append(((p.embed_tokens + p.summary_tokens) / config.max_tpm * 60.0, "max_tpm"))
    if bounds:
        p.expected_seconds, p.bound_by = max(bounds)


__all__ = ["Preview", "format_duration", "format_money", "preview", "summary_calls"]
