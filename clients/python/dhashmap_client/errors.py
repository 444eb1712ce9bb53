"""Typed errors of the dhashmap client.

Every failure an operation can have is a ``DhashmapError``: an HTTP error from
the node becomes the subclass for its status, and a transport failure (refused
connection, reset, timeout) becomes ``ConnectionError`` or ``Timeout``.  Callers
thus never need to know whether the sync client (urllib3) or the Twisted client
(treq) is underneath, and never see those libraries' exception types.
"""

from __future__ import annotations

import json

__all__ = [
    "DhashmapError",
    "Forbidden",
    "NotFound",
    "PreconditionFailed",
    "InvalidRequest",
    "KeyTooLong",
    "ValueTooLarge",
    "Unavailable",
    "StorageFull",
    "ServerError",
    "TransportError",
    "ConnectionError",
    "Timeout",
    "HandshakeError",
    "error_from_response",
]


class DhashmapError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status (``None`` when no response arrived), ``code`` the
    server's stable machine-readable error code (e.g. ``"not_found"``) and
    ``message`` its human-readable explanation.  Match on the class or ``code``,
    never on ``message``: only the code is a stable API.
    """

    default_code = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"


class Forbidden(DhashmapError):
    """The node refused the operation to this kind of caller (e.g. a replica operation from a client)."""

    default_code = "forbidden"


class NotFound(DhashmapError):
    """404: the key has no live value (never written, deleted or expired)."""

    default_code = "not_found"


class PreconditionFailed(DhashmapError):
    """412: ``If-Match``/``If-None-Match`` did not hold: someone else wrote first."""

    default_code = "precondition_failed"


class InvalidRequest(DhashmapError):
    """400: the server refused the request as malformed (bad ttl, limit, cursor...)."""

    default_code = "invalid_request"


class KeyTooLong(DhashmapError):
    """414: the key is longer than the node's ``max_key_size`` (446 bytes by default)."""

    default_code = "key_too_long"


class ValueTooLarge(DhashmapError):
    """413: the value is larger than the node's ``max_value_size`` (8 MiB by default)."""

    default_code = "value_too_large"


class Unavailable(DhashmapError):
    """503: the node cannot serve now (storage error, not enough replicas); retry later.

    When too few replicas answered, ``acks`` is how many did and ``required`` how
    many had to; both are ``None`` when the node did not say.
    """

    default_code = "unavailable"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 acks: int | None = None, required: int | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.acks = acks
        self.required = required


class StorageFull(DhashmapError):
    """507: the node's disk or map is full; writes fail until space is freed."""

    default_code = "storage_full"


class ServerError(DhashmapError):
    """Any other 5xx: a server bug or a proxy in between failed."""

    default_code = "internal"


class TransportError(DhashmapError):
    """No HTTP response was received; ``status`` is ``None``.

    A write that fails this way may or may not have been applied: read the key
    (or use ``cas``) before assuming either.
    """

    default_code = "transport_error"


class ConnectionError(TransportError):
    """The connection could not be made or broke before the response was complete.

    Deliberately not the builtin ``ConnectionError`` (an ``OSError``): catch it
    as ``dhashmap_client.ConnectionError`` or ``DhashmapError``.
    """

    default_code = "connection_error"


class Timeout(TransportError):
    """The node did not answer within the client's timeout."""

    default_code = "timeout"


class HandshakeError(DhashmapError):
    """The native protocol's handshake failed: this node will not talk to this client.

    The node belongs to another cluster (``code == "cluster_mismatch"``), speaks
    another protocol version (``"version_mismatch"``), or refused the client's
    ``Hello``.  Deliberately not a ``TransportError``: retrying cannot help, the
    client's ``cluster`` setting (or the address) is wrong.
    """

    default_code = "handshake_failed"


_BY_STATUS: dict[int, type[DhashmapError]] = {
    403: Forbidden,
    400: InvalidRequest,
    404: NotFound,
    412: PreconditionFailed,
    413: ValueTooLarge,
    414: KeyTooLong,
    503: Unavailable,
    507: StorageFull,
}


def error_from_response(status: int, body: bytes) -> DhashmapError:
    """The typed error for an HTTP error response.

    The class follows the status; ``code`` and ``message`` come from the JSON
    body ``{"error": {"code": ..., "message": ...}}`` when there is one, so a
    response from something that is not a dhashmap node (a proxy's HTML 502)
    still yields a useful error instead of a JSON decoding error.
    """
    code: str | None = None
    message: str | None = None
    error: dict = {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    if message is None:
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or f"HTTP {status}"
    cls = _BY_STATUS.get(status)
    if cls is NotFound and code not in (None, "not_found"):
        # A 404 that is not about a key (``no_route``: a wrong base URL or path) must not
        # read as "this key has no value".
        cls = DhashmapError
    if cls is None:
        cls = ServerError if status >= 500 else DhashmapError
    if cls is Unavailable:
        return Unavailable(message, status=status, code=code, acks=_count(error.get("acks")),
                           required=_count(error.get("required")))
    return cls(message, status=status, code=code)


def _count(raw: object) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
