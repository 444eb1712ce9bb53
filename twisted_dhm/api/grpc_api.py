"""The gRPC API (``--grpc-port``): services dhashmap.v1.KV and dhashmap.v1.Cluster, plus the
standard grpc.health.v1 health service and server reflection.

The bridge: gRPC's own server (grpc core, C++) accepts and decodes requests on its threads;
each handler hops into the node's one reactor with ``blockingCallFromThread`` to run the
coordinator, and waits there for the answer.  It was chosen on the numbers in the gRPC issue
(with a trivial handler this design beat grpc.aio on Twisted's asyncio reactor, 5.5k against
5.1k calls/s, and it keeps the default epoll reactor, under which REST and the native protocol
are faster), so a plain ``twistd -n dhashmap`` needs no ``-r`` flag.  With the real handlers a
first measurement gives only about 2k calls/s on one node (docs/benchmarks.md): the choice is
to be settled by measuring both designs on the whole node.

The client's deadline is honoured end to end: the coordinator's Deferred gets a timeout of the
time the call has left, so a request that cannot finish in time is cancelled in the reactor and
answered DEADLINE_EXCEEDED, not left running.

gRPC opens its own listening socket (grpc core does its own I/O), the one socket of a node that
does not go through the injected network; so the simulator runs its nodes with ``--grpc-port 0``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger

from twisted_dhm import __version__
from twisted_dhm.api import kv_pb2, kv_pb2_grpc
from twisted_dhm.cluster.coordinator import ANY, NO_CONDITION, Precondition, encode_cursor
from twisted_dhm.cluster.handler import NotMine
from twisted_dhm.errors import (
    Forbidden,
    InvalidRequest,
    KeyTooLong,
    KVError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from twisted_dhm.membership import STATES
from twisted_dhm.storage import StorageError, StorageFull
from twisted_dhm.versions import Version, VersionDecodeError

log = Logger(namespace="dhashmap.grpc")

MAX_BATCH = 1000
DEFAULT_PAGE = 1000
_LEVELS = {kv_pb2.Quorum.LEVEL_ONE: "one", kv_pb2.Quorum.LEVEL_QUORUM: "quorum", kv_pb2.Quorum.LEVEL_ALL: "all"}


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


def _level(q: kv_pb2.Quorum) -> str | int | None:
    if q.count:
        return int(q.count)
    return _LEVELS.get(q.level)


def status_of(error: BaseException) -> _Abort:
    """The gRPC status for an error from the coordinator or the store."""
    if isinstance(error, _Abort):
        return error
    if isinstance(error, PreconditionFailed):
        return _Abort(grpc.StatusCode.FAILED_PRECONDITION, error.message)
    if isinstance(error, KeyTooLong | ValueTooLarge | StorageFull):
        return _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(getattr(error, "message", error)))
    if isinstance(error, Unavailable):
        return _Abort(grpc.StatusCode.UNAVAILABLE, error.message,
                      (("acks", str(error.acks)), ("required", str(error.required))))
    if isinstance(error, Forbidden):
        return _Abort(grpc.StatusCode.PERMISSION_DENIED, error.message)
    if isinstance(error, InvalidRequest | KVError):
        return _Abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
    if isinstance(error, CancelledError | TimeoutError | DeferredTimeout):  # Deferred.addTimeout's
        return _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the cluster answered")
    if isinstance(error, StorageError):
        return _Abort(grpc.StatusCode.UNAVAILABLE, str(error))
    log.failure("gRPC handler failed", error)  # type: ignore[arg-type]
    return _Abort(grpc.StatusCode.INTERNAL, "the server failed to handle this request; see its log")


class _Bridge:
    """Runs coordinator calls in the reactor thread for gRPC's threads, within the call's deadline."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def call(self, context: grpc.ServicerContext, f: Callable[..., Deferred], *args: Any, **kw: Any) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline had passed when the call arrived")

        def run() -> Deferred:
            d = maybeDeferred(f, *args, **kw)
            if remaining is not None:
                d.addTimeout(remaining, self.reactor)
            return d

        try:
            return blockingCallFromThread(self.reactor, run)
        except _Abort:
            raise
        except Exception as e:
            raise status_of(e) from None


def _handled(method: Callable) -> Callable:
    """Turn our exceptions into gRPC statuses (abort raises, so nothing runs after it)."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as e:
            status = status_of(e)
            if status.metadata:  # kept with the dhashmap-owners a keyed call may have set
                context.set_trailing_metadata((*(context.trailing_metadata() or ()), *status.metadata))
            context.abort(status.code, status.message)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _precondition(version: str, create_only: bool) -> Precondition:
    if create_only:
        return Precondition(if_none_match=ANY)
    if not version:
        return NO_CONDITION
    try:
        return Precondition(if_match=(Version.from_token(version),))
    except VersionDecodeError as e:
        raise InvalidRequest(f"not a version token: {e}") from None


class KVServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, coordinator: Any, bridge: _Bridge, max_key: int, max_value: int) -> None:
        self.coordinator = coordinator
        self.bridge = bridge
        self.max_key = max_key
        self.max_value = max_value
        self._not_mine = NotMine(coordinator, lambda owners: (("dhashmap-owners", ",".join(owners)),))

    def _owned(self, key: bytes, context: grpc.ServicerContext) -> bytes:
        """The checked key; trailing metadata ``dhashmap-owners`` when this node is not an owner."""
        owners = self._not_mine.owners(self._key(key))
        if owners is not None:
            context.set_trailing_metadata(owners)
        return key

    def _key(self, key: bytes) -> bytes:
        if not key:
            raise InvalidRequest("the key is empty")
        if len(key) > self.max_key:
            raise KeyTooLong(f"the key is {len(key)} bytes; the limit is {self.max_key}")
        return key

    def _value(self, value: bytes) -> bytes:
        if len(value) > self.max_value:
            raise ValueTooLarge(f"the value is {len(value)} bytes; the limit is {self.max_value}")
        return value

    @_handled
    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:  # noqa: N802
        record = self.bridge.call(context, self.coordinator.get, self._owned(request.key, context), _level(request.r))
        if record is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "no value for this key")
        return kv_pb2.GetResponse(value=record.value, version=record.version.to_token())

    @_handled
    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.PutResponse:  # noqa: N802
        result = self.bridge.call(context, self.coordinator.put, self._owned(request.key, context),
                                  self._value(request.value), ttl=request.ttl_seconds or None, w=_level(request.w))
        return kv_pb2.PutResponse(version=result.version.to_token(), created=result.created)

    @_handled
    def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.ServicerContext) -> kv_pb2.DeleteResponse:  # noqa: N802
        precondition = _precondition(request.if_match, False)
        self.bridge.call(context, self.coordinator.delete, self._owned(request.key, context), precondition,
                         w=_level(request.w))
        return kv_pb2.DeleteResponse()

    @_handled
    def CompareAndSwap(self, request: kv_pb2.CompareAndSwapRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> kv_pb2.CompareAndSwapResponse:
        if not request.create_only and not request.expected_version:
            raise InvalidRequest("give expected_version, or create_only")
        precondition = _precondition(request.expected_version, request.create_only)
        result = self.bridge.call(context, self.coordinator.put, self._owned(request.key, context),
                                  self._value(request.value), ttl=request.ttl_seconds or None,
                                  precondition=precondition, w=_level(request.w))
        return kv_pb2.CompareAndSwapResponse(version=result.version.to_token())

    @_handled
    def BatchGet(self, request: kv_pb2.BatchGetRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> kv_pb2.BatchGetResponse:
        if len(request.keys) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} keys per batch")
        keys = [self._key(k) for k in request.keys]
        r = _level(request.r)

        def all_of() -> Deferred:
            return gatherResults([self.coordinator.get(k, r) for k in keys], consumeErrors=True)

        records = self.bridge.call(context, all_of)
        items = [kv_pb2.BatchGetResponse.Item(key=k, found=rec is not None,
                                              value=rec.value if rec else b"",
                                              version=rec.version.to_token() if rec else "")
                 for k, rec in zip(keys, records, strict=True)]
        return kv_pb2.BatchGetResponse(items=items)

    @_handled
    def BatchPut(self, request: kv_pb2.BatchPutRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> kv_pb2.BatchPutResponse:
        if len(request.items) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} items per batch")
        items = [(self._key(i.key), self._value(i.value), i.ttl_seconds or None) for i in request.items]
        w = _level(request.w)

        def all_of() -> Deferred:
            return DeferredList([self.coordinator.put(k, v, ttl=t, w=w) for k, v, t in items], consumeErrors=True)

        outcomes = self.bridge.call(context, all_of)
        results = []
        for (key, _, _), (ok, outcome) in zip(items, outcomes, strict=True):
            if ok:
                results.append(kv_pb2.BatchPutResponse.Result(key=key, version=outcome.version.to_token()))
            else:
                status = status_of(outcome.value)
                results.append(kv_pb2.BatchPutResponse.Result(key=key, code=status.code.value[0],
                                                              message=status.message))
        return kv_pb2.BatchPutResponse(results=results)

    def Scan(self, request: kv_pb2.ScanRequest, context: grpc.ServicerContext) -> Iterator[kv_pb2.ScanResponse]:  # noqa: N802
        try:
            page_size = min(request.page_size or DEFAULT_PAGE, DEFAULT_PAGE)
            left = request.limit or None
            cursor = None
            if request.has_start_after:
                cursor = encode_cursor(request.start_after)
            while context.is_active():
                size = page_size if left is None else min(page_size, left)
                page = self.bridge.call(context, self.coordinator.list, request.prefix, cursor, size)
                if page.keys:
                    yield kv_pb2.ScanResponse(keys=page.keys)
                if left is not None:
                    left -= len(page.keys)
                if not page.cursor or (left is not None and left <= 0):
                    return
                cursor = page.cursor
        except Exception as e:
            status = status_of(e)
            context.abort(status.code, status.message)


class ClusterServicer(kv_pb2_grpc.ClusterServicer):
    def __init__(self, node: Any, bridge: _Bridge) -> None:
        self.node = node
        self.bridge = bridge

    @_handled
    def Members(self, request: kv_pb2.MembersRequest,  # noqa: N802
                context: grpc.ServicerContext) -> kv_pb2.MembersResponse:
        def read() -> list:
            return self.node.view.members()

        members = self.bridge.call(context, read)
        return kv_pb2.MembersResponse(node=self.node.config.node_id, members=[
            kv_pb2.Member(id=m.id, state=m.state, host=m.host, peer_port=m.peer_port, rest_port=m.rest_port,
                          grpc_port=m.grpc_port, gossip_port=m.gossip_port, weight=m.weight,
                          version=m.software_version, incarnation=m.incarnation) for m in members])

    @_handled
    def Ring(self, request: kv_pb2.RingRequest, context: grpc.ServicerContext) -> kv_pb2.RingResponse:  # noqa: N802
        table = self.bridge.call(context, lambda: self.node.routing.table)
        return kv_pb2.RingResponse(partitions=table.partitions, replicas=table.replicas, hash="xxh64", table=[
            kv_pb2.RingResponse.Partition(partition=p, owners=list(owners)) for p, owners in table.as_dict().items()])

    @_handled
    def Status(self, request: kv_pb2.StatusRequest,  # noqa: N802
               context: grpc.ServicerContext) -> kv_pb2.StatusResponse:
        def read() -> tuple:
            membership = self.node.membership
            problems = membership.problems() if hasattr(membership, "problems") else []
            counts = dict.fromkeys(STATES, 0)
            for m in self.node.view.members():
                counts[m.state] += 1
            return self.node.is_ready(), problems, counts

        ready, problems, counts = self.bridge.call(context, read)
        return kv_pb2.StatusResponse(node=self.node.config.node_id, ready=ready, problems=problems,
                                     members_by_state=counts, version=__version__)


class _Reflection(reflection.ReflectionServicer):
    """Server reflection that also finds the file of a method's full name (``dhashmap.v1.KV.Get``).

    protobuf's upb descriptor pool (the default implementation) resolves messages, fields,
    enums and services in ``FindFileContainingSymbol`` but not methods, so grpcurl's
    ``describe dhashmap.v1.KV.Get`` and ghz's ``--call dhashmap.v1.KV.Get`` got NOT_FOUND and
    needed the ``.proto`` file.  A method lives in its service's file.
    """

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        service_name, _, method = fully_qualified_name.rpartition(".")
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is not None and method in service.methods_by_name:
                fully_qualified_name = service_name
        return super()._file_containing_symbol(request, fully_qualified_name)


class GrpcService(Service):
    """The gRPC listener, started and stopped with the node."""

    name = "grpc"

    def __init__(self, node: Any, reactor: Any, bind: str, port: int, max_key: int, max_value: int,
                 workers: int = 16) -> None:
        self.node = node
        self.reactor = reactor
        self.bind = bind
        self.port = port
        self.max_key = max_key
        self.max_value = max_value
        self.workers = workers
        self.server: grpc.Server | None = None
        self.health: health.HealthServicer | None = None
        self.bound_port = 0

    def startService(self) -> None:
        bridge = _Bridge(self.reactor)
        frame = self.max_value + self.max_key + 64 * 1024
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dhashmap-grpc"),
            options=[("grpc.max_receive_message_length", frame), ("grpc.max_send_message_length", frame),
                     ("grpc.so_reuseport", 0)],
        )
        kv_pb2_grpc.add_KVServicer_to_server(KVServicer(self.node.coordinator, bridge, self.max_key, self.max_value),
                                             server)
        kv_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self.node, bridge), server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [kv_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("KV", "Cluster")]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            _Reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME]), server)
        address = f"[{self.bind}]:{self.port}" if ":" in self.bind else f"{self.bind}:{self.port}"
        try:
            self.bound_port = server.add_insecure_port(address)
        except RuntimeError as e:
            self.bound_port = 0
            reason = str(e)
        else:
            reason = "address in use or not available"
        if not self.bound_port:
            raise SystemExit(f"dhashmap: cannot start: cannot listen on {address} (grpc): {reason}")
        server.start()
        self.server = server
        for service in ("", *names):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        super().startService()
        log.info("gRPC API on {address}", address=address)

    def stopService(self) -> Deferred | None:
        super().stopService()
        server, self.server = self.server, None
        if server is None:
            return None
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        stopped: threading.Event = server.stop(grace=1.0)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), stopped.wait, 5.0)
