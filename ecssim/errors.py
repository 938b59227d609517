"""AWS errors the simulator raises; moto serializes them with the operation's error shapes."""
from __future__ import annotations

from moto.core.exceptions import ServiceException


class InvalidParameterException(ServiceException):
    code = "InvalidParameterException"


class ClientException(ServiceException):
    code = "ClientException"


class ServiceNotFoundException(ServiceException):
    code = "ServiceNotFoundException"
    message = "Service not found."


class ThrottlingException(ServiceException):
    # Not in ECS's model: AWS answers HTTP 400 with this code, which botocore's retry
    # handler recognises as throttling (botocore/data/_retry.json "throttling" codes).
    code = "ThrottlingException"
    message = "Rate exceeded"


class ConflictException(ServiceException):
    """RunTask with a clientToken already used with other parameters (ECS_Idempotency)."""

    code = "ConflictException"

    def __init__(self, message: str, resource_ids: list[str]) -> None:
        super().__init__(message)
        self.resourceIds = resource_ids


class ImageNotFoundException(ServiceException):
    code = "ImageNotFoundException"


class RepositoryNotFoundException(ServiceException):
    code = "RepositoryNotFoundException"
