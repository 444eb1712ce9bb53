"""The engine contract, run against both engines, and LMDB's group commit."""

import tempfile
import threading
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.strategies import keys, records
from twisted_dhm.cluster.index import IndexedEngine
from twisted_dhm.storage import IStorageEngine, Record, StorageError, StorageFull
from twisted_dhm.storage.interface import (
    FORMAT_V1,
    CorruptRecord,
    RecordView,
    decode_record,
    encode_record,
    view_record,
)
from twisted_dhm.storage.lmdb_engine import LMDBEngine
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.versions import Version


class HeldCommits:
    """A stand-in for the commit thread: runs each commit only when told to."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = Deferred()
        self.calls.append((f, args, d))
        return d

    def run_next(self):
        f, args, d = self.calls.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self):
        while self.calls:
            self.run_next()


def rec(value=b"v", n=1, **kw):
    return Record(value, Version().increment("n1", n), **kw)


class EngineContract:
    """Mixed into a TestCase with ``make_engine()`` and ``settle()``."""

    def setUp(self):
        self.engine = self.make_engine()
        self.engine.open()

    def tearDown(self):
        self.settle()
        d = self.engine.close()
        self.settle()
        self.successResultOf(d)

    def write(self, key, record):
        d = self.engine.write(key, record)
        self.settle()
        return self.successResultOf(d)

    def test_get_missing(self):
        self.assertIsNone(self.engine.get(b"nope"))
        self.assertIsNone(self.engine.get_view(b"nope"))

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IStorageEngine, self.engine))
        self.assertTrue(verifyObject(IStorageEngine, IndexedEngine(self.engine, 8)))

    def test_write_many(self):
        self.write(b"gone", rec())
        d = self.engine.write_many([(b"a", rec(b"1")), (b"b", rec(b"2")), (b"gone", None)])
        self.settle()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual([self.engine.get(k) and self.engine.get(k).value for k in (b"a", b"b", b"gone")],
                         [b"1", b"2", None])

    def test_write_then_get(self):
        r = rec(b"\x00\xffvalue", expires_at=123)
        self.write(b"k", r)
        self.assertEqual(self.engine.get(b"k"), r)
        self.assertEqual(self.engine.latest(b"k"), r)

    def test_overwrite_and_remove(self):
        self.write(b"k", rec(b"1"))
        self.write(b"k", rec(b"2", n=2))
        self.assertEqual(self.engine.get(b"k").value, b"2")
        self.write(b"k", None)
        self.assertIsNone(self.engine.get(b"k"))

    def test_latest_encoded_is_the_records_encoding(self):
        self.write(b"a", rec(b"durable"))
        pending = rec(b"pending", n=2)
        d = self.engine.write(b"b", pending)  # not settled: still queued on LMDB
        self.assertEqual(self.engine.latest_encoded([b"a", b"b", b"nope"]),
                         [encode_record(rec(b"durable")), encode_record(pending), None])
        self.settle()
        self.successResultOf(d)

    def test_tombstone_is_stored(self):
        self.write(b"k", rec(b"", tombstone=True))
        self.assertTrue(self.engine.get(b"k").tombstone)

    def test_scan_prefix_order_and_after(self):
        for k in [b"b2", b"a", b"b1", b"b10", b"c", b"b"]:
            self.write(k, rec(k))
        keys = [e.key for e in self.engine.scan(b"b", None, 100)]
        self.assertEqual(keys, [b"b", b"b1", b"b10", b"b2"])
        self.assertEqual([e.key for e in self.engine.scan(b"b", b"b1", 100)], [b"b10", b"b2"])
        self.assertEqual([e.key for e in self.engine.scan(b"b", None, 2)], [b"b", b"b1"])
        self.assertEqual([e.key for e in self.engine.scan(b"", b"b2", 100)], [b"c"])
        self.assertEqual([e.key for e in self.engine.scan(b"b", b"a", 1)], [b"b"])
        self.assertEqual(self.engine.scan(b"zz", None, 10), [])

    def test_scan_reports_liveness(self):
        self.write(b"dead", rec(tombstone=True))
        self.write(b"ttl", rec(expires_at=1000))
        entries = {e.key: e for e in self.engine.scan(b"", None, 10)}
        self.assertFalse(entries[b"dead"].is_live(0))
        self.assertTrue(entries[b"ttl"].is_live(999))
        self.assertFalse(entries[b"ttl"].is_live(1000))

    def test_stats(self):
        self.write(b"a", rec(b"x" * 100))
        self.write(b"b", rec(b"y"))
        stats = self.engine.stats()
        self.assertEqual(stats.keys, 2)
        self.assertGreater(stats.bytes, 100)

    @settings(
        max_examples=30,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(st.dictionaries(keys, records, max_size=20))
    def test_model(self, contents):
        for k, r in contents.items():
            self.write(b"m/" + k, r)
        for k, r in contents.items():
            self.assertEqual(self.engine.get(b"m/" + k), r)
        scanned = [e.key for e in self.engine.scan(b"m/", None, 1000)]
        self.assertEqual(scanned, sorted(scanned))
        self.assertTrue(set(b"m/" + k for k in contents) <= set(scanned))
        for k in contents:
            self.write(b"m/" + k, None)


class MemoryEngineTests(EngineContract, SynchronousTestCase):
    def make_engine(self):
        return MemoryEngine()

    def settle(self):
        pass


class LMDBEngineTests(EngineContract, SynchronousTestCase):
    def make_engine(self):
        self.commits = HeldCommits()
        self.clock = Clock()
        return LMDBEngine(self.mktemp(), self.clock, map_size=64 << 20, run_in_thread=self.commits)

    def settle(self):
        self.clock.advance(0)
        while self.commits.calls:
            self.commits.run_all()
            self.clock.advance(0)

    def test_client_reads_of_a_turn_share_one_transaction(self):
        self.write(b"k", rec(b"1"))
        self.assertEqual(self.engine.get_view(b"k").value, b"1")  # opens the turn's read transaction
        turn_txn = self.engine._turn_txn
        self.assertIsNotNone(turn_txn)
        self.assertEqual(self.engine.get_view(b"k").value, b"1")
        self.assertIs(self.engine._turn_txn, turn_txn, "the same transaction")
        self.clock.advance(0)  # the next turn
        self.assertIsNone(self.engine._turn_txn)

    def test_a_finished_commit_ends_the_turns_transaction_before_its_writes_are_acknowledged(self):
        self.write(b"k", rec(b"1"))
        self.engine.get_view(b"k")  # the turn's read transaction is open
        d = self.engine.write(b"k", rec(b"2", n=2))
        self.engine._flush_if_idle()  # the commit starts within this turn
        self.assertEqual(self.engine.get_view(b"k").value, b"1", "not yet acknowledged")
        seen_on_ack = []
        d.addCallback(lambda _: seen_on_ack.append(self.engine.get_view(b"k").value))
        self.commits.run_all()  # ... and finishes within it
        self.assertEqual(seen_on_ack, [b"2"], "a read made as the write is acknowledged sees it")
        self.assertEqual(self.engine.get_view(b"k").value, b"2")

    def test_other_threads_read_in_their_own_transaction(self):
        self.write(b"k", rec(b"1"))
        self.assertEqual(self.engine.get_view(b"k").value, b"1")  # the turn's transaction is open
        # A newer record committed behind the engine's back: the turn's snapshot does not have it.
        env = self.engine._env
        with env.begin(write=True, db=self.engine._db) as txn:
            txn.put(b"k", encode_record(rec(b"2", n=2)))
        self.assertEqual(self.engine.get_view(b"k").value, b"1")
        answers = []
        thread = threading.Thread(target=lambda: answers.append(self.engine.get_view(b"k")))
        thread.start()
        thread.join()
        self.assertEqual([a.value for a in answers], [b"2"], "a transaction of its own, begun now")

    def test_close_ends_the_turns_transaction(self):
        self.write(b"k", rec(b"1"))
        self.engine.get_view(b"k")
        self.successResultOf(self.engine.close())
        self.assertIsNone(self.engine._turn_txn)
        self.engine.open()  # for tearDown

    def test_group_commit(self):
        """Writes of one reactor turn share a commit; writes during a commit share the next."""
        first = [self.engine.write(b"a%d" % i, rec()) for i in range(10)]
        self.assertEqual(self.commits.calls, [], "no commit before the turn ends")
        self.clock.advance(0)
        self.assertEqual(len(self.commits.calls), 1)
        rest = [self.engine.write(b"k%d" % i, rec(b"%d" % i)) for i in range(40)]
        self.clock.advance(0)
        self.assertEqual(len(self.commits.calls), 1, "later writes wait for the running commit")
        self.commits.run_next()
        for d in first:
            self.successResultOf(d)
        for d in rest:
            self.assertNoResult(d)  # not durable yet: not acknowledged
        self.assertEqual(len(self.commits.calls), 1)
        self.commits.run_next()
        for d in rest:
            self.successResultOf(d)
        self.assertEqual((self.engine.commits, self.engine.writes), (2, 50))

    def batch_keys(self, i=0):
        return sorted(self.commits.calls[i][1][0])

    def test_background_writes_commit_in_slices_behind_client_writes(self):
        """A transfer's writes go in slices; a client write queued meanwhile goes in the next commit."""
        from twisted_dhm.storage.lmdb_engine import BACKGROUND_SLICE

        moved = [self.engine.write(b"m%03d" % i, rec(), background=True) for i in range(3 * BACKGROUND_SLICE)]
        self.clock.advance(0)
        self.assertEqual(len(self.batch_keys()), BACKGROUND_SLICE, "one slice per commit")
        client = self.engine.write(b"client", rec(b"c"))
        self.commits.run_next()
        self.assertEqual(sum(1 for d in moved if d.called), BACKGROUND_SLICE)
        # The next commit has the client write and only one more slice of the transfer.
        self.assertIn(b"client", self.batch_keys())
        self.assertEqual(len(self.batch_keys()), BACKGROUND_SLICE + 1)
        self.commits.run_next()
        self.successResultOf(client)
        self.settle()
        for d in moved:
            self.successResultOf(d)
        self.assertEqual(self.engine.stats().keys, 3 * BACKGROUND_SLICE + 1)

    def test_background_slice_is_bounded_by_bytes(self):
        from twisted_dhm.storage.lmdb_engine import BACKGROUND_SLICE_BYTES

        big = rec(b"x" * (BACKGROUND_SLICE_BYTES // 4))
        for i in range(10):
            self.engine.write(b"big%d" % i, big, background=True)
        self.clock.advance(0)
        self.assertEqual(len(self.batch_keys()), 4)
        self.settle()
        self.assertEqual(self.engine.stats().keys, 10)

    def test_client_write_supersedes_queued_background_write_of_its_key(self):
        """The newest write of a key is what lands; the older write's waiter fires with it."""
        self.engine.write(b"busy", rec(), background=False)
        self.clock.advance(0)  # a commit in flight: what follows queues
        old = self.engine.write(b"k", rec(b"old"), background=True)
        new = self.engine.write(b"k", rec(b"new", n=2))
        later_bg = self.engine.write(b"k", rec(b"newest", n=3), background=True)  # stays with the client queue
        self.commits.run_next()
        self.assertEqual(self.batch_keys(), [b"k"])
        self.commits.run_next()
        for d in (old, new, later_bg):
            self.successResultOf(d)
        self.assertEqual(self.engine.get(b"k").value, b"newest")

    def test_flushed_waits_for_queued_background_writes(self):
        from twisted_dhm.storage.lmdb_engine import BACKGROUND_SLICE

        for i in range(2 * BACKGROUND_SLICE):
            self.engine.write(b"m%03d" % i, rec(), background=True)
        self.clock.advance(0)
        barrier = self.engine.flushed()
        self.commits.run_next()
        self.clock.advance(0)
        self.assertNoResult(barrier)  # half of them are still queued
        self.settle()
        self.successResultOf(barrier)
        self.assertEqual(self.engine.stats().keys, 2 * BACKGROUND_SLICE)

    def test_close_waits_for_background_writes(self):
        self.engine.write(b"m", rec(), background=True)
        closed = self.engine.close()
        self.assertNoResult(closed)
        self.settle()
        self.successResultOf(closed)

    def test_unsynced_write_invisible_to_get_but_visible_to_latest(self):
        r = rec(b"pending")
        d = self.engine.write(b"k", r)
        self.assertIsNone(self.engine.get(b"k"))
        self.assertEqual(self.engine.latest(b"k"), r)
        self.settle()
        self.successResultOf(d)
        self.assertEqual(self.engine.get(b"k"), r)

    def test_newer_pending_write_survives_older_commit(self):
        self.engine.write(b"k", rec(b"1"))
        self.clock.advance(0)
        newer = rec(b"2", n=2)
        self.engine.write(b"k", newer)
        self.commits.run_next()  # commits b"1" only
        self.assertEqual(self.engine.latest(b"k"), newer)
        self.settle()
        self.assertEqual(self.engine.get(b"k"), newer)

    def test_close_waits_for_queued_writes(self):
        self.engine.write(b"a", rec())
        self.engine.write(b"b", rec())
        closed = self.engine.close()
        self.assertNoResult(closed)
        self.assertIsInstance(self.failureResultOf(self.engine.write(b"c", rec())).value, StorageError)
        self.settle()
        self.successResultOf(closed)
        # reopen: both writes are on disk
        self.engine = LMDBEngine(self.engine.path, self.clock, run_in_thread=self.commits)
        self.engine.open()
        self.assertIsNotNone(self.engine.get(b"a"))
        self.assertIsNotNone(self.engine.get(b"b"))

    def test_full_store_fails_writes_clearly(self):
        self.engine.close()
        self.settle()
        self.engine = LMDBEngine(self.mktemp(), self.clock, map_size=1 << 20, run_in_thread=self.commits)
        self.engine.open()
        d = self.engine.write(b"big", rec(b"x" * (2 << 20)))
        self.settle()
        failure = self.failureResultOf(d)
        self.assertIsInstance(failure.value, StorageFull)
        self.assertIn("--lmdb-map-size", str(failure.value))
        self.assertIsNone(self.engine.latest(b"big"), "a failed write is not left pending")
        # the engine still works afterwards
        self.write(b"small", rec(b"x"))
        self.assertEqual(self.engine.get(b"small").value, b"x")
        self.flushLoggedErrors(StorageFull)

    def test_write_many_is_one_waiter_in_the_turns_commit(self):
        alone = self.engine.write(b"x", rec())
        many = self.engine.write_many([(b"k%d" % i, rec(b"%d" % i)) for i in range(5)])
        self.assertEqual(self.engine.latest(b"k3").value, b"3", "pending at once, like write")
        self.assertIsNone(self.engine.get(b"k3"), "not durable before the commit")
        self.clock.advance(0)
        self.assertEqual(len(self.commits.calls), 1, "one commit for the turn's writes")
        self.assertEqual(self.batch_keys(), [b"k0", b"k1", b"k2", b"k3", b"k4", b"x"])
        self.assertNoResult(many)
        self.commits.run_next()
        self.successResultOf(alone)
        self.assertIsNone(self.successResultOf(many))
        self.assertEqual((self.engine.commits, self.engine.writes), (1, 6))

    def test_write_many_supersedes_queued_background_writes_and_fails_as_one(self):
        moved = self.engine.write(b"k0", rec(b"old"), background=True)
        many = self.engine.write_many([(b"k0", rec(b"new", n=2)), (b"k1", rec(b"x" * (80 << 20)))])
        self.settle()
        self.failureResultOf(many, StorageFull)  # the commit failed: every write of it with it
        self.failureResultOf(moved, StorageFull)  # the superseded write waited for that commit
        self.assertIsNone(self.engine.latest(b"k0"), "a failed write is not left pending")
        background = self.engine.write_many([(b"m%d" % i, rec()) for i in range(3)], background=True)
        self.settle()
        self.successResultOf(background)
        self.assertEqual(self.engine.stats().keys, 3)
        self.flushLoggedErrors(StorageFull)

    def test_a_key_lmdb_cannot_take_is_refused_alone(self):
        """Refused when written, not in the commit: there it would fail every write that shares it."""
        good = self.engine.write(b"good", rec())
        with self.assertRaises(StorageError) as ctx:
            self.engine.write(b"k" * 512, rec())
        self.assertIn("1 to 511 bytes", str(ctx.exception))
        with self.assertRaises(StorageError):
            self.engine.write_many([(b"fine", rec()), (b"k" * 600, rec())])
        self.settle()
        self.successResultOf(good)
        self.assertEqual(self.engine.get(b"good").value, b"v")
        self.assertIsNone(self.engine.latest(b"fine"))
        longest = self.engine.write(b"k" * 511, rec(b"longest"))
        self.settle()
        self.successResultOf(longest)
        self.assertEqual(self.engine.get(b"k" * 511).value, b"longest")

    def test_write_many_refuses_an_unencodable_batch_whole(self):
        bad = Record(b"v", Version((("x" * 300, 1),), 1))
        with self.assertRaises(ValueError):
            self.engine.write_many([(b"good", rec()), (b"bad", bad)])
        self.assertIsNone(self.engine.latest(b"good"))
        self.assertEqual(self.engine.writes, 0)

    def test_unencodable_record_leaves_no_phantom_pending_write(self):
        bad = Record(b"v", Version((("x" * 300, 1),), 1))  # node id over 255 bytes
        with self.assertRaises(ValueError):
            self.engine.write(b"k", bad)
        self.assertIsNone(self.engine.latest(b"k"))
        self.settle()
        self.assertIsNone(self.engine.get(b"k"))

    def test_open_failure_is_a_storage_error(self):
        path = self.mktemp()
        open(path, "w").close()  # a file where a directory should be
        engine = LMDBEngine(path, Clock(), run_in_thread=self.commits)
        with self.assertRaises(StorageError) as ctx:
            engine.open()
        self.assertIn(path, str(ctx.exception))


class RealThreadCommitTests(SynchronousTestCase):
    """The default commit thread, driven by a real reactor-less callFromThread."""

    def test_commit_thread(self):
        import threading

        calls = []
        done = threading.Event()

        class Reactor(Clock):
            def callFromThread(self, f, *a, **kw):
                calls.append((f, a, kw))
                done.set()

        reactor = Reactor()

        engine = LMDBEngine(self.mktemp(), reactor, map_size=8 << 20)
        engine.open()
        try:
            d = engine.write(b"k", rec(b"threaded"))
            reactor.advance(0)
            self.assertTrue(done.wait(10), "the commit thread finished")
            for f, a, kw in calls:
                f(*a, **kw)
            self.successResultOf(d)
            self.assertEqual(engine.get(b"k").value, b"threaded")
        finally:
            maybeDeferred(engine.close)


class CodecTests(SynchronousTestCase):
    @given(records)
    def test_round_trip(self, r):
        self.assertEqual(decode_record(encode_record(r)), r)



class RecordViewTests(SynchronousTestCase):
    """``view_record``: what a client read is answered from, with the version left encoded."""

    def assertSame(self, view, record):
        self.assertEqual((view.value, view.tombstone, view.expires_at, view.token, view.version),
                         (record.value, record.tombstone, record.expires_at, record.version.to_token(),
                          record.version))
        for now in (0, record.expires_at - 1, record.expires_at, record.expires_at + 1):
            self.assertEqual(view.is_live(now), record.is_live(now))

    @given(records)
    def test_agrees_with_decode_record(self, r):
        view = view_record(encode_record(r))
        self.assertIsInstance(view, RecordView)
        self.assertSame(view, r)

    def test_three_node_clock(self):
        version = Version().increment("node-b", 5).increment("node-a", 7).increment("node-c", 9)
        r = Record(b"value", version, expires_at=10)
        self.assertSame(view_record(encode_record(r)), r)

    def test_old_format_is_decoded_in_full(self):
        r = rec(b"old")
        v1 = bytes((FORMAT_V1,)) + encode_record(r)[1:-4]  # as written before records had a checksum
        view = view_record(v1)
        self.assertEqual(view, r)  # a Record: it has a token too
        self.assertEqual(view.token, r.version.to_token())

    def test_damaged_bytes_are_corrupt(self):
        raw = encode_record(rec(b"value"))
        for bad in (raw[:5], raw[:-1], raw[:12] + b"\xff" + raw[13:], b""):
            with self.assertRaises(CorruptRecord):
                view_record(bad)

    def test_version_running_into_the_checksum_is_corrupt(self):
        # A checksum that holds over a version whose entry count says more than there is.
        body = bytearray(encode_record(rec(b""))[:-4])
        body[18] = 200  # the clock's entry count
        with self.assertRaisesRegex(CorruptRecord, "checksum"):
            view_record(bytes(body) + zlib.crc32(body).to_bytes(4, "big"))

    def test_bad_version_under_a_good_checksum_is_corrupt_when_asked_for(self):
        r = Record(b"v", Version((("a", 1), ("b", 2)), 3))
        body = bytearray(encode_record(r)[:-4])
        body[20] = ord("c")  # entries out of order: ("c", 1), ("b", 2)
        view = view_record(bytes(body) + zlib.crc32(body).to_bytes(4, "big"))
        self.assertEqual(view.value, b"v")
        with self.assertRaises(CorruptRecord):
            getattr(view, "version")  # noqa: B009 - a property that decodes

    def assertAgree(self, raw):
        """decode_record and view_record on the same bytes: CorruptRecord or an answer, never
        another exception; the view accepts whatever the decoder does, with the same answer; and
        where only the view accepts (a version that does not decode under a good checksum), its
        version is CorruptRecord when asked for."""
        outcomes = []
        for decode in (decode_record, view_record):
            try:
                outcomes.append(decode(raw))
            except CorruptRecord:
                outcomes.append(None)
        full, view = outcomes
        if full is not None:
            self.assertIsNotNone(view)
            self.assertEqual((view.value, view.tombstone, view.expires_at, view.token, view.version),
                             (full.value, full.tombstone, full.expires_at, full.token, full.version))
        elif view is not None:
            with self.assertRaises(CorruptRecord):
                getattr(view, "version")  # noqa: B009 - a property that decodes

    @given(st.binary(max_size=60))
    def test_garbage(self, raw):
        self.assertAgree(raw)

    @given(records, st.data())
    def test_any_byte_changed_under_a_good_checksum(self, r, data):
        body = bytearray(encode_record(r)[:-4])
        at = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[at] = data.draw(st.integers(min_value=0, max_value=255))
        self.assertAgree(bytes(body) + zlib.crc32(body).to_bytes(4, "big"))

    def test_engines_answer_durable_views(self):
        clock = Clock()
        commits = HeldCommits()
        with tempfile.TemporaryDirectory() as tmp:
            lmdb_engine = LMDBEngine(tmp, clock, map_size=1 << 24, run_in_thread=commits)
            for engine in (MemoryEngine(), lmdb_engine):
                engine.open()
                r = rec(b"durable")
                d = engine.write(b"k", r)
                clock.advance(0)
                commits.run_all()
                self.successResultOf(d)
                self.assertEqual((engine.get_view(b"k").value, engine.get_view(b"k").token),
                                 (b"durable", r.version.to_token()))
                self.assertIsNone(engine.get_view(b"missing"))
                if engine is lmdb_engine:
                    engine.write(b"k", rec(b"pending", n=2))  # queued, not durable: not answered
                    clock.advance(0)
                    self.assertEqual(engine.get_view(b"k").value, b"durable")
                    self.assertEqual(engine.latest(b"k").value, b"pending")
                commits.run_all()
                d = engine.close()
                commits.run_all()
                self.successResultOf(d)
