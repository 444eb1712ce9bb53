"""The synchronous gRPC client, on grpcio (the ``grpc`` extra).

It speaks the node's gRPC API (services ``dhashmap.v1.KV`` and ``dhashmap.v1.Cluster``,
``proto/dhashmap/v1/kv.proto``, docs/grpc.md) and has the operations of the REST ``Client``
with the same names, arguments and return types, plus ``batch_get``, ``batch_put``,
``members``, ``ring`` and ``status``.  Its errors are the same classes, mapped from the gRPC
status codes (see ``error_from_rpc``).

Retries: only ``UNAVAILABLE`` is retried, with exponential backoff and full jitter, and only
for calls a replay cannot turn into a second write or a misleading answer: ``get``,
``batch_get``, ``list``/``keys`` (the ``Scan`` stream, resumed after the last key it yielded),
``members``, ``ring``, ``status`` and a ``delete`` without ``if_match``.  A write that came
back ``UNAVAILABLE`` may have reached some replicas: replaying a plain ``put`` would make a
second version, and replaying a conditional one after it had in fact succeeded would fail
with a ``PreconditionFailed`` that is not true.  That is the REST client's reasoning
(``sync._retry_policy``).  An RPC that never left the client (no connection could be made)
is already retried transparently by grpc itself, for every method.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

try:
    import grpc
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    if e.name != "grpc":
        raise
    raise ImportError("GrpcClient needs grpcio: pip install 'dhashmap-client[grpc]'") from e

from dhashmap_client import _protocol as proto
from dhashmap_client._native import MAX_COUNT, match_token, ttl_seconds
from dhashmap_client._pb import kv_pb2 as pb
from dhashmap_client._pb import kv_pb2_grpc as pb_grpc
from dhashmap_client._protocol import BytesLike, Page, Value
from dhashmap_client.errors import (
    ConnectionError,
    DhashmapError,
    Forbidden,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    ServerError,
    StorageFull,
    Timeout,
    Unavailable,
    ValueTooLarge,
)
from dhashmap_client.routing import Router, Topology

__all__ = ["GrpcClient", "error_from_rpc", "Call"]

Level = str | int | None
T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:9090"
MAX_BATCH = 1000  # what the node accepts per BatchGet / BatchPut
# Big enough for a value at the node's default limit (8 MiB) plus the key and framing;
# grpc's default of 4 MiB would refuse such a value before the node could.
DEFAULT_MAX_MESSAGE = 64 << 20

_LEVELS = {"one": pb.Quorum.LEVEL_ONE, "quorum": pb.Quorum.LEVEL_QUORUM, "all": pb.Quorum.LEVEL_ALL}


# -- errors ------------------------------------------------------------------------------------


def _metadata_count(metadata: Any, name: str) -> int | None:
    for key, value in metadata or ():
        if key == name:
            try:
                count = int(value)
            except (TypeError, ValueError):
                return None
            return count if count >= 0 else None
    return None


def error_from_rpc(error: grpc.RpcError) -> DhashmapError:
    """The typed error for a failed RPC.

    ``status`` is ``None`` (there is no HTTP); the class follows the status code:
    NOT_FOUND -> ``NotFound``, FAILED_PRECONDITION -> ``PreconditionFailed``,
    INVALID_ARGUMENT -> ``InvalidRequest``, RESOURCE_EXHAUSTED -> ``KeyTooLong`` when the
    node's message is about the key, ``StorageFull`` when it says the storage is full, else
    ``ValueTooLarge``; UNAVAILABLE -> ``Unavailable`` (``acks``/``required`` from the trailing
    metadata) or ``ConnectionError`` when grpc could not reach the node;
    DEADLINE_EXCEEDED -> ``Timeout``; PERMISSION_DENIED -> ``Forbidden``; CANCELLED ->
    ``ConnectionError``; anything else -> ``ServerError``.
    """
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    message = details or (code.name if code is not None else str(error))
    code_name = code.name.lower() if code is not None else "unknown"
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return PreconditionFailed(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        lowered = message.lower()
        # The store's "is full" first: its message names the store's path, which may say "key".
        if re.search(r"\bfull\b|no room|no space|map size", lowered):
            return StorageFull(message)
        if "key" in lowered:
            return KeyTooLong(message)
        return ValueTooLarge(message)
    if code is grpc.StatusCode.UNAVAILABLE:
        trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        acks, required = _metadata_count(trailing, "acks"), _metadata_count(trailing, "required")
        if acks is None and required is None and _unreachable(message):
            return ConnectionError(f"cannot reach the node: {message}")
        return Unavailable(message, acks=acks, required=required)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout(f"no answer in time: {message}")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden(message)
    if code is grpc.StatusCode.CANCELLED:
        return ConnectionError(f"the call was cancelled: {message}", code="cancelled")
    return ServerError(message, code=code_name)


def _unreachable(message: str) -> bool:
    """grpc's own UNAVAILABLE (no connection, reset), as opposed to the node's answer."""
    lowered = message.lower()
    return any(s in lowered for s in ("failed to connect", "connection refused", "socket closed",
                                      "connection reset", "dns resolution failed", "connect failed"))


# -- arguments ---------------------------------------------------------------------------------


def _quorum(level: Level, name: str) -> pb.Quorum | None:
    """``"one"``, ``"quorum"``, ``"all"`` or a replica count; ``None``: the node's default."""
    if level is None:
        return None
    if isinstance(level, str):
        if level not in _LEVELS:
            raise ValueError(f"{name} must be 'one', 'quorum', 'all' or a number of replicas, not {level!r}")
        return pb.Quorum(level=_LEVELS[level])
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"{name} must be a str level or an int, not {type(level).__name__}")
    # 0 would mean "the node's default" on the wire.
    if not 1 <= level <= MAX_COUNT:
        raise ValueError(f"{name} must be at least 1, not {level}")
    return pb.Quorum(count=level)


def _token(version: str | None, name: str) -> str:
    """A bare version token; ``"*"`` (any existing value) has no gRPC equivalent."""
    token = match_token(version)
    if token == "*":
        raise ValueError(f"{name}='*' (any existing value) cannot be expressed over gRPC; use the REST client")
    return token


def _cursor(last_key: bytes) -> str:
    return base64.urlsafe_b64encode(last_key).decode("ascii")


def _start_after(cursor: str) -> bytes:
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str from a previous Page, not {type(cursor).__name__}")
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"not a cursor of this client: {cursor!r}") from None


def _batch_items(items: Mapping[Any, Any] | Iterable[Any]) -> list[pb.BatchPutRequest.Item]:
    pairs = items.items() if isinstance(items, Mapping) else items
    out = []
    for item in pairs:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError("batch_put items must be (key, value) or (key, value, ttl) tuples, or a mapping")
        key, value = item[0], item[1]
        ttl = item[2] if len(item) == 3 else None
        out.append(pb.BatchPutRequest.Item(key=proto.to_bytes(key, "key"), value=proto.to_bytes(value, "value"),
                                           ttl_seconds=ttl_seconds(ttl)))
    return out


# -- the calls, shared by GrpcClient and twisted_grpc.TwistedGrpcClient -------------------------


class Call(NamedTuple):
    """One unary RPC: which stub method, the request, whether a replay is safe, and how to read the answer."""

    service: str  # "kv" or "cluster"
    method: str
    request: Any
    idempotent: bool
    answer: Callable[[Any], Any]


def get_call(key: BytesLike, r: Level = None) -> Call:
    request = pb.GetRequest(key=proto.to_bytes(key, "key"), r=_quorum(r, "r"))
    return Call("kv", "Get", request, True, lambda answer: Value(answer.value, answer.version))


def put_call(key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
             if_none_match: bool = False, w: Level = None) -> Call:
    if if_match is not None and if_none_match:
        raise ValueError("give if_match or if_none_match, not both")
    if if_match is not None or if_none_match:
        return _cas_call(key, _token(if_match, "if_match") if if_match is not None else None, value, ttl, w)
    request = pb.PutRequest(key=proto.to_bytes(key, "key"), value=proto.to_bytes(value, "value"),
                            ttl_seconds=ttl_seconds(ttl), w=_quorum(w, "w"))
    return Call("kv", "Put", request, False, lambda answer: answer.version)


def delete_call(key: BytesLike, if_match: str | None = None, w: Level = None) -> Call:
    token = _token(if_match, "if_match")
    request = pb.DeleteRequest(key=proto.to_bytes(key, "key"), if_match=token, w=_quorum(w, "w"))
    return Call("kv", "Delete", request, not token, lambda answer: None)


def cas_call(key: BytesLike, expected_version: str | None, value: BytesLike, ttl: float | None = None,
             w: Level = None) -> Call:
    token = None if expected_version is None else _token(expected_version, "expected_version")
    return _cas_call(key, token, value, ttl, w)


def _cas_call(key: BytesLike, token: str | None, value: BytesLike, ttl: float | None, w: Level) -> Call:
    request = pb.CompareAndSwapRequest(key=proto.to_bytes(key, "key"), value=proto.to_bytes(value, "value"),
                                       ttl_seconds=ttl_seconds(ttl), w=_quorum(w, "w"))
    if token is None:
        request.create_only = True
    else:
        request.expected_version = token
    return Call("kv", "CompareAndSwap", request, False, lambda answer: answer.version)


def batch_get_call(keys: Iterable[BytesLike], r: Level = None) -> Call | None:
    """``None`` for no keys (the answer is ``[]`` without asking)."""
    raw = [proto.to_bytes(k, "key") for k in keys]
    if len(raw) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} keys per batch, not {len(raw)}")
    if not raw:
        return None

    def answer(response: pb.BatchGetResponse) -> list[Value | None]:
        if len(response.items) != len(raw):
            raise DhashmapError("the node answered a batch of another size", code="bad_response")
        return [Value(item.value, item.version) if item.found else None for item in response.items]

    return Call("kv", "BatchGet", pb.BatchGetRequest(keys=raw, r=_quorum(r, "r")), True, answer)


def batch_put_call(items: Mapping[Any, Any] | Iterable[Any], w: Level = None) -> Call | None:
    """``None`` for no items (the answer is ``[]`` without asking)."""
    request_items = _batch_items(items)
    if len(request_items) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} items per batch, not {len(request_items)}")
    if not request_items:
        return None

    def answer(response: pb.BatchPutResponse) -> list[str | DhashmapError]:
        if len(response.results) != len(request_items):
            raise DhashmapError("the node answered a batch of another size", code="bad_response")
        return [result.version if result.code == 0 else error_from_rpc(_ItemStatus(result.code, result.message))
                for result in response.results]

    return Call("kv", "BatchPut", pb.BatchPutRequest(items=request_items, w=_quorum(w, "w")), False, answer)


def _members(answer: pb.MembersResponse) -> dict[str, Any]:
    return {"node": answer.node, "members": [
        {"id": m.id, "state": m.state, "host": m.host, "peer_port": m.peer_port, "rest_port": m.rest_port,
         "grpc_port": m.grpc_port, "gossip_port": m.gossip_port, "weight": m.weight, "version": m.version,
         "incarnation": m.incarnation} for m in answer.members]}


def _ring(answer: pb.RingResponse) -> dict[str, Any]:
    return {"partitions": answer.partitions, "replicas": answer.replicas, "hash": answer.hash,
            "table": {p.partition: list(p.owners) for p in answer.table}}


def _status(answer: pb.StatusResponse) -> dict[str, Any]:
    return {"node": answer.node, "ready": answer.ready, "problems": list(answer.problems),
            "members_by_state": dict(answer.members_by_state), "version": answer.version}


MEMBERS_CALL = Call("cluster", "Members", pb.MembersRequest(), True, _members)
RING_CALL = Call("cluster", "Ring", pb.RingRequest(), True, _ring)
STATUS_CALL = Call("cluster", "Status", pb.StatusRequest(), True, _status)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if not 1 <= limit < MAX_COUNT:
        raise ValueError(f"limit must be at least 1, not {limit}")


def scan_request(prefix: bytes, page_size: int, start_after: bytes | None, limit: int) -> pb.ScanRequest:
    """A Scan for at most ``limit`` keys (0: all) after ``start_after``."""
    request = pb.ScanRequest(prefix=prefix, page_size=min(page_size, 1000), limit=limit)
    if start_after is not None:
        request.start_after = start_after
        request.has_start_after = True
    return request


def page_of(keys: list[bytes], limit: int) -> Page:
    """The page from a Scan that asked for ``limit + 1`` keys (one more tells whether more follow)."""
    if len(keys) <= limit:
        return Page(keys, None)
    keys = keys[:limit]
    return Page(keys, _cursor(keys[-1]))


def backoff_delay(attempt: int, backoff: float, backoff_max: float, random: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(backoff_max, backoff * 2 ** attempt))."""
    return random() * min(backoff_max, backoff * (2 ** attempt))


def retryable(error: DhashmapError, idempotent: bool, attempt: int, retries: int) -> bool:
    return idempotent and isinstance(error, Unavailable | ConnectionError) and attempt < retries


# -- the client --------------------------------------------------------------------------------



def check_settings(target: object, retries: object, timeout: object, backoff: float, backoff_max: float) -> None:
    """The constructor arguments both gRPC clients share, refused with a clear message."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"the target must be 'host:port', not {target!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    if timeout is not None and not timeout > 0:  # type: ignore[operator]
        raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
    if backoff < 0 or backoff_max < 0:
        raise ValueError("backoff and backoff_max must be >= 0")

class GrpcClient:
    """A blocking gRPC client for one dhashmap node.

    ``GrpcClient("127.0.0.1:9090", timeout=10.0, retries=2)``.  One channel per client
    (grpc multiplexes every call on it; it is thread-safe, so share the client).
    ``timeout`` is each attempt's deadline, in seconds.  ``retries`` is how many more
    attempts an idempotent call gets after an ``UNAVAILABLE``; the n-th waits a random time
    up to ``min(backoff_max, backoff * 2 ** (n - 1))`` first.  ``close()`` (or leaving the
    ``with`` block) closes the channel; a later call opens a new one.

    ``r`` / ``w`` take ``"one"``, ``"quorum"``, ``"all"`` or a number of replicas (``None``:
    the node's default, quorum), as on ``NativeClient``.

    ``smart_routing=True``: ``get``, ``put``, ``delete`` and ``cas`` go straight to the gRPC
    port of the key's first live owner (``routing.Router``: the table from ``ring()`` and
    ``members()``, fetched again after ``topology_max_age`` seconds or when a routed node cannot
    be reached, which is then avoided for ``node_down`` seconds, and in the background, at most once
    a second, when a routed node's trailing metadata ``dhashmap-owners`` says it does not own the
    key); the other calls go to
    ``target``.  One more channel per node routed to.
    """

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float = 10.0, retries: int = 2, *,
                 backoff: float = 0.1, backoff_max: float = 2.0,
                 options: Iterable[tuple[str, Any]] = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE, smart_routing: bool = False,
                 topology_max_age: float = 30.0, node_down: float = 5.0) -> None:
        check_settings(target, retries, timeout, backoff, backoff_max)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._options = [("grpc.max_receive_message_length", max_message_size),
                         ("grpc.max_send_message_length", max_message_size), *options]
        self._credentials = credentials
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._kv: pb_grpc.KVStub | None = None
        self._cluster: pb_grpc.ClusterStub | None = None
        # Tests replace these to observe the backoff without waiting.
        self._sleep: Callable[[float], None] = time.sleep
        self._random: Callable[[], float] = random.random
        self._node_args: dict[str, Any] = {"timeout": timeout, "retries": 0, "options": tuple(options),
                                           "credentials": credentials, "max_message_size": max_message_size}
        self._nodes: dict[str, GrpcClient] = {}
        self.router: Router | None = (Router(self._load_topology, topology_max_age, node_down)
                                      if smart_routing else None)

    def __repr__(self) -> str:
        return f"GrpcClient({self.target!r}, timeout={self.timeout!r}, retries={self.retries!r})"

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight fail.  The client can still be used afterwards."""
        with self._lock:
            channel, self._channel, self._kv, self._cluster = self._channel, None, None, None
            nodes, self._nodes = self._nodes, {}
        if channel is not None:
            channel.close()
        for node in nodes.values():
            node.close()

    # -- KV ---------------------------------------------------------------------------------

    def get(self, key: BytesLike, r: Level = None) -> Value:
        """The live value of ``key`` and its version; ``NotFound`` if there is none."""
        return self._run(get_call(key, r))

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None, if_match: str | None = None,
            if_none_match: bool = False, w: Level = None) -> str:
        """Store ``value`` under ``key``; returns the new version token.

        ``if_match`` (a version token) and ``if_none_match=True`` (no live value yet) make it
        a ``CompareAndSwap``; either failing raises ``PreconditionFailed``.  ``if_match="*"``
        has no gRPC equivalent and raises ``ValueError``.  Never retried.
        """
        return self._run(put_call(key, value, ttl, if_match, if_none_match, w))

    def delete(self, key: BytesLike, if_match: str | None = None, w: Level = None) -> None:
        """Delete ``key``; deleting an absent key succeeds.

        With ``if_match`` only if the value still has that version, else
        ``PreconditionFailed``.  Retried on ``UNAVAILABLE`` only without ``if_match``.
        """
        self._run(delete_call(key, if_match, w))

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike, ttl: float | None = None,
            w: Level = None) -> str:
        """Write only if the current version is ``expected_version`` (``None``: only if absent).

        Returns the new version; ``PreconditionFailed`` when someone else got there first.
        """
        return self._run(cas_call(key, expected_version, value, ttl, w))

    def batch_get(self, keys: Iterable[BytesLike], r: Level = None) -> list[Value | None]:
        """The values of up to 1,000 keys, in their order; ``None`` for a key with no live value."""
        call = batch_get_call(keys, r)
        return [] if call is None else self._run(call)

    def batch_put(self, items: Mapping[Any, Any] | Iterable[Any], w: Level = None) -> list[str | DhashmapError]:
        """Write up to 1,000 values: a mapping, or ``(key, value)`` / ``(key, value, ttl)`` tuples.

        Each item succeeds or fails on its own, so nothing is raised for one item's failure:
        the result has, in the order of ``items``, the new version of each item that was
        written and the typed error (not raised) of each that was not.  An error of the whole
        call (the node unreachable, a batch over 1,000) is raised.  Never retried.
        """
        call = batch_put_call(items, w)
        return [] if call is None else self._run(call)

    def list(self, prefix: BytesLike = b"", limit: int = proto.DEFAULT_LIST_LIMIT,
             cursor: str | None = None) -> Page:
        """One page of live keys starting with ``prefix``, in byte order (``Scan``).

        ``Page.cursor`` is ``None`` after the last page; pass it back for the next one.
        Cursors of this client are not the REST API's (and the other way round).
        """
        check_limit(limit)
        start = None if cursor is None else _start_after(cursor)
        # One key more than asked tells whether another page follows.
        keys = list(self._scan(proto.to_bytes(prefix, "prefix"), min(limit + 1, 1000), start, limit + 1))
        return page_of(keys, limit)

    def keys(self, prefix: BytesLike = b"", page_size: int = proto.DEFAULT_LIST_LIMIT) -> Iterator[bytes]:
        """Every live key starting with ``prefix``, a page (one short ``Scan``) at a time, lazily.

        A page per call rather than one long stream, so that a slow consumer does not run
        into the call's deadline.  Not a snapshot (as with ``Client.keys``); each key is
        yielded once, in byte order.
        """
        cursor: str | None = None
        while True:
            page = self.list(prefix, page_size, cursor)
            yield from page.keys
            if page.cursor is None:
                return
            cursor = page.cursor

    # -- Cluster ----------------------------------------------------------------------------

    def members(self) -> dict[str, Any]:
        """``{"node": id of the node that answered, "members": [{"id", "state", "host", ...}]}``."""
        return self._run(MEMBERS_CALL)

    def ring(self) -> dict[str, Any]:
        """``{"partitions", "replicas", "hash", "table": {partition: [owners, first first]}}``."""
        return self._run(RING_CALL)

    def status(self) -> dict[str, Any]:
        """``{"node", "ready", "problems", "members_by_state", "version"}``."""
        return self._run(STATUS_CALL)

    # -- plumbing ---------------------------------------------------------------------------

    def _stubs(self) -> tuple[pb_grpc.KVStub, pb_grpc.ClusterStub]:
        with self._lock:
            if self._channel is None:
                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
                self._kv = pb_grpc.KVStub(self._channel)
                self._cluster = pb_grpc.ClusterStub(self._channel)
            assert self._kv is not None and self._cluster is not None
            return self._kv, self._cluster

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff, self.backoff_max, self._random)

    def route(self, key: BytesLike) -> dict[str, Any]:
        """Where smart routing sends ``key`` now: ``{"partition", "owners", "target"}`` (for debugging)."""
        if self.router is None:
            raise ValueError("route() needs smart_routing=True")
        raw = proto.to_bytes(key, "key")
        topology = self.router.current()
        if topology is None:
            raise ConnectionError("no partition table could be fetched")
        targets = self.router.targets(raw)
        return {"partition": topology.partition(raw), "owners": topology.owners_of(raw),
                "target": _address(targets[0]) if targets else self.target}

    def _run(self, call: Call) -> Any:
        if self.router is not None and call.method in _KEYED:
            return self._routed(call)
        return self._once(call, call.idempotent)

    def _routed(self, call: Call) -> Any:
        """A keyed call to the key's first owner that was not recently unreachable, else to ``target``.

        After a connection error the router avoids that node and fetches the table again, and
        the call goes on to the next choice when a replay is safe: an idempotent call, or one
        grpc never sent (it could not connect).
        """
        attempt = 0
        while True:
            owners = self.router.targets(call.request.key) if self.router is not None else []
            target = _address(owners[0]) if owners else self.target
            node = self if target == self.target else self._node(target)
            try:
                return node._once(call, False, self._not_mine if owners else None)
            except (Unavailable, ConnectionError) as error:
                never_sent = isinstance(error, ConnectionError) and _never_sent(error.message)
                if isinstance(error, ConnectionError) and owners and self.router is not None:
                    self.router.node_failed(owners[0])
                if not ((call.idempotent or never_sent) and attempt < self.retries):
                    raise
                if not never_sent:
                    self._sleep(self._delay(attempt))
            attempt += 1

    def _not_mine(self, metadata: Any) -> None:
        """Trailing metadata of a routed call: ``dhashmap-owners`` means the node does not own the key."""
        for name, value in metadata or ():
            if name == "dhashmap-owners" and self.router is not None:
                self.router.not_owner(str(value).split(","))

    def _node(self, target: str) -> GrpcClient:
        with self._lock:
            node = self._nodes.get(target)
            if node is None:
                node = self._nodes[target] = GrpcClient(target, **self._node_args)
            return node

    def _load_topology(self, known: list[tuple[str, int]]) -> Topology:
        """The table and members over gRPC: from ``target``, else from a live member already known."""
        seed_host = self.target.rsplit(":", 1)[0].strip("[]")
        error: DhashmapError | None = None
        for target in dict.fromkeys([self.target, *(_address(a) for a in known)]):
            node = self if target == self.target else self._node(target)
            try:
                ring, members = node._once(RING_CALL, True), node._once(MEMBERS_CALL, True)
            except (ConnectionError, Unavailable, Timeout) as e:
                error = e
                continue
            return Topology(ring, members["members"], "grpc_port", seed_host)
        raise error or ConnectionError("no node to ask for the partition table")

    def _once(self, call: Call, idempotent: bool, trailers: Callable[[Any], None] | None = None) -> Any:
        def method() -> Any:
            kv, cluster = self._stubs()
            return getattr(kv if call.service == "kv" else cluster, call.method)

        return call.answer(self._unary(method, call.request, idempotent=idempotent, trailers=trailers))

    def _unary(self, method: Callable[[], Any], request: Any, *, idempotent: bool,
               trailers: Callable[[Any], None] | None = None) -> Any:
        """One call, retried as ``retries`` allows; ``trailers`` sees each answer's trailing metadata."""
        attempt = 0
        while True:
            try:
                if trailers is None:
                    return method()(request, timeout=self.timeout)
                response, rpc = method().with_call(request, timeout=self.timeout)
                trailers(rpc.trailing_metadata())
                return response
            except grpc.RpcError as e:
                if trailers is not None and hasattr(e, "trailing_metadata"):
                    trailers(e.trailing_metadata())
                error = error_from_rpc(e)
                if not retryable(error, idempotent, attempt, self.retries):
                    raise error from e
            except ValueError as e:  # grpc's "Cannot invoke RPC on closed channel!"
                raise ConnectionError(f"the channel was closed: {e}") from e
            self._sleep(self._delay(attempt))
            attempt += 1

    def _scan(self, prefix: bytes, page_size: int, start_after: bytes | None, limit: int) -> Iterator[bytes]:
        """The keys of a Scan stream; after an ``UNAVAILABLE``, resumed after the last key seen."""
        last = start_after
        seen = 0
        attempt = 0
        while True:
            request = scan_request(prefix, page_size, last, (limit - seen) if limit else 0)
            try:
                stream = self._stubs()[0].Scan(request, timeout=self.timeout)
            except ValueError as e:
                raise ConnectionError(f"the channel was closed: {e}") from e
            try:
                for page in stream:
                    for key in page.keys:
                        last = key
                        seen += 1
                        yield key
                return
            except grpc.RpcError as e:
                error = error_from_rpc(e)
                if not retryable(error, True, attempt, self.retries):
                    raise error from e
            finally:
                stream.cancel()  # a no-op after the end; stops the stream if the caller stopped early
            self._sleep(self._delay(attempt))
            attempt += 1


_KEYED = frozenset(("Get", "Put", "Delete", "CompareAndSwap"))


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _never_sent(message: str) -> bool:
    """grpc could not connect, so the call did not leave the client."""
    lowered = message.lower()
    return any(s in lowered for s in ("failed to connect", "connection refused", "connect failed",
                                      "dns resolution failed"))


class _ItemStatus(grpc.RpcError):
    """One ``BatchPutResponse.Result``'s status, for ``error_from_rpc``."""

    _CODES = {c.value[0]: c for c in grpc.StatusCode}

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self._code = self._CODES.get(code, grpc.StatusCode.UNKNOWN)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple:
        return ()
