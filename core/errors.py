"""Exceptions that tell the CoreMachine how to treat a failure."""

from __future__ import annotations


class TaskError(Exception):
    """Base of task failures with a message a user can act on."""


class PermanentTaskError(TaskError):
    """Retrying cannot help (bad input, unsupported data): the task fails at once."""


class RetryableTaskError(TaskError):
    """A transient problem (network, lock, service busy): the task is retried with backoff."""


class JobCancelled(TaskError):
    """The task's job was cancelled (or ended otherwise) while the task ran: stop, roll back."""


class JobValidationError(ValueError):
    """Job parameters are invalid; `field` names the parameter at fault."""

    def __init__(self, message: str, field: str | None = None, kind: str = "validation_error") -> None:
        super().__init__(message)
        self.field = field
        self.kind = kind


class ResourceNotFoundError(LookupError):
    """A container, blob or record the request names does not exist."""


class ConflictError(Exception):
    """The request collides with existing state (e.g. the target table exists)."""


# Exceptions that retrying will not fix, whatever their origin.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentTaskError,
    ValueError,
    TypeError,
    KeyError,
    LookupError,
    NotImplementedError,
)


def is_retryable(exc: BaseException) -> bool:
    """Classify an exception raised by a task handler."""
    if isinstance(exc, RetryableTaskError):
        return True
    if isinstance(exc, PERMANENT_TYPES):
        return False
    import psycopg

    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return False  # class 54 (too many columns, row too big, ...): the same input hits the same limit
    if isinstance(exc, psycopg.errors.OperationalError | psycopg.errors.SerializationFailure):
        return True
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.LockNotAvailable):
        return True
    if isinstance(exc, psycopg.Error):
        return False  # data errors, constraint violations, programming errors
    return True  # unknown errors get the bounded retries; permanent ones are declared above
