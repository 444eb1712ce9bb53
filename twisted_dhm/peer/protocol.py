"""One native-protocol connection: handshake, pipelined requests, answers by id.

The same class serves both ends.  Each side sends ``Hello`` first; a peer whose
protocol version or cluster name differs gets an ``Error`` frame and the
connection closes.  After that, either side may send requests; each carries an
id, and the answer repeats it, so many requests share one connection and
answers may come back in any order.

Incoming requests go to a handler that the composition root supplies
(``handler(session, frame) -> Frame | Deferred[Frame]``); this module knows nothing of
replication or storage.  Anything malformed (an undecodable frame, a frame over
``MAX_LENGTH``, a request before ``Hello``) is logged and closes that
connection, never the node.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import attrs
from google.protobuf.message import DecodeError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_dhm import logs
from twisted_dhm.errors import KVError
from twisted_dhm.membership.view import MAX_WEIGHT
from twisted_dhm.network import coalesce_writes, no_delay
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.errors import PeerError, code_name, error_for_failure, error_frame, error_name
from twisted_dhm.storage import StorageError
from twisted_dhm.versions import NODE_ID

PROTOCOL_VERSION = 3
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MAX_IN_FLIGHT = 1024  # requests one connection may have waiting for answers here
_PREFIX = struct.Struct(">I")  # a frame's length (Int32StringReceiver's)
# Requests a client makes (the rest is members' traffic): what ``observe`` counts.
CLIENT_REQUESTS = frozenset({"get", "put", "delete"})
HANDSHAKE_TIMEOUT = 10.0  # seconds a connection may take to send its Hello
HELLO_MAX_FRAME = 64 * 1024  # the frame limit until the other side's Hello is in
# Bytes of answers one connection may have waiting to be sent at the end of a reactor turn
# before it stops reading requests until the next turn (see _send).
TURN_ANSWER_BYTES = 4 * 1024 * 1024
_COLLECT_FROM = 64 * 1024  # a frame this much short of complete is gathered in pieces

REQUEST_BODIES = frozenset({
    "ping", "replica_get", "replica_put", "replica_scan", "get", "put", "delete",
    "tree_roots", "tree_buckets", "tree_keys", "leave", "node_status",
})
RESPONSE_BODIES = frozenset({
    "pong", "replica_get_result", "replica_put_result", "replica_scan_result", "get_result", "put_result",
    "delete_result", "error",
    "tree_roots_result", "tree_buckets_result", "tree_keys_result", "leave_result", "node_status_result",
})

log = logs.logger("dhashmap.peer")


def peer_hello_problem(hello: pb.Hello) -> str | None:
    """What is wrong with a peer's Hello, or None: it becomes a member (static discovery), so
    it is held to what a member record from etcd, Consul or gossip is held to."""
    if not hello.node_id:
        return "a peer's Hello must name its node"
    if not NODE_ID.fullmatch(hello.node_id):
        return f"a peer's Hello names no valid node id: {hello.node_id[:80]!r}"
    if hello.weight > MAX_WEIGHT:  # 0: not given, taken as 1
        return f"a peer's weight must be 1 to {MAX_WEIGHT}, not {hello.weight}"
    addresses = hello.addresses
    if len(addresses.host) > 253:
        return "a peer's host is longer than a host name can be"
    for name in ("peer_port", "rest_port", "grpc_port"):
        if getattr(addresses, name) > 65535:
            return f"a peer's {name} is not a port: {getattr(addresses, name)}"
    return None


class RequestTimeout(Exception):
    """No answer within the request's timeout."""


class HandshakeFailed(Exception):
    """The other side is not a compatible member of this cluster."""


@attrs.frozen
class LocalIdentity:
    """What this end says about itself in its Hello."""

    cluster: str
    node_id: str
    role: int = pb.ROLE_PEER
    host: str = ""
    peer_port: int = 0
    rest_port: int = 0
    grpc_port: int = 0
    weight: int = 1
    software_version: str = ""
    partitions: int = 0
    leaving: bool = False  # draining: out of the ring, finishing its work

    def hello(self) -> pb.Hello:
        msg = pb.Hello(
            protocol_version=PROTOCOL_VERSION, cluster=self.cluster, node_id=self.node_id,
            role=self.role, weight=self.weight, software_version=self.software_version,
            partitions=self.partitions, leaving=self.leaving,
        )
        msg.addresses.host = self.host
        msg.addresses.peer_port = self.peer_port
        msg.addresses.rest_port = self.rest_port
        msg.addresses.grpc_port = self.grpc_port
        return msg


# handler(session, request) -> the answer, or a Deferred of it (an exception or a failure: an Error frame)
Handler = Callable[["PeerProtocol", pb.Frame], "pb.Frame | Deferred"]
# observe(op, "ok" or the error code's name, seconds): client requests answered (metrics)
Observe = Callable[[str, str, float], None]


@implementer(IPushProducer)
class PeerProtocol(Int32StringReceiver):
    """One connection; ``when_ready()`` fires with the other side's Hello.

    On the serving side (``serving=True``: connections a node accepted) the protocol is the
    producer of its own answers: while they back up in the socket buffer (a client that
    pipelines reads of large values and does not read the answers), it stops reading new
    requests.  The requesting side never does this, so two nodes cannot stall each other.
    """

    serving = False

    def __init__(self, identity: LocalIdentity, clock: IReactorTime, handler: Handler | None,
                 max_frame: int = DEFAULT_MAX_FRAME, request_timeout: float = 5.0) -> None:
        self.identity = identity
        self.clock = clock
        self.handler = handler
        self.max_frame = max_frame
        self.MAX_LENGTH = min(max_frame, HELLO_MAX_FRAME)  # max_frame once the Hello is in
        # A large frame still arriving: its pieces so far, their length, the frame's whole length
        self._pieces: list[bytes] = []
        self._pieces_size = 0
        self._frame_size = 0
        # Why reading is paused (self.paused): the transport's buffer is full, and/or this
        # turn's answers passed TURN_ANSWER_BYTES
        self._paused_by_transport = False
        self._paused_for_turn = False
        self.request_timeout = request_timeout
        self.remote: pb.Hello | None = None
        self._handshake_result: pb.Hello | Failure | None = None
        self._ready_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []
        self._next_id = 1
        self._serving = 0
        self._closing = False
        self._handshake_timer: IDelayedCall | None = None
        self._pending: dict[int, tuple[Deferred, IDelayedCall]] = {}
        self._lost = False
        self.observe: Observe | None = None  # client requests answered (metrics)

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        coalesce_writes(self.transport, self.clock)
        if self.serving:
            self.transport.registerProducer(self, True)
        frame = pb.Frame(id=0)
        frame.hello.CopyFrom(self.identity.hello())
        self._send(frame)
        self._handshake_timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        if self.remote is None and not self._lost:
            self.close(pb.ERROR_CODE_BAD_FRAME, f"no Hello within {HANDSHAKE_TIMEOUT:g}s")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(ConnectionLost(f"connection to {self.describe()} lost"))
        self._handshake_done(Failure(ConnectionLost(f"connection to {self.describe()} lost before Hello")))
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)

    def when_ready(self) -> Deferred:
        """Fires with the other side's Hello, or fails if the handshake does not complete."""
        if self._handshake_result is not None:
            return succeed(self._handshake_result) if isinstance(self._handshake_result, pb.Hello) \
                else fail(self._handshake_result)
        d: Deferred = Deferred()
        self._ready_waiters.append(d)
        return d

    def when_closed(self) -> Deferred:
        if self._lost:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed_waiters.append(d)
        return d

    def _handshake_done(self, result: pb.Hello | Failure) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        if self._handshake_result is not None:
            return
        self._handshake_result = result
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    # -- frames in: large ones, and pauses -------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Int32StringReceiver's, except that a large frame arriving in many reads is gathered
        in a list and joined once: its own buffer is copied whole on every read, which made
        receiving a frame cost the square of its size (0.4 s of the reactor for 9 MiB)."""
        if self._frame_size:
            self._pieces.append(data)
            self._pieces_size += len(data)
            if self._pieces_size < self._frame_size:
                return
            data = b"".join(self._pieces)
            self._pieces, self._pieces_size, self._frame_size = [], 0, 0
        super().dataReceived(data)
        buffered = self._unprocessed
        if len(buffered) >= 4 and not self.paused and not self._closing and not self._lost:
            size = _PREFIX.unpack_from(buffered)[0] + 4
            if size - len(buffered) >= _COLLECT_FROM and size <= self.MAX_LENGTH + 4:
                self._pieces, self._pieces_size, self._frame_size = [buffered], len(buffered), size
                self._unprocessed = b""

    # IPushProducer, serving side: the transport's write buffer filled up or drained.  While
    # paused, no more requests are taken from what has arrived (``paused`` stops
    # Int32StringReceiver's loop) and the transport reads nothing more.
    def pauseProducing(self) -> None:
        self._paused_by_transport = True
        self._pause()

    def resumeProducing(self) -> None:
        self._paused_by_transport = False
        self._resume()

    def stopProducing(self) -> None:
        pass

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _resume(self) -> None:
        if self.paused and not self._paused_by_transport and not self._paused_for_turn and not self._lost:
            self.paused = False
            self.transport.resumeProducing()
            self.dataReceived(b"")  # the requests that arrived meanwhile

    def _turn_over(self) -> None:
        self._paused_for_turn = False
        self._resume()

    def describe(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        who = self.remote.node_id if self.remote is not None and self.remote.node_id else ""
        where = f"{peer.host}:{peer.port}" if peer is not None and hasattr(peer, "host") else "?"
        return f"{who}@{where}" if who else where

    def close(self, code: int, message: str) -> None:
        """Tell the other side why, then hang up; nothing more it sent is processed."""
        log.warn("closing native connection {peer}: {message}", peer=self.describe(), message=message)
        self._send(error_frame(code, message))
        self._closing = True
        self.transport.loseConnection()
        self._handshake_done(Failure(HandshakeFailed(message)))

    def lengthLimitExceeded(self, length: int) -> None:
        self.close(pb.ERROR_CODE_TOO_LARGE, f"frame of {length} bytes is over the limit of {self.MAX_LENGTH}")

    # -- frames in ---------------------------------------------------------------------

    def stringReceived(self, data: bytes) -> None:
        if self._lost or self._closing:
            return
        try:
            frame = pb.Frame.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as e:
            self.close(pb.ERROR_CODE_BAD_FRAME, f"undecodable frame: {e}")
            return
        body = frame.WhichOneof("body")
        if self.remote is None:
            self._handshake(frame, body)
        elif body in RESPONSE_BODIES and frame.id != 0:
            self._answer_received(frame, body)
        elif body == "error":
            # Id 0: the other side is closing the connection, and says why; so does this side
            # (and a client cannot fill the log with them).
            log.warn("{peer} reports: {code} {message}", peer=self.describe(),
                     code=code_name(frame.error.code), message=frame.error.message)
            self._closing = True
            self.transport.loseConnection()
        elif body in REQUEST_BODIES:
            self._request_received(frame, body)
        else:
            self.close(pb.ERROR_CODE_BAD_FRAME, f"unexpected frame {body!r}")

    def _handshake(self, frame: pb.Frame, body: str | None) -> None:
        if body == "error":
            message = f"{code_name(frame.error.code)}: {frame.error.message}"
            self.transport.loseConnection()
            self._handshake_done(Failure(HandshakeFailed(message)))
            return
        if body != "hello":
            self.close(pb.ERROR_CODE_BAD_FRAME, f"expected Hello, got {body!r}")
            return
        hello = frame.hello
        if hello.protocol_version != PROTOCOL_VERSION:
            self.close(pb.ERROR_CODE_VERSION_MISMATCH,
                       f"protocol version {hello.protocol_version} is not supported; this node speaks "
                       f"{PROTOCOL_VERSION}")
            return
        if hello.cluster != self.identity.cluster:
            self.close(pb.ERROR_CODE_CLUSTER_MISMATCH,
                       f"cluster {hello.cluster!r} is not this node's cluster {self.identity.cluster!r}")
            return
        if (hello.role == pb.ROLE_PEER and self.identity.role == pb.ROLE_PEER
                and hello.partitions != self.identity.partitions):
            self.close(pb.ERROR_CODE_PARTITIONS_MISMATCH,
                       f"partition count {hello.partitions} differs from this node's {self.identity.partitions}")
            return
        if hello.role == pb.ROLE_PEER:
            problem = peer_hello_problem(hello)
            if problem is not None:
                self.close(pb.ERROR_CODE_BAD_FRAME, problem)
                return
        self.remote = hello
        self.MAX_LENGTH = self.max_frame
        self._handshake_done(hello)

    def _answer_received(self, frame: pb.Frame, body: str) -> None:
        entry = self._pending.pop(frame.id, None)
        if entry is None:
            return  # an answer after its request timed out
        d, timer = entry
        if timer.active():
            timer.cancel()
        if body == "error":
            d.errback(PeerError(frame.error))
        else:
            d.callback(frame)

    def _request_received(self, frame: pb.Frame, body: str) -> None:
        request_id = frame.id
        if request_id == 0:
            self.close(pb.ERROR_CODE_BAD_FRAME, "request id 0 is reserved; requests need an id to answer to")
            return
        if self._serving >= MAX_IN_FLIGHT:
            self._send(error_frame(pb.ERROR_CODE_BUSY, f"over {MAX_IN_FLIGHT} requests in flight", request_id))
            return
        if body == "ping":
            pong = pb.Frame(id=request_id)
            pong.pong.sent_at_ms = frame.ping.sent_at_ms
            pong.pong.node_id = self.identity.node_id
            self._send(pong)
            return
        if self.handler is None:
            self._send(error_frame(pb.ERROR_CODE_INVALID_REQUEST, f"{body} is not served here", request_id))
            return
        observe = self.observe if body in CLIENT_REQUESTS else None
        started = self.clock.seconds() if observe is not None else 0.0
        try:
            result = self.handler(self, frame)
        except Exception:
            self._failed(Failure(), request_id, body, observe, started)
            return
        if isinstance(result, pb.Frame):  # answered in this call (a local read)
            self._reply(result, request_id, body, observe, started)
            return
        self._serving += 1

        def reply(answer: pb.Frame) -> None:
            self._serving -= 1
            self._reply(answer, request_id, body, observe, started)

        def failed(failure: Failure) -> None:
            self._serving -= 1
            self._failed(failure, request_id, body, observe, started)

        result.addCallbacks(reply, failed)

    def _reply(self, answer: pb.Frame, request_id: int, body: str, observe: Observe | None,
               started: float) -> None:
        answer.id = request_id
        self._send(answer)
        if observe is not None:
            observe(body, "ok", self.clock.seconds() - started)

    def _failed(self, failure: Failure, request_id: int, body: str, observe: Observe | None,
                started: float) -> None:
        if not failure.check(KVError, StorageError):
            log.failure("handling {body} from {peer} failed", failure, body=body, peer=self.describe())
        error = error_for_failure(failure, request_id)
        self._send(error)
        if observe is not None:
            observe(body, error_name(error.error.code), self.clock.seconds() - started)

    # -- frames out --------------------------------------------------------------------

    def _send(self, frame: pb.Frame) -> None:
        if not self._lost and self.transport is not None:
            # sendString without its size check: no frame of ours comes near 4 GiB
            data = frame.SerializeToString()
            self.transport.write(_PREFIX.pack(len(data)) + data)
            if self.serving and not self._paused_for_turn:
                # Answers written in this turn wait in the transport until the turn ends
                # (coalesce_writes), so its own flow control cannot pause us in the middle of
                # one read's worth of pipelined requests: a client that sends thousands of
                # reads of a large value at once and reads nothing would have them all
                # answered into memory.  Past a budget, the rest wait for the next turn.
                waiting = getattr(self.transport, "unsent_bytes", None)
                if waiting is not None and waiting() > TURN_ANSWER_BYTES:
                    self._paused_for_turn = True
                    self._pause()
                    self.clock.callLater(0, self._turn_over)

    def request(self, frame: pb.Frame, timeout: float | None = None) -> Deferred:
        """Send a request frame; fires with the answer frame or fails with PeerError/RequestTimeout."""
        if self._lost:
            return fail(ConnectionLost(f"connection to {self.describe()} is closed"))
        request_id = self._next_id
        self._next_id += 1
        frame.id = request_id
        d: Deferred = Deferred()
        timer = self.clock.callLater(
            self.request_timeout if timeout is None else timeout, self._timed_out, request_id
        )
        self._pending[request_id] = (d, timer)
        self._send(frame)
        return d

    def _timed_out(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[0].errback(RequestTimeout(f"no answer from {self.describe()} in time"))

    @property
    def in_flight(self) -> int:
        return len(self._pending)


class PeerFactory(Factory):
    """Builds PeerProtocols that share one identity, clock and handler."""

    noisy = False

    def __init__(self, identity: LocalIdentity, clock: IReactorTime, handler: Handler | None,
                 max_frame: int = DEFAULT_MAX_FRAME, request_timeout: float = 5.0,
                 on_connection: Callable[[PeerProtocol], Any] | None = None) -> None:
        self.identity = identity
        self.clock = clock
        self.handler = handler
        self.max_frame = max_frame
        self.request_timeout = request_timeout
        self.on_connection = on_connection
        self.observe: Observe | None = None  # given to each protocol

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        protocol = PeerProtocol(self.identity, self.clock, self.handler, self.max_frame, self.request_timeout)
        protocol.factory = self
        protocol.serving = True
        protocol.observe = self.observe
        if self.on_connection is not None:
            self.on_connection(protocol)
        return protocol
