from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.cluster.coordinator import ANY, MAX_TTL_SECONDS, Precondition, decode_cursor, encode_cursor
from twisted_dhm.cluster.replicas import Replicas
from twisted_dhm.errors import InvalidRequest, PreconditionFailed
from twisted_dhm.storage import Record
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator
from twisted_dhm.versions import Ordering, Version


class CoordinatorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.engine = MemoryEngine()
        self.c = single_node_coordinator(self.engine, self.clock)

    def put(self, key, value, **kw):
        return self.successResultOf(self.c.put(key, value, **kw))

    def get(self, key):
        return self.successResultOf(self.c.get(key))

    def test_put_creates_then_replaces_with_descending_versions(self):
        first = self.put(b"k", b"1")
        self.assertTrue(first.created)
        second = self.put(b"k", b"2")
        self.assertFalse(second.created)
        self.assertEqual(second.version.compare(first.version), Ordering.AFTER)
        self.assertEqual(self.get(b"k").value, b"2")
        self.assertEqual(self.get(b"k").version, second.version)

    def test_delete_leaves_tombstone_and_put_after_delete_is_created(self):
        v1 = self.put(b"k", b"1").version
        deleted = self.successResultOf(self.c.delete(b"k"))
        self.assertFalse(deleted.created)
        self.assertIsNone(self.get(b"k"))
        stored = self.engine.get(b"k")
        self.assertTrue(stored.tombstone)
        self.assertEqual(stored.version.compare(v1), Ordering.AFTER)
        again = self.put(b"k", b"2")
        self.assertTrue(again.created)
        self.assertEqual(again.version.compare(stored.version), Ordering.AFTER)

    def test_delete_missing_still_writes_a_tombstone(self):
        """In a cluster another replica may hold a value this node has not seen: the tombstone beats it."""
        result = self.successResultOf(self.c.delete(b"nope"))
        self.assertTrue(result.created, "nothing live was here")
        self.assertTrue(self.engine.get(b"nope").tombstone)
        self.assertIsNone(self.get(b"nope"))

    def test_ttl_expiry(self):
        self.put(b"k", b"v", ttl=10)
        self.clock.advance(9.999)
        self.assertEqual(self.get(b"k").value, b"v")
        self.clock.advance(0.001)
        self.assertIsNone(self.get(b"k"))
        self.assertTrue(self.put(b"k", b"new").created, "a put over an expired value creates")

    def test_ttl_outside_one_second_to_ten_years_is_refused_whatever_the_api(self):
        """The coordinator checks it too (gRPC passed ttl_seconds through unchecked): an expiry
        past what a record can hold must not reach the encoding, or a peer's batch."""
        for ttl in (0, -1, MAX_TTL_SECONDS + 1, 2.0**64):
            self.failureResultOf(self.c.put(b"k", b"v", ttl=ttl), InvalidRequest)
        self.assertIsNone(self.engine.get(b"k"))
        self.put(b"k", b"v", ttl=MAX_TTL_SECONDS)
        self.assertEqual(self.get(b"k").value, b"v")

    def test_if_match(self):
        v1 = self.put(b"k", b"1").version
        v2 = self.put(b"k", b"2", precondition=Precondition(if_match=(v1,))).version
        f = self.failureResultOf(self.c.put(b"k", b"3", precondition=Precondition(if_match=(v1,))))
        self.assertIsInstance(f.value, PreconditionFailed)
        f = self.failureResultOf(self.c.delete(b"k", Precondition(if_match=(v1,))))
        self.assertIsInstance(f.value, PreconditionFailed)
        self.assertEqual(self.get(b"k").value, b"2")
        self.successResultOf(self.c.delete(b"k", Precondition(if_match=(v2,))))
        f = self.failureResultOf(self.c.put(b"k", b"x", precondition=Precondition(if_match=ANY)))
        self.assertIsInstance(f.value, PreconditionFailed)

    def test_if_none_match_star_creates_only_once(self):
        self.put(b"k", b"1", precondition=Precondition(if_none_match=ANY))
        f = self.failureResultOf(self.c.put(b"k", b"2", precondition=Precondition(if_none_match=ANY)))
        self.assertIsInstance(f.value, PreconditionFailed)

    def test_racing_conditional_writes_one_wins(self):
        """Two If-Match writes with one tag, before either is durable: only one passes."""
        from tests.unit.test_storage import HeldCommits
        from twisted_dhm.storage.lmdb_engine import LMDBEngine

        commits = HeldCommits()
        engine = LMDBEngine(self.mktemp(), self.clock, map_size=8 << 20, run_in_thread=commits)
        engine.open()
        c = single_node_coordinator(engine, self.clock)
        d0 = c.put(b"k", b"0")
        self.clock.advance(0)
        commits.run_all()
        v0 = self.successResultOf(d0).version
        a = c.put(b"k", b"a", precondition=Precondition(if_match=(v0,)))
        b = c.put(b"k", b"b", precondition=Precondition(if_match=(v0,)))
        self.clock.advance(0)
        commits.run_all()
        self.clock.advance(0)  # b starts once a has its answer
        self.successResultOf(a)
        self.assertIsInstance(self.failureResultOf(b).value, PreconditionFailed)
        self.assertEqual(engine.get(b"k").value, b"a")
        self.successResultOf(engine.close())

    def test_many_queued_conditional_writes_that_fail_at_once_all_get_their_answer(self):
        """Hundreds queued behind one (a hot create-only key during an outage), all failing at
        once: each starts from the reactor, not from inside the one before, so there is no
        RecursionError (it left the rest unanswered and the key stuck for good)."""
        from tests.unit.test_storage import HeldCommits
        from twisted_dhm.errors import KVError
        from twisted_dhm.storage.lmdb_engine import LMDBEngine

        commits = HeldCommits()
        engine = LMDBEngine(self.mktemp(), self.clock, map_size=8 << 20, run_in_thread=commits)
        engine.open()
        c = single_node_coordinator(engine, self.clock)
        first = c.put(b"lock", b"0", precondition=Precondition(if_none_match=ANY))
        queued = [c.put(b"lock", b"%d" % i, precondition=Precondition(if_none_match=ANY), w=5)
                  for i in range(1000)]  # w=5 of a key with one replica: refused at once
        self.clock.advance(0)
        commits.run_all()
        self.clock.advance(0)
        self.successResultOf(first)
        for d in queued:
            self.failureResultOf(d, KVError)
        self.assertEqual(c._conditional, {})
        later = c.put(b"lock", b"x", precondition=Precondition(if_match=ANY))
        self.clock.advance(0)
        commits.run_all()
        self.successResultOf(later)
        self.successResultOf(engine.close())

    def test_list_pages_skip_dead_keys(self):
        for i in range(10):
            self.put(b"p/%02d" % i, b"v")
        self.put(b"q", b"v")
        self.successResultOf(self.c.delete(b"p/03"))
        self.put(b"p/05", b"v", ttl=1)
        self.clock.advance(2)
        seen, cursor = [], None
        while True:
            page = self.successResultOf(self.c.list(b"p/", cursor, 3))
            seen += page.keys
            cursor = page.cursor
            if cursor is None:
                break
        self.assertEqual(seen, [b"p/%02d" % i for i in range(10) if i not in (3, 5)])

    def test_list_budget_bounds_work_per_page(self):
        for i in range(300):
            self.put(b"d%04d" % i, b"v")
            self.successResultOf(self.c.delete(b"d%04d" % i))
        self.put(b"z", b"v")
        page = self.successResultOf(self.c.list(b"", None, 10))
        self.assertEqual(page.keys, [])
        self.assertIsNotNone(page.cursor, "a page cut by the budget says where to go on")
        keys, cursor = [], page.cursor
        while cursor is not None:
            page = self.successResultOf(self.c.list(b"", cursor, 10))
            keys += page.keys
            cursor = page.cursor
        self.assertEqual(keys, [b"z"])

    def test_cursor_round_trip_and_garbage(self):
        self.assertEqual(decode_cursor(encode_cursor(b"\x00/\xff")), b"\x00/\xff")
        with self.assertRaises(InvalidRequest):
            decode_cursor("!!!")
        self.assertIsInstance(self.failureResultOf(self.c.list(b"", "a.b", 10)).value, InvalidRequest)


class ReplicaBatchTests(SynchronousTestCase):
    def test_a_batch_that_cannot_be_sent_fails_its_callers_not_the_reactor(self):
        """A batch leaves from a delayed call: an error there must reach every write and read
        in it (their coordinators then hint or answer), not escape and leave them waiting."""

        class Unsendable:
            def request(self, node, frame):
                raise RuntimeError("cannot send")

        clock = Clock()
        replicas = Replicas("n1", None, Unsendable(), clock)
        record = Record(b"v", Version().increment("n1", 1))
        writes = [replicas.write("n2", [(b"k%d" % i, record)]) for i in range(3)]
        read = replicas.read("n2", [b"k"])
        clock.advance(0)  # the batches leave: must not raise
        for d in [*writes, read]:
            self.assertEqual(str(self.failureResultOf(d, RuntimeError).value), "cannot send")


class GatherTests(SynchronousTestCase):
    def test_done_fires_once_all_answered_even_when_asked_for_late(self):
        from twisted.internet.defer import Deferred, succeed

        from twisted_dhm.cluster.coordinator import _Gather

        early = _Gather(2, 1, "read")
        waiting = Deferred()
        early.add("a", succeed(1))
        done = early.done
        early.add("b", waiting)
        self.assertEqual(self.successResultOf(early.quorum), {"a": 1})
        self.assertNoResult(done)
        waiting.callback(2)
        self.assertEqual(self.successResultOf(done), {"a": 1, "b": 2})

        late = _Gather(1, 1, "write")
        late.add("a", succeed(1))
        self.assertEqual(self.successResultOf(late.done), {"a": 1})
        self.assertEqual(self.successResultOf(_Gather(0, 0, "list").done), {})
