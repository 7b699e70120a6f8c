"""Run metrics: per-shard reports and their merge into ``OUTPUT/report.json``."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.execute import CallStats

# Latency samples kept per shard report: enough for stable percentiles, bounded in size.
_MAX_SAMPLES = 20_000


def estimate_cost(characters: int, price_per_million_chars: float | None) -> float | None:
    """OCI bills embeddings per input character; None when no price is configured."""
    if price_per_million_chars is None:
        return None
    return round(characters / 1_000_000 * price_per_million_chars, 6)


def format_money(amount: float, currency: str = "USD") -> str:
    """``amount`` as money: two decimals with thousands separators; an amount under one
    cent keeps two significant digits (``USD 0.0000090``), never an exponent."""
    if amount < 0:
        return "-" + format_money(-amount, currency)
    if amount == 0 or amount >= 0.01:
        return f"{currency} {amount:,.2f}"
    digits = -math.floor(math.log10(amount)) + 1
    return f"{currency} {amount:.{digits}f}"


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(samples)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "max": round(float(arr.max()), 2),
    }


@dataclass
class ShardReport:
    shard_id: str
    run_id: str
    counts: Counter[str] = field(default_factory=Counter)
    failures_by_class: Counter[str] = field(default_factory=Counter)
    calls: CallStats = field(default_factory=CallStats)
    seconds: float = 0.0
    adaptive_cuts: int = 0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def add_failure(self, stage: str, error_class: str) -> None:
        self.failures_by_class[f"{stage}:{error_class}"] += 1

    def to_json(self) -> dict[str, Any]:
        lat = self.calls.latencies_ms
        if len(lat) > _MAX_SAMPLES:
            step = len(lat) / _MAX_SAMPLES
            lat = [lat[int(i * step)] for i in range(_MAX_SAMPLES)]
        return {
            "shard_id": self.shard_id,
            "run_id": self.run_id,
            "counts": dict(self.counts),
            "failures_by_class": dict(self.failures_by_class),
            "calls": {
                "calls": self.calls.calls,
                "retries": self.calls.retries,
                "throttled": self.calls.throttled,
                "errors": self.calls.errors,
                "input_tokens": self.calls.input_tokens,
                "input_chars": self.calls.input_chars,
                "peak_in_flight": self.calls.peak_in_flight,
                "latencies_ms": [round(x, 2) for x in lat],
            },
            "seconds": round(self.seconds, 3),
            "adaptive_cuts": self.adaptive_cuts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardReport:
        c = data.get("calls", {})
        return cls(
            shard_id=data["shard_id"],
            run_id=data["run_id"],
            counts=Counter(data.get("counts", {})),
            failures_by_class=Counter(data.get("failures_by_class", {})),
            calls=CallStats(
                calls=c.get("calls", 0),
                retries=c.get("retries", 0),
                throttled=c.get("throttled", 0),
                errors=c.get("errors", 0),
                input_tokens=c.get("input_tokens", 0),
                input_chars=c.get("input_chars", 0),
                latencies_ms=list(c.get("latencies_ms", [])),
                peak_in_flight=c.get("peak_in_flight", 0),
            ),
            seconds=data.get("seconds", 0.0),
            adaptive_cuts=data.get("adaptive_cuts", 0),
        )


@dataclass
class RunReport:
    data: dict[str, Any]

    @classmethod
    def merge(
        cls,
        shards: list[ShardReport],
        *,
        run_id: str,
        config: dict[str, Any],
        pipeline_version: str,
        price_per_million_chars: float | None,
        currency: str = "USD",
    ) -> RunReport:
        counts: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        calls = CallStats()
        seconds = 0.0
        for s in shards:
            counts.update(s.counts)
            failures.update(s.failures_by_class)
            calls.merge(s.calls)
            seconds += s.seconds
        chars = counts.get("characters_embedded", 0)
        data = {
            "run_id": run_id,
            "pipeline_version": pipeline_version,
            "finished_at": datetime.now(UTC).isoformat(),
            "shards": len(shards),
            "counts": dict(sorted(counts.items())),
            "failures_by_class": dict(sorted(failures.items())),
            "calls": {
                "calls": calls.calls,
                "retries": calls.retries,
                "throttled": calls.throttled,
                "errors": calls.errors,
                "input_tokens": calls.input_tokens,
                "input_chars": calls.input_chars,
                "peak_in_flight": calls.peak_in_flight,
                "latency_ms": _percentiles(calls.latencies_ms),
            },
            "shard_seconds": round(seconds, 3),
            "throughput": {
                "chunks_per_s": round(counts.get("chunks_embedded", 0) / seconds, 2)
                if seconds
                else None,
                "documents_per_s": round(counts.get("documents_read", 0) / seconds, 2)
                if seconds
                else None,
            },
            # the characters embedded at the embedding model's price (per million characters)
            "estimated_cost": estimate_cost(chars, price_per_million_chars),
            "price_per_million_chars": price_per_million_chars,
            "currency": currency,
            # JobConfig.public_dict(): settings and file paths; a job config holds no secrets
            "config": config,
        }
        return cls(data)

    def to_json(self) -> dict[str, Any]:
        return self.data
