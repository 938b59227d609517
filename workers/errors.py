"""How an operation ends badly: a verified failure, or a transient error worth a retry."""
from __future__ import annotations

from typing import Callable, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from scope.errors import UpstreamError, ValetKeyError

T = TypeVar("T")

TRANSIENT_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
                   "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError",
                   "ServerException", "RequestTimeout", "RequestTimeoutException"}


class OperationFailed(ValetKeyError):
    """The operation ran and did not reach its goal; ``detail`` is the human reason."""

    status, title = 502, "Operation failed"


class TransientError(ValetKeyError):
    """Throttling, 5xx or a timeout that outlasted botocore's own retries: retry the job later."""

    status, title = 503, "Temporarily unavailable"


def classify(e: Exception, doing: str) -> ValetKeyError:
    """Wrap a boto3 error: transient ones are retried, the rest fail the job with a clear reason."""
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code", "Error")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in TRANSIENT_CODES or status >= 500:
            return TransientError(f"AWS was unavailable while {doing} ({code}).")
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            return OperationFailed(f"AccessDenied while {doing}: Valet Key's AWS role lacks a permission.")
        return OperationFailed(f"AWS refused {doing}: {code}.")
    if isinstance(e, (ConnectTimeoutError, ReadTimeoutError, EndpointConnectionError)):
        return TransientError(f"AWS did not answer while {doing} ({type(e).__name__}).")
    if isinstance(e, BotoCoreError):
        return OperationFailed(f"AWS call failed while {doing} ({type(e).__name__}).")
    return OperationFailed(f"Unexpected error while {doing}.")


def aws_call(doing: str, fn: Callable[[], T]) -> T:
    """Run one AWS call (or an EcsReader read); a failure becomes a TransientError or an OperationFailed."""
    try:
        return fn()
    except UpstreamError as e:
        raise classify(e.__cause__ or e, doing) from e
    except (ClientError, BotoCoreError) as e:
        raise classify(e, doing) from e
