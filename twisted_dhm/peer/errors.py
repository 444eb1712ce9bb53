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


class PeerError(Exception):
    """The other side answered with an Error frame."""

    def __init__(self, error: pb.Error) -> None:
        super().__init__(f"{pb.ErrorCode.Name(error.code)}: {error.message}")
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


def error_for_failure(failure: Failure, request_id: int) -> pb.Frame:
    error = failure.value
    if isinstance(error, errors.KVError):
        code = _CODE_OF.get(type(error), pb.ERROR_CODE_INVALID_REQUEST)
        acks = getattr(error, "acks", 0)
        required = getattr(error, "required", 0)
        return error_frame(code, error.message, request_id, acks, required)
    if isinstance(error, StorageError):
        return error_frame(pb.ERROR_CODE_STORAGE, str(error), request_id)
    message = "the node failed to handle this request; see its log"
    return error_frame(pb.ERROR_CODE_INTERNAL, message, request_id)
