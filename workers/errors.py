"""The worker's edge to AWS: one call, its failure turned into how the job ends.

The errors themselves live in the one hierarchy (``scope.errors``); the
classification of boto3 errors in ``cloud.errors``.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from cloud.errors import AWS_ERRORS, aws_error
from scope.errors import OperationFailed, TransientError, UpstreamError, job_error

__all__ = ["OperationFailed", "TransientError", "aws_call"]  # re-exported for workers.runner

T = TypeVar("T")


def aws_call(doing: str, fn: Callable[[], T]) -> T:
    """Run one AWS call (or an EcsReader read); a failure becomes a TransientError or an OperationFailed.

    An EcsReader read has already wrapped its boto3 error; it is classified
    again from its cause so that the message says what this operation was doing.
    """
    try:
        return fn()
    except UpstreamError as e:
        cause = e.__cause__
        raise job_error(aws_error(cause, doing) if isinstance(cause, AWS_ERRORS) else e) from e
    except AWS_ERRORS as e:
        raise job_error(aws_error(e, doing)) from e
