"""Replica and client requests as they arrive over the native protocol."""

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.cluster.handler import PeerHandler
from twisted_dhm.errors import InvalidRequest
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.storage import Record
from twisted_dhm.storage.interface import decode_record, encode_record
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator
from twisted_dhm.versions import Version


class Session:
    """What the handler sees of the connection: the other side's Hello."""

    def __init__(self, role):
        self.remote = pb.Hello(role=role, node_id="x" if role == pb.ROLE_PEER else "")


PEER = Session(pb.ROLE_PEER)
CLIENT = Session(pb.ROLE_CLIENT)


class HandlerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.engine, self.hints = MemoryEngine(), MemoryEngine()
        self.coordinator = single_node_coordinator(self.engine, self.clock, hints=self.hints)
        self.handler = PeerHandler(self.coordinator.replicas.local, self.coordinator, 64, 1024)

    def call(self, frame, session=PEER):
        return self.successResultOf(maybeDeferred(self.handler, session, frame))

    def replica_put(self, key, record, hint_for=""):
        frame = pb.Frame()
        kr = frame.replica_put.records.add()
        kr.key, kr.found, kr.record = key, True, encode_record(record)
        frame.replica_put.hint_for = hint_for
        return frame

    def test_replica_put_keeps_only_winning_versions(self):
        newer = Record(b"new", Version().increment("a", 20))
        older = Record(b"old", Version(), False)
        self.assertEqual(self.call(self.replica_put(b"k", newer)).replica_put_result.stored, 1)
        self.assertEqual(self.call(self.replica_put(b"k", older)).replica_put_result.stored, 0)
        self.assertEqual(self.engine.get(b"k").value, b"new")

    def test_background_replica_puts_are_background_writes(self):
        """Data movement (``background``) reaches the store as such; client-path writes do not."""
        seen = []
        write = self.engine.write

        def spy(key, record, background=False):
            seen.append((key, background))
            return write(key, record, background)

        self.engine.write = spy
        frame = self.replica_put(b"moved", Record(b"v", Version().increment("a", 1)))
        frame.replica_put.background = True
        self.call(frame)
        self.call(self.replica_put(b"client", Record(b"v", Version().increment("a", 1))))
        self.assertEqual(seen, [(b"moved", True), (b"client", False)])

    def test_hints_go_to_the_hint_store(self):
        record = Record(b"v", Version().increment("a", 1))
        self.call(self.replica_put(b"k", record, hint_for="node9"))
        self.assertIsNone(self.engine.get(b"k"))
        self.assertEqual(self.hints.get(b"node9\x00k").value, b"v")

    def test_a_consistency_level_this_build_does_not_know_is_refused(self):
        """Protobuf enums are open: level 9 decodes, and must not quietly mean the default."""
        for frame in (pb.Frame(id=1, get=pb.Get(key=b"k", r=pb.Consistency(level=9))),
                      pb.Frame(id=1, put=pb.Put(key=b"k", value=b"v", w=pb.Consistency(level=9)))):
            self.failureResultOf(maybeDeferred(self.handler, CLIENT, frame), InvalidRequest)
        self.assertIsNone(self.engine.get(b"k"))

    def test_bad_hint_target_refused(self):
        record = Record(b"v", Version().increment("a", 1))
        for bad in ("x\x00y", "../etc", "a" * 65):
            self.failureResultOf(self.handler(PEER, self.replica_put(b"k", record, hint_for=bad)), InvalidRequest)

    def test_bad_vector_clock_refused(self):
        frame = self.replica_put(b"k", Record(b"v", Version((("b", 1), ("a", 1)), 1)))
        self.failureResultOf(self.handler(PEER, frame), InvalidRequest)

    def test_hostile_versions_refused(self):
        for version in (Version((("evil", 1),), 2**64 - 1), Version((("evil", 2**63),), 1),
                        Version((("bad id!", 1),), 1), Version((("evil\n", 1),), 1), Version((("", 1),), 1)):
            frame = self.replica_put(b"k", Record(b"v", version))
            self.failureResultOf(self.handler(PEER, frame), InvalidRequest)
        self.assertIsNone(self.engine.get(b"k"))
        self.successResultOf(self.coordinator.put(b"ok", b"v"))  # the node's clock is unharmed

    def test_undecodable_records_refused(self):
        good = encode_record(Record(b"v", Version().increment("a", 1)))
        flipped = good[:-5] + bytes([good[-5] ^ 1]) + good[-4:]  # one bit of the value: the checksum says so
        for bad in (b"", b"\x01", b"\x03" + good[1:], good[:12], good[:20] + b"\xff", flipped):
            frame = pb.Frame()
            frame.replica_put.records.add(key=b"k", found=True, record=bad)
            self.failureResultOf(self.handler(PEER, frame), InvalidRequest)
        self.assertIsNone(self.engine.get(b"k"))

    def test_stored_bytes_are_the_bytes_sent(self):
        record = Record(b"v", Version().increment("a", 7), expires_at=0)
        self.call(self.replica_put(b"k", record))
        raw = self.engine.get(b"k")
        self.assertEqual(encode_record(raw), encode_record(record))
        self.assertEqual(decode_record(encode_record(record)), record)

    def test_replica_get_answers_fit_one_frame(self):
        for i in range(5):
            self.call(self.replica_put(b"g%d" % i, Record(b"x" * 600, Version().increment("a", 1))))
        answer = self.call(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"g%d" % i for i in range(5)])))
        result = answer.replica_get_result
        self.assertTrue(result.partial)
        self.assertEqual(len(result.records), 1, "600-byte values, 1088-byte budget: one fits")

    def test_replica_get_and_scan(self):
        self.call(self.replica_put(b"p/1", Record(b"1", Version().increment("a", 5))))
        answer = self.call(pb.Frame(replica_get=pb.ReplicaGet(keys=[b"p/1", b"nope"])))
        found = [(r.key, r.found, r.found and decode_record(r.record).value) for r in answer.replica_get_result.records]
        self.assertEqual(found, [(b"p/1", True, b"1"), (b"nope", False, False)])
        scan = self.call(pb.Frame(replica_scan=pb.ReplicaScan(prefix=b"p/", limit=10)))
        self.assertEqual([(e.key, e.hlc) for e in scan.replica_scan_result.entries], [(b"p/1", 5)])

    def test_client_put_get_delete(self):
        put = self.call(pb.Frame(put=pb.Put(key=b"c", value=b"v", ttl_seconds=10)))
        self.assertTrue(put.put_result.created)
        got = self.call(pb.Frame(get=pb.Get(key=b"c")))
        self.assertEqual(
            (got.get_result.found, got.get_result.value, got.get_result.version), (True, b"v", put.put_result.version)
        )
        self.failureResultOf(self.handler(PEER, pb.Frame(put=pb.Put(key=b"c", value=b"x", if_match="stale"))))
        self.call(pb.Frame(delete=pb.Delete(key=b"c", if_match=put.put_result.version)))
        self.assertFalse(self.call(pb.Frame(get=pb.Get(key=b"c"))).get_result.found)

    def test_a_one_node_get_is_answered_in_the_call(self):
        # This node's replica is the only one to ask: no Deferred, nothing left for later.
        self.call(pb.Frame(put=pb.Put(key=b"c", value=b"v")), session=CLIENT)
        answer = self.handler(CLIENT, pb.Frame(get=pb.Get(key=b"c")))
        self.assertNotIsInstance(answer, Deferred)
        self.assertEqual((answer.get_result.found, answer.get_result.value), (True, b"v"))
        missing = self.handler(CLIENT, pb.Frame(get=pb.Get(key=b"nope")))
        self.assertEqual(missing.WhichOneof("body"), "get_result", "an empty answer is still a get_result")
        self.assertFalse(missing.get_result.found)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clients_may_not_use_replica_operations(self):
        from twisted_dhm.errors import Forbidden

        record = Record(b"forged", Version().increment("a", 99))
        self.failureResultOf(self.handler(CLIENT, self.replica_put(b"k", record)), Forbidden)
        self.failureResultOf(self.handler(CLIENT, pb.Frame(replica_get=pb.ReplicaGet(keys=[b"k"]))), Forbidden)
        for frame in (pb.Frame(tree_roots=pb.TreeRoots(partitions=[0])), pb.Frame(tree_buckets=pb.TreeBuckets()),
                      pb.Frame(tree_keys=pb.TreeKeys()), pb.Frame(leave=pb.Leave(node_id="a"))):
            self.failureResultOf(self.handler(CLIENT, frame), Forbidden)
        self.assertIsNone(self.engine.get(b"k"))
        self.assertTrue(self.call(pb.Frame(put=pb.Put(key=b"k", value=b"ok")), session=CLIENT).put_result.created)

    def test_client_ttl_range(self):
        frame = pb.Frame(put=pb.Put(key=b"k", value=b"v", ttl_seconds=2**63))
        self.failureResultOf(self.handler(CLIENT, frame), InvalidRequest)

    def test_delete_returns_the_tombstone_version(self):
        self.call(pb.Frame(put=pb.Put(key=b"d", value=b"v")), session=CLIENT)
        result = self.call(pb.Frame(delete=pb.Delete(key=b"d")), session=CLIENT)
        self.assertEqual(Version.from_token(result.delete_result.version), self.engine.get(b"d").version)
        self.assertEqual(self.call(pb.Frame(delete=pb.Delete(key=b"never")), session=CLIENT).delete_result.version, "")

    def test_client_limits(self):
        self.failureResultOf(self.handler(PEER, pb.Frame(get=pb.Get(key=b""))), InvalidRequest)
        from twisted_dhm.errors import KeyTooLong, ValueTooLarge
        from twisted_dhm.peer.errors import error_for_failure

        f = self.failureResultOf(self.handler(PEER, pb.Frame(get=pb.Get(key=b"k" * 65))), KeyTooLong)
        self.assertEqual(error_for_failure(f, 1).error.code, pb.ERROR_CODE_TOO_LARGE)
        f = self.failureResultOf(self.handler(PEER, pb.Frame(put=pb.Put(key=b"k", value=b"v" * 1025))), ValueTooLarge)
        self.assertIn("value", error_for_failure(f, 1).error.message)


class LosingWriteTests(SynchronousTestCase):
    def test_a_write_that_loses_to_one_not_yet_durable_is_answered_once_that_one_is(self):
        """The answer counts as an acknowledgement: "nothing to store, what is here is newer"
        must not come while what is here is still waiting for its commit (a crash then would
        leave neither on this replica's disk)."""
        from tests.unit.test_storage import HeldCommits
        from twisted_dhm.cluster.replica import LocalReplica
        from twisted_dhm.storage.lmdb_engine import LMDBEngine
        from twisted_dhm.versions import HybridLogicalClock

        clock = Clock()
        clock.advance(1_700_000_000)
        commits = HeldCommits()
        engine = LMDBEngine(self.mktemp(), clock, map_size=8 << 20, run_in_thread=commits)
        engine.open()
        self.addCleanup(lambda: (commits.run_all(), clock.advance(0), engine.close()))
        replica = LocalReplica(engine, MemoryEngine(), HybridLogicalClock(clock))
        newer = Record(b"X", Version().increment("nodeB", 200))
        older = Record(b"Y", Version().increment("nodeC", 100))  # concurrent, lower stamp: loses
        first = replica.apply([(b"k", newer)])
        second = replica.apply([(b"k", older)])
        clock.advance(0)  # the commit of X starts
        self.assertNoResult(first)
        self.assertNoResult(second)
        commits.run_all()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(self.successResultOf(second), 0)
        self.assertEqual(engine.get(b"k").value, b"X")
        # Nothing waiting for that key: the answer is at once, whatever else is queued.
        unrelated = replica.apply([(b"other", newer)])
        self.assertEqual(self.successResultOf(replica.apply([(b"k", older)])), 0)
        clock.advance(0)
        commits.run_all()
        self.successResultOf(unrelated)
        # In a batch with a winner: the answer waits for both.
        newest = Record(b"Z", Version().increment("nodeB", 300))
        pending = replica.apply([(b"k", newest)])
        mixed = replica.apply([(b"k", older), (b"fresh", newer)])
        clock.advance(0)
        self.assertNoResult(mixed)
        commits.run_all()
        self.successResultOf(pending)
        self.assertEqual(self.successResultOf(mixed), 1)
