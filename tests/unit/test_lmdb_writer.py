"""The LMDB commit process: its wire format, its loop, and the node side's parsing of answers."""

import io

import lmdb
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.storage import StorageError, StorageFull, lmdb_writer
from twisted_dhm.storage.lmdb_engine import ProcessCommitter


class WriterLoopTests(SynchronousTestCase):
    def test_batches_are_committed_and_answered_in_order(self):
        path = self.mktemp()
        stdin = io.BytesIO(
            lmdb_writer.encode_batch({b"a": b"1", b"b": b"\x00" * 10})
            + lmdb_writer.encode_batch({b"a": None, b"c": b""})
        )
        stdout = io.BytesIO()
        lmdb_writer.serve(path, 1 << 20, stdin, stdout)  # returns at end of input
        self.assertEqual(stdout.getvalue(), b"KK")
        env = lmdb.open(path, max_dbs=8, readonly=True)
        with env.begin(db=env.open_db(lmdb_writer.RECORDS_DB, create=False)) as txn:
            self.assertEqual(dict(txn.cursor()), {b"b": b"\x00" * 10, b"c": b""})
        env.close()

    def test_full_map_is_a_full_answer_and_the_loop_goes_on(self):
        path = self.mktemp()
        stdin = io.BytesIO(
            lmdb_writer.encode_batch({b"big": b"x" * (2 << 20)}) + lmdb_writer.encode_batch({b"ok": b"1"})
        )
        stdout = io.BytesIO()
        lmdb_writer.serve(path, 1 << 20, stdin, stdout)
        answer = stdout.getvalue()
        self.assertEqual(answer[:2], b"E" + bytes((lmdb_writer.FULL,)))
        self.assertTrue(answer.endswith(b"K"))

    def test_truncated_input_ends_the_loop_without_committing(self):
        path = self.mktemp()
        stdout = io.BytesIO()
        lmdb_writer.serve(path, 1 << 20, io.BytesIO(lmdb_writer.encode_batch({b"k": b"v"})[:-1]), stdout)
        self.assertEqual(stdout.getvalue(), b"")


class FakeProcessTransport:
    def __init__(self):
        self.written = []
        self.stdin_closed = False

    def write(self, data):
        self.written.append(data)

    def closeStdin(self):
        self.stdin_closed = True

    def loseConnection(self):
        pass


class CommitterTests(SynchronousTestCase):
    def setUp(self):
        self.committer = ProcessCommitter(reactor=None, path="/x", map_size=1)
        self.committer.transport = FakeProcessTransport()

    def test_answers_fire_waiters_in_order_even_split(self):
        first = self.committer(None, {b"a": b"1"})
        second = self.committer(None, {b"b": None})
        third = self.committer(None, {b"c": b"3"})
        self.assertEqual(self.committer.transport.written[1], lmdb_writer.encode_batch({b"b": None}))
        error = lmdb_writer.error_answer(lmdb_writer.FULL, "no room")
        stream = b"K" + error + b"K"
        for i in range(len(stream)):  # one byte at a time
            self.committer.outReceived(stream[i : i + 1])
        self.assertIsNone(self.successResultOf(first))
        self.assertIn("no room", str(self.failureResultOf(second, StorageFull).value))
        self.assertIsNone(self.successResultOf(third))

    def test_a_dead_process_fails_what_waits_and_what_comes(self):
        waiting = self.committer(None, {b"a": b"1"})
        self.committer.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.failureResultOf(waiting, StorageError)
        self.failureResultOf(self.committer(None, {b"b": b"2"}), StorageError)

    def test_garbage_from_the_process_fails_writes(self):
        waiting = self.committer(None, {b"a": b"1"})
        self.committer.outReceived(b"?")
        self.failureResultOf(waiting, StorageError)

    def test_clean_exit(self):
        self.committer.processEnded(Failure(ProcessDone(0)))
        self.assertIsNotNone(self.committer.dead)
