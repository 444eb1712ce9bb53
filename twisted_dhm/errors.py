"""Errors that reach clients, each with a stable machine-readable code."""

from __future__ import annotations


class KVError(Exception):
    """An operation that cannot be done as asked.  ``code`` is stable API."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(KVError):
    code = "invalid_request"


class KeyTooLong(KVError):
    code = "key_too_long"


class ValueTooLarge(KVError):
    code = "value_too_large"


class PreconditionFailed(KVError):
    code = "precondition_failed"


class Forbidden(KVError):
    code = "forbidden"


class NotFound(KVError):
    code = "not_found"


class Unavailable(KVError):
    """Too few replicas answered.  ``acks`` did, ``required`` had to."""

    code = "unavailable"

    def __init__(self, message: str, acks: int = 0, required: int = 0) -> None:
        super().__init__(message)
        self.acks = acks
        self.required = required
