"""Turning packed requests and documents into model calls: budgets, retries, splitting.

``Caller.embed_request`` sends one request the shard's pack stage filled (the only packer:
at most the backend's inputs and tokens per call, across documents and parts) under the
shard's rate ``Budget`` (``pipeline.throttle``: it paces, and hears of every success and
429), retries what is retryable with jittered exponential back-off (a 429 waits for the
budget's pace instead, and never less than a server's Retry-After), and splits a batch
the service rejects (400) in halves until the offending input stands alone; that input
becomes a ``Failure`` and the rest succeed. Results are aligned 1:1 with the inputs,
checked on every response. Every outcome goes
to the ``Breaker`` (``pipeline.breaker``), which paces the first requests and stops the
run with one error on a wrong setting or a sustained outage. ``Caller.summarize_one`` is
one summary call. Retry lines are logged at DEBUG: a long run stays quiet by default,
``-v`` shows them. Retries sleep, and round trips are timed, with the budget's own
clock/sleep pair, so a test on fake time drives both.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pipeline.breaker import EMBED, SUMMARY, Breaker, DimensionMismatchError
from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    GenAIError,
    ThrottledError,
)
from pipeline.genai.base import Backend, EmbedResult, SummaryResult, SummarySettings
from pipeline.throttle import MAX_RETRY_AFTER_S, Budget

T = TypeVar("T")
log = logging.getLogger(__name__)

#: most seconds a throttled request waits before it queues for the budget's pace again
THROTTLED_JITTER_S = 0.25


@dataclass
class CallStats:
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    errors: int = 0
    input_tokens: int = 0
    input_chars: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    #: most requests awaiting an answer at one instant (inside the budget's slot)
    peak_in_flight: int = 0
    in_flight: int = 0

    def merge(self, other: CallStats) -> None:
        self.calls += other.calls
        self.retries += other.retries
        self.throttled += other.throttled
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.input_chars += other.input_chars
        self.latencies_ms.extend(other.latencies_ms)
        self.peak_in_flight = max(self.peak_in_flight, other.peak_in_flight)


@dataclass(frozen=True, slots=True)
class TextFailure:
    """Why one input got no result."""

    index: int
    error: GenAIError
    attempts: int


class _Wait:
    """Jittered exponential back-off for errors. A 429 instead waits a moment's jitter
    (never less than a server's Retry-After): the budget was cut by it and paces the
    retry with every other request, so a back-off on top would only leave its slot idle."""

    def __init__(self) -> None:
        self._exp = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=1.0)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ThrottledError):
            delay = random.uniform(0.0, THROTTLED_JITTER_S)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_S))
            return delay
        return float(self._exp(state))


class Caller:
    def __init__(
        self,
        backend: Backend,
        budget: Budget,
        *,
        max_attempts: int = 6,
        breaker: Breaker | None = None,
    ) -> None:
        self.backend = backend
        self.budget = budget
        self.max_attempts = max_attempts
        # one clock/sleep pair for the budget's pace and the retries' back-off
        self.clock = budget.clock
        self.sleep = budget.sleep
        self.stats = CallStats()
        # sees every outcome; stops the run on a wrong setting or an outage (breaker.py)
        self.breaker = breaker or Breaker.for_backend(
            backend, max_in_progress=2 * budget.max_in_flight, clock=budget.clock
        )

    # ------------------------------------------------------------------ one request

    async def _call(
        self,
        fn: Callable[[], Awaitable[T]],
        tokens: int,
        chars: int,
        *,
        op: str = EMBED,
        inputs: int = 1,
    ) -> tuple[T, int]:
        """Send one request (``op``: embed or summary, of ``inputs`` inputs) with retries.
        Returns (result, attempts). Every outcome goes to the breaker, which raises
        ConfigError / OutageError / AuthError instead when the run must stop."""
        try:
            # the breaker holds a request across its retries (see breaker.py, pacing)
            async with self.breaker.admit(op):
                return await self._attempts(fn, tokens, chars, op)
        except GenAIError as exc:
            final = self.breaker.gave_up(op, exc, inputs)
            if final is exc:
                raise
            raise final from None

    async def _attempts(
        self, fn: Callable[[], Awaitable[T]], tokens: int, chars: int, op: str
    ) -> tuple[T, int]:
        """The tries of one request, as tenacity schedules them."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=_Wait(),
            retry=retry_if_exception(lambda e: isinstance(e, GenAIError) and e.retryable),
            reraise=True,
            sleep=self.sleep,
            before_sleep=self._log_retry,
        )
        attempts = 0
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if attempts > 1:
                    self.stats.retries += 1
                    self.breaker.check()  # tripped meanwhile: do not send again
                async with self.budget.slot(tokens):
                    started = self.clock()
                    self.stats.calls += 1
                    self.stats.input_tokens += tokens
                    self.stats.input_chars += chars
                    self.stats.in_flight += 1
                    self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
                    try:
                        result = await fn()
                    except ThrottledError as exc:
                        exc.attempts = attempts
                        self.stats.throttled += 1
                        await self.budget.on_throttle(exc.retry_after, self.clock() - started)
                        self.breaker.failed(op, exc)
                        raise
                    except GenAIError as exc:
                        exc.attempts = attempts
                        self.stats.errors += 1
                        self.breaker.failed(op, exc)
                        raise
                    finally:
                        self.stats.in_flight -= 1
                    rtt = self.clock() - started
                    self.stats.latencies_ms.append(rtt * 1000.0)
                    await self.budget.on_success(rtt)
                    self.breaker.succeeded(op)
                return result, attempts
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        # one line per retried request: DEBUG (``-v``), so a long run stays quiet by default
        log.debug(
            "%s call failed (attempt %d of %d), retrying in %.1f s: %s",
            self.backend.name,
            state.attempt_number,
            self.max_attempts,
            wait,
            exc,  # GenAIError's text: status, OCI code, opc-request-id; never credentials
        )

    # ------------------------------------------------------------------ embeddings

    async def _embed_group(
        self,
        texts: Sequence[str],
        tokens: Sequence[int],
        idx: list[int],
        out: list[Any],
        failures: list[TextFailure],
    ) -> None:
        group = [texts[i] for i in idx]
        try:
            result, _ = await self._call(
                lambda: self._checked_embed(group),
                sum(tokens[i] for i in idx),
                sum(len(t) for t in group),
                inputs=len(group),
            )
        except AuthError:
            raise  # every request would fail the same way: stop the run, with this error
        except BadRequestError as exc:
            if len(idx) == 1:
                failures.append(TextFailure(idx[0], exc, exc.attempts))
                return
            mid = len(idx) // 2
            await asyncio.gather(
                self._embed_group(texts, tokens, idx[:mid], out, failures),
                self._embed_group(texts, tokens, idx[mid:], out, failures),
            )
            return
        except GenAIError as exc:
            failures.extend(TextFailure(i, exc, exc.attempts) for i in idx)
            return
        for k, i in enumerate(idx):
            out[i] = (result.vectors[k], result.truncated[k], result)

    async def _checked_embed(self, group: list[str]) -> EmbedResult:
        result = await self.backend.embed(group)
        vectors = np.asarray(result.vectors)
        if (
            vectors.ndim != 2
            or vectors.shape[0] != len(group)
            or len(result.truncated) != len(group)
        ):
            raise BadResponseError(
                f"embed answer holds {vectors.shape[0] if vectors.ndim else 0} vectors for"
                f" {len(group)} inputs",
                request_id=result.request_id,
            )
        if vectors.shape[1] != self.backend.dim:
            # its own class: the breaker tells a stray answer from a consistent wrong size
            raise DimensionMismatchError(
                f"embed answer has dimension {vectors.shape[1]}, expected {self.backend.dim}",
                got=int(vectors.shape[1]),
                expected=self.backend.dim,
                request_id=result.request_id,
            )
        return result

    async def embed_request(
        self, texts: Sequence[str], tokens: Sequence[int]
    ) -> tuple[list[tuple[np.ndarray, bool, EmbedResult] | None], list[TextFailure]]:
        """One packed request (the caller kept it within the backend's limits), with
        retries and a 400 split down to the offending input. ``results[i]`` is None iff
        input i failed (its ``TextFailure`` says why)."""
        out: list[Any] = [None] * len(texts)
        failures: list[TextFailure] = []
        await self._embed_group(texts, tokens, list(range(len(texts))), out, failures)
        return out, failures

    # ------------------------------------------------------------------ summaries

    async def summarize_one(self, text: str, settings: SummarySettings) -> SummaryResult:
        """One summary call under the budget, with retries; raises the last GenAIError
        (its ``attempts`` set)."""
        tokens = max(1, len(text) // 4)  # a rough figure for the tokens-per-minute budget
        result, _ = await self._call(
            lambda: self.backend.summarize(text, settings), tokens, len(text), op=SUMMARY
        )
        return result

    async def summarize(
        self, texts: Sequence[str], tokens: Sequence[int], settings: SummarySettings
    ) -> tuple[list[SummaryResult | None], list[TextFailure]]:
        out: list[SummaryResult | None] = [None] * len(texts)
        failures: list[TextFailure] = []
        many = getattr(self.backend, "summarize_many", None)
        if many is not None and texts:
            # local models: one batched pass is far cheaper than one call per document
            try:
                results, _ = await self._call(
                    lambda: many(list(texts), settings),
                    sum(tokens),
                    sum(map(len, texts)),
                    op=SUMMARY,
                    inputs=len(texts),
                )
                return list(results), failures
            except AuthError:
                raise
            except GenAIError:
                pass  # fall back to one call per document to isolate the bad one

        async def one(i: int) -> None:
            try:
                out[i], _ = await self._call(
                    lambda: self.backend.summarize(texts[i], settings),
                    tokens[i],
                    len(texts[i]),
                    op=SUMMARY,
                )
            except AuthError:
                raise
            except GenAIError as exc:
                failures.append(TextFailure(i, exc, exc.attempts))

        await asyncio.gather(*(one(i) for i in range(len(texts))))
        return out, failures
