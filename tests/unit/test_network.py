"""The network abstraction: the in-memory network on a task.Clock, and TCPNetwork over a fake reactor."""

from __future__ import annotations

import random

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IListeningPort, ITCPTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface.verify import verifyObject

from twisted_dhm.network import (
    DEFAULT_LATENCY,
    DEFAULT_SOURCE_HOST,
    INetwork,
    MemoryNetwork,
    MemoryTransport,
    TCPNetwork,
    coalesce_writes,
)

LAT = DEFAULT_LATENCY


def run_for(clock: Clock, seconds: float) -> None:
    """Advance event by event, as the simulator will.

    One big ``Clock.advance`` runs every due call with the clock already at the
    end time, so a packet sent from inside it would be scheduled late.
    """
    end = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls()]
        if not due or min(due) > end:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


class Recorder(Protocol):
    """Writes what happens to it into a shared trace, with the simulated time."""

    def __init__(self, name: str, trace: list, clock: Clock, greeting: bytes = b"", echo: bool = False):
        self.name, self.trace, self.clock = name, trace, clock
        self.greeting, self.echo = greeting, echo
        self.received = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.trace.append((self.clock.seconds(), self.name, "made"))
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.trace.append((self.clock.seconds(), self.name, "data", data))
        self.received += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.trace.append((self.clock.seconds(), self.name, "lost", reason.type.__name__))
        self.reason = reason


class RecorderFactory(Factory):
    def __init__(self, name: str, trace: list, clock: Clock, **kwargs):
        self.name, self.trace, self.clock, self.kwargs = name, trace, clock, kwargs
        self.built: list[Recorder] = []

    def buildProtocol(self, addr):
        protocol = Recorder(f"{self.name}{len(self.built)}", self.trace, self.clock, **self.kwargs)
        protocol.factory = self
        self.built.append(protocol)
        return protocol


class Datagrams(DatagramProtocol):
    def __init__(self, clock: Clock | None = None, trace: list | None = None, name: str = ""):
        self.clock, self.trace, self.name = clock, trace, name
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.stopped = False

    def datagramReceived(self, datagram: bytes, addr) -> None:
        self.received.append((datagram, addr))
        if self.trace is not None and self.clock is not None:
            self.trace.append((self.clock.seconds(), self.name, "dgram", datagram, addr))

    def stopProtocol(self) -> None:
        self.stopped = True


class MemoryNetworkMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock, random.Random(1))
        self.trace: list = []

    def serve(self, host: str = "node1", port: int = 7000, **kwargs) -> RecorderFactory:
        factory = RecorderFactory(f"{host}:server", self.trace, self.clock, **kwargs)
        self.net.listen(host, port, factory)
        return factory

    def open(self, host="node1", port=7000, source_host="node2", **kwargs) -> tuple[Recorder, Recorder]:
        """Connect and run the handshake; return (client, server) protocols."""
        server_factory = self.serve(host, port) if (host, port) not in self.net._listeners else None
        client_factory = RecorderFactory(f"{source_host}:client", self.trace, self.clock, **kwargs)
        d = self.net.connect(host, port, client_factory, source_host=source_host)
        run_for(self.clock, 2 * LAT)
        client = self.successResultOf(d)
        factory = server_factory or self.net._listeners[(host, port)].factory
        return client, factory.built[-1]


class StreamTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(INetwork, self.net.as_host("node1")))
        self.assertTrue(verifyObject(INetwork, self.net))
        client, _ = self.open()
        self.assertIsInstance(client.transport, MemoryTransport)
        self.assertTrue(verifyObject(ITCPTransport, client.transport))

    def test_connect_and_echo_both_directions(self) -> None:
        server_factory = self.serve(greeting=b"hello", echo=True)
        client_factory = RecorderFactory("client", self.trace, self.clock)
        d = self.net.connect("node1", 7000, client_factory, source_host="node2")
        self.assertNoResult(d)
        run_for(self.clock, LAT)  # the SYN lands: the server accepts
        self.assertEqual(len(server_factory.built), 1)
        self.assertNoResult(d)
        run_for(self.clock, LAT)  # the answer comes back, with the greeting right behind it
        client = self.successResultOf(d)
        server = server_factory.built[0]
        self.assertIs(client, client_factory.built[0])
        self.assertEqual(client.received, b"hello")
        self.assertEqual(client.transport.getPeer(), IPv4Address("TCP", "node1", 7000))
        self.assertEqual(server.transport.getHost(), IPv4Address("TCP", "node1", 7000))
        self.assertEqual(server.transport.getPeer(), client.transport.getHost())
        self.assertEqual(client.transport.getHost().host, "node2")

        client.transport.write(b"ping")
        client.transport.writeSequence([b"-", b"pong"])
        run_for(self.clock, LAT)
        self.assertEqual(server.received, b"ping-pong")
        run_for(self.clock, LAT)
        self.assertEqual(client.received, b"helloping-pong")

    def test_nothing_delivered_before_clock_advances(self) -> None:
        client, server = self.open()
        client.transport.write(b"abc")
        server.transport.write(b"xyz")
        self.assertEqual((server.received, client.received), (b"", b""))
        run_for(self.clock, 0)
        self.assertEqual((server.received, client.received), (b"", b""))
        run_for(self.clock, LAT / 2)
        self.assertEqual((server.received, client.received), (b"", b""))
        run_for(self.clock, LAT / 2)
        self.assertEqual((server.received, client.received), (b"abc", b"xyz"))

    def test_zero_latency_is_still_not_synchronous(self) -> None:
        self.net.set_latency(0.0)
        client, server = self.open()
        client.transport.write(b"abc")
        self.assertEqual(server.received, b"")
        run_for(self.clock, 0)
        self.assertEqual(server.received, b"abc")

    def test_order_preserved_under_jitter(self) -> None:
        client, server = self.open()
        self.net.set_latency(0.001, jitter=0.05)
        chunks = [b"%d," % i for i in range(300)]
        for chunk in chunks:
            client.transport.write(chunk)
            run_for(self.clock, 0.0001)
        run_for(self.clock, 1)
        self.assertEqual(server.received, b"".join(chunks))
        arrivals = [event[0] for event in self.trace if event[1] == server.name and event[2] == "data"]
        arrival_gaps = {round(b - a, 6) for a, b in zip(arrivals, arrivals[1:], strict=False)}
        self.assertGreater(len(arrival_gaps), 10, "jitter should spread arrivals out")

    def test_refused_when_nobody_listens(self) -> None:
        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), source_host="node2")
        run_for(self.clock, LAT)
        self.assertNoResult(d)
        run_for(self.clock, LAT)
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_listen_collision_and_ephemeral_ports(self) -> None:
        self.serve("node1", 7000)
        with self.assertRaises(error.CannotListenError):
            self.net.listen("node1", 7000, Factory.forProtocol(Protocol))
        self.net.listen("node2", 7000, Factory.forProtocol(Protocol))  # another host is fine
        port = self.net.listen("node1", 0, Factory.forProtocol(Protocol))
        self.assertTrue(verifyObject(IListeningPort, port))
        self.assertGreaterEqual(port.getHost().port, 49152)
        a, _ = self.open(source_host="node3")
        b, _ = self.open(source_host="node3")
        self.assertNotEqual(a.transport.getHost().port, b.transport.getHost().port)

    def test_wildcard_host_rejected_without_a_view(self) -> None:
        with self.assertRaises(ValueError):
            self.net.listen("0.0.0.0", 7000, Factory.forProtocol(Protocol))

    def test_stop_listening_keeps_connections(self) -> None:
        client, server = self.open()
        self.successResultOf(self.net._listeners[("node1", 7000)].stopListening())
        client.transport.write(b"still here")
        run_for(self.clock, LAT)
        self.assertEqual(server.received, b"still here")
        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), source_host="node2")
        run_for(self.clock, 2 * LAT)
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_connect_timeout_and_cancel(self) -> None:
        self.net.set_latency(3.0)  # the round trip is longer than the timeout
        self.serve()
        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), timeout=5.0, source_host="node2")
        run_for(self.clock, 4.999)
        self.assertNoResult(d)
        run_for(self.clock, 0.001)
        self.failureResultOf(d, error.TimeoutError)
        run_for(self.clock, 10)  # the late answer is reset, not delivered to anyone

        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), source_host="node2")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        run_for(self.clock, 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lose_connection_delivers_written_bytes_first(self) -> None:
        client, server = self.open()
        client.transport.write(b"last words")
        client.transport.loseConnection()
        self.assertTrue(client.transport.disconnecting)
        client.transport.write(b"ignored")
        self.assertIsNone(client.reason)
        run_for(self.clock, LAT)
        self.assertEqual(server.received, b"last words")
        server.reason.trap(error.ConnectionDone)
        client.reason.trap(error.ConnectionDone)
        self.assertEqual([e[2] for e in self.trace[-3:]], ["data", "lost", "lost"])

    def test_abort_connection_drops_bytes_in_flight(self) -> None:
        client, server = self.open()
        client.transport.write(b"never arrives")
        client.transport.abortConnection()
        self.assertIsNone(client.reason)  # never inside the call
        run_for(self.clock, 0)
        client.reason.trap(error.ConnectionAborted)
        self.assertIsNone(server.reason)
        run_for(self.clock, LAT)
        server.reason.trap(error.ConnectionLost)
        self.assertEqual(server.received, b"")

    def test_int32_frames_split_across_writes_arrive_whole(self) -> None:
        class Frames(Int32StringReceiver):
            def __init__(self):
                self.frames: list[bytes] = []

            def stringReceived(self, string: bytes) -> None:
                self.frames.append(string)

        server_factory = Factory.forProtocol(Frames)
        built: list[Frames] = []
        server_factory.buildProtocol = lambda addr: built.append(Frames()) or built[-1]
        self.net.listen("node1", 7000, server_factory)
        d = self.net.connect("node1", 7000, Factory.forProtocol(Frames), source_host="node2")
        run_for(self.clock, 2 * LAT)
        client = self.successResultOf(d)

        wire = StringTransport()
        sender = Frames()
        sender.makeConnection(wire)
        for frame in [b"alpha", b"", b"x" * 1000]:
            sender.sendString(frame)
        data = wire.value()
        for i in range(len(data)):  # one byte per write: the worst split there is
            client.transport.write(data[i : i + 1])
        client.sendString(b"one")
        client.transport.write(wire.value()[:3])
        run_for(self.clock, LAT)
        self.assertEqual(built[0].frames, [b"alpha", b"", b"x" * 1000, b"one"])
        client.transport.write(wire.value()[3:9])  # the rest of the length and "alpha"
        run_for(self.clock, LAT)
        self.assertEqual(built[0].frames[-1], b"alpha")

    def test_twisted_web_site_serves_over_the_memory_network(self) -> None:
        root = Resource()
        root.putChild(b"x", Data(b"hello" * 10000, "text/plain"))
        self.net.listen("node1", 8080, Site(root, reactor=self.clock))

        class Get(Recorder):
            def connectionMade(self) -> None:
                self.transport.write(b"GET /x HTTP/1.1\r\nHost: node1\r\nConnection: close\r\n\r\n")

        factory = RecorderFactory("client", self.trace, self.clock)
        factory.buildProtocol = lambda addr: Get("client", self.trace, self.clock)
        d = self.net.connect("node1", 8080, factory, source_host="node2")
        run_for(self.clock, 0.1)
        client = self.successResultOf(d)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.received.endswith(b"hello" * 10000))
        client.reason.trap(error.ConnectionDone)

    def test_protocol_error_drops_the_connection_not_the_network(self) -> None:
        class Broken(Protocol):
            def dataReceived(self, data):
                raise ValueError("bad frame")

        self.net.listen("node1", 7000, Factory.forProtocol(Broken))
        client_factory = RecorderFactory("client", self.trace, self.clock)
        d = self.net.connect("node1", 7000, client_factory, source_host="node2")
        run_for(self.clock, 2 * LAT)
        client = self.successResultOf(d)
        client.transport.write(b"boom")
        run_for(self.clock, LAT)  # raises inside the server; must not escape advance()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        run_for(self.clock, LAT)
        client.reason.trap(error.ConnectionLost)

    def test_pause_producing_holds_received_bytes_in_order(self) -> None:
        client, server = self.open()
        server.transport.pauseProducing()
        client.transport.write(b"a")
        client.transport.write(b"b")
        run_for(self.clock, 1)
        self.assertEqual(server.received, b"")
        server.transport.resumeProducing()
        self.assertEqual(server.received, b"")  # resumed on the clock, not inside the call
        run_for(self.clock, 0)
        self.assertEqual(server.received, b"ab")

    def test_pull_producer_is_driven_until_done(self) -> None:
        client, server = self.open()

        class Pull:
            def __init__(self, transport):
                self.transport, self.left = transport, 3

            def resumeProducing(self):
                self.transport.write(b"chunk%d" % self.left)
                self.left -= 1
                if not self.left:
                    self.transport.unregisterProducer()

            def stopProducing(self):
                raise AssertionError("not stopped")

        client.transport.registerProducer(Pull(client.transport), streaming=False)
        run_for(self.clock, 1)
        self.assertEqual(server.received, b"chunk3chunk2chunk1")

    def test_factory_without_protocol(self) -> None:
        self.net.listen("node1", 7000, Factory.forProtocol(Protocol))
        factory = Factory()
        factory.buildProtocol = lambda addr: None
        d = self.net.connect("node1", 7000, factory, source_host="node2")
        run_for(self.clock, 2 * LAT)
        self.failureResultOf(d, error.NoProtocol)

        refusing = Factory()
        refusing.buildProtocol = lambda addr: None
        self.net.listen("node1", 7001, refusing)
        client_factory = RecorderFactory("client", self.trace, self.clock)
        d = self.net.connect("node1", 7001, client_factory, source_host="node2")
        run_for(self.clock, 3 * LAT)
        client = self.successResultOf(d)  # accepted by the kernel, then closed by the server
        client.reason.trap(error.ConnectionDone)

    def test_factory_that_raises(self) -> None:
        def explode(addr):
            raise RuntimeError("no")

        broken = Factory()
        broken.buildProtocol = explode
        self.net.listen("node1", 7002, broken)
        client_factory = RecorderFactory("client", self.trace, self.clock)
        d = self.net.connect("node1", 7002, client_factory, source_host="node2")
        run_for(self.clock, 3 * LAT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.successResultOf(d).reason.trap(error.ConnectionDone)

        self.serve("node1", 7003)
        d = self.net.connect("node1", 7003, broken, source_host="node2")
        run_for(self.clock, 2 * LAT)
        self.failureResultOf(d, RuntimeError)
        run_for(self.clock, LAT)
        self.net._listeners[("node1", 7003)].factory.built[0].reason.trap(error.ConnectionLost)


class FaultTests(MemoryNetworkMixin, SynchronousTestCase):
    def test_partition_breaks_existing_connections_and_blocks_new_ones(self) -> None:
        across_client, across_server = self.open(source_host="node2")
        same_client, same_server = self.open(source_host="node3")
        across_client.transport.write(b"in flight")
        self.net.partition({"node1", "node3"}, {"node2"})
        self.assertIsNone(across_client.reason)  # learnt after a latency, not inside partition()
        run_for(self.clock, LAT)
        across_client.reason.trap(error.ConnectionLost)
        across_server.reason.trap(error.ConnectionLost)
        self.assertEqual(across_server.received, b"")  # the bytes in flight died with it
        self.assertIsNone(same_client.reason)  # a connection inside one group survives

        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), timeout=5.0, source_host="node2")
        run_for(self.clock, 4.9)
        self.assertNoResult(d)
        run_for(self.clock, 0.1)
        self.failureResultOf(d, error.TimeoutError)
        d = self.net.connect("node2", 1, Factory.forProtocol(Protocol), timeout=5.0, source_host="node1")
        run_for(self.clock, 5)
        self.failureResultOf(d, error.TimeoutError)  # both directions, and no refusal leaks out

        self.net.heal()
        self.assertFalse(self.net.blocked("node1", "node2"))
        client, server = self.open(source_host="node2")
        client.transport.write(b"healed")
        run_for(self.clock, LAT)
        self.assertEqual(server.received, b"healed")

    def test_partition_during_handshake(self) -> None:
        self.serve()
        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), timeout=5.0, source_host="node2")
        run_for(self.clock, LAT)  # the server accepted; its answer is on the wire
        self.net.partition({"node1"}, {"node2"})
        run_for(self.clock, LAT)
        self.net.heal()
        self.assertNoResult(d)
        self.assertEqual(self.trace[-1][2:], ("lost", "ConnectionLost"))
        run_for(self.clock, 5)
        self.failureResultOf(d, error.TimeoutError)

    def test_partition_rejects_overlapping_groups(self) -> None:
        with self.assertRaises(ValueError):
            self.net.partition({"a", "b"}, {"b"})

    def test_isolate_and_rejoin(self) -> None:
        client, server = self.open(source_host="node2")
        self.net.isolate("node1")
        self.assertTrue(self.net.blocked("node1", "node3"))
        self.assertFalse(self.net.blocked("node2", "node3"))
        self.assertFalse(self.net.blocked("node1", "node1"))
        run_for(self.clock, LAT)
        client.reason.trap(error.ConnectionLost)
        self.net.rejoin("node1")
        self.open(source_host="node3")

    def test_crash_closes_everything_of_a_host(self) -> None:
        a, a_server = self.open(source_host="node2")
        b, b_server = self.open(source_host="node3")
        gossip = Datagrams()
        self.net.listen_udp("node1", 7946, gossip)
        outgoing = RecorderFactory("node1:out", self.trace, self.clock)
        self.net.listen("node4", 7000, Factory.forProtocol(Protocol))
        pending = self.net.connect("node4", 7000, outgoing, source_host="node1")

        self.net.crash("node1")
        run_for(self.clock, LAT)
        a.reason.trap(error.ConnectionLost)
        b.reason.trap(error.ConnectionLost)
        self.assertIsNone(a_server.reason)  # a dead process runs no callbacks
        self.assertIsNone(b_server.reason)
        run_for(self.clock, 10)
        self.assertNoResult(pending)
        self.assertEqual(outgoing.built, [])
        self.assertFalse(gossip.stopped)

        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), source_host="node2")
        run_for(self.clock, 2 * LAT)
        self.failureResultOf(d, error.ConnectionRefusedError)
        sender = Datagrams()
        self.net.listen_udp("node2", 7946, sender)
        sender.transport.write(b"ping", ("node1", 7946))
        run_for(self.clock, LAT)
        self.assertEqual(gossip.received, [])

        self.serve("node1", 7000)  # the node restarts on the same address
        self.net.listen_udp("node1", 7946, Datagrams())
        self.open(source_host="node2")

    def test_as_host_fills_in_the_source_and_wildcards(self) -> None:
        node1, node2 = self.net.as_host("node1"), self.net.as_host("node2")
        port = node1.listen("0.0.0.0", 7000, RecorderFactory("server", self.trace, self.clock))
        self.assertEqual(port.getHost(), IPv4Address("TCP", "node1", 7000))
        d = node2.connect("node1", 7000, RecorderFactory("client", self.trace, self.clock))
        run_for(self.clock, 2 * LAT)
        client = self.successResultOf(d)
        self.assertEqual(client.transport.getHost().host, "node2")
        self.net.partition({"node1"}, {"node2"})
        run_for(self.clock, LAT)
        client.reason.trap(error.ConnectionLost)
        udp = node1.listen_udp("", 7946, Datagrams())
        self.assertEqual(udp.getHost(), IPv4Address("UDP", "node1", 7946))

    def test_default_source_host(self) -> None:
        self.serve()
        d = self.net.connect("node1", 7000, RecorderFactory("client", self.trace, self.clock))
        run_for(self.clock, 2 * LAT)
        self.assertEqual(self.successResultOf(d).transport.getHost().host, DEFAULT_SOURCE_HOST)

    def test_set_latency_validates(self) -> None:
        with self.assertRaises(ValueError):
            self.net.set_latency(-1)
        with self.assertRaises(ValueError):
            self.net.set_datagram_loss(1.5)
        self.net.set_latency(0.5)
        self.serve()
        d = self.net.connect("node1", 7000, Factory.forProtocol(Protocol), source_host="node2")
        run_for(self.clock, 0.999)
        self.assertNoResult(d)
        run_for(self.clock, 0.001)
        self.successResultOf(d)


class DatagramTests(MemoryNetworkMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = Datagrams(), Datagrams()
        self.a_port = self.net.listen_udp("node1", 7946, self.a)
        self.net.listen_udp("node2", 7946, self.b)

    def test_delivered_with_sender_address_after_latency(self) -> None:
        self.assertTrue(verifyObject(IUDPTransport, self.a_port))
        self.a.transport.write(b"ping", ("node2", 7946))
        self.assertEqual(self.b.received, [])
        run_for(self.clock, LAT)
        self.assertEqual(self.b.received, [(b"ping", ("node1", 7946))])
        self.a.transport.write(b"to nobody", ("node2", 1))  # no port there: silently dropped
        run_for(self.clock, LAT)
        self.assertEqual(len(self.b.received), 1)

    def test_dropped_under_loss(self) -> None:
        self.net.set_datagram_loss(1.0)
        for _ in range(20):
            self.a.transport.write(b"ping", ("node2", 7946))
        run_for(self.clock, 1)
        self.assertEqual(self.b.received, [])
        self.net.set_datagram_loss(0.5)
        for _ in range(200):
            self.a.transport.write(b"ping", ("node2", 7946))
        run_for(self.clock, 1)
        self.assertTrue(40 < len(self.b.received) < 160, len(self.b.received))

    def test_duplicated(self) -> None:
        self.net.set_datagram_duplication(1.0)
        self.a.transport.write(b"ping", ("node2", 7946))
        run_for(self.clock, 1)
        self.assertEqual(self.b.received, [(b"ping", ("node1", 7946))] * 2)

    def test_blocked_by_partition(self) -> None:
        self.net.partition({"node1"}, {"node2"})
        self.a.transport.write(b"ping", ("node2", 7946))
        run_for(self.clock, 1)
        self.assertEqual(self.b.received, [])
        self.a.transport.write(b"late", ("node2", 7946))
        self.net.heal()
        self.b.transport.write(b"in flight", ("node1", 7946))
        self.net.partition({"node1"}, {"node2"})  # cut while on the wire: lost on arrival
        run_for(self.clock, 1)
        self.assertEqual((self.a.received, self.b.received), ([], []))

    def test_stop_listening_and_errors(self) -> None:
        with self.assertRaises(error.CannotListenError):
            self.net.listen_udp("node1", 7946, Datagrams())
        with self.assertRaises(error.MessageLengthError):
            self.a.transport.write(b"x" * 70000, ("node2", 7946))
        with self.assertRaises(TypeError):
            self.a.transport.write("text", ("node2", 7946))
        self.successResultOf(self.a_port.stopListening())
        self.assertTrue(self.a.stopped)
        self.b.transport.write(b"ping", ("node1", 7946))
        run_for(self.clock, 1)
        self.assertEqual(self.a.received, [])
        self.net.listen_udp("node1", 7946, Datagrams())  # the address is free again


class DeterminismTests(SynchronousTestCase):
    def run_scenario(self, seed: int) -> list:
        """A little of everything random: jitter, loss, duplication, a partition and a crash."""
        clock, trace = Clock(), []
        net = MemoryNetwork(clock, random.Random(seed), latency=0.001, jitter=0.01)
        net.set_datagram_loss(0.3)
        net.set_datagram_duplication(0.3)
        servers = RecorderFactory("server", trace, clock, echo=True)
        net.listen("node1", 7000, servers)
        udp = {h: Datagrams(clock, trace, h) for h in ("node1", "node2", "node3")}
        for host, protocol in udp.items():
            net.listen_udp(host, 7946, protocol)
        clients = [
            net.connect("node1", 7000, RecorderFactory(f"c{h}", trace, clock), source_host=h)
            for h in ("node2", "node3")
        ]
        run_for(clock, 0.05)
        for step in range(50):
            for d in clients:
                d.addCallback(lambda p, step=step: (p.transport.write(b"%d;" % step), p)[1])
            for src, protocol in udp.items():
                for dst in udp:
                    if dst != src:
                        protocol.transport.write(b"g%d" % step, (dst, 7946))
            if step == 20:
                net.partition({"node1"}, {"node3"})
            if step == 35:
                net.heal()
                net.crash("node2")
            run_for(clock, 0.003)
        run_for(clock, 1)
        return trace

    def test_same_seed_same_trace(self) -> None:
        first, second = self.run_scenario(42), self.run_scenario(42)
        self.assertGreater(len(first), 200)
        self.assertEqual(first, second)
        self.assertNotEqual(first, self.run_scenario(43))


class RecordingReactor(MemoryReactor):
    """MemoryReactor has no UDP; record listenUDP the same way it records listenTCP."""

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return object()


class TCPNetworkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = RecordingReactor()
        self.net = TCPNetwork(self.reactor)

    def test_provides_inetwork(self) -> None:
        self.assertTrue(verifyObject(INetwork, self.net))

    def test_listen(self) -> None:
        factory = Factory.forProtocol(Protocol)
        self.net.listen("10.0.0.1", 7000, factory)
        port, got_factory, _backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (7000, "10.0.0.1"))
        self.assertIs(got_factory, factory)

    def test_listen_error_propagates(self) -> None:
        def taken(port, factory, backlog=50, interface=""):
            raise error.CannotListenError(interface, port, OSError("in use"))

        self.reactor.listenTCP = taken
        with self.assertRaises(error.CannotListenError):
            self.net.listen("10.0.0.1", 7000, Factory.forProtocol(Protocol))

    def test_connect_fires_with_the_connected_protocol(self) -> None:
        made: list[Protocol] = []

        class Made(Protocol):
            def connectionMade(self):
                made.append(self)

        d = self.net.connect("10.0.0.2", 7000, Factory.forProtocol(Made), timeout=2.5, source_host="10.0.0.1")
        host, port, wrapping_factory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout, bind), ("10.0.0.2", 7000, 2.5, ("10.0.0.1", 0)))
        self.assertNoResult(d)
        wrapper = wrapping_factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 7000))
        wrapper.makeConnection(StringTransport())
        protocol = self.successResultOf(d)
        self.assertEqual(made, [protocol])

    def test_connect_failure_and_no_bind_address(self) -> None:
        d = self.net.connect("10.0.0.2", 7000, Factory.forProtocol(Protocol))
        _, _, wrapping_factory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((timeout, bind), (5.0, None))
        wrapping_factory.clientConnectionFailed(self.reactor.connectors[0], Failure(error.ConnectionRefusedError()))
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_listen_udp(self) -> None:
        protocol = DatagramProtocol()
        self.net.listen_udp("10.0.0.1", 7946, protocol)
        port, got, interface, _ = self.reactor.udpServers[0]
        self.assertEqual((port, interface), (7946, "10.0.0.1"))
        self.assertIs(got, protocol)


class CoalesceWritesTests(SynchronousTestCase):
    """coalesce_writes on a real ``tcp.Connection`` over a socket pair: sends are real, nothing waits."""

    def setUp(self):
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        self.theirs = theirs
        self.reactor = MemoryReactorClock()  # the connection's: records what epoll would be asked
        self.clock = Clock()  # the turn's end
        self.conn = tcp.Connection(ours, Protocol(), self.reactor)
        self.conn.connected = 1
        coalesce_writes(self.conn, self.clock)

    def received(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self.theirs.recv(1 << 20)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    def test_the_writes_of_a_turn_leave_in_one_send_at_its_end(self):
        self.conn.write(b"GET ")
        self.conn.writeSequence([b"/v1/kv/a", b" HTTP/1.1\r\n"])
        self.assertEqual(self.received(), b"")  # not yet: the turn is still going
        self.clock.advance(0)
        self.assertEqual(self.received(), b"GET /v1/kv/a HTTP/1.1\r\n")
        # Straight to the socket: the reactor was never asked to watch for writability.
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_what_the_socket_cannot_take_goes_through_the_transport_in_order(self):
        big = bytes(range(256)) * 40_000  # ~10 MB: more than a socket buffer holds
        self.conn.write(big)
        self.clock.advance(0)
        self.assertIn(self.conn, self.reactor.getWriters())  # the rest waits in Twisted's buffer
        self.conn.write(b"tail")  # queued behind it, not sent around it
        self.clock.advance(0)
        got = b""
        for _ in range(10_000):
            got += self.received()
            if self.conn not in self.reactor.getWriters():
                break
            self.conn.doWrite()
        got += self.received()
        self.assertEqual(got, big + b"tail")

    def test_unsent_bytes_counts_the_turns_writes_and_the_transports_buffer(self):
        self.assertEqual(self.conn.unsent_bytes(), 0)
        self.conn.write(b"x" * 100)
        self.conn.write(b"y" * 50)
        self.assertEqual(self.conn.unsent_bytes(), 150)
        self.clock.advance(0)
        self.assertEqual(self.conn.unsent_bytes(), 0)  # taken by the socket
        self.assertEqual(len(self.received()), 150)
        big = b"z" * 10_000_000
        self.conn.write(big)
        self.clock.advance(0)
        left = self.conn.unsent_bytes()
        self.assertGreater(left, 0, "more than the socket takes: the rest is in the transport")
        self.assertEqual(left, len(big) - len(self.received()))

    def test_lose_connection_sends_what_was_written_first(self):
        self.conn.write(b"last words")
        self.conn.loseConnection()
        self.assertEqual(self.received(), b"last words")

    def test_abort_drops_what_was_not_sent(self):
        self.conn.write(b"never")
        self.conn.abortConnection()
        self.clock.advance(0)
        self.assertEqual(self.received(), b"")

    def test_other_transports_are_left_as_they_are(self):
        transport = StringTransport()
        coalesce_writes(transport, self.clock)
        transport.write(b"now")
        self.assertEqual(transport.value(), b"now")
        self.assertEqual(self.clock.getDelayedCalls(), [])
