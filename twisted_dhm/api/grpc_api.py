"""The gRPC API (``--grpc-port``): services dhashmap.v1.KV and dhashmap.v1.Cluster, plus the
standard grpc.health.v1 health service and server reflection.

The bridge: the handlers are grpc.aio coroutines.  Under the default epoll reactor (what plain
``twistd -n dhashmap`` runs) grpc.aio has an asyncio loop in one thread of its own, and each
call hands the coordinator's work to the reactor with ``callFromThread`` and gets the answer
back with ``call_soon_threadsafe``: no thread ever blocks waiting, unlike the threaded
``grpc.server`` with ``blockingCallFromThread`` it replaces (one node: 2.8k against 2.1k Get/s,
2.3k against 1.6k Put/s), and any number of calls can be in the node at once.  Under
``twistd -r asyncio`` grpc.aio shares the reactor's loop and calls the coordinator directly:
gRPC Get is a little faster (3.0k/s) but REST is 11-15 % slower and native writes 4 %, so
that is not the default (docs/grpc.md, docs/benchmarks.md).

The client's deadline is honoured end to end: the coordinator's Deferred gets a timeout of the
time the call has left, so a request that cannot finish in time is cancelled in the reactor and
answered DEADLINE_EXCEEDED, not left running.

gRPC opens its own listening socket (grpc core does its own I/O), the one socket of a node that
does not go through the injected network; so the simulator runs its nodes with ``--grpc-port 0``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from twisted_dhm import __version__, logs
from twisted_dhm.api import kv_pb2, kv_pb2_grpc
from twisted_dhm.cluster.coordinator import ANY, LATER, NO_CONDITION, Precondition, encode_cursor
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

log = logs.logger("dhashmap.grpc")

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
    if q.level and q.level not in _LEVELS:  # (enums are open: a number this build does not know)
        raise InvalidRequest(f"unknown consistency level {q.level}")
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


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline had passed when the call arrived")
    return remaining


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the call was cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _Batches:
    """Hands callables to another thread's loop, one wake-up for all that queue up meanwhile.

    ``post`` may run in any thread; ``wake(run)`` schedules ``run`` in the target thread
    (``callFromThread`` or ``call_soon_threadsafe``).  The flag is cleared before the queue is
    drained, so a callable posted during a drain is run by it or by the next one, never lost.
    """

    def __init__(self, wake: Callable[[Callable[[], None]], Any]) -> None:
        self.wake = wake
        self.queue: collections.deque[Callable[[], None]] = collections.deque()
        self.scheduled = False

    def post(self, f: Callable[[], None]) -> None:
        self.queue.append(f)
        if not self.scheduled:
            self.scheduled = True
            self.wake(self.run)

    def run(self) -> None:
        self.scheduled = False
        queue = self.queue
        while queue:
            queue.popleft()()


class _ThreadBridge:
    """grpc.aio on its own event loop in one thread; coordinator calls run in the reactor thread.

    Each call crosses threads twice, both ways without blocking a thread: into the reactor
    (``callFromThread``) and back to gRPC's loop (``call_soon_threadsafe``), each way in batches:
    under load one wake-up carries every call that queued up meanwhile.  A cancelled call
    (client gone, deadline) cancels the coordinator's Deferred in the reactor.
    """

    def __init__(self, reactor: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.reactor = reactor
        self.loop = loop
        self.to_reactor = _Batches(reactor.callFromThread)
        self.to_loop = _Batches(loop.call_soon_threadsafe)

    async def call(self, context: grpc.aio.ServicerContext, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        remaining = _deadline(context)
        future = self.loop.create_future()
        running: list[Deferred] = []
        to_loop = self.to_loop

        def succeeded(result: Any) -> None:
            to_loop.post(lambda: _settle(future, result, None))

        def failed(failure: Failure) -> None:
            to_loop.post(lambda: _settle(future, None, failure.value))

        def start() -> None:
            if future.done():
                return
            d = maybeDeferred(f, *args, **kw)
            if remaining is not None:
                d.addTimeout(remaining, self.reactor)
            running.append(d)
            d.addCallbacks(succeeded, failed)

        self.to_reactor.post(start)
        try:
            return await future
        except asyncio.CancelledError:
            self.to_reactor.post(lambda: running and running[0].cancel())  # type: ignore[func-returns-value]
            raise


class _LoopBridge:
    """grpc.aio on the asyncio loop that Twisted's asyncio reactor runs: no thread at all."""

    def __init__(self, reactor: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.reactor = reactor
        self.loop = loop

    async def call(self, context: grpc.aio.ServicerContext, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        remaining = _deadline(context)
        d = maybeDeferred(f, *args, **kw)
        if d.called and not d.paused and not d.callbacks:  # answered at once: no trip through the loop
            result = d.result
            if isinstance(result, Failure):
                d.addErrback(lambda _: None)
                result.raiseException()
            return result
        if remaining is not None:
            d.addTimeout(remaining, self.reactor)
        return await d.asFuture(self.loop)


_Bridge = _ThreadBridge | _LoopBridge


@contextlib.asynccontextmanager
async def _outcome(servicer: Any, name: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around a call: turn our exceptions into gRPC statuses (abort raises, so nothing runs
    after it), and count the call by its status in the servicer's ``stats``."""
    stats, clock = servicer.stats, servicer.clock
    started = clock.seconds() if stats is not None else 0.0
    code = "OK"
    try:
        yield
    except asyncio.CancelledError:
        code = "CANCELLED"  # the client cancelled, or its deadline passed
        raise
    except Exception as e:
        status = status_of(e)
        code = status.code.name
        if status.metadata:  # kept with the dhashmap-owners a keyed call may have set
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), *status.metadata))
        await context.abort(status.code, status.message)
    finally:
        if stats is not None:
            stats.observe(name, code, clock.seconds() - started)


def _handled(method: Callable) -> Callable:
    """A unary method run in ``_outcome`` (Scan, a stream, uses it itself)."""

    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _outcome(self, method.__name__, context):
            return await method(self, request, context)

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
    # Calls answered and their latency (NodeMetrics.grpc) on the node's clock; None: not counted.
    stats: Any = None
    clock: Any = None

    def __init__(self, coordinator: Any, bridge: _Bridge, max_key: int, max_value: int) -> None:
        self.coordinator = coordinator
        self.bridge = bridge
        self.max_key = max_key
        self.max_value = max_value
        self._not_mine = NotMine(coordinator, lambda owners: (("dhashmap-owners", ",".join(owners)),))

    def _owned(self, key: bytes, context: Any) -> bytes:
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
    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:  # noqa: N802
        key, level = self._key(request.key), _level(request.r)
        # A read this node's replica alone answers is made right here, in gRPC's thread: no trip
        # through the reactor (get_now only reads; GrpcService stops before the store closes).
        # Such a node is the key's only replica up, so an owner: no dhashmap-owners to send.
        # (Read in this thread while the reactor swaps in a new partition table, the answer may
        # come from the old one: one missed hint, which the client's next call gets.)
        record = self.coordinator.get_now(key, level)
        if record is LATER:
            self._owned(key, context)
            record = await self.bridge.call(context, self.coordinator.get, key, level)
        if record is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "no value for this key")
        return kv_pb2.GetResponse(value=record.value, version=record.token)

    @_handled
    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:  # noqa: N802
        result = await self.bridge.call(context, self.coordinator.put, self._owned(request.key, context),
                                        self._value(request.value), ttl=request.ttl_seconds or None,
                                        w=_level(request.w))
        return kv_pb2.PutResponse(version=result.version.to_token(), created=result.created)

    @_handled
    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> kv_pb2.DeleteResponse:  # noqa: N802
        precondition = _precondition(request.if_match, False)
        await self.bridge.call(context, self.coordinator.delete, self._owned(request.key, context), precondition,
                               w=_level(request.w))
        return kv_pb2.DeleteResponse()

    @_handled
    async def CompareAndSwap(self, request: kv_pb2.CompareAndSwapRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> kv_pb2.CompareAndSwapResponse:
        if not request.create_only and not request.expected_version:
            raise InvalidRequest("give expected_version, or create_only")
        precondition = _precondition(request.expected_version, request.create_only)
        result = await self.bridge.call(context, self.coordinator.put, self._owned(request.key, context),
                                  self._value(request.value), ttl=request.ttl_seconds or None,
                                  precondition=precondition, w=_level(request.w))
        return kv_pb2.CompareAndSwapResponse(version=result.version.to_token())

    @_handled
    async def BatchGet(self, request: kv_pb2.BatchGetRequest,  # noqa: N802
                 context: grpc.aio.ServicerContext) -> kv_pb2.BatchGetResponse:
        if len(request.keys) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} keys per batch")
        keys = [self._key(k) for k in request.keys]
        r = _level(request.r)

        def all_of() -> Deferred:
            return gatherResults([self.coordinator.get(k, r) for k in keys], consumeErrors=True)

        records = await self.bridge.call(context, all_of)
        items = [kv_pb2.BatchGetResponse.Item(key=k, found=rec is not None,
                                              value=rec.value if rec else b"",
                                              version=rec.token if rec else "")
                 for k, rec in zip(keys, records, strict=True)]
        return kv_pb2.BatchGetResponse(items=items)

    @_handled
    async def BatchPut(self, request: kv_pb2.BatchPutRequest,  # noqa: N802
                 context: grpc.aio.ServicerContext) -> kv_pb2.BatchPutResponse:
        if len(request.items) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} items per batch")
        items = [(self._key(i.key), self._value(i.value), i.ttl_seconds or None) for i in request.items]
        w = _level(request.w)

        def all_of() -> Deferred:
            return DeferredList([self.coordinator.put(k, v, ttl=t, w=w) for k, v, t in items], consumeErrors=True)

        outcomes = await self.bridge.call(context, all_of)
        results = []
        for (key, _, _), (ok, outcome) in zip(items, outcomes, strict=True):
            if ok:
                results.append(kv_pb2.BatchPutResponse.Result(key=key, version=outcome.version.to_token()))
            else:
                status = status_of(outcome.value)
                results.append(kv_pb2.BatchPutResponse.Result(key=key, code=status.code.value[0],
                                                              message=status.message))
        return kv_pb2.BatchPutResponse(results=results)

    async def Scan(self, request: kv_pb2.ScanRequest,  # noqa: N802
                   context: grpc.aio.ServicerContext) -> AsyncIterator[kv_pb2.ScanResponse]:
        async with _outcome(self, "Scan", context):
            page_size = min(request.page_size or DEFAULT_PAGE, DEFAULT_PAGE)
            left = request.limit or None
            cursor = None
            if request.has_start_after:
                cursor = encode_cursor(request.start_after)
            while not context.done():
                size = page_size if left is None else min(page_size, left)
                page = await self.bridge.call(context, self.coordinator.list, request.prefix, cursor, size)
                if page.keys:
                    yield kv_pb2.ScanResponse(keys=page.keys)
                if left is not None:
                    left -= len(page.keys)
                if not page.cursor or (left is not None and left <= 0):
                    return
                cursor = page.cursor


class ClusterServicer(kv_pb2_grpc.ClusterServicer):
    stats: Any = None  # as KVServicer's
    clock: Any = None

    def __init__(self, node: Any, bridge: _Bridge) -> None:
        self.node = node
        self.bridge = bridge

    @_handled
    async def Members(self, request: kv_pb2.MembersRequest,  # noqa: N802
                context: grpc.aio.ServicerContext) -> kv_pb2.MembersResponse:
        def read() -> list:
            return self.node.view.members()

        members = await self.bridge.call(context, read)
        return kv_pb2.MembersResponse(node=self.node.config.node_id, members=[
            kv_pb2.Member(id=m.id, state=m.state, host=m.host, peer_port=m.peer_port, rest_port=m.rest_port,
                          grpc_port=m.grpc_port, gossip_port=m.gossip_port, weight=m.weight,
                          version=m.software_version, incarnation=m.incarnation) for m in members])

    @_handled
    async def Ring(self, request: kv_pb2.RingRequest, context: grpc.aio.ServicerContext) -> kv_pb2.RingResponse:  # noqa: N802
        table = await self.bridge.call(context, lambda: self.node.routing.table)
        return kv_pb2.RingResponse(partitions=table.partitions, replicas=table.replicas, hash="xxh64", table=[
            kv_pb2.RingResponse.Partition(partition=p, owners=list(owners)) for p, owners in table.as_dict().items()])

    @_handled
    async def Status(self, request: kv_pb2.StatusRequest,  # noqa: N802
               context: grpc.aio.ServicerContext) -> kv_pb2.StatusResponse:
        def read() -> tuple:
            membership = self.node.membership
            problems = membership.problems() if hasattr(membership, "problems") else []
            counts = dict.fromkeys(STATES, 0)
            for m in self.node.view.members():
                counts[m.state] += 1
            return self.node.is_ready(), problems, counts

        ready, problems, counts = await self.bridge.call(context, read)
        return kv_pb2.StatusResponse(node=self.node.config.node_id, ready=ready, problems=problems,
                                     members_by_state=counts, version=__version__)


class _Reflection(reflection_aio.ReflectionServicer):
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


class _CannotListen(Exception):
    """Not SystemExit inside the loop: asyncio lets that one escape the loop, not the future."""


def _asyncio_loop(reactor: Any) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop the reactor runs (``twistd -r asyncio``), or None for any other reactor."""
    return getattr(reactor, "_asyncioEventloop", None)


class GrpcService(Service):
    """The gRPC listener, started and stopped with the node.

    grpc.aio runs on the reactor's own loop when the reactor is Twisted's asyncio reactor, and
    otherwise (the default epoll reactor) on an asyncio loop in one thread of its own.
    """

    name = "grpc"

    def __init__(self, node: Any, reactor: Any, bind: str, port: int, max_key: int, max_value: int) -> None:
        self.node = node
        self.reactor = reactor
        self.bind = bind
        self.port = port
        self.max_key = max_key
        self.max_value = max_value
        self.server: grpc.aio.Server | None = None
        self.health: Any = None
        self.bound_port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def _build(self, bridge: _Bridge) -> grpc.aio.Server:
        """Make the server and bind its port; runs on gRPC's loop."""
        from grpc_health.v1 import _async as health_aio

        frame = self.max_value + self.max_key + 64 * 1024
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", frame), ("grpc.max_send_message_length", frame),
                     ("grpc.so_reuseport", 0)],
        )
        kv = KVServicer(self.node.coordinator, bridge, self.max_key, self.max_value)
        cluster = ClusterServicer(self.node, bridge)
        metrics = getattr(self.node, "metrics", None)
        if metrics is not None:
            for servicer in (kv, cluster):
                servicer.stats, servicer.clock = metrics.grpc, self.reactor
        kv_pb2_grpc.add_KVServicer_to_server(kv, server)
        kv_pb2_grpc.add_ClusterServicer_to_server(cluster, server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            _Reflection([*self._names(), health.SERVICE_NAME, reflection.SERVICE_NAME]), server)
        address = self._address()
        try:
            self.bound_port = server.add_insecure_port(address)
        except RuntimeError as e:
            self.bound_port = 0
            reason = str(e)
        else:
            reason = "address in use or not available"
        if not self.bound_port:
            raise _CannotListen(f"dhashmap: cannot start: cannot listen on {address} (grpc): {reason}")
        return server

    def _names(self) -> list[str]:
        return [kv_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("KV", "Cluster")]

    def _address(self) -> str:
        return f"[{self.bind}]:{self.port}" if ":" in self.bind else f"{self.bind}:{self.port}"

    async def _start(self, server: grpc.aio.Server) -> None:
        await server.start()
        for service in ("", *self._names()):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def _stop(self, server: grpc.aio.Server) -> None:
        await self.health.enter_graceful_shutdown()
        await server.stop(grace=1.0)

    def startService(self) -> None:
        loop = _asyncio_loop(self.reactor)
        if loop is not None:
            self.loop = loop
            try:
                self.server = self._build(_LoopBridge(self.reactor, loop))
            except _CannotListen as e:
                raise SystemExit(str(e)) from None
            started = Deferred.fromFuture(asyncio.ensure_future(self._start(self.server), loop=loop))
            started.addErrback(lambda f: log.failure("gRPC server failed to start", f))
        else:
            self.loop = loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=loop.run_forever, name="dhashmap-grpc", daemon=True)
            self.thread.start()

            async def build_and_start() -> grpc.aio.Server:
                server = self._build(_ThreadBridge(self.reactor, loop))
                await self._start(server)
                return server

            try:
                self.server = asyncio.run_coroutine_threadsafe(build_and_start(), loop).result(30)
            except BaseException as e:
                loop.call_soon_threadsafe(loop.stop)
                self.thread.join(5)
                if isinstance(e, _CannotListen):
                    raise SystemExit(str(e)) from None
                raise
        super().startService()
        log.info("gRPC API on {address}", address=self._address())

    def stopService(self) -> Deferred | None:
        super().stopService()
        server, self.server = self.server, None
        loop, thread, self.thread = self.loop, self.thread, None
        if server is None or loop is None:
            return None
        if thread is None:
            return Deferred.fromFuture(asyncio.ensure_future(self._stop(server), loop=loop))
        done: Deferred = Deferred()

        def stopped(_: Any) -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            done.callback(None)

        future = asyncio.run_coroutine_threadsafe(self._stop(server), loop)
        future.add_done_callback(lambda _: self.reactor.callFromThread(stopped, None))
        return done
