"""JobConfig: every setting of a run, validated once, frozen afterwards.

Built from a YAML file, CLI flags or Airflow params through ``JobConfig.from_mapping``;
the same keys work everywhere (``--max-rpm`` on the command line is ``max_rpm`` in YAML
and in a DAG run's conf).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from pipeline.errors import ConfigError

BACKENDS = ("local", "oci", "hash")
AUTH_MODES = (
    "api_key",
    "instance_principal",
    "resource_principal",
    "security_token",
    "workload_identity",
)
_LENGTHS = ("SHORT", "MEDIUM", "LONG", "AUTO")
_FORMATS = ("PARAGRAPH", "BULLETS", "AUTO")
_EXTRACTIVENESS = ("LOW", "MEDIUM", "HIGH", "AUTO")
_INPUT_TYPES = ("SEARCH_DOCUMENT", "SEARCH_QUERY", "CLASSIFICATION", "CLUSTERING")

# Per backend: (embedding model, summary model, tokens per chunk incl. special tokens)
_BACKEND_DEFAULTS: dict[str, tuple[str, str, int]] = {
    "local": ("local/all-MiniLM-L6-v2-int8", "local/mmr-minilm", 256),
    "hash": ("hash/blake2b", "hash/lead", 256),
    # oci counts UTF-8 bytes (an upper bound of any tokenizer's count): 2048 bytes are about
    # 500 tokens of English, and the cap is the model's per-input limit (512 for v3 models)
    "oci": ("cohere.embed-v4.0", "cohere.command-a-03-2025", 2048),
}


# Sane ranges of the integer settings: a value outside is a typo (or a unit mix-up), and
# refusing it at once is cheaper than a run that misbehaves or a limiter that overflows.
INT_RANGES: dict[str, tuple[int, int]] = {
    "batch_docs": (1, 1_000_000),
    "shards": (1, 100_000),
    "max_rpm": (1, 10_000_000),
    "max_tpm": (1, 10_000_000_000),
    "max_in_flight": (1, 10_000),
    "concurrent_shards": (1, 10_000),
    "max_attempts": (1, 100),
    "dim": (1, 65_536),
    "chunk_tokens": (16, 1_000_000),
    "chunk_overlap": (0, 1_000_000),
    "summary_input_tokens": (256, 10_000_000_000),
    "part_rows": (1, 10_000_000),
    "part_bytes": (1, 10_000_000_000),
}
# Seconds a single request may take: more than a day is a unit mix-up (ms for s).
_MAX_TIMEOUT_S = 86_400.0
# A run id names directories under the output: no separators, no leading dot.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


#: what a ``redis_url`` may start with (redis-py's URL schemes)
REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with its password masked, for logs, reports and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class JobConfig:
    source: str
    output: str
    backend: str = "local"
    embed_model: str | None = None
    summary_model: str | None = None
    summaries: bool = True
    summary_length: str = "SHORT"
    summary_format: str = "PARAGRAPH"
    summary_extractiveness: str = "AUTO"
    # most tokens (UTF-8 bytes) of text one summary call reads; longer documents are
    # summarized map-reduce. None: the summary model's default (pipeline.mapreduce)
    summary_input_tokens: int | None = None
    # chunking (tokens; None = the backend's per-input limit)
    chunk_tokens: int | None = None
    chunk_overlap: int = 32
    # source
    id_column: str = "doc_id"
    text_column: str = "text"
    passthrough: tuple[str, ...] = ()
    json_text_field: str = "text"
    glob: str | None = None
    follow_links: bool = False  # directory sources: follow links that leave the source
    # only files / objects modified in [modified_since, modified_until): ISO 8601 dates or
    # date-times, UTC when no zone; kept in the canonical form 2026-01-31T06:00:00Z
    modified_since: str | None = None
    modified_until: str | None = None
    # execution
    batch_docs: int = 256
    # a committed part closes at this many chunk rows or estimated output bytes
    part_rows: int = 10_000
    part_bytes: int = 64_000_000
    shards: int = 1
    max_rpm: int | None = None
    max_tpm: int | None = None
    max_in_flight: int = 8
    # the rate budget: one shared by every process through Redis when a URL is set (else
    # the environment's OCI_GENAI_REDIS_URL); without it, each of the shards running at
    # once (None: 1, the CLI runs its shards in turn) takes 1/concurrent_shards of max_rpm
    # and max_tpm. See pipeline.budget
    redis_url: str | None = None
    concurrent_shards: int | None = None
    max_attempts: int = 6
    dim: int = 384  # hash backend only
    dry_run: bool = False
    retry_failed: bool = False
    keep_chunk_text: bool = True
    progress: bool | None = None  # None: a bar when stderr is a terminal
    run_id: str = field(default_factory=new_run_id)
    price_per_million_chars: float | None = None
    # price per million characters by model id (embedding and summary models; OCI bills
    # on-demand models by characters); price_per_million_chars stands for the embedding
    # model when it is not in the table. Shown in the dry run, checked by max_cost
    prices: dict[str, float] | None = None
    currency: str = "USD"
    max_cost: float | None = None
    # OCI
    oci_config: str | None = None
    oci_profile: str = "DEFAULT"
    auth: str = "api_key"
    compartment: str | None = None
    genai_endpoint: str | None = None
    os_endpoint: str | None = None
    region: str | None = None
    input_type: str = "SEARCH_DOCUMENT"
    truncate: str = "END"
    output_dimensions: int | None = None
    summary_api: str = "chat"  # chat | summarize_text
    chat_format: str | None = None  # COHERE | GENERIC; None: by model id (cohere.* -> COHERE)
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("source: required (a path or URI of the documents)")
        if not self.output:
            raise ConfigError("output: required (a path or URI for the results)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"auth: {self.auth!r} is not one of {', '.join(AUTH_MODES)}")
        self._check_ranges()
        limit = self.chunk_tokens or _BACKEND_DEFAULTS[self.backend][2]
        if not 0 <= self.chunk_overlap < limit // 2:
            raise ConfigError(
                f"chunk_overlap: must be between 0 and {limit // 2 - 1} for chunks of"
                f" {limit} tokens, got {self.chunk_overlap}"
            )
        choices: tuple[tuple[str, str, tuple[str, ...]], ...] = (
            ("summary_length", self.summary_length, _LENGTHS),
            ("summary_format", self.summary_format, _FORMATS),
            ("summary_extractiveness", self.summary_extractiveness, _EXTRACTIVENESS),
            ("input_type", self.input_type, _INPUT_TYPES),
            ("truncate", self.truncate, ("NONE", "START", "END")),
            ("summary_api", self.summary_api, ("chat", "summarize_text")),
        )
        for name, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        if self.chat_format is not None and self.chat_format not in ("COHERE", "GENERIC"):
            raise ConfigError(f"chat_format: {self.chat_format!r} is not one of COHERE, GENERIC")
        if self.output_dimensions is not None and self.output_dimensions not in (
            256,
            512,
            1024,
            1536,
        ):
            raise ConfigError(
                f"output_dimensions: {self.output_dimensions} is not one of 256, 512, 1024, 1536"
            )
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in REDIS_SCHEMES:
            raise ConfigError(
                f"redis_url: {redact_url(self.redis_url)!r} is not a Redis URL (it must start"
                f" with {', '.join(s + '://' for s in REDIS_SCHEMES)})"
            )
        if self.max_cost is not None and self.price_per_million_chars is None and not self.prices:
            raise ConfigError(
                "max_cost: needs prices (or price_per_million_chars) to estimate a cost"
            )
        self._check_window()

    def _check_window(self) -> None:
        """``modified_since`` / ``modified_until`` parsed, put in canonical UTC form, and
        in order."""
        for name in ("modified_since", "modified_until"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                value = None  # an emptied form field: no bound
            if value is not None:
                value = format_instant(parse_instant(name, value))
            object.__setattr__(self, name, value)
        since, until = self.modified_window
        if since is not None and until is not None and since >= until:
            raise ConfigError(
                f"modified_since: {self.modified_since} is not before modified_until"
                f" {self.modified_until} (the window is [since, until): since inclusive,"
                " until exclusive)"
            )

    def _check_ranges(self) -> None:
        """Integers within ``INT_RANGES``, finite non-negative money, a safe run id."""
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name, None)
            if value is None:
                continue  # an optional setting left unset (max_rpm, chunk_tokens, ...)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name}: must be an integer from {low} to {high}, got {value!r}")
        if not _finite(self.timeout_s) or not 0 < self.timeout_s <= _MAX_TIMEOUT_S:
            raise ConfigError(
                f"timeout_s: must be more than 0 and at most {_MAX_TIMEOUT_S:.0f} seconds,"
                f" got {self.timeout_s!r}"
            )
        for name in ("price_per_million_chars", "max_cost"):
            value = getattr(self, name)
            if value is not None and (not _finite(value) or value < 0):
                raise ConfigError(f"{name}: must be a finite number of at least 0, got {value!r}")
        for model, price in (self.prices or {}).items():
            if not _finite(price) or price < 0:
                raise ConfigError(
                    f"prices: {model}: must be a finite number of at least 0, got {price!r}"
                )
        if not isinstance(self.run_id, str) or not RUN_ID_PATTERN.fullmatch(self.run_id):
            raise ConfigError(
                f"run_id: {self.run_id!r} is not allowed: 1 to 64 letters, digits, '.', '_'"
                " or '-', starting with a letter or digit"
            )

    # ------------------------------------------------------------------ derived values

    @property
    def embed_model_id(self) -> str:
        return self.embed_model or _BACKEND_DEFAULTS[self.backend][0]

    @property
    def embed_price(self) -> float | None:
        """The embedding model's price per million characters: its entry in ``prices``,
        else ``price_per_million_chars``; None when neither is set."""
        return (self.prices or {}).get(self.embed_model_id, self.price_per_million_chars)

    @property
    def summary_model_id(self) -> str:
        return self.summary_model or _BACKEND_DEFAULTS[self.backend][1]

    @property
    def default_chunk_tokens(self) -> int:
        return _BACKEND_DEFAULTS[self.backend][2]

    @property
    def modified_window(self) -> tuple[datetime | None, datetime | None]:
        """``(since, until)`` as aware UTC datetimes (None: unbounded)."""
        since, until = self.modified_since, self.modified_until
        return (
            datetime.fromisoformat(since) if since else None,
            datetime.fromisoformat(until) if until else None,
        )

    def replace(self, **changes: Any) -> JobConfig:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to write into reports and logs (paths, never key material; a
        password in ``redis_url`` is masked)."""
        out = dataclasses.asdict(self)
        if self.redis_url:
            out["redis_url"] = redact_url(self.redis_url)
        return out

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, origin: str = "config") -> JobConfig:
        """Build from a dict (YAML, CLI, Airflow params). Unknown keys are an error;
        keys may use dashes or underscores; None values mean "the default"."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"{origin}: unknown setting {raw_key!r} (known: {', '.join(sorted(known))})"
                )
            if value is None:
                continue
            kwargs[key] = _coerce(key, value, known[key].type, origin)
        for name in ("source", "output"):
            if name not in kwargs:
                raise ConfigError(f"{origin}: {name} is required")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str, overrides: Mapping[str, Any] | None = None) -> JobConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of settings at the top")
        merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        return cls.from_mapping(merged, origin=f"config file {path}")

    # ------------------------------------------------------------------ JSON (Airflow XCom)

    def to_json(self) -> dict[str, Any]:
        """Every field (found with ``dataclasses.fields``, so new fields follow) as JSON
        values: tuples become lists. ``from_json(c.to_json()) == c``, run_id included."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str, *, origin: str = "config JSON") -> JobConfig:
        """The inverse of :meth:`to_json` (a dict, or its JSON text). Values are validated
        as in :meth:`from_mapping`; an unknown key is a ConfigError; a None value is kept as
        None (not replaced by the default), so what was saved is what comes back."""
        if isinstance(data, str):
            import json

            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ConfigError(f"{origin}: not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: expected an object of settings")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {
            key: None if value is None else _coerce(key, value, known[key].type, origin)
            for key, value in data.items()
        }
        missing = [name for name in ("source", "output") if kwargs.get(name) is None]
        if missing:
            raise ConfigError(f"{origin}: required setting(s) missing: {', '.join(missing)}")
        return cls(**kwargs)


def parse_instant(name: str, value: object) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time (UTC when it has no zone) as an
    aware UTC datetime; a ConfigError naming ``name`` otherwise."""
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        try:
            # fromisoformat takes dates, "T" or " " date-times, offsets and "Z"
            moment = datetime.fromisoformat(text) if text else None
        except ValueError:
            moment = None
    if moment is None:
        raise ConfigError(
            f"{name}: {value!r} is not an ISO 8601 date or date-time (for example"
            " 2026-01-31, 2026-01-31T06:00:00Z or 2026-01-31T08:00:00+02:00)"
        )
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_instant(moment: datetime) -> str:
    """The canonical text of an instant: ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _prices(value: Any) -> dict[str, float]:
    """A price table: a mapping, its JSON text, or ``model=price,model=price``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import json

            value = json.loads(text)
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(value)
            value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise TypeError(value)
    out: dict[str, float] = {}
    for model, price in value.items():
        if isinstance(price, bool):
            raise ValueError(price)
        out[str(model)] = float(price)
    return out


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(key: str, value: Any, annotation: Any, origin: str) -> Any:
    text = str(annotation)
    try:
        if text.startswith("dict"):
            return _prices(value)
        if "tuple" in text:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if text.startswith("bool"):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if text.startswith("float"):
            return float(value)
        if text.startswith("str"):
            if key in ("source", "output", "oci_config"):
                return os.path.expanduser(str(value))
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {key} = {value!r} is not a valid {text}") from None
    return value
