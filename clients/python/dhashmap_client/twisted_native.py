"""The native-protocol client for Twisted programs: Deferreds, one pipelined connection.

Every operation returns a ``Deferred`` that fires with what ``NativeClient``
returns, or fails with the same ``DhashmapError`` subclasses.  The reactor (or
just an endpoint and a clock) is injected, so it runs on a ``StringTransport``
and a ``task.Clock`` in tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from twisted.internet import error as internet_error
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from dhashmap_client import _native as native
from dhashmap_client._pb import peer_pb2 as pb
from dhashmap_client._protocol import BytesLike, Value
from dhashmap_client.errors import ConnectionError, DhashmapError, Timeout, ValueTooLarge

__all__ = ["TwistedNativeClient", "NativeProtocol"]

Level = str | int | None


class NativeProtocol(Int32StringReceiver):
    """One client connection: Hello first, then requests matched to answers by id.

    ``when_ready()`` fires with this protocol once the node's ``Hello`` has been
    checked.  Once broken, every pending request and waiter fails with
    ``self.error`` and the connection closes; it is never used again.
    """

    def __init__(self, cluster: str, clock: Any, max_frame: int = native.DEFAULT_MAX_FRAME) -> None:
        self.cluster = cluster
        self.clock = clock
        self.MAX_LENGTH = max_frame
        self.hello: pb.Hello | None = None
        self.error: DhashmapError | None = None
        self.lost = False
        self._next_id = 1
        self._pending: dict[int, tuple[Deferred[pb.Frame], IDelayedCall | None, int]] = {}
        self._ready_waiters: list[Deferred[NativeProtocol]] = []
        self._closed_waiters: list[Deferred[None]] = []

    @property
    def broken(self) -> bool:
        return self.error is not None or self.lost

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        # Requests are small and pipelined: send each at once (as the blocking client does).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.sendString(native.hello_frame(self.cluster).SerializeToString())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        why = reason.getErrorMessage() if reason is not None else "closed"
        self._break(ConnectionError(f"the connection to the node was lost: {why}"))
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)

    def when_ready(self) -> Deferred[NativeProtocol]:
        if self.error is not None:
            return fail(copy.copy(self.error))
        if self.hello is not None:
            return succeed(self)
        d: Deferred[NativeProtocol] = Deferred()
        self._ready_waiters.append(d)
        return d

    def when_closed(self) -> Deferred[None]:
        if self.lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    def close(self) -> Deferred[None]:
        """Hang up; pending requests fail with ``ConnectionError``."""
        d = self.when_closed()
        self._break(ConnectionError("the client closed the connection"))
        return d

    def _break(self, error: DhashmapError, culprit: int | None = None) -> None:
        """Fail everything waiting, with ``error`` (``culprit``: only that request gets it)."""
        if self.error is None:
            self.error = error if culprit is None else ConnectionError(error.message)
        pending, self._pending = self._pending, {}
        for request_id, (d, timer, _) in pending.items():
            if timer is not None and timer.active():
                timer.cancel()
            d.errback(copy.copy(error if culprit in (None, request_id) else self.error))
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(copy.copy(self.error))
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def lengthLimitExceeded(self, length: int) -> None:
        self._break(ConnectionError(
            f"the node sent a frame of {length} bytes, over this client's limit of {self.MAX_LENGTH}",
            code="bad_frame"))

    # -- frames in ---------------------------------------------------------------------------

    def stringReceived(self, data: bytes) -> None:
        if self.error is not None:
            return  # broken: what is still in the buffer is not ours to read
        try:
            frame = native.decode(data)
            if self.hello is None:
                self.hello = native.check_hello(frame, self.cluster)
                waiters, self._ready_waiters = self._ready_waiters, []
                for d in waiters:
                    d.callback(self)
                return
        except DhashmapError as e:
            self._break(e)
            return
        body = frame.WhichOneof("body")
        if frame.id == 0:
            if body == "error":  # the node is closing the connection, and says why
                error = native.connection_error(frame.error)
                self._break(error, self._largest_pending() if isinstance(error, ValueTooLarge) else None)
            return
        entry = self._pending.pop(frame.id, None)
        if entry is not None:
            d, timer, _ = entry
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(frame)
            return
        answer = native.not_served(frame)  # a request from the node (a ping), or a late answer
        if answer is not None:
            self.sendString(answer.SerializeToString())

    def _largest_pending(self) -> int | None:
        if not self._pending:
            return None
        return max(self._pending, key=lambda request_id: self._pending[request_id][2])

    # -- frames out --------------------------------------------------------------------------

    def request(self, frame: pb.Frame, timeout: float | None) -> Deferred[pb.Frame]:
        """Send ``frame`` with a new id; fires with the answer frame (an ``Error`` frame too).

        Fails with ``Timeout`` after ``timeout`` seconds on the clock, or with the
        connection's error if it breaks first.
        """
        if self.error is not None:
            return fail(copy.copy(self.error))
        request_id = self._next_id
        self._next_id += 1
        frame.id = request_id
        data = frame.SerializeToString()
        d: Deferred[pb.Frame] = Deferred()
        timer = None if timeout is None else self.clock.callLater(timeout, self._timed_out, request_id, timeout)
        self._pending[request_id] = (d, timer, len(data))
        self.sendString(data)
        return d

    def _timed_out(self, request_id: int, timeout: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(Timeout(f"no answer from the node within {timeout} s"))


class _Factory(Factory):
    def __init__(self, build: Callable[[], NativeProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> NativeProtocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class TwistedNativeClient:
    """A non-blocking client for one node's native protocol, returning Deferreds.

    ``TwistedNativeClient("127.0.0.1", 7000, cluster="dhashmap", timeout=10.0,
    reactor=reactor)``.  It connects on first use (through ``endpoint`` if
    given, an ``IStreamClientEndpoint``; else a ``HostnameEndpoint`` on
    ``reactor``), pipelines every request on that one connection, and connects
    again on the next call after it broke.  ``timeout`` (seconds, ``None`` for
    none) bounds connecting with the handshake, and each answer; it is counted
    on ``clock`` (default: ``reactor``), so a ``task.Clock`` makes it
    deterministic.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = native.DEFAULT_PORT,
                 cluster: str = native.DEFAULT_CLUSTER, timeout: float | None = 10.0, *,
                 reactor: Any = None, endpoint: Any = None, clock: Any = None,
                 max_frame: int = native.DEFAULT_MAX_FRAME) -> None:
        self.host = host
        self.port = port
        self.cluster = native.check_cluster(cluster)
        self.timeout = timeout
        self.max_frame = max_frame
        self._reactor = reactor
        self._endpoint = endpoint
        self._clock = clock
        self._protocol: NativeProtocol | None = None
        self._connecting: Deferred[NativeProtocol] | None = None
        self._waiters: list[Deferred[NativeProtocol]] = []

    def __repr__(self) -> str:
        return (f"TwistedNativeClient({self.host!r}, {self.port!r}, cluster={self.cluster!r}, "
                f"timeout={self.timeout!r})")

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def clock(self) -> Any:
        return self._clock if self._clock is not None else self.reactor

    @property
    def endpoint(self) -> Any:
        if self._endpoint is None:
            from twisted.internet.endpoints import HostnameEndpoint

            self._endpoint = HostnameEndpoint(self.reactor, self.host, self.port,
                                              timeout=30 if self.timeout is None else self.timeout)
        return self._endpoint

    @property
    def protocol(self) -> NativeProtocol | None:
        """The current connection, if one is open."""
        return self._protocol

    def close(self) -> Deferred[None]:
        """Close the connection (pending requests fail with ``ConnectionError``); fires once closed.

        The client can still be used afterwards: the next call connects again.
        """
        if self._connecting is not None:
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.lost:
            return succeed(None)
        return protocol.close()

    # -- the operations ---------------------------------------------------------------------

    def get(self, key: BytesLike, r: Level = None) -> Deferred[Value]:
        """Fires with the live ``Value`` of ``key``; fails with ``NotFound`` if there is none."""
        return self._call(native.get_answer, native.get_request, key, r)

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
            if_none_match: bool = False, w: Level = None) -> Deferred[str]:
        """Store ``value``; fires with the new version token.  See ``NativeClient.put``."""
        return self._call(native.put_answer, native.put_request, key, value, ttl, if_match, if_none_match, w)

    def delete(self, key: BytesLike, if_match: str | None = None, w: Level = None) -> Deferred[None]:
        """Delete ``key`` (succeeds if absent); with ``if_match`` only at that version."""
        return self._call(native.delete_answer, native.delete_request, key, if_match, w)

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike, ttl: float | None = None,
            w: Level = None) -> Deferred[str]:
        """Write only if the current version is ``expected_version`` (``None``: only if absent)."""
        if expected_version is None:
            return self.put(key, value, ttl=ttl, if_none_match=True, w=w)
        return self.put(key, value, ttl=ttl, if_match=expected_version, w=w)

    def ping(self) -> Deferred[float]:
        """Fires with the round trip to the node in seconds, on the clock (connecting first if needed)."""

        def timed(protocol: NativeProtocol) -> Deferred[float]:
            started = self.clock.seconds()
            request = native.ping_request(int(started * 1000))
            d = protocol.request(request, self.timeout)
            d.addCallback(lambda answer: native.answer_body(request, answer))
            return d.addCallback(lambda _: self.clock.seconds() - started)

        return self._connection().addCallback(timed)

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, answer: Callable[[pb.Frame, pb.Frame], Any], build: Callable[..., pb.Frame],
              *args: Any) -> Deferred[Any]:
        # Wrong argument types and values raise at once (TypeError, ValueError), as in the
        # other clients; a refusal the node would have made (a ttl out of range) fails the Deferred.
        try:
            request = build(*args)
        except DhashmapError:
            return fail()
        d = self._connection().addCallback(lambda protocol: protocol.request(request, self.timeout))
        return d.addCallback(lambda frame: answer(request, frame))

    def _connection(self) -> Deferred[NativeProtocol]:
        if self._protocol is not None and not self._protocol.broken:
            return succeed(self._protocol)
        self._protocol = None
        d: Deferred[NativeProtocol] = Deferred()
        self._waiters.append(d)
        if self._connecting is None:
            self._connect()
        return d

    def _connect(self) -> None:
        built: list[NativeProtocol] = []

        def build() -> NativeProtocol:
            protocol = NativeProtocol(self.cluster, self.clock, self.max_frame)
            built.append(protocol)
            return protocol

        where = f"{self.host}:{self.port}"
        try:
            connecting = self.endpoint.connect(_Factory(build))
        except Exception:
            connecting = fail()
        connecting.addCallback(lambda protocol: protocol.when_ready())
        if self.timeout is not None:
            connecting.addTimeout(self.timeout, self.clock)
        self._connecting = connecting

        def done(result: NativeProtocol | Failure) -> None:
            self._connecting = None
            waiters, self._waiters = self._waiters, []
            if isinstance(result, Failure):
                for protocol in built:  # connected, but the handshake failed or timed out
                    if not protocol.lost and protocol.transport is not None:
                        protocol.transport.abortConnection()
                error = _connect_error(result, where)
                for d in waiters:
                    d.errback(copy.copy(error))
                return
            self._protocol = result
            for d in waiters:
                d.callback(result)

        connecting.addBoth(done)


def _connect_error(failure: Failure, where: str) -> DhashmapError:
    error = failure.value
    if isinstance(error, DhashmapError):
        return error
    if isinstance(error, DeferredTimeout | TimeoutError | internet_error.TimeoutError):
        return Timeout(f"connecting to {where} timed out")
    if isinstance(error, CancelledError):
        return ConnectionError(f"connecting to {where} was cancelled")
    if isinstance(error, internet_error.ConnectError | internet_error.ConnectionLost | OSError):
        return ConnectionError(f"cannot connect to {where}: {failure.getErrorMessage()}")
    return ConnectionError(f"cannot connect to {where}: {error!r}")
