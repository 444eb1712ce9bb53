"""Python client for dhashmap.

``Client`` is synchronous (urllib3); ``TwistedClient`` returns Deferreds (treq)
and needs the ``twisted`` extra: ``pip install 'dhashmap-client[twisted]'``.
It is imported lazily so that the sync client works without Twisted installed.

``NativeClient`` (blocking, stdlib sockets) and ``TwistedNativeClient``
(Deferreds, also lazy and also needing the ``twisted`` extra) speak the node's
native protocol on its peer port instead of REST: one pipelined connection,
replica counts per request.  See docs/protocol.md.

``GrpcClient`` (blocking) and ``TwistedGrpcClient`` (Deferreds) speak the node's
gRPC API; they are imported lazily and need the ``grpc`` extra (and the
``twisted`` one for the second): ``pip install 'dhashmap-client[grpc]'``.  See docs/grpc.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dhashmap_client._protocol import Entry, Page, Value
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
    StorageFull,
    Timeout,
    TransportError,
    Unavailable,
    ValueTooLarge,
)
from dhashmap_client.native import NativeClient
from dhashmap_client.sync import Client

if TYPE_CHECKING:
    from dhashmap_client.grpc_client import GrpcClient
    from dhashmap_client.twisted_client import TwistedClient
    from dhashmap_client.twisted_grpc import TwistedGrpcClient
    from dhashmap_client.twisted_native import TwistedNativeClient

__version__ = "0.1.0"

__all__ = [
    "Client",
    "TwistedClient",
    "NativeClient",
    "TwistedNativeClient",
    "GrpcClient",
    "TwistedGrpcClient",
    "Value",
    "Entry",
    "Page",
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
]


def __getattr__(name: str) -> Any:
    if name == "GrpcClient":
        from dhashmap_client.grpc_client import GrpcClient  # raises an ImportError naming the extra

        return GrpcClient
    if name == "TwistedGrpcClient":
        try:
            from dhashmap_client.twisted_grpc import TwistedGrpcClient
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] != "twisted":
                raise
            raise ImportError(
                "TwistedGrpcClient needs Twisted: pip install 'dhashmap-client[grpc,twisted]'"
            ) from e
        return TwistedGrpcClient
    if name == "TwistedClient":
        try:
            from dhashmap_client.twisted_client import TwistedClient
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in ("treq", "twisted"):
                raise
            raise ImportError(
                "TwistedClient needs treq and Twisted: pip install 'dhashmap-client[twisted]'"
            ) from e
        return TwistedClient
    if name == "TwistedNativeClient":
        try:
            from dhashmap_client.twisted_native import TwistedNativeClient
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] != "twisted":
                raise
            raise ImportError(
                "TwistedNativeClient needs Twisted: pip install 'dhashmap-client[twisted]'"
            ) from e
        return TwistedNativeClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
