"""The project's error tree. Classified in one place (the backends); callers only ask
``retryable`` or catch a branch.

    PipelineError
     ├── ConfigError          bad job configuration (named field, what is wrong); also a
     │                        setting the service shows to be wrong (dimension, model id)
     ├── SourceError          the source cannot be read at all (missing, unreadable, no id column)
     ├── StorageError         the output cannot be written (permission, disk full, vanished)
     ├── LockedError          another live run holds the output (names the holder)
     ├── OutageError          the service failed every recent call after retries: the run
     │                        stops early; what is committed stays, a re-run resumes
     └── GenAIError           a model call did not give a usable answer
          ├── RetryableError  worth another try: 429, 5xx except 501, timeouts, resets
          │    ├── ThrottledError     429 TooManyRequests (``retry_after`` when the server sent one)
          │    ├── ServerError        500, 502, 503, 504, 409 IncorrectState
          │    ├── TransportError     the request never completed: timeout, reset, refused
          │    └── BadResponseError   an answer that is not what was asked (count, dims, JSON);
          │                           treated as transient, up to the retry cap
          └── PermanentError  another try gives the same answer
               ├── BadRequestError    400: the inputs (or one of them) are invalid
               ├── AuthError          401 / 403: signature, key or policy
               └── ServiceError       any other 4xx, 501
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A job setting is invalid. The message names the setting and the problem."""


class SourceError(PipelineError):
    """The source as a whole cannot be read (a single bad row is a Failure, not this)."""


class StorageError(PipelineError):
    """The output cannot be written or read back. The message names the path."""


class LockedError(PipelineError):
    """Another live run holds the output. The message names the holder."""


class OutageError(PipelineError):
    """The service failed every recent call even after retries; stopping early is cheaper
    than trying every remaining document. Committed work stays; a re-run resumes."""


class GenAIError(PipelineError):
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        #: tries made before this error was final (set by the pipeline's call layer)
        self.attempts = 0

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"opc-request-id={self.request_id}")
        return " ".join(parts)


class RetryableError(GenAIError):
    retryable = True


class ThrottledError(RetryableError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(RetryableError):
    pass


class TransportError(RetryableError):
    pass


class BadResponseError(RetryableError):
    pass


class PermanentError(GenAIError):
    retryable = False


class BadRequestError(PermanentError):
    pass


class AuthError(PermanentError):
    pass


class ServiceError(PermanentError):
    pass
