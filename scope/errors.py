"""The one error hierarchy of Valet Key.

Every error a user can cause or meet is a ValetKeyError; the web layer turns
them into RFC 9457 problem responses in one place, the CLI into one line on
stderr. Errors of boto3/redis/SQLAlchemy are wrapped at the edge
(``raise ... from e``) so that no library exception text reaches a user.
"""
from __future__ import annotations

from typing import Any


class ValetKeyError(Exception):
    """Base of all domain errors; ``status`` is the HTTP status it maps to."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class ConfigError(ValetKeyError):
    """A configuration file or variable is wrong; start-up stops with exit status 2."""

    title = "Configuration error"

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


class BadRequest(ValetKeyError):
    status, title = 400, "Bad Request"


class ValidationFailed(BadRequest):
    """Input did not validate; ``fields`` maps each bad field to its messages."""

    title = "Validation failed"

    def __init__(self, fields: dict[str, Any], detail: str = "") -> None:
        names = ", ".join(sorted(fields))
        super().__init__(detail or f"Invalid field(s): {names}", fields=fields)
        self.fields = fields


class Unauthorized(ValetKeyError):
    status, title = 401, "Unauthorized"


class Forbidden(ValetKeyError):
    status, title = 403, "Forbidden"


class NotFound(ValetKeyError):
    status, title = 404, "Not Found"


class Conflict(ValetKeyError):
    status, title = 409, "Conflict"


class PayloadTooLarge(ValetKeyError):
    """A request body over its limit (DESIGN: 413), refused before it is parsed."""

    status, title = 413, "Content Too Large"


class Unavailable(ValetKeyError):
    """A dependency we must write to (DB, Redis) is down: we fail closed."""

    status, title = 503, "Service Unavailable"


class UpstreamError(ValetKeyError):
    """AWS (or a target Redis) refused or failed; the detail is safe to show.

    ``transient``: the same call may succeed later (throttling, 5xx, a timeout);
    set by the classifier in ``cloud.errors``, which raises these at the edge.
    """

    status, title = 502, "Bad Gateway"
    transient: bool = False


class OperationFailed(ValetKeyError):
    """A job's operation ran and did not reach its goal; ``detail`` is the human reason."""

    status, title = 502, "Operation failed"


class TransientError(ValetKeyError):
    """Throttling, 5xx or a timeout that outlasted botocore's own retries: retry the job later."""

    status, title = 503, "Temporarily unavailable"


def job_error(e: UpstreamError, suffix: str = "") -> OperationFailed | TransientError:
    """How an upstream failure ends a job: retried later when transient, failed otherwise."""
    return (TransientError if e.transient else OperationFailed)(e.detail + suffix)
