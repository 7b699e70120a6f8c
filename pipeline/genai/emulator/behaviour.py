"""How the emulator misbehaves on purpose: rate limits, added latency, injected faults.

:class:`EmulatorConfig` is an immutable value; :class:`Behaviour` holds the current one
(swapped whole by :meth:`Behaviour.configure`, so a request never sees half an update),
the seeded random source, the rate windows (:class:`aiolimiter.AsyncLimiter` leaky
buckets) and the counters behind ``GET /_emulator/stats``. Every method of
:class:`Behaviour` takes one small lock, so tests may call it from their own thread while
the server's event loop uses it; :meth:`Behaviour.admit` alone runs in that loop, as the
limiters read its clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiolimiter import AsyncLimiter

#: the injected faults, in the order their rates are stacked on one uniform draw
FAULT_KINDS = ("fault", "timeout", "reset", "malformed", "wrong_count", "wrong_dim")
#: faults that only make sense for an embedText answer; other actions answer normally
EMBED_ONLY_FAULTS = frozenset({"wrong_count", "wrong_dim"})
EMBEDDERS = ("local", "hash")
# Gamma shape of the added latency: coefficient of variation 1/sqrt(4) = 0.5, a right
# skew like real service latencies without the lognormal's very long tail.
_LATENCY_SHAPE = 4.0


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything about the emulator that may change at run time.

    Rates are probabilities per request (0..1). The fault kinds are mutually exclusive:
    one uniform draw per request is compared against the stacked rates, so their sum must
    not exceed 1. ``rpm``/``tpm`` of 0 mean unlimited. ``dim`` of 0 means the model's own
    default dimension; ``context_tokens`` of 0, each model's own context window.
    ``retry_after`` of 0 sends no ``retry-after`` header on 429.
    Limits are leaky buckets (aiolimiter) draining continuously at ``rpm``/60 requests
    (``tpm``/60 tokens) per second, holding at most ``burst_s`` seconds' worth (at least
    one request): like an API gateway, not a fixed minute, so a client cannot burst a
    minute's budget.
    """

    embedder: str = "local"
    dim: int = 0
    rpm: int = 0
    tpm: int = 0
    burst_s: float = 2.0
    retry_after: float = 0.0
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 120.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    wrong_count_rate: float = 0.0
    wrong_dim_rate: float = 0.0
    reject_substring: str | None = None
    context_tokens: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"embedder must be one of {EMBEDDERS}, got {self.embedder!r}")
        for name in ("dim", "rpm", "tpm", "context_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.burst_s > 0:
            raise ValueError("burst_s must be > 0")
        for name in ("retry_after", "latency_ms", "timeout_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0")
        total = 0.0
        for kind in FAULT_KINDS:
            rate = getattr(self, f"{kind}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind}_rate must be within 0..1, got {rate}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault rates are exclusive and add up to {total:.3f} > 1")

    def replace(self, **fields: Any) -> EmulatorConfig:
        """A copy with ``fields`` changed; unknown names and bad values raise ValueError.
        Values are coerced to the field's type, so JSON numbers and CLI strings both work;
        None restores a field's default (``rpm=None``: unlimited again)."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"unknown emulator setting(s): {', '.join(unknown)}")
        coerced: dict[str, Any] = {}
        for name, value in fields.items():
            kind = known[name].type
            if value is None:  # None (JSON null) restores the default: rpm=None is unlimited
                coerced[name] = known[name].default
                continue
            try:
                if kind in ("str", "str | None"):
                    coerced[name] = str(value)
                elif kind == "int":
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError
                    coerced[name] = int(value)
                else:
                    coerced[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: bad value {value!r}") from None
        if coerced.get("reject_substring") == "":
            coerced["reject_substring"] = None  # "" would match every input
        return dataclasses.replace(self, **coerced)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Behaviour:
    """The live state: current config, seeded RNG, rate windows and statistics."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        # the rate windows, made on first use in the running loop (None: not made yet)
        self._limits: _Limits | None = None
        self._stats = _Stats()

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def configure(self, **fields: Any) -> EmulatorConfig:
        """Apply ``fields`` (see :meth:`EmulatorConfig.replace`). A new ``seed`` re-seeds
        the random source, so a run can be replayed from that point."""
        with self._lock:
            self._config = self._config.replace(**fields)
            if {"rpm", "tpm", "burst_s"} & set(fields):
                self._limits = None  # new limits start with all their capacity
            if "seed" in fields:
                self._rng.seed(self._config.seed)
            return self._config

    def reset(self) -> None:
        """Zero the statistics and the rate windows, and re-seed the random source."""
        with self._lock:
            self._limits = None
            self._stats = _Stats()
            self._rng.seed(self._config.seed)

    # ----------------------------------------------------------------- per request

    async def admit(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` estimated tokens fits both buckets now; never
        waits. Only an admitted request takes from them, so a throttled client that
        retries does not push its own retry further out. A request larger than the token
        bucket passes when the bucket is empty, and fills it (it could never pass
        otherwise). Runs in the server's event loop: the limiters read its clock."""
        loop = asyncio.get_running_loop()
        with self._lock:
            limits = self._limits
            if limits is None or limits.loop is not loop:
                limits = self._limits = _Limits(self._config, loop)
            tok_amount = 0.0
            if limits.tokens is not None:
                tok_amount = min(float(tokens), limits.tokens.max_rate)
            if limits.requests is not None and not limits.requests.has_capacity(1):
                return False
            if limits.tokens is not None and not limits.tokens.has_capacity(tok_amount):
                return False
            # Both have the capacity, so neither acquire waits: no other task runs between
            # the checks and here, and the lock keeps other threads out.
            if limits.requests is not None:
                await limits.requests.acquire(1)
            if limits.tokens is not None:
                await limits.tokens.acquire(tok_amount)
            return True

    def draw_fault(self, action: str) -> str | None:
        """The fault to inject into this request, or None. One draw per request, whatever
        the action, so the sequence of outcomes depends only on the seed and arrival order."""
        cfg = self._config
        with self._lock:
            u = self._rng.random()
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(cfg, f"{kind}_rate")
            if u < edge:
                if kind in EMBED_ONLY_FAULTS and action != "embedText":
                    return None
                return kind
        return None

    def draw_latency(self) -> float:
        """Seconds to sleep before answering: gamma distributed around ``latency_ms``."""
        mean = self._config.latency_ms / 1000.0
        if mean <= 0:
            return 0.0
        with self._lock:
            return self._rng.gammavariate(_LATENCY_SHAPE, mean / _LATENCY_SHAPE)

    def draw_5xx(self) -> int:
        with self._lock:
            return 500 if self._rng.random() < 0.5 else 503

    # ----------------------------------------------------------------- statistics

    def count(self, key: str, label: str | int | None = None, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (with a ``label`` for the per-kind tables)."""
        with self._lock:
            self._stats.add(key, label, n)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.snapshot()


class _Limits:
    """The rate windows of one config in one event loop: a leaky bucket per limit
    (None: unlimited), holding ``burst_s`` seconds' worth (at least one request or
    token) and draining at the per-minute rate / 60 per second. They start empty, i.e.
    with all their capacity."""

    __slots__ = ("loop", "requests", "tokens")

    def __init__(self, cfg: EmulatorConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests = _bucket(cfg.rpm, cfg.burst_s)
        self.tokens = _bucket(cfg.tpm, cfg.burst_s)


def _bucket(per_minute: int, burst_s: float) -> AsyncLimiter | None:
    if not per_minute:
        return None
    rate = per_minute / 60.0
    capacity = max(1.0, rate * burst_s)
    return AsyncLimiter(max_rate=capacity, time_period=capacity / rate)


class _Stats:
    _TABLES = ("actions", "statuses", "faults", "object_storage")
    _SCALARS = ("requests", "throttled", "inputs_embedded", "unauthenticated", "tokens")

    def __init__(self) -> None:
        self.scalars: Counter[str] = Counter({k: 0 for k in self._SCALARS})
        self.tables: dict[str, Counter[str]] = {k: Counter() for k in self._TABLES}

    def add(self, key: str, label: str | int | None, n: int) -> None:
        if key in self.tables:
            self.tables[key][str(label)] += n
        elif key in self.scalars:
            self.scalars[key] += n
        else:
            raise KeyError(key)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.scalars)
        out.update({k: dict(v) for k, v in self.tables.items()})
        return out
