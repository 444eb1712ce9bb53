"""The blocking native-protocol client, on one stdlib socket and a reader thread."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType

from dhashmap_client import _native as native
from dhashmap_client._pb import peer_pb2 as pb
from dhashmap_client._protocol import BytesLike, Value, to_bytes
from dhashmap_client.errors import ConnectionError, DhashmapError, Timeout, ValueTooLarge
from dhashmap_client.routing import Router, Topology

__all__ = ["NativeClient"]

Level = str | int | None


class _Connection:
    """One handshaken connection: sends under a lock, a reader thread matches answers by id.

    Once broken (the node closed it, an error, a frame we cannot read) it stays
    broken: every pending request fails with ``self.error`` and the client opens
    a new connection for the next call.
    """

    def __init__(self, sock: socket.socket, reader: native.FrameReader, hello: pb.Hello,
                 name: str, backlog: list[bytes]) -> None:
        self.sock = sock
        self.hello = hello
        self._reader = reader
        self._backlog = backlog  # frames that came in with the Hello
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _pending, _next_id, error
        self._pending: dict[int, tuple[Future, int]] = {}
        self._next_id = 1
        self.error: DhashmapError | None = None
        self._thread = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._thread.start()

    @property
    def broken(self) -> bool:
        return self.error is not None

    def submit(self, frame: pb.Frame) -> tuple[int, Future]:
        """Send a request; the future gets the answer frame or a ``DhashmapError``."""
        future: Future = Future()
        with self._lock:
            if self.error is not None:
                raise copy.copy(self.error)
            request_id = self._next_id
            self._next_id += 1
            frame.id = request_id
            data = native.encode(frame)
            self._pending[request_id] = (future, len(data))
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as e:
            # Part of the frame may be out: the stream is unusable.  If the node said why
            # (a frame over its limit), the reader will have it; give it a moment to arrive.
            self._thread.join(0.5)
            failure = Timeout(f"sending to the node timed out: {e}") if isinstance(e, TimeoutError) \
                else ConnectionError(f"sending to the node failed: {e}")
            self.fail(failure)
        return request_id, future

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def fail(self, error: DhashmapError, culprit: int | None = None) -> None:
        """Break the connection: every pending request fails with ``error``.

        ``culprit``: a request that gets ``error`` while the others get a plain
        ``ConnectionError`` (the frame that was over the node's limit).
        """
        with self._lock:
            if self.error is None:
                self.error = error if culprit is None else ConnectionError(error.message)
            pending, self._pending = self._pending, {}
        for request_id, (future, _) in pending.items():
            if not future.done():  # each its own copy: they are raised in different threads
                future.set_exception(copy.copy(error if culprit in (None, request_id) else self.error))
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
        except OSError:
            pass

    def close(self) -> None:
        if self.error is None:
            self.fail(ConnectionError("the client closed the connection"))
        self.shutdown()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)
        self.sock.close()

    def _read_loop(self) -> None:
        try:
            for payload in self._backlog:
                self._received(native.decode(payload))
            while self.error is None:
                try:
                    data = self.sock.recv(1 << 16)
                except TimeoutError:
                    continue  # idle: the socket's timeout is for sends
                if not data:
                    self.fail(ConnectionError("the node closed the connection"))
                    return
                for payload in self._reader.feed(data):
                    self._received(native.decode(payload))
        except DhashmapError as e:
            self.fail(e)
        except OSError as e:
            self.fail(ConnectionError(f"the connection to the node broke: {e}"))
        except Exception as e:  # a bug must not leave requests waiting for their timeout
            self.fail(ConnectionError(f"reading from the node failed: {e!r}"))

    def _received(self, frame: pb.Frame) -> None:
        body = frame.WhichOneof("body")
        if frame.id == 0:
            if body == "error":  # the node is closing the connection, and says why
                error = native.connection_error(frame.error)
                self.fail(error, self._largest_pending() if isinstance(error, ValueTooLarge) else None)
            return
        with self._lock:
            entry = self._pending.pop(frame.id, None)
        if entry is not None:
            if not entry[0].done():
                entry[0].set_result(frame)
            return
        answer = native.not_served(frame)  # a request from the node (a ping), or a late answer
        # Never wait long for the send lock here: a sender blocked on a full socket
        # would wait for us to read, and we would wait for it.
        if answer is not None and self._send_lock.acquire(timeout=1.0):
            try:
                self.sock.sendall(native.encode(answer))
            finally:
                self._send_lock.release()

    def _largest_pending(self) -> int | None:
        with self._lock:
            if not self._pending:
                return None
            return max(self._pending, key=lambda request_id: self._pending[request_id][1])


class NativeClient:
    """A blocking client for one node's native protocol (its peer port, 7000 by default).

    ``NativeClient("127.0.0.1", 7000, cluster="dhashmap", timeout=10.0)``.  It
    keeps one connection, opened on first use and again on the next call after
    it broke.  It is thread-safe, and requests from several threads are
    pipelined on that connection: each waits only for its own answer.
    ``timeout`` (seconds, ``None`` for none) bounds connecting, the handshake,
    each send and each wait for an answer.

    The operations and their errors are those of ``Client``, plus the replica
    counts ``r``/``w``: ``"one"``, ``"quorum"``, ``"all"`` or a number.  A node
    of another cluster raises ``HandshakeError``.

    ``smart_routing=True``: ``get``, ``put``, ``delete`` and ``cas`` go straight to the native
    port of the key's first live owner (``routing.Router``, with a connection per node routed
    to).  The table comes from the REST API of this node (the REST port its ``Hello``
    announces, or ``rest_url``), and is fetched again after ``topology_max_age`` seconds or when
    a routed node cannot be reached, which is then avoided for ``node_down`` seconds, and (in the
    background, at most once a second) when a routed node answers that it does not own the key.  A request
    that could not be sent (no connection) goes on to the next owner; one that was sent is
    replayed elsewhere only if it is a ``get``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = native.DEFAULT_PORT,
                 cluster: str = native.DEFAULT_CLUSTER, timeout: float | None = 10.0, *,
                 max_frame: int = native.DEFAULT_MAX_FRAME, smart_routing: bool = False,
                 topology_max_age: float = 30.0, node_down: float = 5.0, rest_url: str | None = None) -> None:
        self.host = host
        self.port = port
        self.cluster = native.check_cluster(cluster)
        self.timeout = timeout
        self.max_frame = max_frame
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._nodes: dict[tuple[str, int], NativeClient] = {}
        self.router: Router | None = (Router(self._load_topology, topology_max_age, node_down)
                                      if smart_routing else None)

    def __repr__(self) -> str:
        return f"NativeClient({self.host!r}, {self.port!r}, cluster={self.cluster!r}, timeout={self.timeout!r})"

    def __enter__(self) -> NativeClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; requests still waiting fail with ``ConnectionError``.

        The client can still be used afterwards: the next call connects again.
        """
        with self._lock:
            conn, self._conn = self._conn, None
            nodes, self._nodes = self._nodes, {}
        if conn is not None:
            conn.close()
        for node in nodes.values():
            node.close()

    @property
    def node_id(self) -> str | None:
        """The node id from the connected node's ``Hello``; ``None`` when not connected."""
        conn = self._conn
        return None if conn is None or conn.broken else conn.hello.node_id

    # -- the operations ---------------------------------------------------------------------

    def get(self, key: BytesLike, r: Level = None) -> Value:
        """The live value of ``key`` and its version; ``NotFound`` if there is none."""
        request = native.get_request(key, r)
        return native.get_answer(request, self._call(request))

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
            if_none_match: bool = False, w: Level = None) -> str:
        """Store ``value`` under ``key``; returns the new version token.  See ``Client.put``."""
        request = native.put_request(key, value, ttl, if_match, if_none_match, w)
        return native.put_answer(request, self._call(request))

    def delete(self, key: BytesLike, if_match: str | None = None, w: Level = None) -> None:
        """Delete ``key`` (succeeds if absent); with ``if_match`` only at that version."""
        request = native.delete_request(key, if_match, w)
        native.delete_answer(request, self._call(request))

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike, ttl: float | None = None,
            w: Level = None) -> str:
        """Write only if the current version is ``expected_version`` (``None``: only if absent)."""
        if expected_version is None:
            return self.put(key, value, ttl=ttl, if_none_match=True, w=w)
        return self.put(key, value, ttl=ttl, if_match=expected_version, w=w)

    def ping(self) -> float:
        """Round trip to the node in seconds (connecting first if needed)."""
        self._connection()
        started = time.monotonic()
        request = native.ping_request(int(time.time() * 1000))
        native.answer_body(request, self._call(request))
        return time.monotonic() - started

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, request: pb.Frame) -> pb.Frame:
        body = request.WhichOneof("body")
        if self.router is not None and body in ("get", "put", "delete"):
            return self._routed(request, getattr(request, body).key, body == "get")
        return self._send(self._connection(), request)

    def _routed(self, request: pb.Frame, key: bytes, idempotent: bool) -> pb.Frame:
        """To the key's first owner not recently unreachable, else to this client's node.

        A node that cannot be reached is reported to the router (avoided for a while, the table
        fetched again) and the request goes on to the next choice when nothing was sent, or
        when it is a read.  At most three tries.
        """
        assert self.router is not None
        for attempt in range(3):
            owners = self.router.targets(key)
            address = owners[0] if owners else (self.host, self.port)
            node = self if address == (self.host, self.port) else self._node(address)
            last = attempt == 2
            try:
                conn = node._connection()
            except (ConnectionError, Timeout):
                if owners:
                    self.router.node_failed(address)
                if last or not owners:
                    raise
                continue  # nothing was sent
            try:
                answer = node._send(conn, request)
            except ConnectionError:
                if owners:
                    self.router.node_failed(address)
                if last or not idempotent:
                    raise
                continue
            if owners:  # routed by the table: a node that is not an owner says so ("not mine")
                result = getattr(answer, answer.WhichOneof("body") or "error")
                if getattr(result, "owners", None):
                    self.router.not_owner(result.owners)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _node(self, address: tuple[str, int]) -> NativeClient:
        with self._lock:
            node = self._nodes.get(address)
            if node is None:
                node = self._nodes[address] = NativeClient(address[0], address[1], self.cluster, self.timeout,
                                                           max_frame=self.max_frame)
            return node

    def route(self, key: BytesLike) -> dict[str, object]:
        """Where smart routing sends ``key`` now: ``{"partition", "owners", "address"}`` (for debugging)."""
        if self.router is None:
            raise ValueError("route() needs smart_routing=True")
        raw = to_bytes(key, "key")
        topology = self.router.current()
        if topology is None:
            raise ConnectionError("no partition table could be fetched")
        owners = self.router.targets(raw)
        return {"partition": topology.partition(raw), "owners": topology.owners_of(raw),
                "address": owners[0] if owners else (self.host, self.port)}

    def _load_topology(self, known: list[tuple[str, int]]) -> Topology:
        """The table and the members from the REST API of this client's node."""
        if self.rest_url is not None:
            base = self.rest_url
        else:
            addresses = self._connection().hello.addresses
            host = addresses.host if addresses.host not in ("", "0.0.0.0", "::") else self.host
            base = f"http://{f'[{host}]' if ':' in host else host}:{addresses.rest_port or 8080}"
        ring, members = _get_json(base + "/v1/cluster/ring", self.timeout), \
            _get_json(base + "/v1/cluster/members", self.timeout)
        return Topology(ring, members["members"], "peer_port", self.host)

    def _send(self, conn: _Connection, request: pb.Frame) -> pb.Frame:
        try:
            request_id, future = conn.submit(request)
        except DhashmapError:
            # The connection broke before the request went out (the node closed an idle
            # connection, say): nothing was sent, so one more try on a new one is safe.
            conn = self._connection()
            request_id, future = conn.submit(request)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            conn.forget(request_id)
            raise Timeout(f"no answer from {self.host}:{self.port} within {self.timeout} s") from None

    def _connection(self) -> _Connection:
        with self._lock:
            if self._conn is not None and not self._conn.broken:
                return self._conn
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._conn = self._connect()
            return self._conn

    def _connect(self) -> _Connection:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError as e:
            raise Timeout(f"connecting to {where} timed out") from e
        except OSError as e:
            raise ConnectionError(f"cannot connect to {where}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = native.FrameReader(self.max_frame)
            sock.sendall(native.encode(native.hello_frame(self.cluster)))
            first, backlog = self._first_frames(sock, reader, where)
            hello = native.check_hello(native.decode(first), self.cluster)
        except BaseException as e:
            sock.close()
            if isinstance(e, TimeoutError):
                raise Timeout(f"no Hello from {where} in time") from e
            if isinstance(e, OSError):
                raise ConnectionError(f"the handshake with {where} failed: {e}") from e
            raise
        return _Connection(sock, reader, hello, f"dhashmap-native-{where}", backlog)

    @staticmethod
    def _first_frames(sock: socket.socket, reader: native.FrameReader, where: str) -> tuple[bytes, list[bytes]]:
        """The node's first frame (its Hello), and any that came in the same reads."""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"{where} closed the connection before its Hello")
            frames = reader.feed(data)
            if frames:
                return frames[0], frames[1:]


def _get_json(url: str, timeout: float | None) -> dict:
    """One GET of a JSON document (the routing table), with urllib3 as the REST client."""
    import urllib3

    try:
        response = urllib3.request("GET", url, timeout=urllib3.Timeout(total=timeout), retries=False)
    except urllib3.exceptions.HTTPError as e:
        raise ConnectionError(f"cannot fetch {url}: {e}") from e
    if response.status != 200:
        raise DhashmapError(f"GET {url} answered {response.status}", code="bad_response")
    try:
        return json.loads(response.data)
    except ValueError as e:
        raise DhashmapError(f"GET {url} did not answer JSON", code="bad_response") from e
