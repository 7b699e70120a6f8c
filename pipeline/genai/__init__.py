"""Model backends behind one interface (``pipeline.genai.base.Backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import JobConfig
    from pipeline.genai.base import Backend


def make_backend(config: JobConfig) -> Backend:
    """The backend a job asks for. Imports are lazy: the hash backend needs no model."""
    if config.backend == "local":
        from pipeline.genai.local import LocalBackend

        return LocalBackend(summary_input_tokens=config.summary_input_tokens)
    if config.backend == "hash":
        from pipeline.genai.hashembed import HashBackend

        return HashBackend(dim=config.dim, summary_input_tokens=config.summary_input_tokens)
    if config.backend == "oci":
        from pipeline.genai.oci_backend import OciBackend

        return OciBackend.from_config(config)
    raise ConfigError(f"backend: {config.backend!r} is not one of local, hash, oci")
