"""The one classifier of boto3/botocore, redis-py and database errors, and the errors cloud adapters raise at the edge.

Every adapter wraps a library error where it catches it (``raise ... from e``)
into an ``UpstreamError`` (502) of the one hierarchy (``scope.errors``): an
``AwsError`` or a ``RedisTargetError``. Their ``transient`` says whether the
same call may succeed later (throttling, 5xx, a timeout): the worker retries
the job then, anything else fails it. Details are short and safe to show: an
AWS error code and what we were doing, never a request id, an ARN from AWS'
message, a URL or a credential.
"""
from __future__ import annotations

import redis
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from redis.exceptions import RedisClusterException
from sqlalchemy import exc as sa_exc

from scope.errors import UpstreamError

# What a boto3 call raises: catch exactly this at the edge of an AWS adapter.
AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
# Seconds a client is told to wait (Retry-After) when our database or Redis, or a Redis target,
# is unreachable: long enough not to hammer a recovering server, short enough for a restart or failover.
OUTAGE_RETRY_AFTER = 5
# What a redis-py call on a target (a cluster too) raises, plus sockets and a bad URL.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException, OSError, ValueError)

# "Slow down": retrying later helps. LimitExceededException is left out on purpose:
# botocore's standard retry mode counts it as throttling for every service, but in
# CloudWatch Logs (and ECS) it means a resource quota is reached ("maximum number
# of resources that can be created"); FilterLogEvents, the only Logs call we make,
# throttles with ThrottlingException.
THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "TooManyRequestsException",
                              "RequestLimitExceeded"})
# AWS' own trouble: 5xx codes (also recognised by the HTTP status) and request timeouts.
SERVER_ERROR_CODES = frozenset({"ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
                                "InternalError", "ServerException", "RequestTimeout", "RequestTimeoutException"})
TRANSIENT_CODES = THROTTLING_CODES | SERVER_ERROR_CODES
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
# No answer in time (after botocore's own retries): the endpoint may answer later.
TIMEOUT_ERRORS: tuple[type[Exception], ...] = (ConnectTimeoutError, ReadTimeoutError, EndpointConnectionError)


def error_code(e: BaseException) -> str:
    """The AWS error code of a ClientError ("" for anything else)."""
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", "Error"))
    return ""


def http_status(e: BaseException) -> int:
    if isinstance(e, ClientError):
        return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_throttling(e: BaseException) -> bool:
    return error_code(e) in THROTTLING_CODES


def is_transient(e: BaseException) -> bool:
    """Whether the same AWS call may succeed later: throttling, a 5xx, or no answer in time."""
    if isinstance(e, ClientError):
        return error_code(e) in TRANSIENT_CODES or http_status(e) >= 500
    return isinstance(e, TIMEOUT_ERRORS)


# How long a caller should wait after AWS throttled us or did not answer (Retry-After).
THROTTLED_RETRY_AFTER = 5
UNAVAILABLE_RETRY_AFTER = 10


class AwsError(UpstreamError):
    """AWS refused or failed a call; ``code`` is AWS' error code (or the botocore error's name).

    A transient one (throttling, AWS' own 5xx, no answer) is an outage from the caller's side:
    a page or API call answers 503 with Retry-After (DESIGN.md: an outage is 503, never 5xx
    of another kind), and a job is retried later. A refusal stays a 502 naming AWS' code.
    """

    def __init__(self, detail: str, code: str, *, transient: bool = False, throttled: bool = False) -> None:
        if transient:
            super().__init__(detail, code=code,
                             retry_after=THROTTLED_RETRY_AFTER if throttled else UNAVAILABLE_RETRY_AFTER)
            self.status, self.title = 503, "Service Unavailable"
        else:
            super().__init__(detail, code=code)
        self.code, self.transient, self.throttled = code, transient, throttled


def aws_error(e: BaseException, doing: str) -> AwsError:
    """A safe, short error for a failed AWS call made while ``doing`` (e.g. "stopping a task of api")."""
    transient = is_transient(e)
    if isinstance(e, ClientError):
        code = error_code(e)
        if transient:
            detail = f"AWS was unavailable while {doing} ({code})."
        elif code in ACCESS_DENIED_CODES:
            detail = f"AccessDenied while {doing}: Valet Key's AWS role lacks a permission."
        else:
            detail = f"AWS refused {doing}: {code}."
        return AwsError(detail, code, transient=transient, throttled=code in THROTTLING_CODES)
    name = type(e).__name__
    if transient:
        return AwsError(f"AWS did not answer while {doing} ({name}).", name, transient=True)
    if isinstance(e, BotoCoreError):
        return AwsError(f"AWS call failed while {doing} ({name}).", name)
    return AwsError(f"Unexpected error while {doing}.", name)


class RedisTargetError(UpstreamError):
    """A target Redis failed; the detail names the target only (never its URL or redis-py's text)."""

    def __init__(self, target: str, doing: str, cause: BaseException) -> None:
        self.transient = is_transient_redis(cause)
        detail = f"Redis target {target!r} failed while {doing} ({type(cause).__name__})."
        if self.transient:  # unreachable for now: an outage from the caller's side, 503 with Retry-After
            super().__init__(detail, retry_after=OUTAGE_RETRY_AFTER)
            self.status, self.title = 503, "Service Unavailable"
        else:  # a refused password or command stays a 502
            super().__init__(detail)


def is_transient_redis(e: BaseException) -> bool:
    """Connection trouble may pass; a refused password or command will not."""
    return (isinstance(e, (redis.ConnectionError, redis.TimeoutError))
            and not isinstance(e, redis.AuthenticationError))


# ---- outages of our own dependencies ---------------------------------------------------
# The database could not be reached or did not answer (connection refused or lost, pool or
# lock timeout): not a bad statement. IntegrityError and friends are not outages.
_DB_DOWN: tuple[type[Exception], ...] = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                                         sa_exc.TimeoutError)


def outage(e: BaseException) -> str | None:
    """What of ours is down when ``e`` says a dependency is unreachable ("database", "Redis"); else None.

    Redis: a refused or lost connection, or no answer in time (a wrong password or
    command is a bug, not an outage). Also looks through ``raise ... from`` causes.
    """
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        if isinstance(cur, _DB_DOWN) or (isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated):
            return "database"
        if is_transient_redis(cur):
            return "Redis"
        cur, seen = cur.__cause__, seen + 1
    return None
