"""The native protocol, shared by ``NativeClient`` and ``TwistedNativeClient``.

Framing, the handshake, request frames and the reading of answers, with no I/O,
so the blocking and the Twisted client cannot drift apart.  The wire format is
described in ``docs/protocol.md``; the schema is ``proto/dhashmap/v1/peer.proto``
(the generated code in ``_pb`` is a copy of the server's, checked by a test).
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf.message import DecodeError

from dhashmap_client._pb import peer_pb2 as pb
from dhashmap_client._protocol import BytesLike, Value, quote_version, to_bytes
from dhashmap_client.errors import (
    ConnectionError,
    DhashmapError,
    Forbidden,
    HandshakeError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    ServerError,
    Timeout,
    Unavailable,
    ValueTooLarge,
)

PROTOCOL_VERSION = 3
DEFAULT_CLUSTER = "dhashmap"
DEFAULT_PORT = 7000
# The largest frame a node may send us: its frames are bounded by max_value_size
# (at most 1 GiB) + max_key_size (at most 64 KiB) + 1 MiB of overhead.
DEFAULT_MAX_FRAME = (1 << 30) + (64 << 10) + (1 << 20)
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600  # what the node's REST API accepts
MAX_COUNT = 2**32 - 1

PREFIX = struct.Struct(">I")

_LEVELS = {
    "one": pb.Consistency.LEVEL_ONE,
    "quorum": pb.Consistency.LEVEL_QUORUM,
    "all": pb.Consistency.LEVEL_ALL,
}

_HANDSHAKE_CODES = {
    pb.ERROR_CODE_VERSION_MISMATCH: "version_mismatch",
    pb.ERROR_CODE_CLUSTER_MISMATCH: "cluster_mismatch",
    pb.ERROR_CODE_PARTITIONS_MISMATCH: "partitions_mismatch",
}


# -- framing -----------------------------------------------------------------------------------


def encode(frame: pb.Frame) -> bytes:
    """One frame on the wire: 4-byte big-endian length, then the serialized ``Frame``."""
    data = frame.SerializeToString()
    return PREFIX.pack(len(data)) + data


def decode(data: bytes) -> pb.Frame:
    frame = pb.Frame()
    try:
        frame.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ConnectionError(f"the node sent an undecodable frame: {e}", code="bad_frame") from e
    return frame


class FrameReader:
    """Splits a byte stream into frame payloads; refuses frames over ``max_frame`` bytes."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= PREFIX.size:
            (length,) = PREFIX.unpack_from(self._buffer)
            if length > self.max_frame:
                raise ConnectionError(
                    f"the node sent a frame of {length} bytes, over this client's limit of {self.max_frame}",
                    code="bad_frame")
            end = PREFIX.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[PREFIX.size:end]))
            del self._buffer[:end]
        return frames


# -- handshake ---------------------------------------------------------------------------------


def hello_frame(cluster: str, software_version: str = "") -> pb.Frame:
    """The client's ``Hello``: id 0, protocol version, cluster, ``ROLE_CLIENT``, no node id."""
    frame = pb.Frame(id=0)
    frame.hello.protocol_version = PROTOCOL_VERSION
    frame.hello.cluster = cluster
    frame.hello.role = pb.ROLE_CLIENT
    frame.hello.software_version = software_version
    return frame


def check_hello(frame: pb.Frame, cluster: str) -> pb.Hello:
    """The node's first frame: its ``Hello`` if compatible, else the error to raise.

    The node sends its ``Hello`` before it has read ours, so its ``Hello`` is no
    acceptance; but it refuses ours exactly when the version or the cluster
    differ, and both are in its ``Hello``, so checking them here tells us early.
    """
    body = frame.WhichOneof("body")
    if body == "error":
        raise connection_error(frame.error)
    if body != "hello":
        raise ConnectionError(f"the node's first frame is {body!r}, not a Hello", code="bad_frame")
    hello = frame.hello
    if hello.protocol_version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"the node speaks native protocol version {hello.protocol_version}; this client speaks "
            f"{PROTOCOL_VERSION}", code="version_mismatch")
    if hello.cluster != cluster:
        raise HandshakeError(
            f"the node {hello.node_id or '?'} belongs to cluster {hello.cluster!r}, not {cluster!r}",
            code="cluster_mismatch")
    return hello


def check_cluster(cluster: str) -> str:
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"cluster must be a non-empty str, not {cluster!r}")
    return cluster


# -- errors ------------------------------------------------------------------------------------


def _name(code: int) -> str:
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return f"ERROR_CODE_{code}"


def connection_error(error: pb.Error) -> DhashmapError:
    """An ``Error`` frame with id 0: the node is closing the connection, and why."""
    message = f"the node closed the connection: {error.message or _name(error.code)}"
    if error.code in _HANDSHAKE_CODES:
        return HandshakeError(message, code=_HANDSHAKE_CODES[error.code])
    if error.code == pb.ERROR_CODE_TOO_LARGE:
        # The length prefix was over the node's frame limit (max value + max key + 1 MiB).
        return ValueTooLarge(message, code="frame_too_large")
    if error.code == pb.ERROR_CODE_BAD_FRAME:
        return ConnectionError(message, code="bad_frame")
    return ConnectionError(message)


def request_error(error: pb.Error) -> DhashmapError:
    """An ``Error`` frame answering a request: the same class the REST client raises."""
    code, message = error.code, error.message or _name(error.code)
    if code == pb.ERROR_CODE_NOT_FOUND:
        return NotFound(message)
    if code == pb.ERROR_CODE_PRECONDITION_FAILED:
        return PreconditionFailed(message)
    if code == pb.ERROR_CODE_INVALID_REQUEST:
        return InvalidRequest(message)
    if code == pb.ERROR_CODE_UNAVAILABLE:
        return Unavailable(message, acks=error.acks, required=error.required)
    if code == pb.ERROR_CODE_BUSY:
        return Unavailable(message, code="busy")  # retryable, like any Unavailable
    if code == pb.ERROR_CODE_FORBIDDEN:
        return Forbidden(message)
    if code == pb.ERROR_CODE_STORAGE:
        return Unavailable(message, code="storage_error")
    if code == pb.ERROR_CODE_TIMEOUT:
        return Timeout(message, code="timeout")
    if code == pb.ERROR_CODE_TOO_LARGE:
        # The code does not say which; the node's messages name the key when it is the key.
        return KeyTooLong(message) if "key" in message.lower() else ValueTooLarge(message)
    if code in _HANDSHAKE_CODES:
        return HandshakeError(message, code=_HANDSHAKE_CODES[code])
    if code == pb.ERROR_CODE_INTERNAL:
        return ServerError(message)
    try:
        name = pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()
    except ValueError:  # a code newer than this client
        name = f"error_code_{code}"
    return ServerError(message, code=name)


# -- requests ----------------------------------------------------------------------------------


def set_consistency(target: pb.Consistency, level: str | int | None, name: str) -> None:
    """``"one"``, ``"quorum"``, ``"all"`` or a replica count; ``None`` leaves the node's default."""
    if level is None:
        return
    if isinstance(level, str):
        if level not in _LEVELS:
            raise ValueError(f"{name} must be 'one', 'quorum', 'all' or a number of replicas, not {level!r}")
        target.level = _LEVELS[level]
        return
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"{name} must be a str level or an int, not {type(level).__name__}")
    # A count of 0 would mean "the node's default" on the wire: refuse it rather than
    # silently read or write at quorum.
    if not 1 <= level <= MAX_COUNT:
        raise ValueError(f"{name} must be at least 1, not {level}")
    target.count = level


def ttl_seconds(ttl: float | None) -> int:
    """Whole seconds for ``Put.ttl_seconds`` (0: none).

    Checked here against the range the REST API accepts, since on the wire 0
    means "no expiry" and the node does not check the range: a ``ttl=0`` must
    not silently become a value that never expires.
    """
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a whole number of seconds, not {type(ttl).__name__}")
    if isinstance(ttl, float):
        if not ttl.is_integer():  # also refuses inf and nan
            raise ValueError(f"ttl must be a whole number of seconds, not {ttl!r}")
        ttl = int(ttl)
    if not 1 <= ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"ttl must be from 1 to {MAX_TTL_SECONDS} seconds", code="invalid_request")
    return ttl


def match_token(if_match: str | None) -> str:
    """``Put/Delete.if_match``: ``""`` for none, ``"*"`` for any, else the bare token.

    A quoted ETag (as copied from the REST API) is accepted and unquoted.  An
    empty string is refused: on the wire it would mean "no condition".
    """
    if if_match is None:
        return ""
    quoted = quote_version(if_match)
    return quoted if quoted == "*" else quoted[1:-1]


def get_request(key: BytesLike, r: str | int | None = None) -> pb.Frame:
    frame = pb.Frame()
    frame.get.key = to_bytes(key, "key")
    set_consistency(frame.get.r, r, "r")
    return frame


def put_request(key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
                if_none_match: bool = False, w: str | int | None = None) -> pb.Frame:
    frame = pb.Frame()
    put = frame.put
    put.key = to_bytes(key, "key")
    put.value = to_bytes(value, "value")
    put.ttl_seconds = ttl_seconds(ttl)
    put.if_match = match_token(if_match)
    put.if_none_match = bool(if_none_match)
    set_consistency(put.w, w, "w")
    return frame


def delete_request(key: BytesLike, if_match: str | None = None, w: str | int | None = None) -> pb.Frame:
    frame = pb.Frame()
    frame.delete.key = to_bytes(key, "key")
    frame.delete.if_match = match_token(if_match)
    set_consistency(frame.delete.w, w, "w")
    return frame


def ping_request(sent_at_ms: int) -> pb.Frame:
    frame = pb.Frame()
    frame.ping.sent_at_ms = max(0, sent_at_ms)
    return frame


# -- answers -----------------------------------------------------------------------------------

_ANSWER_OF = {"get": "get_result", "put": "put_result", "delete": "delete_result", "ping": "pong"}


def answer_body(request: pb.Frame, answer: pb.Frame) -> Any:
    """The answer's body message if it is the right kind; raises the typed error otherwise."""
    body = answer.WhichOneof("body")
    if body == "error":
        raise request_error(answer.error)
    expected = _ANSWER_OF[request.WhichOneof("body") or ""]
    if body != expected:
        raise DhashmapError(f"the node answered {expected} with {body!r}", code="bad_response")
    return getattr(answer, body)


def get_answer(request: pb.Frame, answer: pb.Frame) -> Value:
    result = answer_body(request, answer)
    if not result.found:
        raise NotFound("no value for this key")
    return Value(result.value, result.version)


def put_answer(request: pb.Frame, answer: pb.Frame) -> str:
    result = answer_body(request, answer)
    if not result.version:
        raise DhashmapError("the node sent no version", code="bad_response")
    return str(result.version)


def delete_answer(request: pb.Frame, answer: pb.Frame) -> None:
    answer_body(request, answer)


def not_served(request: pb.Frame) -> pb.Frame | None:
    """What a client answers to a request from the node: a Pong, or an error; ``None`` for no answer."""
    body = request.WhichOneof("body")
    if body == "ping":
        answer = pb.Frame(id=request.id)
        answer.pong.sent_at_ms = request.ping.sent_at_ms
        return answer
    if body in ("hello", "error") or body is None or body.endswith("_result") or body == "pong":
        return None
    answer = pb.Frame(id=request.id)
    answer.error.code = pb.ERROR_CODE_INVALID_REQUEST
    answer.error.message = f"{body} is not served by a client"
    return answer
