"""The native protocol over StringTransport with an injected clock."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.errors import PreconditionFailed
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.protocol import (
    PROTOCOL_VERSION,
    HandshakeFailed,
    LocalIdentity,
    PeerError,
    PeerProtocol,
    RequestTimeout,
)

ME = LocalIdentity(cluster="c1", node_id="me", host="127.0.0.1", peer_port=7000)


def framed(frame: pb.Frame) -> bytes:
    data = frame.SerializeToString()
    return struct.pack(">I", len(data)) + data


def hello(cluster="c1", node_id="them", version=PROTOCOL_VERSION, role=pb.ROLE_PEER) -> pb.Frame:
    f = pb.Frame(id=0)
    f.hello.protocol_version = version
    f.hello.cluster = cluster
    f.hello.node_id = node_id
    f.hello.role = role
    return f


def frames_in(data: bytes) -> list[pb.Frame]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        f = pb.Frame()
        f.ParseFromString(data[4 : 4 + n])
        out.append(f)
        data = data[4 + n :]
    return out


class ProtocolTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.handled = []
        self.answers = {}

    def handler(self, session, frame):
        self.handled.append(frame)
        return self.answers.get(
            frame.WhichOneof("body"), succeed(pb.Frame(replica_put_result=pb.ReplicaPutResult(stored=1)))
        )

    def connect(self, max_frame=1 << 20):
        p = PeerProtocol(ME, self.clock, self.handler, max_frame=max_frame, request_timeout=2.0)
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
        p.makeConnection(t)
        return p, t

    def sent(self, t):
        out = frames_in(t.value())
        t.clear()
        return out


class HandshakeTests(ProtocolTestCase):
    def test_hello_sent_first_and_accepted(self):
        p, t = self.connect()
        [first] = self.sent(t)
        self.assertEqual(first.WhichOneof("body"), "hello")
        self.assertEqual(
            (first.hello.cluster, first.hello.node_id, first.hello.addresses.peer_port), ("c1", "me", 7000)
        )
        self.assertNoResult(p.when_ready())
        p.dataReceived(framed(hello()))
        self.assertEqual(self.successResultOf(p.when_ready()).node_id, "them")

    def test_cluster_mismatch_closes_with_error(self):
        p, t = self.connect()
        self.sent(t)
        p.dataReceived(framed(hello(cluster="other")))
        [err] = self.sent(t)
        self.assertEqual(err.error.code, pb.ERROR_CODE_CLUSTER_MISMATCH)
        self.assertIn("other", err.error.message)
        self.assertTrue(t.disconnecting)
        self.failureResultOf(p.when_ready(), HandshakeFailed)

    def test_version_mismatch_closes_with_error(self):
        p, t = self.connect()
        self.sent(t)
        p.dataReceived(framed(hello(version=99)))
        [err] = self.sent(t)
        self.assertEqual(err.error.code, pb.ERROR_CODE_VERSION_MISMATCH)
        self.assertTrue(t.disconnecting)

    def test_request_before_hello_closes(self):
        p, t = self.connect()
        self.sent(t)
        p.dataReceived(framed(pb.Frame(id=1, replica_get=pb.ReplicaGet(keys=[b"k"]))))
        [err] = self.sent(t)
        self.assertEqual(err.error.code, pb.ERROR_CODE_BAD_FRAME)
        self.assertEqual(self.handled, [])

    def test_silent_connection_closed_after_handshake_timeout(self):
        from twisted_dhm.peer.protocol import HANDSHAKE_TIMEOUT

        p, t = self.connect()
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(t.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnecting)
        self.failureResultOf(p.when_ready(), HandshakeFailed)

    def test_handshake_cancels_the_timer(self):
        p, t = self.connect()
        p.dataReceived(framed(hello()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_peer_without_node_id_refused(self):
        p, t = self.connect()
        p.dataReceived(framed(hello(node_id="")))
        self.failureResultOf(p.when_ready(), HandshakeFailed)

    def test_peer_hello_held_to_what_a_member_record_is_held_to(self):
        """A peer's Hello makes it a member (static discovery): a weight that would make the ring
        rebuild with billions of tokens, a node id that is not one, a port that is not a port."""
        cases = {
            "weight": lambda h: setattr(h.hello, "weight", 2**32 - 1),
            "valid node id": lambda h: setattr(h.hello, "node_id", "evil\x00node"),
            "peer_port": lambda h: setattr(h.hello.addresses, "peer_port", 70000),
            "host": lambda h: setattr(h.hello.addresses, "host", "h" * 300),
        }
        for what, spoil in cases.items():
            p, t = self.connect()
            t.clear()
            frame = hello()
            spoil(frame)
            p.dataReceived(framed(frame))
            failure = self.failureResultOf(p.when_ready(), HandshakeFailed)
            self.assertIn(what, str(failure.value))
            self.assertTrue(t.disconnecting)
            [error] = frames_in(t.value())
            self.assertEqual(error.error.code, pb.ERROR_CODE_BAD_FRAME)
        p, t = self.connect()
        frame = hello()
        frame.hello.weight = 100
        p.dataReceived(framed(frame))
        self.assertEqual(self.successResultOf(p.when_ready()).weight, 100)

    def test_error_with_an_unknown_code_instead_of_hello_fails_ready(self):
        p, t = self.connect()
        f = pb.Frame(id=0)
        f.error.code = 99
        p.dataReceived(framed(f))
        failure = self.failureResultOf(p.when_ready(), HandshakeFailed)
        self.assertIn("ERROR_CODE_99", str(failure.value))

    def test_client_role_needs_no_node_id(self):
        p, t = self.connect()
        p.dataReceived(framed(hello(node_id="", role=pb.ROLE_CLIENT)))
        self.assertEqual(self.successResultOf(p.when_ready()).role, pb.ROLE_CLIENT)

    def test_error_instead_of_hello_fails_ready(self):
        p, t = self.connect()
        f = pb.Frame(id=0)
        f.error.code = pb.ERROR_CODE_CLUSTER_MISMATCH
        f.error.message = "not ours"
        p.dataReceived(framed(f))
        failure = self.failureResultOf(p.when_ready(), HandshakeFailed)
        self.assertIn("not ours", str(failure.value))


class RequestTests(ProtocolTestCase):
    def ready(self):
        p, t = self.connect()
        p.dataReceived(framed(hello()))
        self.sent(t)
        return p, t

    def test_answers_out_of_order(self):
        p, t = self.ready()
        d1 = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"a"])))
        d2 = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"b"])))
        r1, r2 = self.sent(t)
        self.assertNotEqual(r1.id, r2.id)
        self.assertEqual(p.in_flight, 2)
        p.dataReceived(framed(pb.Frame(id=r2.id, replica_put_result=pb.ReplicaPutResult(stored=2))))
        self.assertEqual(self.successResultOf(d2).replica_put_result.stored, 2)
        self.assertNoResult(d1)
        p.dataReceived(framed(pb.Frame(id=r1.id, replica_put_result=pb.ReplicaPutResult(stored=1))))
        self.assertEqual(self.successResultOf(d1).replica_put_result.stored, 1)

    def test_error_answer(self):
        p, t = self.ready()
        d = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"a"])))
        [req] = self.sent(t)
        f = pb.Frame(id=req.id)
        f.error.code = pb.ERROR_CODE_UNAVAILABLE
        f.error.acks, f.error.required = 1, 2
        p.dataReceived(framed(f))
        err = self.failureResultOf(d, PeerError).value
        self.assertEqual((err.code, err.acks, err.required), (pb.ERROR_CODE_UNAVAILABLE, 1, 2))

    def test_error_answer_with_a_code_this_build_does_not_know(self):
        """Protobuf enums are open: a newer node's (or a hostile one's) code still fails the request."""
        p, t = self.ready()
        d = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"a"])))
        [req] = self.sent(t)
        f = pb.Frame(id=req.id)
        f.error.code = 99
        f.error.message = "from the future"
        p.dataReceived(framed(f))
        err = self.failureResultOf(d, PeerError).value
        self.assertEqual(err.code, 99)
        self.assertIn("ERROR_CODE_99: from the future", str(err))
        self.assertFalse(t.disconnecting)

    def test_connection_error_with_an_unknown_code_is_logged_not_raised(self):
        p, t = self.ready()
        f = pb.Frame(id=0)
        f.error.code = 99
        p.dataReceived(framed(f) + framed(f))  # must not raise into the reactor
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertTrue(t.disconnecting, "an Error with id 0 says the other side is closing: so does this one")

    def test_timeout_on_injected_clock_and_late_answer_ignored(self):
        p, t = self.ready()
        d = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"a"])))
        [req] = self.sent(t)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, RequestTimeout)
        p.dataReceived(framed(pb.Frame(id=req.id, pong=pb.Pong())))  # late: ignored
        self.assertEqual(p.in_flight, 0)
        self.assertFalse(t.disconnecting)

    def test_connection_lost_fails_pending(self):
        p, t = self.ready()
        d = p.request(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"a"])))
        p.connectionLost(None)
        self.failureResultOf(d, ConnectionLost)
        self.failureResultOf(p.request(pb.Frame(ping=pb.Ping())), ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [], "timers cancelled")

    def test_serves_requests_through_handler(self):
        p, t = self.ready()
        p.dataReceived(framed(pb.Frame(id=41, replica_put=pb.ReplicaPut())))
        [answer] = self.sent(t)
        self.assertEqual((answer.id, answer.replica_put_result.stored), (41, 1))
        self.assertEqual(len(self.handled), 1)

    def test_slow_handler_answers_later_and_in_any_order(self):
        slow = Deferred()
        self.answers["replica_get"] = slow
        p, t = self.ready()
        p.dataReceived(framed(pb.Frame(id=1, replica_get=pb.ReplicaGet())))
        p.dataReceived(framed(pb.Frame(id=2, replica_put=pb.ReplicaPut())))
        [second] = self.sent(t)
        self.assertEqual(second.id, 2)
        slow.callback(pb.Frame(replica_get_result=pb.ReplicaGetResult()))
        [first] = self.sent(t)
        self.assertEqual(first.id, 1)

    def test_handler_errors_become_error_frames(self):
        from twisted.internet.defer import fail

        self.answers["replica_put"] = fail(PreconditionFailed("nope"))
        p, t = self.ready()
        p.dataReceived(framed(pb.Frame(id=5, replica_put=pb.ReplicaPut())))
        [answer] = self.sent(t)
        self.assertEqual((answer.id, answer.error.code), (5, pb.ERROR_CODE_PRECONDITION_FAILED))
        self.assertFalse(t.disconnecting)

    def test_handler_may_answer_in_the_call(self):
        # A frame instead of a Deferred (a local read): answered at once, in order with the rest.
        self.answers["get"] = pb.Frame(get_result=pb.GetResult(found=True, value=b"v"))
        p, t = self.ready()
        p.dataReceived(framed(pb.Frame(id=6, get=pb.Get(key=b"k"))) + framed(pb.Frame(id=7, get=pb.Get(key=b"k"))))
        answers = self.sent(t)
        self.assertEqual([(a.id, a.get_result.value) for a in answers], [(6, b"v"), (7, b"v")])
        self.assertEqual(p._serving, 0, "nothing left in flight")

    def test_handler_exceptions_become_error_frames(self):
        def broken(session, frame):
            raise PreconditionFailed("raised, not returned") if frame.HasField("put") else ValueError("a bug")

        p, t = self.ready()
        p.handler = broken
        p.dataReceived(framed(pb.Frame(id=8, put=pb.Put(key=b"k"))) + framed(pb.Frame(id=9, get=pb.Get(key=b"k"))))
        answers = self.sent(t)
        self.assertEqual([(a.id, a.error.code) for a in answers],
                         [(8, pb.ERROR_CODE_PRECONDITION_FAILED), (9, pb.ERROR_CODE_INTERNAL)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1, "a bug is logged")
        self.assertFalse(t.disconnecting)

    def test_ping_answered_without_handler(self):
        p, t = self.ready()
        p.dataReceived(framed(pb.Frame(id=3, ping=pb.Ping(sent_at_ms=77))))
        [pong] = self.sent(t)
        self.assertEqual((pong.id, pong.pong.sent_at_ms, pong.pong.node_id), (3, 77, "me"))
        self.assertEqual(self.handled, [])


class BackpressureTests(ProtocolTestCase):
    def test_serving_side_stops_reading_while_answers_back_up(self):
        from twisted_dhm.peer.protocol import PeerFactory

        p = PeerFactory(ME, self.clock, self.handler).buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        self.assertIs(t.producer, p)
        p.pauseProducing()  # what the transport does when its write buffer is full
        self.assertEqual(t.producerState, "paused")
        p.resumeProducing()
        self.assertEqual(t.producerState, "producing")

    def serving(self, answer_size):
        from twisted_dhm.peer.protocol import PeerFactory

        def handler(session, frame):  # a read answered in the call, as a one-node GET is
            answer = pb.Frame()
            answer.get_result.found = True
            answer.get_result.value = b"x" * answer_size
            self.handled.append(frame.id)
            return answer

        p = PeerFactory(ME, self.clock, handler).buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(framed(hello(node_id="", role=pb.ROLE_CLIENT)))
        t.clear()
        return p, t

    def test_no_request_is_taken_while_paused(self):
        """A client pipelining reads of a large value and reading no answers: once the transport
        says its buffer is full, the requests already received wait (they are not answered into
        memory), and are answered when it drains."""
        p, t = self.serving(100_000)
        own_write = t.write

        def write(data):  # what a TCP transport does past its buffer size
            own_write(data)
            if len(t.value()) > 65536 and t.producerState == "producing":
                p.pauseProducing()

        t.write = write
        p.dataReceived(b"".join(framed(pb.Frame(id=i, get=pb.Get(key=b"k"))) for i in range(1, 201)))
        self.assertEqual(self.handled, [1])
        self.assertEqual(t.producerState, "paused")
        t.clear()
        p.resumeProducing()  # drained; it fills up again after one more answer
        self.assertEqual(self.handled, [1, 2])
        t.write = own_write
        t.clear()
        p.resumeProducing()
        self.assertEqual(self.handled, list(range(1, 201)))

    def test_answers_of_one_turn_are_bounded_when_writes_wait_for_the_turns_end(self):
        """With writes held until the end of the turn (coalesce_writes) the transport cannot
        pause the protocol within one read's worth of requests: past TURN_ANSWER_BYTES of unsent
        answers it stops by itself and goes on in the next turn."""
        from twisted_dhm.peer.protocol import TURN_ANSWER_BYTES

        p, t = self.serving(1_000_000)
        held = []
        turn_ends = []

        def write(data):  # as coalesce_writes: held, sent at the end of the turn
            if not held:
                self.clock.callLater(0, lambda: (turn_ends.append(len(held)), held.clear()))
            held.append(data)

        t.write = write
        t.unsent_bytes = lambda: sum(map(len, held))
        largest = []
        handler = p.handler
        p.handler = lambda session, frame: (largest.append(t.unsent_bytes()), handler(session, frame))[1]
        p.dataReceived(b"".join(framed(pb.Frame(id=i, get=pb.Get(key=b"k"))) for i in range(1, 21)))
        per_turn = TURN_ANSWER_BYTES // 1_000_000 + 1
        self.assertEqual(self.handled, list(range(1, per_turn + 1)))
        self.assertEqual(t.producerState, "paused", "and the socket is not read meanwhile")
        self.clock.advance(0)
        self.assertEqual(self.handled, list(range(1, 21)))
        self.assertLessEqual(max(largest), TURN_ANSWER_BYTES + 1_000_100, "what waits to be sent stays bounded")
        self.assertEqual(sum(turn_ends), 20)
        self.assertEqual(set(turn_ends), {per_turn}, "each turn's answers stop at the budget")
        self.assertEqual(t.producerState, "producing")

    def test_requesting_side_does_not_register(self):
        p, t = self.connect()
        self.assertIsNone(t.producer)


class HostileInputTests(ProtocolTestCase):
    def test_request_id_zero_closes(self):
        p, t = self.connect()
        p.dataReceived(framed(hello()))
        t.clear()
        p.dataReceived(framed(pb.Frame(id=0, replica_put=pb.ReplicaPut())))
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.handled, [])

    def test_too_many_in_flight_is_busy_not_a_crash(self):
        from twisted_dhm.peer.protocol import MAX_IN_FLIGHT

        self.answers["replica_get"] = Deferred()  # never answers
        p, t = self.connect()
        p.dataReceived(framed(hello()))
        t.clear()
        p.dataReceived(
            b"".join(framed(pb.Frame(id=i, replica_get=pb.ReplicaGet())) for i in range(1, MAX_IN_FLIGHT + 2))
        )
        [busy] = frames_in(t.value())
        self.assertEqual((busy.id, busy.error.code), (MAX_IN_FLIGHT + 1, pb.ERROR_CODE_BUSY))
        self.assertFalse(t.disconnecting)

    def test_frame_over_limit_closes(self):
        p, t = self.connect(max_frame=100)
        p.dataReceived(struct.pack(">I", 101))
        self.assertTrue(t.disconnecting)
        self.assertIn(pb.ERROR_CODE_TOO_LARGE, [f.error.code for f in frames_in(t.value()) if f.HasField("error")])

    def test_frames_before_the_hello_are_small(self):
        """Until its Hello is in, a connection may send no frame over 64 KiB; after it, up to the
        node's limit."""
        p, t = self.connect(max_frame=1 << 20)
        p.dataReceived(struct.pack(">I", 64 * 1024 + 1))
        self.assertTrue(t.disconnecting)
        p, t = self.connect(max_frame=1 << 20)
        p.dataReceived(framed(hello()))
        p.dataReceived(framed(pb.Frame(id=7, replica_put=pb.ReplicaPut(hint_for="h" * 200_000))))
        self.assertEqual([f.id for f in self.handled], [7])
        self.assertFalse(t.disconnecting)

    def test_a_large_frame_in_many_small_reads(self):
        """Gathered in pieces and joined once (not copied whole on every read), then handled as
        any other, with what follows it in the last read."""
        p, t = self.connect(max_frame=1 << 20)
        p.dataReceived(framed(hello()))
        big = framed(pb.Frame(id=5, replica_put=pb.ReplicaPut(hint_for="b" * 700_000)))
        small = framed(pb.Frame(id=6, replica_put=pb.ReplicaPut(hint_for="s")))
        stream = big + small + small[:3]
        for i in range(0, len(stream), 1000):
            p.dataReceived(stream[i : i + 1000])
            if i + 1000 < len(big):
                self.assertLess(len(p._unprocessed), 1000, "the partial frame is not the receiver's buffer")
        p.dataReceived(small[3:])
        self.assertEqual([f.id for f in self.handled], [5, 6, 6])
        self.assertEqual(len(self.handled[0].replica_put.hint_for), 700_000)

    def test_undecodable_frame_closes(self):
        p, t = self.connect()
        p.dataReceived(framed(hello()))
        t.clear()
        p.dataReceived(struct.pack(">I", 3) + b"\xff\xff\xff")
        self.assertTrue(t.disconnecting)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_never_raise(self, data):
        p, t = self.connect(max_frame=4096)
        p.dataReceived(data)  # must not raise, whatever the bytes
        p.dataReceived(framed(hello()) + data)
        if t.disconnecting:
            self.assertEqual(self.handled, [])

    @settings(max_examples=20, deadline=None)
    @given(st.lists(st.binary(max_size=50), min_size=1, max_size=5))
    def test_frames_split_at_every_offset(self, keys):
        stream = framed(hello()) + b"".join(
            framed(pb.Frame(id=i + 1, replica_put=pb.ReplicaPut(hint_for=k.hex()))) for i, k in enumerate(keys)
        )
        for cut in range(len(stream) + 1):
            self.handled = []
            p, t = self.connect()
            p.dataReceived(stream[:cut])
            p.dataReceived(stream[cut:])
            self.assertEqual([f.replica_put.hint_for for f in self.handled], [k.hex() for k in keys])

    def test_one_byte_at_a_time(self):
        p, t = self.connect()
        stream = framed(hello()) + framed(pb.Frame(id=9, replica_put=pb.ReplicaPut(hint_for="x")))
        for i in range(len(stream)):
            p.dataReceived(stream[i : i + 1])
        self.assertEqual([f.id for f in self.handled], [9])


class ClientRequestMetricsTests(ProtocolTestCase):
    """A served connection reports each client get/put/delete it answers: result and time taken."""

    def setUp(self):
        super().setUp()
        self.seen = []

    def ready(self):
        from twisted_dhm.peer.protocol import PeerFactory

        factory = PeerFactory(ME, self.clock, self.handler)
        factory.observe = lambda op, code, seconds: self.seen.append((op, code, seconds))
        p = factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        p.dataReceived(framed(hello(node_id="", role=pb.ROLE_CLIENT)))
        self.sent(t)
        return p, t

    def test_answers_and_errors_are_observed_when_sent(self):
        p, t = self.ready()
        commit = Deferred()
        self.answers["put"] = commit
        self.answers["get"] = succeed(pb.Frame(get_result=pb.GetResult(found=False)))
        self.answers["delete"] = Deferred()
        p.dataReceived(framed(pb.Frame(id=1, put=pb.Put(key=b"k", value=b"v"))))
        p.dataReceived(framed(pb.Frame(id=2, get=pb.Get(key=b"k"))))
        self.assertEqual(self.seen, [("get", "ok", 0.0)])
        self.clock.advance(0.003)
        commit.callback(pb.Frame(put_result=pb.PutResult(created=True)))
        self.assertEqual(self.seen[1], ("put", "ok", 0.003))
        p.dataReceived(framed(pb.Frame(id=3, delete=pb.Delete(key=b"k"))))
        self.answers["delete"].errback(PreconditionFailed("the version does not match"))
        self.assertEqual(self.seen[2], ("delete", "precondition_failed", 0.0))
        # Members' traffic and pings are not client requests.
        p.dataReceived(framed(pb.Frame(id=4, replica_get=pb.ReplicaGet(keys=[b"k"]))))
        p.dataReceived(framed(pb.Frame(id=5, ping=pb.Ping())))
        self.assertEqual(len(self.seen), 3)
        self.assertEqual([f.id for f in self.sent(t)], [2, 1, 3, 4, 5])  # each answered, counted or not
