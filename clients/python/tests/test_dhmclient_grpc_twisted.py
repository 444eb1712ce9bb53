"""TwistedGrpcClient: on a fake channel with task.Clock (no reactor, no threads), and on a real
reactor against the session's node (conftest.py), in a child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from dhashmap_client import (
    ConnectionError,
    NotFound,
    PreconditionFailed,
    Timeout,
    TwistedGrpcClient,
    Unavailable,
    Value,
)
from dhashmap_client._pb import kv_pb2 as pb
from twisted.internet import task
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.testing.process import NodeProcess


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


class FakeFuture:
    """A grpc.Future that the test ends by hand."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []
        self.outcome: tuple[str, Any] | None = None
        self.was_cancelled = False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self.outcome is not None:
            fn(self)
        else:
            self.callbacks.append(fn)

    def _end(self, kind: str, value: Any) -> None:
        self.outcome = (kind, value)
        for fn in self.callbacks:
            fn(self)

    def succeed(self, answer: Any) -> None:
        self._end("result", answer)

    def fail(self, error: BaseException) -> None:
        self._end("exception", error)

    def cancel(self) -> bool:
        self.was_cancelled = True
        self._end("cancelled", None)
        return True

    def cancelled(self) -> bool:
        return self.outcome is not None and self.outcome[0] == "cancelled"

    def exception(self) -> BaseException | None:
        assert self.outcome is not None
        return self.outcome[1] if self.outcome[0] == "exception" else None

    def result(self) -> Any:
        assert self.outcome is not None and self.outcome[0] == "result"
        return self.outcome[1]


class FakeChannel:
    """Records every unary call (method path, request, timeout) and hands out its FakeFuture."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float | None, FakeFuture]] = []

    def unary_unary(self, path: str, request_serializer: Any = None, response_deserializer: Any = None,
                    **kw: Any) -> Any:
        channel = self

        class MultiCallable:
            def future(self, request: Any, timeout: float | None = None) -> FakeFuture:
                future = FakeFuture()
                channel.calls.append((path, request, timeout, future))
                return future

        return MultiCallable()

    def unary_stream(self, path: str, *a: Any, **kw: Any) -> Any:
        return None


class FakeReactor(task.Clock):
    """task.Clock plus callFromThread, which queues: the test decides when the reactor runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple[Callable[..., Any], tuple]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        self.from_threads.append((f, args))

    def run_from_threads(self) -> int:
        queued, self.from_threads = self.from_threads, []
        for f, args in queued:
            f(*args)
        return len(queued)


class FakeChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.channel = FakeChannel()
        self.client = TwistedGrpcClient("node.test:9090", timeout=3.0, retries=2, reactor=self.reactor,
                                        channel=self.channel, backoff=0.1, random=lambda: 1.0)

    def last(self) -> tuple[str, Any, float | None, FakeFuture]:
        return self.channel.calls[-1]

    def test_get_fires_in_the_reactor_with_the_value(self) -> None:
        d = self.client.get(b"k", r="one")
        path, request, timeout, future = self.last()
        self.assertEqual((path, request.key, request.r.level, timeout),
                         ("/dhashmap.v1.KV/Get", b"k", pb.Quorum.LEVEL_ONE, 3.0))
        future.succeed(pb.GetResponse(value=b"v", version="V1"))
        # grpc's thread only queued the answer for the reactor; nothing fired yet.
        self.assertNoResult(d)
        self.assertEqual(self.reactor.run_from_threads(), 1)
        self.assertEqual(self.successResultOf(d), Value(b"v", "V1"))

    def test_status_codes_become_the_typed_errors(self) -> None:
        d = self.client.get(b"missing")
        self.last()[3].fail(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no value for this key"))
        self.reactor.run_from_threads()
        self.failureResultOf(d, NotFound)

        d = self.client.cas(b"k", "V1", b"new")
        path, request, _, future = self.last()
        self.assertEqual((path, request.expected_version), ("/dhashmap.v1.KV/CompareAndSwap", "V1"))
        future.fail(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "stale"))
        self.reactor.run_from_threads()
        self.failureResultOf(d, PreconditionFailed)

        d = self.client.get(b"k")
        self.last()[3].fail(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"))
        self.reactor.run_from_threads()
        self.failureResultOf(d, Timeout)

    def test_an_idempotent_call_is_retried_after_a_backoff_on_the_clock(self) -> None:
        d = self.client.get(b"k")
        self.last()[3].fail(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "quorum", (("acks", "1"), ("required", "2"))))
        self.reactor.run_from_threads()
        self.assertEqual(len(self.channel.calls), 1)
        self.reactor.advance(0.099)
        self.assertEqual(len(self.channel.calls), 1)  # still waiting out backoff * 2 ** 0
        self.reactor.advance(0.001)
        self.assertEqual(len(self.channel.calls), 2)
        self.last()[3].fail(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "quorum"))
        self.reactor.run_from_threads()
        self.reactor.advance(0.199)
        self.assertEqual(len(self.channel.calls), 2)
        self.reactor.advance(0.001)  # backoff * 2 ** 1
        self.last()[3].succeed(pb.GetResponse(value=b"v", version="V2"))
        self.reactor.run_from_threads()
        self.assertEqual(self.successResultOf(d), Value(b"v", "V2"))
        self.assertEqual(len(self.channel.calls), 3)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_retries_run_out_with_the_last_error(self) -> None:
        d = self.client.delete(b"k")  # a plain delete is idempotent
        for _ in range(3):
            self.last()[3].fail(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "quorum", (("acks", "1"),)))
            self.reactor.run_from_threads()
            self.reactor.advance(10)
        self.assertEqual(len(self.channel.calls), 3)
        self.assertEqual(self.failureResultOf(d, Unavailable).value.acks, 1)

    def test_writes_are_not_retried(self) -> None:
        for write in (lambda: self.client.put(b"k", b"v"), lambda: self.client.delete(b"k", if_match="V1"),
                      lambda: self.client.batch_put({b"k": b"v"}), lambda: self.client.cas(b"k", None, b"v")):
            d = write()
            self.last()[3].fail(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "quorum"))
            self.reactor.run_from_threads()
            self.reactor.advance(10)
            self.failureResultOf(d, Unavailable)
        self.assertEqual(len(self.channel.calls), 4)

    def test_an_unreachable_node_is_a_connection_error(self) -> None:
        client = TwistedGrpcClient("node.test:9090", retries=0, reactor=self.reactor, channel=self.channel)
        d = client.members()
        self.last()[3].fail(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"))
        self.reactor.run_from_threads()
        self.failureResultOf(d, ConnectionError)

    def test_cancelling_cancels_the_rpc(self) -> None:
        d = self.client.get(b"k")
        future = self.last()[3]
        d.cancel()
        self.assertTrue(future.was_cancelled)
        self.reactor.run_from_threads()  # grpc's late "cancelled" callback changes nothing
        self.failureResultOf(d, CancelledError)

    def test_empty_batches_ask_nothing(self) -> None:
        self.assertEqual(self.successResultOf(self.client.batch_get([])), [])
        self.assertEqual(self.successResultOf(self.client.batch_put({})), [])
        self.assertEqual(self.channel.calls, [])

    def test_batch_put_reports_each_item(self) -> None:
        d = self.client.batch_put([(b"a", b"1"), (b"b", b"2", 60)], w=2)
        path, request, _, future = self.last()
        self.assertEqual((path, request.w.count, request.items[1].ttl_seconds), ("/dhashmap.v1.KV/BatchPut", 2, 60))
        future.succeed(pb.BatchPutResponse(results=[
            pb.BatchPutResponse.Result(version="V1"),
            pb.BatchPutResponse.Result(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="lost")]))
        self.reactor.run_from_threads()
        first, second = self.successResultOf(d)
        self.assertEqual(first, "V1")
        self.assertIsInstance(second, PreconditionFailed)


@pytest.mark.integration
def test_on_a_real_reactor_against_the_node(node: NodeProcess) -> None:
    script = textwrap.dedent("""
        import sys, threading
        from twisted.internet import defer, task
        from dhashmap_client import NotFound, PreconditionFailed, TwistedGrpcClient, Value

        def in_reactor_thread(result):
            assert threading.current_thread() is threading.main_thread(), threading.current_thread()
            return result

        @defer.inlineCallbacks
        def main(reactor, target):
            db = TwistedGrpcClient(target, reactor=reactor, timeout=5.0)
            v1 = yield db.put(b"tg/k", b"v1", w="all", ttl=3600).addCallback(in_reactor_thread)
            item = yield db.get(b"tg/k", r="one").addCallback(in_reactor_thread)
            assert item == Value(b"v1", v1), item
            v2 = yield db.cas(b"tg/k", v1, b"v2")
            try:
                yield db.cas(b"tg/k", v1, b"stale")
                raise AssertionError("stale cas succeeded")
            except PreconditionFailed:
                pass
            versions = yield defer.gatherResults([db.put(b"tg/n/%02d" % i, b"x") for i in range(30)])
            assert len(set(versions)) == 30
            got = yield db.batch_get([b"tg/k", b"tg/none"])
            assert got == [Value(b"v2", v2), None], got
            page = yield db.list(b"tg/n/", limit=20)
            assert page.keys == [b"tg/n/%02d" % i for i in range(20)] and page.cursor, page
            rest = yield db.list(b"tg/n/", limit=20, cursor=page.cursor)
            assert rest.keys == [b"tg/n/%02d" % i for i in range(20, 30)] and rest.cursor is None, rest
            assert (yield db.keys(b"tg/n/", page_size=7)) == [b"tg/n/%02d" % i for i in range(30)]
            yield db.delete(b"tg/k")
            try:
                yield db.get(b"tg/k").addErrback(in_reactor_thread)
                raise AssertionError("deleted key found")
            except NotFound:
                pass
            members = yield db.members()
            assert [m["id"] for m in members["members"]] == [members["node"]], members
            ring = yield db.ring()
            assert ring["partitions"] == len(ring["table"]), ring["partitions"]
            status = yield db.status()
            assert status["ready"] is True, status
            yield db.close()
            print("ok")

        task.react(main, sys.argv[1:])
    """)
    out = subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{node.grpc_port}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
