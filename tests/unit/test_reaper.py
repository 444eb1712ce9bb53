from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.cluster.reaper import Reaper
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator


class ReaperTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.engine = MemoryEngine()
        self.c = single_node_coordinator(self.engine, self.clock)
        self.reaper = Reaper(self.engine, self.clock, grace=100, batch=3)

    def sweep(self):
        """Enough slices to cover the store once."""
        for _ in range(self.engine.stats().keys // 3 + 2):
            self.successResultOf(self.reaper.run_once())

    def test_tombstones_purged_only_after_grace(self):
        for key in (b"a", b"b", b"c", b"d", b"e"):
            self.successResultOf(self.c.put(key, b"v"))
        self.successResultOf(self.c.delete(b"b"))
        self.successResultOf(self.c.delete(b"d"))
        self.clock.advance(99)
        self.sweep()
        self.assertTrue(self.engine.get(b"b").tombstone, "inside the grace period the tombstone stays")
        self.clock.advance(2)
        self.sweep()
        self.assertIsNone(self.engine.get(b"b"))
        self.assertIsNone(self.engine.get(b"d"))
        self.assertEqual(self.engine.get(b"a").value, b"v", "live values untouched")
        self.assertEqual(self.reaper.reclaimed, 2)

    def test_expired_values_purged_after_grace_from_expiry(self):
        self.successResultOf(self.c.put(b"ttl", b"v", ttl=10))
        self.successResultOf(self.c.put(b"keep", b"v"))
        self.clock.advance(10 + 99)
        self.sweep()
        self.assertIsNotNone(self.engine.get(b"ttl"))
        self.clock.advance(2)
        self.sweep()
        self.assertIsNone(self.engine.get(b"ttl"))
        self.assertIsNotNone(self.engine.get(b"keep"))

    def test_rewritten_key_is_left_alone(self):
        self.successResultOf(self.c.delete(b"k"))
        self.clock.advance(200)
        self.successResultOf(self.c.put(b"k", b"back"))
        self.sweep()
        self.assertEqual(self.engine.get(b"k").value, b"back")


class FailingEngine(MemoryEngine):
    def __init__(self):
        super().__init__()
        self.fail_removals = 0

    def write(self, key, record, background=False):
        from twisted.internet.defer import fail

        from twisted_dhm.storage import StorageFull

        if record is None and self.fail_removals:
            self.fail_removals -= 1
            return fail(StorageFull("disk full"))
        return super().write(key, record, background)


class ReaperFailureTests(SynchronousTestCase):
    def test_a_failed_purge_keeps_the_loop_and_the_tombstone_for_next_time(self):
        clock = Clock()
        clock.advance(1_800_000_000)
        engine = FailingEngine()
        c = single_node_coordinator(engine, clock)
        reaper = Reaper(engine, clock, grace=10, interval=5, batch=100)
        reaper.startService()
        self.successResultOf(c.delete(b"gone"))
        engine.fail_removals = 1
        clock.advance(10)  # the tick at 10 s: past the grace period, but the purge fails
        self.assertTrue(engine.get(b"gone").tombstone)
        self.assertEqual(reaper.reclaimed, 0)
        clock.advance(5)  # the next tick: the loop is still running and succeeds
        self.assertIsNone(engine.get(b"gone"))
        self.assertEqual(reaper.reclaimed, 1)
        reaper.stopService()


class CorruptRecordTests(SynchronousTestCase):
    """A record whose header reads but whose checksum fails (a bit flipped in its value) must
    not stop the reaper's or hinted handoff's loop for good (a LoopingCall stops at an error)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def engine(self):
        from twisted.internet.defer import maybeDeferred

        from twisted_dhm.storage.lmdb_engine import LMDBEngine

        engine = LMDBEngine(self.mktemp(), self.clock, map_size=16 << 20, run_in_thread=maybeDeferred)
        engine.open()
        self.addCleanup(engine.close)
        return engine

    def damage(self, engine, key):
        from twisted_dhm.storage import lmdb_writer

        with engine._env.begin(write=True, db=engine._env.open_db(lmdb_writer.RECORDS_DB)) as txn:
            raw = bytearray(txn.get(key))
            raw[-6] ^= 0xFF  # in the value, before the checksum: the header still reads
            txn.put(key, bytes(raw))

    def test_the_reaper_reclaims_a_corrupt_reclaimable_record_and_goes_on(self):
        from twisted_dhm.storage import Record
        from twisted_dhm.versions import Version

        engine = self.engine()
        now_ms = int(self.clock.seconds() * 1000)
        engine.write(b"expired", Record(b"x" * 100, Version().increment("n1", 1), expires_at=now_ms - 10_000))
        engine.write(b"zz-tomb", Record(b"", Version().increment("n1", 2), tombstone=True))
        self.clock.advance(0)
        self.damage(engine, b"expired")
        reaper = Reaper(engine, self.clock, grace=1, interval=10)
        reaper.startService()
        self.addCleanup(reaper.stopService)
        self.clock.advance(10)
        self.clock.advance(0)
        self.assertTrue(reaper._loop.running)
        self.assertIsNone(engine.get(b"expired"))
        self.assertIsNone(engine.get(b"zz-tomb"))

    def test_hinted_handoff_drops_a_corrupt_hint_and_delivers_the_rest(self):
        from twisted.internet.defer import succeed

        from twisted_dhm.cluster.handoff import HintedHandoff
        from twisted_dhm.cluster.replica import LocalReplica, hint_key
        from twisted_dhm.membership import ALIVE, Member, MembershipView
        from twisted_dhm.storage import Record
        from twisted_dhm.versions import HybridLogicalClock, Version

        records, hints = self.engine(), self.engine()
        view = MembershipView(Member("node1", "h", 1))
        view.upsert(Member("node2", "h2", 1, state=ALIVE))
        for key in (b"a", b"b"):
            hints.write(hint_key("node2", key), Record(b"y" * 50, Version().increment("node1", 1)))
        self.clock.advance(0)
        self.damage(hints, hint_key("node2", b"a"))
        delivered = []

        class Replicas:
            def write(self, node, items, hint_for=""):
                delivered.extend((node, key) for key, _ in items)
                return succeed(len(items))

        handoff = HintedHandoff(LocalReplica(records, hints, HybridLogicalClock(self.clock)), view, Replicas(),
                                self.clock, interval=1)
        handoff.startService()
        self.addCleanup(handoff.stopService)
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertTrue(handoff._loop.running)
        self.assertEqual(delivered, [("node2", b"b")])
        self.assertEqual(hints.stats().keys, 0, "the corrupt hint dropped, the good one delivered")
