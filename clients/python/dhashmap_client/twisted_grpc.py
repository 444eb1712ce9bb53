"""The gRPC client for Twisted programs: Deferreds over grpcio's future API.

``TwistedGrpcClient`` has the operations of ``GrpcClient`` (the sync gRPC client) with the
same names and arguments; each returns a ``Deferred`` that fires with what ``GrpcClient``
returns, or fails with the same ``DhashmapError`` subclasses (``grpc_client.error_from_rpc``).
Requests are built and answers read by the same code as ``GrpcClient`` (``grpc_client.Call``).

grpcio runs its own threads.  A unary call is started with the stub's ``.future()``; its
done-callback, which grpc runs on one of its threads, hands the outcome to the reactor with
``callFromThread``, so every Deferred fires in the reactor thread.  A ``Scan`` stream can only
be read by blocking, so ``list`` reads its one short stream in the reactor's thread pool.

Each attempt has the deadline ``timeout``; ``UNAVAILABLE`` is retried for the idempotent calls
only (as ``GrpcClient`` does, and for the same reasons), after a backoff counted with the
reactor's ``callLater``.  Cancelling a Deferred cancels the RPC.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from dhashmap_client import _protocol as proto
from dhashmap_client._pb import kv_pb2_grpc as pb_grpc
from dhashmap_client._protocol import BytesLike, Page, Value
from dhashmap_client.errors import ConnectionError, DhashmapError
from dhashmap_client.grpc_client import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_TARGET,
    MEMBERS_CALL,
    RING_CALL,
    STATUS_CALL,
    Call,
    Level,
    _start_after,
    backoff_delay,
    batch_get_call,
    batch_put_call,
    cas_call,
    check_limit,
    check_settings,
    delete_call,
    error_from_rpc,
    get_call,
    page_of,
    put_call,
    retryable,
    scan_request,
)

__all__ = ["TwistedGrpcClient"]


class TwistedGrpcClient:
    """A non-blocking gRPC client for one dhashmap node, returning Deferreds.

    ``TwistedGrpcClient("127.0.0.1:9090", timeout=10.0, retries=2, reactor=reactor)``: the
    arguments of ``GrpcClient``, plus ``reactor`` (the global reactor when ``None``, looked up
    only when first needed).  ``channel`` brings your own ``grpc.Channel`` (the client then
    does not close it).  ``random`` is the jitter's source, for tests.
    """

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 10.0, retries: int = 2, *,
                 reactor: Any = None, backoff: float = 0.1, backoff_max: float = 2.0,
                 options: Iterable[tuple[str, Any]] = (), credentials: grpc.ChannelCredentials | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE, channel: grpc.Channel | None = None,
                 random: Callable[[], float] = random.random) -> None:
        check_settings(target, retries, timeout, backoff, backoff_max)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._reactor = reactor
        self._random = random
        self._options = [("grpc.max_receive_message_length", max_message_size),
                         ("grpc.max_send_message_length", max_message_size), *options]
        self._credentials = credentials
        self._own_channel = channel is None
        self._channel: grpc.Channel | None = channel
        self._stubs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"TwistedGrpcClient({self.target!r}, timeout={self.timeout!r}, retries={self.retries!r})"

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def close(self) -> Deferred[None]:
        """Close the channel this client opened (calls in flight fail); fires at once.

        The client can still be used afterwards: the next call opens a new channel.
        """
        channel, self._stubs = self._channel, {}
        if self._own_channel:
            self._channel = None
            if channel is not None:
                channel.close()
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    # -- KV ---------------------------------------------------------------------------------

    def get(self, key: BytesLike, r: Level = None) -> Deferred[Value]:
        """Fires with the live ``Value`` of ``key``; fails with ``NotFound`` if there is none."""
        return self._run(get_call(key, r))

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
            if_none_match: bool = False, w: Level = None) -> Deferred[str]:
        """Store ``value``; fires with the new version token.  See ``GrpcClient.put``.  Never retried."""
        return self._run(put_call(key, value, ttl, if_match, if_none_match, w))

    def delete(self, key: BytesLike, if_match: str | None = None, w: Level = None) -> Deferred[None]:
        """Delete ``key`` (succeeds if absent); with ``if_match`` only at that version."""
        return self._run(delete_call(key, if_match, w))

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike, ttl: float | None = None,
            w: Level = None) -> Deferred[str]:
        """Write only if the current version is ``expected_version`` (``None``: only if absent)."""
        return self._run(cas_call(key, expected_version, value, ttl, w))

    def batch_get(self, keys: Iterable[BytesLike], r: Level = None) -> Deferred[list[Value | None]]:
        """Fires with the values of up to 1,000 keys, in order; ``None`` for a key with no value."""
        return self._run(batch_get_call(keys, r))

    def batch_put(self, items: Mapping[Any, Any] | Iterable[Any],
                  w: Level = None) -> Deferred[list[str | DhashmapError]]:
        """Write up to 1,000 values; fires with each item's version or its (unraised) error."""
        return self._run(batch_put_call(items, w))

    def list(self, prefix: BytesLike = b"", limit: int = proto.DEFAULT_LIST_LIMIT,
             cursor: str | None = None) -> Deferred[Page]:
        """Fires with one ``Page`` of live keys starting with ``prefix`` (see ``GrpcClient.list``)."""
        check_limit(limit)
        start = None if cursor is None else _start_after(cursor)
        raw_prefix = proto.to_bytes(prefix, "prefix")
        return self._scan(raw_prefix, min(limit + 1, 1000), start, limit + 1).addCallback(page_of, limit)

    def keys(self, prefix: BytesLike = b"", page_size: int = proto.DEFAULT_LIST_LIMIT
             ) -> Deferred[list[bytes]]:
        """Fires with every live key starting with ``prefix``, a page at a time, gathered in memory."""

        @inlineCallbacks
        def gather() -> Any:
            found: list[bytes] = []
            cursor: str | None = None
            while True:
                page = yield self.list(prefix, page_size, cursor)
                found.extend(page.keys)
                if page.cursor is None:
                    return found
                cursor = page.cursor

        return gather()

    # -- Cluster ----------------------------------------------------------------------------

    def members(self) -> Deferred[dict[str, Any]]:
        """Fires with ``{"node", "members": [{"id", "state", "host", ...}]}`` (``GrpcClient.members``)."""
        return self._run(MEMBERS_CALL)

    def ring(self) -> Deferred[dict[str, Any]]:
        """Fires with ``{"partitions", "replicas", "hash", "table"}`` (``GrpcClient.ring``)."""
        return self._run(RING_CALL)

    def status(self) -> Deferred[dict[str, Any]]:
        """Fires with ``{"node", "ready", "problems", "members_by_state", "version"}``."""
        return self._run(STATUS_CALL)

    # -- plumbing ---------------------------------------------------------------------------

    def _stub(self, service: str) -> Any:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
        if service not in self._stubs:
            stub = pb_grpc.KVStub if service == "kv" else pb_grpc.ClusterStub
            self._stubs[service] = stub(self._channel)
        return self._stubs[service]

    def _run(self, call: Call | None) -> Deferred[Any]:
        if call is None:  # an empty batch: nothing to ask
            d: Deferred[Any] = Deferred()
            d.callback([])
            return d
        return self._retrying(lambda: self._attempt(call), call.idempotent).addCallback(call.answer)

    def _retrying(self, attempt: Callable[[], Deferred[Any]], idempotent: bool) -> Deferred[Any]:
        """``attempt()`` again after a backoff while it fails with a retryable error."""

        @inlineCallbacks
        def loop() -> Any:
            tries = 0
            while True:
                try:
                    result = yield attempt()
                except DhashmapError as error:
                    if not retryable(error, idempotent, tries, self.retries):
                        raise
                else:
                    return result
                delay = backoff_delay(tries, self.backoff, self.backoff_max, self._random)
                yield deferLater(self.reactor, delay, lambda: None)
                tries += 1

        return loop()

    def _attempt(self, call: Call) -> Deferred[Any]:
        """One RPC through the stub's future API; the outcome comes back through the reactor."""
        try:
            future = getattr(self._stub(call.service), call.method).future(call.request, timeout=self.timeout)
        except ValueError as e:  # grpc's "Cannot invoke RPC on closed channel!"
            return fail(ConnectionError(f"the channel was closed: {e}"))
        d: Deferred[Any] = Deferred(lambda _: future.cancel())
        reactor = self.reactor

        def deliver(done: grpc.Future) -> None:
            if d.called:  # cancelled by the caller, who already has a CancelledError
                return
            if done.cancelled():
                d.errback(ConnectionError("the call was cancelled", code="cancelled"))
                return
            error = done.exception()
            if error is None:
                d.callback(done.result())
            elif isinstance(error, grpc.RpcError):
                d.errback(Failure(error_from_rpc(error)))
            else:
                d.errback(Failure(error))

        # grpc calls this on its own thread (or at once, here, if the call already ended).
        future.add_done_callback(lambda done: reactor.callFromThread(deliver, done))
        return d

    def _scan(self, prefix: bytes, page_size: int, start_after: bytes | None, limit: int) -> Deferred[list[bytes]]:
        """The keys of one short Scan, read in the thread pool; after an ``UNAVAILABLE`` resumed
        after the last key read."""
        found: list[bytes] = []

        def read() -> list[bytes]:
            last = found[-1] if found else start_after
            request = scan_request(prefix, page_size, last, limit - len(found))
            try:
                stream = self._stub("kv").Scan(request, timeout=self.timeout)
            except ValueError as e:
                raise ConnectionError(f"the channel was closed: {e}") from e
            try:
                for page in stream:
                    found.extend(page.keys)
            except grpc.RpcError as e:
                raise error_from_rpc(e) from e
            finally:
                stream.cancel()
            return found

        def attempt() -> Deferred[list[bytes]]:
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), read)

        return self._retrying(attempt, True)
