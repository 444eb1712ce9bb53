"""The network a node talks through: real TCP/UDP, or an in-memory simulation.

Every node gets its network injected (see DESIGN.md, "One node, two worlds"), so
nothing else in the tree opens a socket.  The daemon passes ``TCPNetwork(reactor)``;
tests and the cluster simulator pass ``MemoryNetwork(clock, rng)``, which runs any
number of nodes in one process on a ``task.Clock`` and can delay, partition, crash,
drop and duplicate — deterministically: the same seed and the same calls give the
same schedule, so a failing seed is a reproducible bug report.

The memory network's model, chosen to match what real code has to cope with:

* **Nothing is synchronous.**  Every byte, datagram, handshake and close is
  delivered by ``clock.callLater``; ``write`` never calls the peer's
  ``dataReceived`` (re-entrancy bugs hide there).  Even zero latency needs a
  ``clock.advance(0)``.
* **Streams are TCP.**  Bytes arrive in order, once, per direction, even under
  jitter.  Loss is modelled as the connection *breaking* (both live sides get
  ``connectionLost`` with ``ConnectionLost``), and bytes still in flight on a
  broken connection are lost, as unacknowledged data is on a real one.
* **Connects take a round trip.**  The SYN needs one latency to reach the
  listener (which accepts then: ``buildProtocol`` + ``connectionMade``), the
  answer one more to come back.  No listener: ``ConnectionRefusedError`` after
  that round trip.  Across a partition the packets vanish, so the connect fails
  with ``twisted.internet.error.TimeoutError`` after ``timeout`` simulated
  seconds, as it would on a real network.
* **A crash is a killed process** (``crash(host)``): the host's listeners, UDP
  ports and connections vanish at once, its own protocols get no further
  callbacks (dead code runs nothing), its peers see ``ConnectionLost`` after the
  latency, and later connects to it are refused (the machine is up, the process
  is gone).  A restarted node may listen on the same host and ports again.
* **Datagrams are UDP**: each may be lost or duplicated (probabilities drawn
  from the injected ``rng``) and, under jitter, reordered.

Hosts are plain strings (``"node1"``, ``"10.0.0.1"``); addresses are
``IPv4Address`` whatever the string.  A client's host is given by
``connect(..., source_host=...)`` (default ``DEFAULT_SOURCE_HOST``), which is how
a partition knows which side a connection belongs to; ``MemoryNetwork.as_host``
gives a node a view of the network that fills it in.
"""

from __future__ import annotations

import random
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from twisted_dhm import logs

log = logs.logger("dhashmap.network")

DEFAULT_SOURCE_HOST = "127.0.0.1"
DEFAULT_LATENCY = 0.001
DEFAULT_CONNECT_TIMEOUT = 5.0
#: What the memory network hands out as ephemeral ports (the IANA dynamic range).
EPHEMERAL_PORTS = range(49152, 65536)
#: The largest UDP payload over IPv4; the real reactor refuses bigger ones too.
MAX_DATAGRAM = 65507
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class INetwork(Interface):
    """Stream and datagram transport for one node: all of its sockets go through here.

    Implemented by ``TCPNetwork`` (the real reactor) and ``MemoryNetwork`` (the
    simulation), so protocol code cannot tell which world it is in.
    """

    def listen(host: str, port: int, factory: IProtocolFactory) -> IListeningPort:
        """Accept stream connections on ``host:port`` (port 0: pick a free one).

        Synchronous; raises ``CannotListenError`` if the address is taken.
        """

    def connect(
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        source_host: str | None = None,
    ) -> Deferred[IProtocol]:
        """Open a stream connection to ``host:port``.

        Fires with the protocol ``factory.buildProtocol`` made, after its
        ``makeConnection``; errbacks with ``ConnectionRefusedError``,
        ``TimeoutError`` (after ``timeout`` seconds) or ``NoProtocol`` (the
        factory returned ``None``).  ``source_host`` is the local address to
        connect from (``bindAddress`` on TCP; the side of a partition in memory).
        Cancelling the Deferred abandons the attempt.
        """

    def listen_udp(host: str, port: int, protocol: DatagramProtocol) -> IListeningPort:
        """Bind ``protocol`` to UDP ``host:port``; it sends with ``transport.write(data, (host, port))``."""


def no_delay(transport: Any) -> None:
    """Send each write at once: turn off Nagle's algorithm on a stream transport that has it.

    Request/response protocols need this (Go and grpc set it on every connection): with Nagle,
    a small write made while an earlier one is unacknowledged waits for that ACK, which the
    peer's kernel may delay.  Measured on loopback under a steady load: runs of seconds in
    which one node's requests took 5-40 ms instead of 1 ms, every process idle meanwhile.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        setter(True)


#: What coalesce_writes uses of ``twisted.internet.tcp.Connection`` (its unit tests run on a real
#: one, so an upgrade of Twisted that changes them fails there, not in production).
_TCP_INTERNALS = ("writeSomeData", "dataBuffer", "_tempDataBuffer", "_tempDataLen", "connected",
                  "disconnecting", "loseWriteConnection", "abortConnection")


def coalesce_writes(transport: Any, clock: IReactorTime) -> None:
    """Send what a protocol writes in one reactor turn with one ``send()``, at the turn's end.

    Twisted's TCP transport answers a write by asking epoll to report the socket writable
    (an ``epoll_ctl``), sends when the next poll says so, then asks epoll to stop (another
    ``epoll_ctl``): three system calls and a trip through the reactor's event dispatch per
    answer, although a socket with room (nearly always, on a request/response connection)
    takes the bytes at once.  Here the bytes a turn writes are gathered and, once the turn's
    events are handled (``clock.callLater(0)``, one call for all connections), handed to the
    socket directly; only what it does not take, or anything written while the transport still
    holds older bytes, goes through the transport's own ``write`` and its flow control.
    Measured on one node (docs/benchmarks.md): native GET +10-16 %, REST GET and PUT +20 %.

    A transport that is not a plain TCP connection (TLS, the memory network, test doubles) is
    left as it is.  Call it from ``connectionMade``, before the first write.
    """
    if all(hasattr(transport, name) for name in _TCP_INTERNALS):
        _TurnWriter.of(clock).adopt(transport)


class _TurnWriter:
    """The end-of-turn sender of one reactor, shared by every connection on it."""

    _of_clock: weakref.WeakKeyDictionary[Any, _TurnWriter] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, clock: IReactorTime) -> _TurnWriter:
        writer = cls._of_clock.get(clock)
        if writer is None:
            writer = cls._of_clock[clock] = cls(clock)
        return writer

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._dirty: list[tuple[Any, list[bytes], Callable[[bytes], None]]] = []
        self._scheduled = False

    def adopt(self, transport: Any) -> None:
        queued: list[bytes] = []
        size = [0]  # of what is queued: queued's bytes are joined only when sent
        own_write = transport.write
        own_lose = transport.loseConnection
        own_lose_write = transport.loseWriteConnection
        own_abort = transport.abortConnection

        def write(data: bytes) -> None:
            if not data:
                return
            if not queued:
                if not transport.connected or transport.disconnecting:
                    own_write(data)  # closing or closed: the transport knows what to do
                    return
                self._dirty.append((transport, queued, own_write))
                if not self._scheduled:
                    self._scheduled = True
                    self.clock.callLater(0, self._flush)
                size[0] = 0
            queued.append(data)
            size[0] += len(data)

        def unsent_bytes() -> int:
            """What was written and not yet sent: this turn's writes and the transport's buffer."""
            return (size[0] if queued else 0) + len(transport.dataBuffer) + transport._tempDataLen

        def write_sequence(seq: Iterable[bytes]) -> None:
            write(b"".join(seq))

        def lose_connection(*args: Any) -> None:
            self._send(transport, queued, own_write)  # what was written goes out before the close
            own_lose(*args)

        def lose_write_connection() -> None:
            self._send(transport, queued, own_write)
            own_lose_write()

        def abort_connection() -> None:
            queued.clear()  # an abort drops unsent bytes
            own_abort()

        transport.write = write
        transport.writeSequence = write_sequence
        transport.loseConnection = lose_connection
        transport.loseWriteConnection = lose_write_connection
        transport.abortConnection = abort_connection
        transport.unsent_bytes = unsent_bytes

    @staticmethod
    def _send(transport: Any, queued: list[bytes], own_write: Callable[[bytes], None]) -> None:
        if not queued:
            return
        data = b"".join(queued)
        queued.clear()
        if not transport.connected:
            return  # gone meanwhile: the bytes are lost, as those in the transport's own buffer
        if not transport.disconnecting and not transport.dataBuffer and not transport._tempDataBuffer:
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
            # else an error (the connection is going): the transport's own write meets it too
        own_write(data)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for transport, queued, own_write in dirty:
            self._send(transport, queued, own_write)


@implementer(INetwork)
class TCPNetwork:
    """The real network: a thin layer over the reactor, so the daemon's sockets are ordinary ones."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listen(self, host: str, port: int, factory: IProtocolFactory) -> IListeningPort:
        return self._reactor.listenTCP(port, factory, interface=host)

    def connect(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        source_host: str | None = None,
    ) -> Deferred[IProtocol]:
        # The endpoint already does what INetwork promises: fire with the protocol
        # after makeConnection, errback on refusal/timeout/NoProtocol, cancel.
        bind = (source_host, 0) if source_host else None
        endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout, bindAddress=bind)
        return endpoint.connect(factory)

    def listen_udp(self, host: str, port: int, protocol: DatagramProtocol) -> IListeningPort:
        return self._reactor.listenUDP(port, protocol, interface=host)


@implementer(INetwork)
class MemoryNetwork:
    """An in-process network on simulated time, with fault injection for tests and the simulator.

    All randomness (jitter, datagram loss and duplication) comes from ``rng`` and
    all time from ``clock``, in a fixed order, so runs are reproducible.  Fault
    methods change the network at once; they never block or advance the clock.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random,
        latency: float = DEFAULT_LATENCY,
        jitter: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self._latency = 0.0
        self._jitter = 0.0
        self.set_latency(latency, jitter)
        self._loss = 0.0
        self._duplication = 0.0
        self._listeners: dict[tuple[str, int], _MemoryListeningPort] = {}
        self._udp_ports: dict[tuple[str, int], _MemoryUDPPort] = {}
        # Insertion-ordered dicts (never sets of objects): iteration order must
        # not depend on id() for runs to be reproducible.
        self._connections: dict[int, _Connection] = {}
        self._attempts: dict[int, _ConnectAttempt] = {}
        self._serial = 0
        self._next_ephemeral = EPHEMERAL_PORTS.start
        self._cuts: list[tuple[frozenset[str], frozenset[str]]] = []
        self._isolated: set[str] = set()

    # -- INetwork --------------------------------------------------------------

    def listen(self, host: str, port: int, factory: IProtocolFactory) -> IListeningPort:
        self._check_host(host)
        port = port or self._ephemeral_port(host)
        if (host, port) in self._listeners:
            raise error.CannotListenError(host, port, OSError("address already in use (memory network)"))
        listener = _MemoryListeningPort(self, host, port, factory)
        self._listeners[(host, port)] = listener
        factory.doStart()
        return listener

    def connect(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        source_host: str | None = None,
    ) -> Deferred[IProtocol]:
        src = source_host or DEFAULT_SOURCE_HOST
        self._check_host(src)
        attempt = _ConnectAttempt(self, src, self._ephemeral_port(src), host, port, factory)
        self._attempts[self._next_serial()] = attempt
        attempt.timeout_call = self.clock.callLater(timeout, attempt.time_out, timeout)
        self._send_packet(src, host, lambda: self._syn_arrived(attempt))
        return attempt.deferred

    def listen_udp(self, host: str, port: int, protocol: DatagramProtocol) -> IListeningPort:
        self._check_host(host)
        port = port or self._ephemeral_port(host)
        if (host, port) in self._udp_ports:
            raise error.CannotListenError(host, port, OSError("address already in use (memory network)"))
        udp = _MemoryUDPPort(self, host, port, protocol)
        self._udp_ports[(host, port)] = udp
        protocol.makeConnection(udp)
        return udp

    def as_host(self, host: str) -> INetwork:
        """This network as seen from ``host``: connects come from it, wildcard listens bind to it.

        Hand one to each simulated node, so node code needs no ``source_host``
        and a ``0.0.0.0`` listen from a default config lands on the node's host.
        """
        self._check_host(host)
        return _HostNetwork(self, host)

    # -- faults ----------------------------------------------------------------

    def partition(self, a_hosts: Iterable[str], b_hosts: Iterable[str]) -> None:
        """Cut every path between the two groups (both ways) until ``heal()``.

        Connections between them break now; connects across the cut time out;
        datagrams and packets in flight across it are dropped on arrival.
        Several partitions add up.
        """
        a, b = frozenset(a_hosts), frozenset(b_hosts)
        if a & b:
            raise ValueError(f"a host cannot be on both sides of a partition: {sorted(a & b)}")
        self._cuts.append((a, b))
        self._break_blocked()

    def isolate(self, host: str) -> None:
        """Cut ``host`` off from every other host (it can still reach itself) until ``rejoin``/``heal``."""
        self._isolated.add(host)
        self._break_blocked()

    def rejoin(self, host: str) -> None:
        """Undo ``isolate(host)``; partitions made with ``partition()`` stay."""
        self._isolated.discard(host)

    def heal(self) -> None:
        """Remove every partition and isolation.

        Broken connections stay broken: reconnecting is the node's job.
        """
        self._cuts.clear()
        self._isolated.clear()

    def crash(self, host: str) -> None:
        """Kill the process on ``host``: its ports close and its connections reset at once.

        The host's own protocols get no further callbacks and its pending connects
        never fire; peers see ``ConnectionLost`` after the latency.
        """
        for key in [k for k in self._listeners if k[0] == host]:
            del self._listeners[key]
        for key in [k for k in self._udp_ports if k[0] == host]:
            self._udp_ports.pop(key)._closed = True
        for attempt in list(self._attempts.values()):
            if attempt.src_host == host:
                attempt.kill()
        for conn in list(self._connections.values()):
            if host in (conn.client.host, conn.server.host):
                conn.break_(dead_host=host)

    def set_latency(self, base: float, jitter: float = 0.0) -> None:
        """One-way delay for every packet: ``base`` plus uniform ``[0, jitter)`` from ``rng``.

        Streams keep their order under jitter; datagrams may be reordered.
        """
        if base < 0 or jitter < 0:
            raise ValueError(f"latency and jitter must be >= 0, got {base!r}, {jitter!r}")
        self._latency, self._jitter = float(base), float(jitter)

    def set_datagram_loss(self, p: float) -> None:
        """Drop each datagram (each copy, when duplicated) with probability ``p``."""
        self._loss = _probability(p)

    def set_datagram_duplication(self, p: float) -> None:
        """Deliver each datagram twice with probability ``p`` (each copy with its own delay)."""
        self._duplication = _probability(p)

    def blocked(self, a: str, b: str) -> bool:
        """Whether a partition or isolation currently separates hosts ``a`` and ``b``."""
        if a == b:
            return False
        if a in self._isolated or b in self._isolated:
            return True
        return any((a in x and b in y) or (a in y and b in x) for x, y in self._cuts)

    # -- internals -------------------------------------------------------------

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _delay(self) -> float:
        if self._jitter:
            return self._latency + self.rng.uniform(0.0, self._jitter)
        return self._latency

    def _check_host(self, host: str) -> None:
        if host in _WILDCARD_HOSTS:
            raise ValueError(
                f"the memory network needs a concrete host, not {host!r}, so faults can name it "
                "(use MemoryNetwork.as_host(host) to map wildcard listens)"
            )

    def _ephemeral_port(self, host: str) -> int:
        size = len(EPHEMERAL_PORTS)
        for _ in range(size):
            port = self._next_ephemeral
            self._next_ephemeral = EPHEMERAL_PORTS.start + (port + 1 - EPHEMERAL_PORTS.start) % size
            in_use = (
                (host, port) in self._listeners
                or (host, port) in self._udp_ports
                or any(
                    (end.host, end.port) == (host, port)
                    for conn in self._connections.values()
                    for end in (conn.client, conn.server)
                )
            )
            if not in_use:
                return port
        raise error.CannotListenError(host, 0, OSError("no free ephemeral port (memory network)"))

    def _send_packet(self, src: str, dst: str, arrive: Callable[[], None]) -> None:
        """Carry one out-of-band packet (SYN, refusal, datagram): lost if a cut lies between at either end."""
        if self.blocked(src, dst):
            return

        def deliver() -> None:
            if not self.blocked(src, dst):
                arrive()

        self.clock.callLater(self._delay(), deliver)

    def _syn_arrived(self, attempt: _ConnectAttempt) -> None:
        if attempt.finished:
            return
        listener = self._listeners.get((attempt.dst_host, attempt.dst_port))
        if listener is None:
            self._send_packet(attempt.dst_host, attempt.src_host, attempt.refuse)
            return
        conn = _Connection(self, attempt)
        self._connections[conn.serial] = conn
        # The handshake answer goes first down the server->client pipe, so
        # anything the server writes in connectionMade arrives after it.
        conn.to_client.push("open")
        try:
            protocol = listener.factory.buildProtocol(conn.client.address)
        except Exception:
            log.failure("buildProtocol failed on {host}:{port}", host=attempt.dst_host, port=attempt.dst_port)
            protocol = None
        if protocol is None:
            conn.server.lost = True
            conn.to_client.push("fin")
        else:
            conn.server.attach(protocol)

    def _send_datagram(self, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        copies = 2 if self._duplication and self.rng.random() < self._duplication else 1
        for _ in range(copies):
            if self._loss and self.rng.random() < self._loss:
                continue
            self._send_packet(src[0], dst[0], lambda: self._datagram_arrived(src, dst, data))

    def _datagram_arrived(self, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        port = self._udp_ports.get(dst)
        if port is None:
            return  # nobody bound there: UDP just drops it
        try:
            port.protocol.datagramReceived(data, src)
        except Exception:
            log.failure("datagramReceived failed on {host}:{port}", host=dst[0], port=dst[1])

    def _break_blocked(self) -> None:
        for conn in list(self._connections.values()):
            if self.blocked(conn.client.host, conn.server.host):
                conn.break_()

    def _forget(self, conn: _Connection) -> None:
        self._connections.pop(conn.serial, None)

    def _forget_attempts(self) -> None:
        for key in [k for k, a in self._attempts.items() if a.finished]:
            del self._attempts[key]


def _probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    return float(p)


@implementer(INetwork)
class _HostNetwork:
    """``MemoryNetwork.as_host(host)``: the network as one simulated node sees it."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self._network = network
        self.host = host

    def _local(self, host: str) -> str:
        return self.host if host in _WILDCARD_HOSTS else host

    def listen(self, host: str, port: int, factory: IProtocolFactory) -> IListeningPort:
        return self._network.listen(self._local(host), port, factory)

    def connect(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        source_host: str | None = None,
    ) -> Deferred[IProtocol]:
        return self._network.connect(host, port, factory, timeout, source_host or self.host)

    def listen_udp(self, host: str, port: int, protocol: DatagramProtocol) -> IListeningPort:
        return self._network.listen_udp(self._local(host), port, protocol)


@implementer(IListeningPort)
class _MemoryListeningPort:
    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: IProtocolFactory) -> None:
        self._network = network
        self.factory = factory
        self._address = IPv4Address("TCP", host, port)

    def startListening(self) -> None:
        """Already listening: ``MemoryNetwork.listen`` starts it."""

    def stopListening(self) -> Deferred[None]:
        """Stop accepting; existing connections live on, as with a real socket."""
        key = (self._address.host, self._address.port)
        if self._network._listeners.get(key) is self:
            del self._network._listeners[key]
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return self._address


@implementer(IListeningPort, IUDPTransport)
class _MemoryUDPPort:
    def __init__(self, network: MemoryNetwork, host: str, port: int, protocol: DatagramProtocol) -> None:
        self._network = network
        self.protocol = protocol
        self._address = IPv4Address("UDP", host, port)
        self._closed = False
        self._broadcast = False

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        if not isinstance(packet, bytes):
            raise TypeError(f"datagrams must be bytes, not {type(packet).__name__}")
        if addr is None:
            raise ValueError("the memory network has no connected UDP: pass addr=(host, port)")
        if len(packet) > MAX_DATAGRAM:
            raise error.MessageLengthError(f"datagram of {len(packet)} bytes exceeds {MAX_DATAGRAM}")
        if self._closed:
            return
        dst = (addr[0], int(addr[1]))
        self._network._send_datagram((self._address.host, self._address.port), dst, packet)

    def writeSequence(self, seq: Iterable[bytes], addr: tuple[str, int] | None = None) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP is not simulated; pass addr to write()")

    def getHost(self) -> IPv4Address:
        return self._address

    def stopListening(self) -> Deferred[None]:
        key = (self._address.host, self._address.port)
        if not self._closed:
            self._closed = True
            if self._network._udp_ports.get(key) is self:
                del self._network._udp_ports[key]
            self.protocol.doStop()
        return succeed(None)

    loseConnection = stopListening

    def startListening(self) -> None:
        """Already listening: ``MemoryNetwork.listen_udp`` starts it."""

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    def getBroadcastAllowed(self) -> bool:
        return self._broadcast


class _ConnectAttempt:
    """One client-side ``connect`` in progress: owns the Deferred and its timeout."""

    def __init__(
        self,
        network: MemoryNetwork,
        src_host: str,
        src_port: int,
        dst_host: str,
        dst_port: int,
        factory: IProtocolFactory,
    ) -> None:
        self.network = network
        self.src_host, self.src_port = src_host, src_port
        self.dst_host, self.dst_port = dst_host, dst_port
        self.factory = factory
        self.finished = False
        self.timeout_call: IDelayedCall | None = None
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)

    def _finish(self) -> None:
        self.finished = True
        if self.timeout_call is not None and self.timeout_call.active():
            self.timeout_call.cancel()
        self.network._forget_attempts()

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        self._finish()  # Deferred errbacks with CancelledError itself

    def kill(self) -> None:
        """The connecting process died: never fire."""
        self._finish()

    def time_out(self, timeout: float) -> None:
        if not self.finished:
            self._finish()
            self.deferred.errback(
                error.TimeoutError(string=f"connect to {self.dst_host}:{self.dst_port} after {timeout}s")
            )

    def refuse(self) -> None:
        if not self.finished:
            self._finish()
            self.deferred.errback(error.ConnectionRefusedError(string=f"{self.dst_host}:{self.dst_port}"))

    def established(self, conn: _Connection) -> None:
        if self.finished:  # gave up, was cancelled or died: reset the server's side
            conn.client.reset(notify_self=False)
            return
        self._finish()
        try:
            protocol = self.factory.buildProtocol(conn.server.address)
        except Exception:
            conn.client.reset(notify_self=False)
            self.deferred.errback()
            return
        if protocol is None:
            conn.client.reset(notify_self=False)
            self.deferred.errback(error.NoProtocol())
            return
        conn.client.attach(protocol)
        self.deferred.callback(protocol)


class _Connection:
    """A client/server pair of transports and the two one-way pipes between them."""

    def __init__(self, network: MemoryNetwork, attempt: _ConnectAttempt) -> None:
        self.network = network
        self.serial = network._next_serial()
        self.attempt = attempt
        src, dst = (attempt.src_host, attempt.src_port), (attempt.dst_host, attempt.dst_port)
        self.client = MemoryTransport(self, *src, *dst)
        self.server = MemoryTransport(self, *dst, *src)
        self.client.peer, self.server.peer = self.server, self.client
        self.to_client = _Pipe(network, self.client)
        self.to_server = _Pipe(network, self.server)
        self.client.outgoing, self.server.outgoing = self.to_server, self.to_client
        self.client.incoming, self.server.incoming = self.to_client, self.to_server

    def clear(self) -> None:
        self.to_client.clear()
        self.to_server.clear()

    def break_(self, dead_host: str | None = None) -> None:
        """The path failed (partition or crash): bytes in flight are lost; live sides learn it later."""
        self.clear()
        for end in (self.client, self.server):
            if end.host == dead_host:
                end.lost = True  # a dead process hears nothing
            else:
                reason = error.ConnectionLost("connection broken by the network")
                end.lose(reason, delay=self.network._delay())
        self.maybe_forget()

    def maybe_forget(self) -> None:
        if self.client.lost and self.server.lost:
            self.network._forget(self)


class _Pipe:
    """One direction of a connection: a FIFO of events, each due no earlier than the one before.

    Only one clock call is pending per pipe, for the head event, so order holds
    whatever the jitter, and a break cancels everything in flight at once.
    """

    def __init__(self, network: MemoryNetwork, dst: MemoryTransport) -> None:
        self._network = network
        self._dst = dst
        self._queue: deque[tuple[float, str, bytes]] = deque()
        self._last_due = 0.0
        self._call: IDelayedCall | None = None
        self.paused = False

    def push(self, kind: str, payload: bytes = b"") -> None:
        clock = self._network.clock
        due = max(clock.seconds() + self._network._delay(), self._last_due)
        self._last_due = due
        self._queue.append((due, kind, payload))
        self._schedule()

    def _schedule(self) -> None:
        if self._queue and self._call is None and not self.paused:
            delay = max(0.0, self._queue[0][0] - self._network.clock.seconds())
            self._call = self._network.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        _, kind, payload = self._queue.popleft()
        self._dst.receive(kind, payload)
        self._schedule()

    def pause(self) -> None:
        self.paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resume(self) -> None:
        self.paused = False
        self._schedule()

    def clear(self) -> None:
        self._queue.clear()
        if self._call is not None:
            self._call.cancel()
            self._call = None


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of a memory-network stream connection, close enough to a TCP transport for Twisted protocols.

    There is no send buffer to fill, so producers are never paused; pull
    producers are asked for more once per latency so they cannot spin the clock.
    """

    disconnecting = False
    connected = False
    disconnected = False

    def __init__(self, conn: _Connection, host: str, port: int, peer_host: str, peer_port: int) -> None:
        self._conn = conn
        self.host, self.port = host, port
        self.address = IPv4Address("TCP", host, port)
        self._peer_address = IPv4Address("TCP", peer_host, peer_port)
        self.protocol: IProtocol | None = None
        self.peer: MemoryTransport
        self.outgoing: _Pipe
        self.incoming: _Pipe
        #: connectionLost has been scheduled or delivered (or never will be).
        self.lost = False
        self._producer: Any = None
        self._pull_call: IDelayedCall | None = None
        self._no_delay = False
        self._keep_alive = False

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if data and not self.lost and not self.disconnecting:
            self.outgoing.push("data", data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after what was written; both sides see ``ConnectionDone`` when the FIN lands."""
        if self.lost or self.disconnecting:
            return
        self.disconnecting = True
        self.outgoing.push("fin")

    def abortConnection(self) -> None:
        """Reset: drop unsent bytes; we get ``ConnectionAborted``, the peer ``ConnectionLost``."""
        self.reset(notify_self=True)

    def getPeer(self) -> IPv4Address:
        return self._peer_address

    def getHost(self) -> IPv4Address:
        return self.address

    # -- ITCPTransport extras --------------------------------------------------

    def loseWriteConnection(self) -> None:
        raise NotImplementedError("half-close is not simulated by the memory network")

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = bool(enabled)

    # -- IConsumer -------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"cannot register producer {producer!r}: {self._producer!r} is registered")
        if self.lost:
            producer.stopProducing()
            return
        self._producer = producer
        if not streaming:
            self._pull_call = self._conn.network.clock.callLater(self._conn.network._latency, self._pull)

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None

    def _pull(self) -> None:
        self._pull_call = None
        if self._producer is None or self.lost:
            return
        self._producer.resumeProducing()
        if self._producer is not None and self._pull_call is None:
            self._pull_call = self._conn.network.clock.callLater(self._conn.network._latency, self._pull)

    # -- IPushProducer (flow control of what we receive) -----------------------

    def pauseProducing(self) -> None:
        """Stop handing received bytes to the protocol; they wait, in order, in the pipe."""
        self.incoming.pause()

    def resumeProducing(self) -> None:
        self.incoming.resume()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- network side ----------------------------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        self.connected = True
        try:
            protocol.makeConnection(self)
        except Exception:
            log.failure("connectionMade failed on {address}", address=self.address)
            self.reset(notify_self=True)

    def receive(self, kind: str, payload: bytes) -> None:
        if kind == "open":
            self._conn.attempt.established(self._conn)
        elif kind == "data":
            if not self.lost and self.protocol is not None:
                try:
                    self.protocol.dataReceived(payload)
                except Exception:
                    # What a real reactor does: log it and drop this connection, not the node.
                    log.failure("dataReceived failed on {address}", address=self.address)
                    self.reset(notify_self=True)
        elif kind == "fin":
            self._conn.clear()
            self.peer.lose(error.ConnectionDone("connection closed by this side"))
            self.lose(error.ConnectionDone("connection closed by the peer"))
        elif kind == "rst":
            self._conn.clear()
            self.lose(error.ConnectionLost("connection reset by the peer"))

    def reset(self, notify_self: bool) -> None:
        """Drop everything in flight and send a reset to the peer."""
        if self.lost:
            return
        self._conn.clear()
        self.outgoing.push("rst")
        if notify_self:
            self.lose(error.ConnectionAborted(), delay=0.0)
        else:
            self.lost = True
            self._conn.maybe_forget()

    def lose(self, reason: Exception, delay: float | None = None) -> None:
        """Deliver ``connectionLost(reason)`` once: now, or after ``delay`` on the clock."""
        if self.lost:
            return
        self.lost = True
        self._conn.maybe_forget()
        if self.protocol is None:
            return
        if delay is None:
            self._deliver_lost(reason)
        else:
            self._conn.network.clock.callLater(delay, self._deliver_lost, reason)

    def _deliver_lost(self, reason: Exception) -> None:
        self.connected = False
        self.disconnected = True
        producer, self._producer = self._producer, None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        if producer is not None:
            producer.stopProducing()
        assert self.protocol is not None
        try:
            self.protocol.connectionLost(Failure(reason))
        except Exception:
            log.failure("connectionLost failed on {address}", address=self.address)


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_LATENCY",
    "DEFAULT_SOURCE_HOST",
    "INetwork",
    "MemoryNetwork",
    "MemoryTransport",
    "TCPNetwork",
]
