"""Smart routing's "not mine" signal: REST header, gRPC trailing metadata, native result field."""

import inspect
from types import SimpleNamespace
from urllib.parse import quote

import grpc
from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api import kv_pb2
from twisted_dhm.api.grpc_api import KVServicer, status_of
from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.cluster.coordinator import LATER
from twisted_dhm.cluster.handler import NotMine, PeerHandler
from twisted_dhm.errors import Unavailable
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.ring import PartitionTable
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator

CLIENT = SimpleNamespace(remote=pb.Hello(role=pb.ROLE_CLIENT))


def elsewhere(partitions: int = 64) -> SimpleNamespace:
    """A routing whose table gives every key to other nodes: this node (n1) owns nothing."""
    return SimpleNamespace(table=PartitionTable({"n2": 1, "n3": 1}, partitions, 3))


class NotMineTests(SynchronousTestCase):
    def test_owner_gets_none_and_others_get_the_rendered_owners(self):
        table = PartitionTable({"n1": 1, "n2": 1, "n3": 1, "n4": 1}, 64, 2)
        routing = SimpleNamespace(table=table)
        mine = NotMine(SimpleNamespace(node_id="n1", routing=routing), lambda owners: ",".join(owners))
        for i in range(200):
            key = b"k%d" % i
            preference = table.preference_list(table.partition(key))
            expected = None if "n1" in preference else ",".join(preference)
            self.assertEqual(mine.owners(key), expected)
            self.assertIs(mine.owners(key), mine.owners(key), "made once per partition")

    def test_a_rebuilt_table_empties_the_cache(self):
        routing = elsewhere()
        mine = NotMine(SimpleNamespace(node_id="n1", routing=routing))
        self.assertIsNotNone(mine.owners(b"k"))
        routing.table = PartitionTable({"n1": 1}, 64, 3)
        self.assertIsNone(mine.owners(b"k"))

    def test_a_coordinator_without_routing_never_says_it(self):
        self.assertIsNone(NotMine(object()).owners(b"k"))


class RestTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        engine = MemoryEngine()
        coordinator = single_node_coordinator(engine, self.clock)
        self.site = build_site(coordinator, NodeMetrics(engine, process=False), self.clock, Limits(), 60, "n1",
                               lambda: True)
        self.treq = StubTreq(self.site.resource)

    def request(self, method, key, body=b""):
        d = self.treq.request(method, "http://node/v1/kv/" + quote(key, safe=""), data=body or None)
        self.treq.flush()
        return self.successResultOf(d)

    def test_an_owner_sends_no_header(self):
        for method in ("PUT", "GET", "DELETE", "GET"):
            self.assertIsNone(self.request(method, b"k", b"v").headers.getRawHeaders("dhashmap-owners"))

    def test_a_node_that_is_not_an_owner_names_the_owners_on_every_keyed_answer(self):
        self.site.kv_resource._not_mine.routing = elsewhere()
        table = elsewhere().table
        owners = ",".join(table.preference_list(table.partition(b"k")))
        for method, code in (("PUT", 201), ("GET", 200), ("DELETE", 204), ("GET", 404)):
            r = self.request(method, b"k", b"v")
            self.assertEqual(r.code, code)
            self.assertEqual(r.headers.getRawHeaders("dhashmap-owners"), [owners])


class NativeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.coordinator = single_node_coordinator(MemoryEngine(), self.clock)
        self.handler = PeerHandler(self.coordinator.replicas.local, self.coordinator, 64, 1024)

    def results(self):
        put = self.successResultOf(self.handler(CLIENT, pb.Frame(put=pb.Put(key=b"k", value=b"v"))))
        get = self.successResultOf(maybeDeferred(self.handler, CLIENT, pb.Frame(get=pb.Get(key=b"k"))))
        delete = self.successResultOf(self.handler(CLIENT, pb.Frame(delete=pb.Delete(key=b"k"))))
        return put.put_result, get.get_result, delete.delete_result

    def test_an_owner_leaves_owners_empty(self):
        put, get, delete = self.results()
        self.assertTrue(put.created and get.found)
        self.assertEqual([list(put.owners), list(get.owners), list(delete.owners)], [[], [], []])

    def test_a_node_that_is_not_an_owner_lists_them(self):
        self.handler.not_mine.routing = elsewhere()
        # A node that is not an owner never answers a read in the call (get_now is only for the
        # key's only replica): its reads ask the owners.  (Here the coordinator's own table still
        # has this node alone, so that the calls succeed.)
        self.coordinator.get_now = lambda key, r: LATER
        table = elsewhere().table
        owners = list(table.preference_list(table.partition(b"k")))
        put, get, delete = self.results()
        self.assertTrue(put.created and get.found)
        self.assertEqual([list(put.owners), list(get.owners), list(delete.owners)], [owners] * 3)


class Aborted(Exception):
    pass


class Context:
    def __init__(self):
        self.trailing = None

    def set_trailing_metadata(self, metadata):
        self.trailing = tuple(metadata)

    def trailing_metadata(self):
        return self.trailing

    def abort(self, code, message):
        self.code = code
        raise Aborted(message)


def finished(result):
    """A handler's answer: at once, or (grpc.aio handlers) a coroutine that must not wait."""
    if not inspect.iscoroutine(result):
        return result
    try:
        result.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the handler waited")


async def _ready(value):
    return value


def bridged(value):
    """What the bridge hands back: the value, or an awaitable of it for grpc.aio handlers."""
    return _ready(value) if inspect.iscoroutinefunction(KVServicer.Get) else value


class GrpcTests(SynchronousTestCase):
    """KVServicer with a bridge that runs the coordinator in the test's thread (threaded or grpc.aio servicer)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.coordinator = single_node_coordinator(MemoryEngine(), self.clock)
        test = self

        class Bridge:
            def call(self, context, f, *args, **kw):
                return bridged(test.successResultOf(f(*args, **kw)))

        self.servicer = KVServicer(self.coordinator, Bridge(), 64, 1024)

    def calls(self):
        contexts = [Context() for _ in range(5)]
        put = finished(self.servicer.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), contexts[0]))
        finished(self.servicer.Get(kv_pb2.GetRequest(key=b"k"), contexts[1]))
        finished(self.servicer.CompareAndSwap(kv_pb2.CompareAndSwapRequest(key=b"k", value=b"w",
                                                                           expected_version=put.version), contexts[2]))
        finished(self.servicer.Delete(kv_pb2.DeleteRequest(key=b"k"), contexts[3]))
        with self.assertRaises(Aborted):
            finished(self.servicer.Get(kv_pb2.GetRequest(key=b"k"), contexts[4]))
        self.assertEqual(contexts[4].code, grpc.StatusCode.NOT_FOUND)
        return [c.trailing for c in contexts]

    def test_an_owner_sets_no_metadata(self):
        self.assertEqual(self.calls(), [None] * 5)

    def test_a_node_that_is_not_an_owner_sets_dhashmap_owners(self):
        self.servicer._not_mine.routing = elsewhere()
        self.coordinator.get_now = lambda key, r: LATER  # as in NativeTests
        table = elsewhere().table
        owners = (("dhashmap-owners", ",".join(table.preference_list(table.partition(b"k")))),)
        self.assertEqual(self.calls(), [owners] * 5)

    def test_a_one_node_read_does_not_cross_into_the_reactor(self):
        crossed = []
        bridge = self.servicer.bridge

        class Counting:
            def call(self, context, f, *args, **kw):
                crossed.append(f.__name__)
                return bridge.call(context, f, *args, **kw)

        self.servicer.bridge = Counting()
        finished(self.servicer.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), Context()))
        self.assertEqual(finished(self.servicer.Get(kv_pb2.GetRequest(key=b"k"), Context())).value, b"v")
        self.assertEqual(crossed, ["put"], "the read was made in the calling thread")
        self.coordinator.get_now = lambda key, r: LATER  # other replicas to ask: through the reactor
        self.assertEqual(finished(self.servicer.Get(kv_pb2.GetRequest(key=b"k"), Context())).value, b"v")
        self.assertEqual(crossed, ["put", "get"])

    def test_unavailable_keeps_the_owners_beside_acks(self):
        self.servicer._not_mine.routing = elsewhere()

        class Raising:
            def call(self, context, f, *args, **kw):
                raise status_of(Unavailable("down", acks=1, required=2))

        self.servicer.bridge = Raising()
        context = Context()
        with self.assertRaises(Aborted):  # (a write: a one-node read never reaches the bridge)
            finished(self.servicer.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), context))
        names = [name for name, _ in context.trailing]
        self.assertEqual(names[0], "dhashmap-owners")
        self.assertIn("acks", names)
