"""TwistedClient against the node's own REST resource, in memory.

``StubTreq`` runs the real ``build_site`` resource tree (coordinator, memory
engine, metrics) over an in-memory transport, and a ``task.Clock`` is the
node's clock and the client's timer: no reactor runs, nothing sleeps, and ttl
expiry and timeouts are tested by advancing the clock.
"""

from __future__ import annotations

from typing import Any

from dhashmap_client import (
    ConnectionError,
    DhashmapError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    Page,
    PreconditionFailed,
    Timeout,
    TwistedClient,
    Value,
    ValueTooLarge,
)
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IAgent
from zope.interface import implementer

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator

URL = "http://node.test:8080"
MAX_KEY = 64
MAX_VALUE = 1024


class StubNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)  # a realistic epoch for the node's HLC
        self.ready = True
        engine = MemoryEngine()
        coordinator = single_node_coordinator(engine, self.clock, node_id="stub")
        site = build_site(coordinator, NodeMetrics(engine, process=False), self.clock,
                          Limits(max_key_size=MAX_KEY, max_value_size=MAX_VALUE), 60.0, "stub",
                          is_ready=lambda: self.ready)
        self.stub = StubTreq(site.resource)
        self.client = TwistedClient(URL, treq_client=self.stub, reactor=self.clock)

    def ok(self, d: Deferred[Any]) -> Any:
        self.stub.flush()
        return self.successResultOf(d)

    def err(self, d: Deferred[Any], *types: type[BaseException]) -> Any:
        self.stub.flush()
        return self.failureResultOf(d, *types).value

    # -- get / put / delete -------------------------------------------------------------------

    def test_put_then_get(self) -> None:
        version = self.ok(self.client.put(b"k", b"v"))
        self.assertIsInstance(version, str)
        self.assertEqual(self.ok(self.client.get(b"k")), Value(b"v", version))

    def test_put_replaces_with_a_new_version(self) -> None:
        first = self.ok(self.client.put("k", "one"))
        second = self.ok(self.client.put("k", "two"))
        self.assertNotEqual(first, second)
        self.assertEqual(self.ok(self.client.get(b"k")), Value(b"two", second))

    def test_empty_value(self) -> None:
        self.ok(self.client.put(b"k", b""))
        self.assertEqual(self.ok(self.client.get(b"k")).value, b"")

    def test_get_missing_fails_with_not_found(self) -> None:
        error = self.err(self.client.get(b"missing"), NotFound)
        self.assertEqual((error.status, error.code), (404, "not_found"))

    def test_delete(self) -> None:
        self.ok(self.client.put(b"k", b"v"))
        self.assertIsNone(self.ok(self.client.delete(b"k")))
        self.err(self.client.get(b"k"), NotFound)
        self.assertIsNone(self.ok(self.client.delete(b"k")))  # absent: still succeeds

    def test_delete_if_match(self) -> None:
        old = self.ok(self.client.put(b"k", b"1"))
        new = self.ok(self.client.put(b"k", b"2"))
        self.err(self.client.delete(b"k", if_match=old), PreconditionFailed)
        self.assertEqual(self.ok(self.client.get(b"k")).value, b"2")
        self.ok(self.client.delete(b"k", if_match=new))
        self.err(self.client.get(b"k"), NotFound)

    # -- cas ----------------------------------------------------------------------------------

    def test_cas_success_and_failure(self) -> None:
        v1 = self.ok(self.client.put(b"k", b"1"))
        v2 = self.ok(self.client.cas(b"k", v1, b"2"))
        error = self.err(self.client.cas(b"k", v1, b"stale"), PreconditionFailed)
        self.assertEqual(error.status, 412)
        self.assertEqual(self.ok(self.client.get(b"k")), Value(b"2", v2))

    def test_cas_none_creates_only_if_absent(self) -> None:
        created = self.ok(self.client.cas(b"k", None, b"first"))
        self.err(self.client.cas(b"k", None, b"second"), PreconditionFailed)
        self.assertEqual(self.ok(self.client.get(b"k")), Value(b"first", created))

    def test_put_if_match_star_needs_an_existing_value(self) -> None:
        self.err(self.client.put(b"k", b"v", if_match="*"), PreconditionFailed)
        self.ok(self.client.put(b"k", b"v", if_none_match=True))
        self.ok(self.client.put(b"k", b"w", if_match="*"))
        self.assertEqual(self.ok(self.client.get(b"k")).value, b"w")

    # -- binary keys --------------------------------------------------------------------------

    def test_every_byte_in_keys(self) -> None:
        keys = [b"p/" + bytes([b]) for b in range(256)]
        for i, key in enumerate(keys):
            self.ok(self.client.put(key, bytes([i])))
        for i, key in enumerate(keys):
            self.assertEqual(self.ok(self.client.get(key)).value, bytes([i]), key)
        self.assertEqual(self.ok(self.client.keys(b"p/")), sorted(keys))

    def test_awkward_keys(self) -> None:
        awkward = [b"/", b"a/b/", b"%", b"%2F", b"%zz", b"?q=1&r", b"#f", b" ", b"+", b".", b"..",
                   b"../x", b"\x00", b"\r\n", b"\xff\xfe", bytes(range(40))]
        for key in awkward:
            version = self.ok(self.client.put(key, key))
            self.assertEqual(self.ok(self.client.get(key)), Value(key, version), key)
        self.assertEqual(self.ok(self.client.keys()), sorted(awkward))

    # -- ttl ----------------------------------------------------------------------------------

    def test_ttl_expires_on_the_nodes_clock(self) -> None:
        self.ok(self.client.put(b"k", b"v", ttl=2))
        self.ok(self.client.put(b"stays", b"v"))
        self.clock.advance(1.9)
        self.assertEqual(self.ok(self.client.get(b"k")).value, b"v")
        self.clock.advance(0.2)
        self.err(self.client.get(b"k"), NotFound)
        self.assertEqual(self.ok(self.client.keys()), [b"stays"])

    def test_bad_ttl_is_invalid_request(self) -> None:
        error = self.err(self.client.put(b"k", b"v", ttl=0), InvalidRequest)
        self.assertEqual((error.status, error.code), (400, "invalid_request"))
        self.err(self.client.get(b"k"), NotFound)

    # -- listing ------------------------------------------------------------------------------

    def test_list_pages(self) -> None:
        keys = [b"p/%02d" % i for i in range(10)]
        for key in keys:
            self.ok(self.client.put(key, b""))
        self.ok(self.client.put(b"q", b""))
        first = self.ok(self.client.list(b"p/", limit=4))
        self.assertEqual(first.keys, keys[:4])
        self.assertIsNotNone(first.cursor)
        second = self.ok(self.client.list(b"p/", limit=4, cursor=first.cursor))
        third = self.ok(self.client.list(b"p/", limit=4, cursor=second.cursor))
        self.assertEqual(second.keys, keys[4:8])
        self.assertEqual(third, Page(keys[8:], None))
        self.assertEqual(self.ok(self.client.keys(b"p/", page_size=3)), keys)

    def test_keys_follows_empty_pages(self) -> None:
        keys = [b"p/%03d" % i for i in range(110)]
        for key in keys:
            self.ok(self.client.put(key, b""))
        for key in keys[:108]:
            self.ok(self.client.delete(key))
        first = self.ok(self.client.list(b"p/", limit=1))
        self.assertEqual(first.keys, [])
        self.assertIsNotNone(first.cursor)
        self.assertEqual(self.ok(self.client.keys(b"p/", page_size=1)), keys[108:])

    def test_keys_passes_on_an_error(self) -> None:
        error = self.err(self.client.keys(b"", page_size=0), InvalidRequest)
        self.assertIn("limit", error.message)

    # -- size limits --------------------------------------------------------------------------

    def test_key_too_long(self) -> None:
        self.ok(self.client.put(b"k" * MAX_KEY, b"v"))
        error = self.err(self.client.put(b"k" * (MAX_KEY + 1), b"v"), KeyTooLong)
        self.assertEqual((error.status, error.code), (414, "key_too_long"))

    def test_value_too_large(self) -> None:
        self.ok(self.client.put(b"k", b"x" * MAX_VALUE))
        error = self.err(self.client.put(b"k", b"x" * (MAX_VALUE + 1)), ValueTooLarge)
        self.assertEqual((error.status, error.code), (413, "value_too_large"))
        self.assertEqual(len(self.ok(self.client.get(b"k")).value), MAX_VALUE)

    # -- health, readiness --------------------------------------------------------------------

    def test_health_and_ready(self) -> None:
        self.assertIs(self.ok(self.client.health()), True)
        self.assertIs(self.ok(self.client.ready()), True)
        self.ready = False
        self.assertIs(self.ok(self.client.ready()), False)
        self.assertIs(self.ok(self.client.health()), True)

    def test_a_finished_operation_leaves_no_timer(self) -> None:
        self.ok(self.client.put(b"k", b"v"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


@implementer(IAgent)
class FakeAgent:
    """An agent whose requests fail, or never answer, as a test tells it."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.cancelled = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
                ) -> Deferred[Any]:
        if self.result is not None:
            return fail(self.result)

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        return Deferred(cancel)


class TransportErrorTests(SynchronousTestCase):
    def client(self, agent: FakeAgent, clock: task.Clock | None = None,
               timeout: float | None = 10.0) -> TwistedClient:
        return TwistedClient(URL, treq_client=HTTPClient(agent), reactor=clock or task.Clock(),
                             timeout=timeout)

    def test_refused_connection_is_connection_error(self) -> None:
        client = self.client(FakeAgent(ConnectionRefusedError("refused")))
        error = self.failureResultOf(client.get(b"k"), ConnectionError).value
        self.assertIsNone(error.status)
        self.assertEqual(error.code, "connection_error")
        self.assertIsInstance(error.__cause__, ConnectionRefusedError)

    def test_a_lost_response_is_connection_error(self) -> None:
        client = self.client(FakeAgent(ResponseNeverReceived([Failure(ConnectionRefusedError())])))
        self.failureResultOf(client.put(b"k", b"v"), ConnectionError)

    def test_unreachable_node_is_not_healthy_or_ready(self) -> None:
        client = self.client(FakeAgent(ConnectionRefusedError()))
        self.assertIs(self.successResultOf(client.health()), False)
        self.assertIs(self.successResultOf(client.ready()), False)

    def test_no_answer_within_the_timeout_is_timeout(self) -> None:
        clock = task.Clock()
        agent = FakeAgent()
        client = self.client(agent, clock, timeout=5.0)
        d = client.get(b"k")
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        error = self.failureResultOf(d, Timeout).value
        self.assertEqual((error.status, error.code), (None, "timeout"))
        self.assertEqual(agent.cancelled, 1)  # the request itself was abandoned

    def test_without_a_timeout_it_waits(self) -> None:
        clock = task.Clock()
        d = self.client(FakeAgent(), clock, timeout=None).get(b"k")
        clock.advance(3600)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)

    def test_cancelling_is_not_reported_as_a_transport_error(self) -> None:
        clock = task.Clock()
        d = self.client(FakeAgent(), clock).get(b"k")
        d.cancel()
        failure = self.failureResultOf(d)
        self.assertFalse(failure.check(DhashmapError))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_bad_url_is_refused(self) -> None:
        self.assertRaises(ValueError, TwistedClient, "node.test:8080")
