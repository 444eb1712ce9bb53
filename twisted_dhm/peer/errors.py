"""Errors on the wire: exceptions to Error frames and back."""

from __future__ import annotations

from twisted.python.failure import Failure

from twisted_dhm import errors
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.storage import StorageError

_CODE_OF = {
    errors.PreconditionFailed: pb.ERROR_CODE_PRECONDITION_FAILED,
    errors.InvalidRequest: pb.ERROR_CODE_INVALID_REQUEST,
    errors.KeyTooLong: pb.ERROR_CODE_TOO_LARGE,
    errors.ValueTooLarge: pb.ERROR_CODE_TOO_LARGE,
    errors.Unavailable: pb.ERROR_CODE_UNAVAILABLE,
    errors.NotFound: pb.ERROR_CODE_NOT_FOUND,
    errors.Forbidden: pb.ERROR_CODE_FORBIDDEN,
}


def code_name(code: int) -> str:
    """``ERROR_CODE_NOT_FOUND`` for its number; a code this build does not know (a newer node's:
    protobuf enums are open, any number decodes) is ``ERROR_CODE_<number>``."""
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return f"ERROR_CODE_{code}"


class PeerError(Exception):
    """The other side answered with an Error frame."""

    def __init__(self, error: pb.Error) -> None:
        super().__init__(f"{code_name(error.code)}: {error.message}")
        self.code = error.code
        self.message = error.message
        self.acks = error.acks
        self.required = error.required


def error_frame(code: int, message: str, request_id: int = 0, acks: int = 0, required: int = 0) -> pb.Frame:
    frame = pb.Frame(id=request_id)
    frame.error.code = code
    frame.error.message = message
    frame.error.acks = acks
    frame.error.required = required
    return frame


def error_code(failure: Failure) -> int:
    """The ``ErrorCode`` a failed request is answered with."""
    error = failure.value
    if isinstance(error, errors.KVError):
        return _CODE_OF.get(type(error), pb.ERROR_CODE_INVALID_REQUEST)
    if isinstance(error, StorageError):
        return pb.ERROR_CODE_STORAGE
    return pb.ERROR_CODE_INTERNAL


def error_name(code: int) -> str:
    """``ERROR_CODE_NOT_FOUND`` -> ``not_found`` (metrics labels)."""
    return code_name(code).removeprefix("ERROR_CODE_").lower()


def error_for_failure(failure: Failure, request_id: int) -> pb.Frame:
    error = failure.value
    code = error_code(failure)
    if isinstance(error, errors.KVError):
        return error_frame(code, error.message, request_id, getattr(error, "acks", 0), getattr(error, "required", 0))
    if isinstance(error, StorageError):
        return error_frame(code, str(error), request_id)
    return error_frame(code, "the node failed to handle this request; see its log", request_id)
