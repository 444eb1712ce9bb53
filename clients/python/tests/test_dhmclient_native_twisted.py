"""TwistedNativeClient without a running reactor: StringTransport, task.Clock, and the node's own protocol.

``ScriptedTests`` play the node by hand on a ``StringTransport`` (framing,
pipelining, timeouts, lost connections).  ``InMemoryNodeTests`` connect the
client to the node's real ``PeerProtocol`` and ``PeerHandler`` over an
in-memory pump.  One test runs the client on a real reactor against the
session's node, in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from dhashmap_client import (
    ConnectionError,
    HandshakeError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    Timeout,
    TwistedNativeClient,
    Unavailable,
    Value,
    ValueTooLarge,
)
from dhashmap_client import _native as native
from dhashmap_client._pb import peer_pb2 as pb
from dhashmap_client.twisted_native import NativeProtocol
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.cluster.handler import PeerHandler
from twisted_dhm.peer.protocol import LocalIdentity, PeerFactory
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.process import NodeProcess
from twisted_dhm.testing.stack import single_node_coordinator

ADDRESS = IPv4Address("TCP", "127.0.0.1", 7000)


def node_hello(cluster: str = "dhashmap", version: int = native.PROTOCOL_VERSION) -> pb.Frame:
    frame = pb.Frame(id=0)
    frame.hello.protocol_version = version
    frame.hello.cluster = cluster
    frame.hello.node_id = "n1"
    frame.hello.role = pb.ROLE_PEER
    return frame


def get_result(request_id: int, value: bytes, version: str = "v1") -> pb.Frame:
    return pb.Frame(id=request_id, get_result=pb.GetResult(found=True, value=value, version=version))


class StringEndpoint:
    """Connects each protocol to a fresh StringTransport, or fails / hangs as told."""

    def __init__(self) -> None:
        self.protocols: list[NativeProtocol] = []
        self.transports: list[StringTransport] = []
        self.next: Deferred[Any] | Failure | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        if isinstance(self.next, Failure):
            failure, self.next = self.next, None
            return fail(failure)
        if isinstance(self.next, Deferred):
            d, self.next = self.next, None
            return d
        protocol = factory.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        self.transports.append(transport)
        return succeed(protocol)


class ScriptedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.endpoint = StringEndpoint()
        self.client = TwistedNativeClient(endpoint=self.endpoint, clock=self.clock, timeout=5.0)

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def protocol(self) -> NativeProtocol:
        return self.endpoint.protocols[-1]

    @property
    def transport(self) -> StringTransport:
        return self.endpoint.transports[-1]

    def sent(self, index: int = -1) -> list[pb.Frame]:
        """Every frame the client wrote on a connection (and clears it)."""
        transport = self.endpoint.transports[index]
        frames = [pb.Frame.FromString(p) for p in native.FrameReader().feed(transport.value())]
        transport.clear()
        return frames

    def node_says(self, *frames: pb.Frame) -> None:
        self.protocol.dataReceived(b"".join(native.encode(f) for f in frames))

    def handshake(self) -> None:
        self.node_says(node_hello())

    # -- the handshake ---------------------------------------------------------------------------

    def test_the_hello_goes_first_and_requests_wait_for_the_nodes(self) -> None:
        d = self.client.get(b"k")
        [hello] = self.sent()
        self.assertEqual(hello, native.hello_frame("dhashmap"))
        self.assertNoResult(d)
        self.handshake()
        [request] = self.sent()
        self.assertEqual((request.id, request.get.key), (1, b"k"))
        self.node_says(get_result(1, b"value", "tok"))
        self.assertEqual(self.successResultOf(d), Value(b"value", "tok"))

    def test_a_node_of_another_cluster_fails_with_handshake_error(self) -> None:
        d = self.client.get(b"k")
        self.node_says(node_hello(cluster="elsewhere"))
        error = self.failureResultOf(d, HandshakeError).value
        self.assertEqual(error.code, "cluster_mismatch")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.sent(), [native.hello_frame("dhashmap")])  # no request went out

    def test_an_error_frame_instead_of_hello_fails_with_handshake_error(self) -> None:
        d = self.client.put(b"k", b"v")
        self.node_says(pb.Frame(id=0, error=pb.Error(code=pb.ERROR_CODE_VERSION_MISMATCH, message="v9")))
        error = self.failureResultOf(d, HandshakeError).value
        self.assertEqual(error.code, "version_mismatch")
        self.assertIn("v9", error.message)

    def test_a_node_that_never_says_hello_times_out_and_is_hung_up_on(self) -> None:
        d = self.client.get(b"k")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, Timeout)
        self.assertTrue(self.transport.disconnected or self.transport.disconnecting)

    def test_a_connect_that_hangs_times_out_on_the_clock(self) -> None:
        hanging: Deferred[Any] = Deferred()
        self.endpoint.next = hanging
        d = self.client.get(b"k")
        self.clock.advance(5.0)
        self.failureResultOf(d, Timeout)
        self.assertTrue(hanging.called)  # cancelled
        again = self.client.get(b"k")  # and the next call tries again
        self.handshake()
        self.sent()
        self.node_says(get_result(1, b"v"))
        self.assertEqual(self.successResultOf(again).value, b"v")

    def test_a_refused_connection_fails_with_connection_error(self) -> None:
        self.endpoint.next = Failure(ConnectionRefusedError("nobody"))
        error = self.failureResultOf(self.client.get(b"k"), ConnectionError).value
        self.assertIn("nobody", error.message)

    def test_calls_during_the_handshake_share_one_connection(self) -> None:
        ds = [self.client.get(b"k%d" % i) for i in range(3)]
        self.handshake()
        requests = self.sent()[1:]
        self.assertEqual([r.get.key for r in requests], [b"k0", b"k1", b"k2"])
        self.assertEqual(len(self.endpoint.protocols), 1)
        self.node_says(*[get_result(r.id, r.get.key) for r in requests])
        self.assertEqual([self.successResultOf(d).value for d in ds], [b"k0", b"k1", b"k2"])

    # -- framing and pipelining ------------------------------------------------------------------

    def test_frames_split_at_every_offset(self) -> None:
        stream = native.encode(node_hello()) + native.encode(get_result(1, b"x" * 300, "tok"))
        for cut in range(len(stream) + 1):
            client = TwistedNativeClient(endpoint=self.endpoint, clock=self.clock)
            d = client.get(b"k")
            protocol = self.endpoint.protocols[-1]
            protocol.dataReceived(stream[:cut])
            protocol.dataReceived(stream[cut:])
            self.assertEqual(self.successResultOf(d), Value(b"x" * 300, "tok"), f"cut at {cut}")

    def test_frames_fed_one_byte_at_a_time(self) -> None:
        d1, d2 = self.client.get(b"a"), self.client.get(b"b")
        stream = b"".join(native.encode(f) for f in (node_hello(), get_result(2, b"B"), get_result(1, b"A")))
        for i in range(len(stream)):
            self.protocol.dataReceived(stream[i:i + 1])
        self.assertEqual((self.successResultOf(d1).value, self.successResultOf(d2).value), (b"A", b"B"))

    def test_answers_out_of_order_reach_their_requests(self) -> None:
        self.client.get(b"warm")
        self.handshake()
        self.node_says(get_result(1, b""))
        self.sent()
        ds = {key: self.client.get(key) for key in (b"a", b"b", b"c", b"d")}
        requests = self.sent()
        self.assertEqual(len({r.id for r in requests}), 4)  # each its own id, all in flight
        self.assertEqual(self.protocol.in_flight, 4)
        for request in reversed(requests):
            self.node_says(get_result(request.id, request.get.key.upper()))
        self.assertEqual({k: self.successResultOf(d).value for k, d in ds.items()},
                         {b"a": b"A", b"b": b"B", b"c": b"C", b"d": b"D"})

    def test_put_delete_and_cas_send_their_fields(self) -> None:
        self.handshake_ready()
        put = self.client.put(b"k", b"v", ttl=60, w="all")
        cas = self.client.cas(b"k", "tok", b"w", w=2)
        create = self.client.cas(b"k", None, b"w")
        delete = self.client.delete(b"k", if_match="tok", w="one")
        p, c, n, dl = self.sent()
        self.assertEqual((p.put.ttl_seconds, p.put.w.level), (60, pb.Consistency.LEVEL_ALL))
        self.assertEqual((c.put.if_match, c.put.w.count), ("tok", 2))
        self.assertTrue(n.put.if_none_match)
        self.assertEqual((dl.delete.if_match, dl.delete.w.level), ("tok", pb.Consistency.LEVEL_ONE))
        self.node_says(
            pb.Frame(id=dl.id, delete_result=pb.DeleteResult()),
            pb.Frame(id=p.id, put_result=pb.PutResult(version="v2", created=True)),
            pb.Frame(id=c.id, error=pb.Error(code=pb.ERROR_CODE_PRECONDITION_FAILED, message="stale")),
            pb.Frame(id=n.id, put_result=pb.PutResult(version="v3")),
        )
        self.assertEqual(self.successResultOf(put), "v2")
        self.failureResultOf(cas, PreconditionFailed)
        self.assertEqual(self.successResultOf(create), "v3")
        self.assertIsNone(self.successResultOf(delete))

    def handshake_ready(self) -> None:
        """Connect and handshake, with nothing left in flight."""
        d = self.client.ping()
        self.handshake()
        [ping] = self.sent()[1:]
        self.node_says(pb.Frame(id=ping.id, pong=pb.Pong(sent_at_ms=ping.ping.sent_at_ms)))
        self.assertEqual(self.successResultOf(d), 0.0)

    # -- errors ----------------------------------------------------------------------------------

    def test_error_answers_become_typed_errors(self) -> None:
        self.handshake_ready()
        missing = self.client.get(b"missing")
        unavailable = self.client.put(b"k", b"v", w="all")
        too_long = self.client.put(b"k" * 10, b"v")
        invalid = self.client.get(b"k", r=5)
        a, b, c, d = self.sent()
        self.node_says(
            pb.Frame(id=a.id, get_result=pb.GetResult(found=False)),
            pb.Frame(id=b.id, error=pb.Error(code=pb.ERROR_CODE_UNAVAILABLE, message="1 of 3", acks=1, required=3)),
            pb.Frame(id=c.id, error=pb.Error(code=pb.ERROR_CODE_TOO_LARGE, message="the key is too long")),
            pb.Frame(id=d.id, error=pb.Error(code=pb.ERROR_CODE_INVALID_REQUEST, message="r=5")),
        )
        self.failureResultOf(missing, NotFound)
        error = self.failureResultOf(unavailable, Unavailable).value
        self.assertEqual((error.acks, error.required), (1, 3))
        self.failureResultOf(too_long, KeyTooLong)
        self.assertEqual(self.failureResultOf(invalid, InvalidRequest).value.message, "r=5")
        self.assertFalse(self.protocol.broken)  # answers, not connection failures

    def test_a_connection_error_frame_fails_the_largest_request_with_value_too_large(self) -> None:
        self.handshake_ready()
        small = self.client.put(b"k", b"v")
        big = self.client.put(b"k", b"x" * 5000)
        self.node_says(pb.Frame(id=0, error=pb.Error(code=pb.ERROR_CODE_TOO_LARGE, message="over the limit")))
        self.assertEqual(self.failureResultOf(big, ValueTooLarge).value.code, "frame_too_large")
        self.failureResultOf(small, ConnectionError)
        self.assertTrue(self.transport.disconnecting)

    def test_a_frame_over_the_clients_limit_breaks_the_connection(self) -> None:
        client = TwistedNativeClient(endpoint=self.endpoint, clock=self.clock, max_frame=100)
        d = client.get(b"k")
        self.handshake()
        self.node_says(get_result(1, b"x" * 200))
        self.assertEqual(self.failureResultOf(d, ConnectionError).value.code, "bad_frame")
        self.assertTrue(self.transport.disconnecting)

    def test_arguments_are_checked_before_connecting(self) -> None:
        self.failureResultOf(self.client.put(b"k", b"v", ttl=0), InvalidRequest)
        with pytest.raises(TypeError):
            self.client.get(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            self.client.delete(b"k", w=0)
        self.assertEqual(self.endpoint.protocols, [])

    # -- timeouts and lost connections -----------------------------------------------------------

    def test_a_request_times_out_on_the_clock_and_its_late_answer_is_dropped(self) -> None:
        self.handshake_ready()
        slow = self.client.get(b"slow")
        self.clock.advance(3)
        fast = self.client.get(b"fast")
        [s, f] = self.sent()
        self.clock.advance(2)
        self.failureResultOf(slow, Timeout)
        self.assertNoResult(fast)
        self.node_says(get_result(s.id, b"late"), get_result(f.id, b"fast"))
        self.assertEqual(self.successResultOf(fast).value, b"fast")
        self.assertFalse(self.protocol.broken)
        self.assertEqual(self.protocol.in_flight, 0)

    def test_an_answered_request_leaves_no_timer_behind(self) -> None:
        self.handshake_ready()
        d = self.client.get(b"k")
        [r] = self.sent()
        self.node_says(get_result(r.id, b"v"))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_fails_pending_requests_and_the_next_call_reconnects(self) -> None:
        self.handshake_ready()
        pending = [self.client.get(b"a"), self.client.put(b"b", b"v")]
        self.protocol.connectionLost(Failure(ConnectionDone("gone")))
        for d in pending:
            self.assertIn("gone", self.failureResultOf(d, ConnectionError).value.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = self.client.get(b"a")
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.handshake()
        [_, r] = self.sent()
        self.node_says(get_result(r.id, b"back"))
        self.assertEqual(self.successResultOf(again).value, b"back")

    def test_close_fails_pending_requests_and_hangs_up(self) -> None:
        self.handshake_ready()
        pending = self.client.get(b"a")
        closed = self.client.close()
        self.failureResultOf(pending, ConnectionError)
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.assertIsNone(self.client.protocol)

    def test_a_ping_from_the_node_is_answered(self) -> None:
        self.handshake_ready()
        self.node_says(pb.Frame(id=77, ping=pb.Ping(sent_at_ms=123)))
        self.assertEqual(self.sent(), [pb.Frame(id=77, pong=pb.Pong(sent_at_ms=123))])


class InMemoryNodeTests(SynchronousTestCase):
    """The client against the node's own protocol and handler, pumped in memory."""

    MAX_KEY = 64
    MAX_VALUE = 1024

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)  # a realistic epoch for the node's HLC
        coordinator = single_node_coordinator(MemoryEngine(), self.clock, node_id="mem")
        handler = PeerHandler(coordinator.replicas.local, coordinator, self.MAX_KEY, self.MAX_VALUE)
        identity = LocalIdentity(cluster="dhashmap", node_id="mem", partitions=64)
        self.server_factory = PeerFactory(identity, self.clock, handler, max_frame=4096)
        self.pumps: list[iosim.IOPump] = []
        self.client = self.make_client()

    def make_client(self, cluster: str = "dhashmap") -> TwistedNativeClient:
        test = self

        class PumpEndpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                client = factory.buildProtocol(ADDRESS)
                server = test.server_factory.buildProtocol(ADDRESS)
                test.pumps.append(iosim.connect(
                    server, iosim.FakeTransport(server, isServer=True),
                    client, iosim.FakeTransport(client, isServer=False), greet=False))
                return succeed(client)

        return TwistedNativeClient(endpoint=PumpEndpoint(), clock=self.clock, cluster=cluster, timeout=5.0)

    def flush(self) -> None:
        for _ in range(5):
            for pump in self.pumps:
                pump.flush()
            self.clock.advance(0)

    def ok(self, d: Deferred[Any]) -> Any:
        self.flush()
        return self.successResultOf(d)

    def err(self, d: Deferred[Any], *types: type[BaseException]) -> Any:
        self.flush()
        return self.failureResultOf(d, *types).value

    def test_put_get_delete(self) -> None:
        version = self.ok(self.client.put(b"k\x00/\xff", b"v"))
        self.assertEqual(self.ok(self.client.get(b"k\x00/\xff")), Value(b"v", version))
        self.ok(self.client.delete(b"k\x00/\xff"))
        self.err(self.client.get(b"k\x00/\xff"), NotFound)

    def test_cas_and_conditions(self) -> None:
        v1 = self.ok(self.client.cas(b"c", None, b"1"))
        self.err(self.client.cas(b"c", None, b"again"), PreconditionFailed)
        v2 = self.ok(self.client.cas(b"c", v1, b"2"))
        self.err(self.client.cas(b"c", v1, b"stale"), PreconditionFailed)
        self.err(self.client.delete(b"c", if_match=v1), PreconditionFailed)
        self.assertEqual(self.ok(self.client.get(b"c")), Value(b"2", v2))
        self.ok(self.client.delete(b"c", if_match=v2))

    def test_pipelined_requests_on_one_connection(self) -> None:
        puts = [self.client.put(b"p%d" % i, b"%d" % i, w="one") for i in range(20)]
        versions = [self.ok(d) for d in puts]
        gets = [self.client.get(b"p%d" % i, r="all") for i in range(20)]
        self.assertEqual([self.ok(d) for d in gets], [Value(b"%d" % i, v) for i, v in enumerate(versions)])
        self.assertEqual(len(self.pumps), 1)

    def test_ttl_expires_on_the_clock(self) -> None:
        self.ok(self.client.put(b"t", b"v", ttl=2))
        self.clock.advance(1.5)
        self.assertEqual(self.ok(self.client.get(b"t")).value, b"v")
        self.clock.advance(1.0)
        self.err(self.client.get(b"t"), NotFound)

    def test_the_nodes_refusals(self) -> None:
        self.err(self.client.get(b"k", r=3), InvalidRequest)  # three replicas wanted, the key has one
        self.err(self.client.put(b"k" * (self.MAX_KEY + 1), b"v"), KeyTooLong, InvalidRequest)
        self.err(self.client.put(b"k", b"v" * (self.MAX_VALUE + 1)), ValueTooLarge, InvalidRequest)
        self.ok(self.client.put(b"k", b"fine"))
        self.assertEqual(self.ok(self.client.get(b"k", r=1)).value, b"fine")
        self.assertEqual(len(self.pumps), 1)  # the connection outlived the refusals

    def test_another_cluster_is_refused(self) -> None:
        other = self.make_client(cluster="elsewhere")
        self.assertEqual(self.err(other.get(b"k"), HandshakeError).code, "cluster_mismatch")


@pytest.mark.integration
def test_on_a_real_reactor_against_the_node(node: NodeProcess) -> None:
    script = textwrap.dedent("""
        import sys
        from twisted.internet import defer, task
        from dhashmap_client import HandshakeError, NotFound, PreconditionFailed, TwistedNativeClient

        @defer.inlineCallbacks
        def main(reactor, host, port):
            db = TwistedNativeClient(host, int(port), reactor=reactor, timeout=5.0)
            v1 = yield db.put(b"real-reactor/k", b"v1", w="all")
            item = yield db.get(b"real-reactor/k", r="one")
            assert item.value == b"v1" and item.version == v1
            yield db.cas(b"real-reactor/k", v1, b"v2")
            try:
                yield db.cas(b"real-reactor/k", v1, b"stale")
                raise AssertionError("stale cas succeeded")
            except PreconditionFailed:
                pass
            values = yield defer.gatherResults([db.put(b"real-reactor/%d" % i, b"x") for i in range(30)])
            assert len(set(values)) == 30
            yield db.delete(b"real-reactor/k")
            try:
                yield db.get(b"real-reactor/k")
                raise AssertionError("deleted key found")
            except NotFound:
                pass
            yield db.close()
            other = TwistedNativeClient(host, int(port), cluster="elsewhere", reactor=reactor, timeout=5.0)
            try:
                yield other.get(b"k")
                raise AssertionError("another cluster accepted")
            except HandshakeError:
                pass
            print("ok")

        task.react(main, sys.argv[1:])
    """)
    out = subprocess.run([sys.executable, "-c", script, node.host, str(node.peer_port)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
