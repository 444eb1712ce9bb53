"""Hostile HTTP clients against the real Site and channel, over StringTransport."""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator


class NoDelayTransport(StringTransport):
    no_delay = False

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


class ChannelTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.engine = MemoryEngine()
        coordinator = single_node_coordinator(self.engine, self.clock)
        self.site = build_site(
            coordinator, NodeMetrics(self.engine, process=False), self.clock,
            Limits(max_key_size=64, max_value_size=1000), 30, "n1", lambda: True,
        )
        self.site.doStart()  # as listening does: starts the idle sweep
        self.addCleanup(self.site.doStop)

    def connect(self):
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_answers_are_sent_without_delay(self):
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = NoDelayTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.no_delay)  # Nagle off, as Go's and grpc's servers do

    def test_declared_oversized_body_refused_before_upload(self):
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertNotIn(b"100 Continue", response)
        self.assertIn(b'"value_too_large"', response)
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"x" * 5000)  # what the client had in flight is ignored
        self.assertIsNone(self.engine.get(b"k"))

    def test_chunked_body_over_limit_refused(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            protocol.dataReceived(b"190\r\n" + b"y" * 400 + b"\r\n")  # 3 x 400 bytes > 1000
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertIsNone(self.engine.get(b"k"))

    def test_body_at_limit_accepted(self):
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"z" * 1000
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 201 "), transport.value())
        self.assertEqual(self.engine.get(b"k").value, b"z" * 1000)

    def test_slow_client_is_cut_off_and_others_still_served(self):
        slow, slow_transport = self.connect()
        slow.dataReceived(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        fast, fast_transport = self.connect()
        fast.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(fast_transport.value().startswith(b"HTTP/1.1 200 "))
        self.clock.advance(29)
        slow.dataReceived(b"c")  # a trickle resets the idle time, as in any server ...
        self.clock.advance(29)
        self.assertFalse(slow_transport.disconnecting)
        self.clock.advance(8)  # ... but a stall of the idle timeout (found by a sweep every 7.5 s) ends it
        self.assertTrue(slow_transport.disconnecting or slow_transport.disconnected)
        self.assertIsNone(self.engine.get(b"k"))

    def test_connection_waiting_for_its_answer_is_not_idle(self):
        from twisted.internet.defer import Deferred

        from twisted_dhm.cluster.coordinator import LATER

        protocol, transport = self.connect()
        hold = Deferred()
        coordinator = self.site.kv_resource._coordinator
        coordinator.get_now = lambda key, r=None: LATER  # other replicas to ask: not answered in the call
        coordinator.get = lambda key, r=None: hold  # an answer that takes long
        protocol.dataReceived(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(120)
        self.assertFalse(transport.disconnecting, "the server is working on its request")
        hold.callback(None)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))

    def test_garbage_request_line(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x00\xff\xfe garbage\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_huge_request_line(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /v1/kv/" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_pipelined_requests(self):
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        out = transport.value()
        self.assertEqual(out.count(b"HTTP/1.1 "), 2, out)
        self.assertTrue(out.endswith(b"\r\n\r\n1"), out)


class PipelinedReadAfterWriteTests(SynchronousTestCase):
    """Read-your-writes over one HTTP/1.1 connection with an LMDB store, when the read is made
    in the very call that answers the write (Twisted handles a pipelined request as soon as
    the one before it is answered), while another client's read holds the reactor turn's read
    transaction (LMDBEngine.get_view)."""

    def test_pipelined_get_after_put_sees_the_put(self):
        from tests.unit.test_storage import HeldCommits
        from twisted_dhm.storage.lmdb_engine import LMDBEngine

        clock = Clock()
        clock.advance(1_700_000_000)
        commits = HeldCommits()
        engine = LMDBEngine(self.mktemp(), clock, map_size=1 << 24, run_in_thread=commits)
        engine.open()
        self.addCleanup(lambda: (engine.close(), commits.run_all()))
        site = build_site(single_node_coordinator(engine, clock), NodeMetrics(engine, process=False), clock,
                          Limits(max_key_size=64, max_value_size=1000), 30, "n1", lambda: True)

        def connect():
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
            transport = StringTransport()
            protocol.makeConnection(transport)
            return protocol, transport

        writer, to_writer = connect()
        writer.dataReceived(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nv1")
        clock.advance(0)
        commits.run_all()
        self.assertTrue(to_writer.value().startswith(b"HTTP/1.1 201 "), to_writer.value())
        to_writer.clear()
        # One turn: a PUT of v2 and, pipelined behind it, a GET; the commit starts at the turn's end.
        writer.dataReceived(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nv2"
                            b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(0)
        self.assertEqual(len(commits.calls), 1)
        # The next turn: another client's GET opens the turn's read transaction (v2 not yet durable).
        reader, to_reader = connect()
        reader.dataReceived(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(to_reader.value().endswith(b"\r\n\r\nv1"), to_reader.value())
        # Still in that turn, the commit finishes: the PUT is answered, then its pipelined GET.
        commits.run_next()
        answers = to_writer.value()
        self.assertIn(b"HTTP/1.1 204 ", answers)
        self.assertTrue(answers.endswith(b"\r\n\r\nv2"), answers)


class Rfc9110Tests(SynchronousTestCase):
    """What RFC 9110/9112/6585 ask of a server, through the real Site and channel."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.engine = MemoryEngine()
        coordinator = single_node_coordinator(self.engine, self.clock)
        self.site = build_site(
            coordinator, NodeMetrics(self.engine, process=False), self.clock,
            Limits(max_key_size=64, max_value_size=1000), 30, "n1", lambda: True,
        )

    def exchange(self, raw):
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        self.clock.advance(0)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        return int(lines[0].split(b" ")[1]), {k.lower(): v for k, v in headers.items()}, body

    def put(self, body=b"v", headers=b""):
        return self.exchange(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\n" + headers
                             + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def get(self, headers=b"", method=b"GET"):
        return self.exchange(method + b" /v1/kv/k HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")

    def test_if_none_match_compares_weakly(self):
        """13.1.2: W/"t" weakly matches "t": a GET is 304, a create-only PUT is 412."""
        tag = self.put(b"1")[1][b"etag"]
        self.assertEqual(self.get(b"If-None-Match: W/" + tag + b"\r\n")[0], 304)
        self.assertEqual(self.put(b"2", b"If-None-Match: W/" + tag + b"\r\n")[0], 412)
        self.assertEqual(self.engine.get(b"k").value, b"1")
        self.assertEqual(self.put(b"3", b"If-Match: W/" + tag + b"\r\n")[0], 412, "If-Match compares strongly")

    def test_strong_comparison_is_character_by_character(self):
        """8.8.3.2: a tag spelled otherwise than the one issued (base64's spare bits in its last
        character) is another tag, though it decodes to the same version."""
        tag = self.put(b"1")[1][b"etag"].strip(b'"').decode()
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        self.assertTrue(len(tag) * 6 % 8, "the token has spare bits")
        other = tag[:-1] + alphabet[alphabet.index(tag[-1]) ^ 1]
        self.assertEqual(self.put(b"2", b'If-Match: "%s"\r\n' % other.encode())[0], 412)
        self.assertEqual(self.get(b'If-None-Match: "%s"\r\n' % other.encode())[0], 200)
        self.assertEqual(self.put(b"2", b'If-Match: "%s"\r\n' % tag.encode())[0], 204)

    def test_if_match_on_get_and_head(self):
        """13.2.2: evaluated for every method; ignored when the answer would be 404 (13.2.1)."""
        self.assertEqual(self.get(b'If-Match: "x"\r\n')[0], 404)
        tag = self.put()[1][b"etag"]
        for method in (b"GET", b"HEAD"):
            self.assertEqual(self.get(b'If-Match: "not-this-one"\r\n', method)[0], 412, method)
            self.assertEqual(self.get(b"If-Match: " + tag + b"\r\n", method)[0], 200, method)
            self.assertEqual(self.get(b"If-Match: *\r\n", method)[0], 200, method)

    def test_a_long_header_line_is_431_not_414(self):
        status, _, body = self.exchange(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 17000 + b"\r\n\r\n")
        self.assertEqual(status, 431)
        self.assertIn(b"header_too_large", body)

    def test_absolute_form_request_target(self):
        """9112 3.2.2: a server must accept it."""
        self.put(b"v")
        status, _, body = self.exchange(b"GET http://x/v1/kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body), (200, b"v"))

    def test_http11_needs_exactly_one_host(self):
        """9112 3.2: 400 without a Host header, or with two."""
        for raw in (b"GET /v1/kv/k HTTP/1.1\r\n\r\n", b"GET /v1/kv/k HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
            self.assertEqual(self.exchange(raw)[0], 400, raw)
        self.assertEqual(self.exchange(b"GET /v1/kv/k HTTP/1.0\r\n\r\n")[0], 404, "HTTP/1.0 needs none")
