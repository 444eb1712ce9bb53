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
