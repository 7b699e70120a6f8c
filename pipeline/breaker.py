"""Stop a run early when the service's answers show that going on cannot help.

One :class:`Breaker` watches every request outcome of one call layer (a shard's
``Caller``) and trips, once and for good, with the one error the run ends with:

- ``ConfigError`` naming the setting to change, for answers that show a setting is wrong:
  - a consistent wrong dimension: ``wrong_dim_answers`` (3) embed answers in a row with
    the same wrong size and no answer of the right size yet. A single stray wrong-size
    answer (the emulator's ``--wrong-dim-rate`` fault) stays a retryable
    ``BadResponseError``;
  - a 404 (unknown model or endpoint) on any request: there is no 404 that one input
    causes, so the first one trips;
  - a 400 on every request: ``bad_request_inputs`` (5) single-input 400s while the
    operation (embed or summary) has had no success at all.
- ``OutageError`` when the service fails everything: the last ``outage_requests`` (20)
  requests all gave up after their retries on retryable errors, or at least
  ``outage_min_requests`` (3) did so in a row over ``outage_seconds`` (60 s) with no
  success in between. Any answer that is not such a failure (a success, a 400 on one
  input) resets the count.
- 401/403 (``AuthError``): tripped with that error itself, at once.

After a trip every new request raises the same error, so no document is dead-lettered
for what is a setting or an outage: the parts in flight end without committing, and work
already committed stays (a re-run resumes).

Until an operation has had one success, its 400s cannot be blamed on the input: a
single-input 400 then comes back as :class:`UnconfirmedRequestError` (a retryable
``BadRequestError``), so that document stays pending instead of being dead-lettered as
permanent; after the first success a 400 is the input's fault, as before.

Pacing: the breaker also holds each request (across its retries) at a gate per
operation. Until an operation has had a success or a transient error (429, 5xx,
transport), one of its requests is in progress at a time, newest first (so a 400 split
reaches single inputs in log2(n) calls): a misconfiguration is found within a handful of
calls rather than after a window of concurrent ones, at the cost of one round trip at
start. While the service fails every attempt (``failing_after`` (8) retryable failures
in a row), at most ``failing_in_progress`` (4) requests are in progress, so new requests
do not pour in while earlier ones wait out their back-off; a success lifts it. Otherwise
at most ``max_in_progress`` (the Caller sets twice its in-flight ceiling) are in
progress: sending, queued for a slot or backing off; so a failing spell cannot find
hundreds already admitted.

The breaker's decisions are plain logic over the outcomes and an injectable ``clock``;
only :meth:`Breaker.admit` (the probe gate) is async.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    GenAIError,
    OutageError,
    PipelineError,
    ThrottledError,
)

__all__ = [
    "Breaker",
    "DimensionMismatchError",
    "UnconfirmedRequestError",
]

#: the embedding sizes ``--output-dimensions`` accepts (cohere.embed-v4.0)
_OUTPUT_DIMS = (256, 512, 1024, 1536)
#: the operations the breaker tells apart; a success of one says nothing of the other
EMBED, SUMMARY = "embed", "summary"


class DimensionMismatchError(BadResponseError):
    """An embed answer whose vectors have another size than the job expects. Retryable
    like any bad answer; the breaker turns a consistent one into a ``ConfigError``."""

    def __init__(
        self, message: str, *, got: int, expected: int, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.got = got
        self.expected = expected


class UnconfirmedRequestError(BadRequestError):
    """A 400 on one input before the service accepted any request of that kind: the job's
    settings may be at fault rather than the input, so it is not final (the document
    stays pending and a re-run tries it again)."""

    retryable = True


@dataclass(frozen=True, slots=True)
class _Target:
    """What the messages name: models, endpoint, expected size and its setting."""

    embed_model: str = "?"
    summary_model: str = "?"
    endpoint: str | None = None
    dim: int = 0
    dim_setting: str | None = "--output-dimensions"


class _Gate:
    """Admits requests while fewer than ``limit()`` are in progress (None: no limit),
    newest waiter first. Hand-written because asyncio's semaphore wakes the oldest waiter
    and cannot change its size."""

    def __init__(self, limit: Callable[[], int | None]) -> None:
        self.limit = limit
        self.in_progress = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self) -> None:
        limit = self.limit()
        if not self._waiters and (limit is None or self.in_progress < limit):
            self.in_progress += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # wake() counted this request in before waking it
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self.release()  # woken and cancelled at once: give the place back
            raise

    def release(self) -> None:
        self.in_progress -= 1
        self.wake()

    def wake(self) -> None:
        limit = self.limit()
        while self._waiters and (limit is None or self.in_progress < limit):
            fut = self._waiters.pop()  # newest first
            if not fut.done():
                self.in_progress += 1
                fut.set_result(None)


class Breaker:
    """See the module doc. One per call layer; not thread-safe (one event loop)."""

    def __init__(
        self,
        *,
        dim: int,
        embed_model: str = "?",
        summary_model: str = "?",
        endpoint: str | None = None,
        dim_setting: str | None = "--output-dimensions",
        wrong_dim_answers: int = 3,
        bad_request_inputs: int = 5,
        outage_requests: int = 20,
        outage_seconds: float = 60.0,
        outage_min_requests: int = 3,
        failing_after: int = 8,
        failing_in_progress: int = 4,
        max_in_progress: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("wrong_dim_answers", wrong_dim_answers),
            ("bad_request_inputs", bad_request_inputs),
            ("outage_requests", outage_requests),
            ("outage_min_requests", outage_min_requests),
            ("failing_after", failing_after),
            ("failing_in_progress", failing_in_progress),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.target = _Target(embed_model, summary_model, endpoint, dim, dim_setting)
        self.wrong_dim_answers = wrong_dim_answers
        self.bad_request_inputs = bad_request_inputs
        self.outage_requests = outage_requests
        self.outage_seconds = outage_seconds
        self.outage_min_requests = outage_min_requests
        self.failing_after = failing_after
        self.failing_in_progress = failing_in_progress
        self.max_in_progress = max_in_progress
        self.clock = clock
        #: the error the run stops with, once tripped
        self.tripped: PipelineError | None = None
        self._succeeded: set[str] = set()
        self._opened: set[str] = set()  # operations past probing
        self._gates: dict[str, _Gate] = {}
        self._attempts_failed_in_row = 0
        self._wrong_dim: tuple[int, int] | None = None  # (size, answers in a row)
        self._rejected: dict[str, list[GenAIError]] = {}  # unconfirmed single-input 400s
        self._failed_in_row = 0
        self._failing_since: float | None = None

    @classmethod
    def for_backend(cls, backend: Any, **kw: Any) -> Breaker:
        """A breaker whose messages name ``backend``'s models, endpoint and dimension."""
        client = getattr(backend, "client", None)
        endpoint = getattr(client, "base_url", None)
        name = getattr(backend, "name", "")
        kw.setdefault("dim_setting", {"oci": "--output-dimensions", "hash": "--dim"}.get(name))
        return cls(
            dim=int(backend.dim),
            embed_model=str(getattr(backend, "embed_model_id", "?")),
            summary_model=str(getattr(backend, "summary_model_id", "?")),
            endpoint=str(endpoint) if endpoint else None,
            **kw,
        )

    # ------------------------------------------------------------------ the gate

    def check(self) -> None:
        """Raise the trip error, if tripped: a copy each time, so the tracebacks of the
        many requests it stops do not pile up on one exception object."""
        if self.tripped is not None:
            raise copy.copy(self.tripped).with_traceback(None)

    def probing(self, op: str) -> bool:
        """True while ``op``'s requests go one at a time (see the module doc)."""
        return op not in self._opened

    def failing(self) -> bool:
        """True while the service fails every attempt (``failing_after`` in a row)."""
        return self._attempts_failed_in_row >= self.failing_after

    def limit(self, op: str) -> int | None:
        """How many requests of ``op`` may be in progress now (None: no limit)."""
        if self.tripped is not None:
            return None  # let the waiters in to see the trip
        if self.probing(op):
            return 1
        if self.failing():
            return self.failing_in_progress
        return self.max_in_progress

    @asynccontextmanager
    async def admit(self, op: str) -> AsyncIterator[None]:
        """Hold one request of ``op`` for all its attempts: waits its turn while probing
        or failing; raises the trip error instead of sending once tripped."""
        self.check()
        gate = self._gates.get(op)
        if gate is None:
            gate = self._gates[op] = _Gate(lambda: self.limit(op))
        await gate.acquire()
        try:
            self.check()
            yield
        finally:
            gate.release()

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, op: str) -> None:
        """One attempt of ``op`` got a usable answer."""
        self._succeeded.add(op)
        self._opened.add(op)
        self._attempts_failed_in_row = 0
        if op == EMBED:
            self._wrong_dim = None
        self._rejected.pop(op, None)
        self._failed_in_row = 0
        self._failing_since = None
        self._wake()

    def failed(self, op: str, exc: GenAIError) -> None:
        """One attempt of ``op`` failed with ``exc`` (retried or not). Raises the trip
        error when this outcome shows a setting to be wrong."""
        if isinstance(exc, AuthError):
            self._trip(exc)  # 401/403: every request would fail the same way
        elif exc.status == 404:
            self._trip(self._not_found(op, exc))
        elif isinstance(exc, DimensionMismatchError) and EMBED not in self._succeeded:
            size, run = self._wrong_dim or (exc.got, 0)
            run = run + 1 if size == exc.got else 1
            self._wrong_dim = (exc.got, run)
            if run >= self.wrong_dim_answers:
                self._trip(self._wrong_size(exc))
        elif exc.retryable and not isinstance(exc, BadResponseError):
            # a 429, 5xx or transport error says nothing of the settings: stop probing
            self._opened.add(op)
            self._wake()
        if exc.retryable:
            self._attempts_failed_in_row += 1
        elif exc.status is not None and self._attempts_failed_in_row:
            self._attempts_failed_in_row = 0  # the service answered: it is up
            self._wake()
        self.check()

    def gave_up(self, op: str, exc: GenAIError, inputs: int = 1) -> GenAIError:
        """The request (of ``inputs`` inputs) ended with ``exc`` after its retries.
        Returns the error to report for it; raises the trip error instead when this
        outcome completes a misconfiguration or an outage."""
        self.check()
        if exc.retryable:
            now = self.clock()
            self._failed_in_row += 1
            if self._failing_since is None:
                self._failing_since = now
            long = now - self._failing_since >= self.outage_seconds
            if self._failed_in_row >= self.outage_requests or (
                long and self._failed_in_row >= self.outage_min_requests
            ):
                self._trip(self._outage(exc, now - self._failing_since))
            return exc
        if exc.status is not None:
            # the service answered: whatever this is, it is not an outage
            self._failed_in_row = 0
            self._failing_since = None
        if exc.status == 400 and inputs == 1 and op not in self._succeeded:
            seen = self._rejected.setdefault(op, [])
            seen.append(exc)
            if len(seen) >= self.bad_request_inputs:
                self._trip(self._refused(op, seen))
            return _unconfirmed(exc)
        return exc

    # ------------------------------------------------------------------ tripping

    def _wake(self) -> None:
        for gate in self._gates.values():
            gate.wake()

    def _trip(self, error: PipelineError) -> None:
        if self.tripped is None:
            self.tripped = error
        self._wake()  # the waiters see the trip and raise
        raise self.tripped

    def _where(self) -> str:
        return f"at {self.target.endpoint}" if self.target.endpoint else "by the backend"

    def _not_found(self, op: str, exc: GenAIError) -> ConfigError:
        model, flag = (
            (self.target.embed_model, "--embed-model")
            if op == EMBED
            else (self.target.summary_model, "--summary-model")
        )
        return ConfigError(
            f"{op} model {model!r} was not found {self._where()}"
            f" ({exc.status} {exc.code or 'NotFound'}): set {flag}"
            f" (last answer: {exc})"
        )

    def _wrong_size(self, exc: DimensionMismatchError) -> ConfigError:
        head = f"the endpoint returns {exc.got}-d vectors; the job expects {exc.expected}"
        flag = self.target.dim_setting
        if flag == "--output-dimensions" and exc.got in _OUTPUT_DIMS:
            return ConfigError(f"{head}: set --output-dimensions {exc.got}")
        if flag == "--dim":
            return ConfigError(f"{head}: set --dim {exc.got}")
        return ConfigError(
            f"{head} (embed model {self.target.embed_model!r}): set --embed-model to the"
            " model this endpoint serves"
        )

    def _refused(self, op: str, seen: list[GenAIError]) -> ConfigError:
        last = seen[-1]
        return ConfigError(
            f"the service refused every {op} request and accepted none ({len(seen)} single"
            f" inputs got {last.status} {last.code or ''}); a setting is more likely at fault"
            f" than the inputs: check {_suspect(op, last.message)} (last answer: {last})"
        )

    def _outage(self, exc: GenAIError, seconds: float) -> OutageError:
        what = f"{exc.status} {exc.code or ''}".strip() if exc.status else type(exc).__name__
        hint = (
            "; the service is throttling this run: lower --max-rpm or --max-in-flight"
            if isinstance(exc, ThrottledError)
            else ""
        )
        return OutageError(
            f"the service failed the last {self._failed_in_row} requests after retries"
            f" over {seconds:.0f} s (last: {what}: {exc}); stopping;"
            f" committed work is kept, re-run to resume{hint}"
        )


def _unconfirmed(exc: GenAIError) -> UnconfirmedRequestError:
    out = UnconfirmedRequestError(
        f"{exc.message} (not dead-lettered: the service has accepted no request yet)",
        status=exc.status,
        code=exc.code,
        request_id=exc.request_id,
    )
    out.attempts = exc.attempts
    return out


#: words of a 400's message, and the setting they point at
_SUSPECTS = (
    ("outputdimensions", "--output-dimensions"),
    ("inputtype", "--input-type"),
    ("truncate", "--truncate"),
    ("compartment", "--compartment"),
    ("apiformat", "--chat-format"),
    ("servingmode", "the model setting"),
    ("model", "the model setting"),
)


def _suspect(op: str, message: str) -> str:
    flat = message.replace("_", "").replace(" ", "").lower()
    for word, flag in _SUSPECTS:
        if word in flat:
            if flag == "the model setting":
                return "--embed-model" if op == EMBED else "--summary-model"
            return flag
    if op == EMBED:
        return "--embed-model, --input-type, --truncate and --output-dimensions"
    return "--summary-model, --summary-api and --chat-format"
