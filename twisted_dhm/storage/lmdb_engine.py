"""The durable engine: LMDB on disk with group commit off the reactor thread.

Reads run on the reactor thread in their own read transaction: LMDB serves
them from its memory map without locks.  Writes are queued; at the end of the
reactor turn in which they arrived, one commit thread takes everything queued
so far as one transaction and syncs it.  While that commit runs, new writes
queue up for the next one, so under load many writes share one fsync (group
commit) and the reactor never waits for the disk.

Background writes (``write(..., background=True)``: data movement, hint delivery,
tombstone reaping) queue apart and go in slices of at most ``BACKGROUND_SLICE``
records / ``BACKGROUND_SLICE_BYTES``: each commit takes every client write queued
and at most one slice of background ones.  A client write therefore never waits
behind a large transfer's commit, and a transfer still moves on under client load.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence

import lmdb
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorFromThreads, IReactorProcess, IReactorThreads, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_dhm import logs
from twisted_dhm.storage import lmdb_writer
from twisted_dhm.storage.interface import (
    CorruptRecord,
    IStorageEngine,
    Record,
    RecordView,
    ScanEntry,
    StorageError,
    StorageFull,
    StorageStats,
    all_durable,
    decode_record,
    encode_record,
    peek_entry,
    view_record,
)

RunInThread = Callable[..., Deferred]

_RECORDS_DB = lmdb_writer.RECORDS_DB
_ABSENT = object()

BACKGROUND_SLICE = 32
BACKGROUND_SLICE_BYTES = 64 * 1024


class ProcessCommitter(ProcessProtocol):
    """Runs each commit in a child process (``lmdb_writer``): it has a GIL of its own.

    Called like ``run_in_thread(f, batch)`` (``f`` is ignored: the child does the work);
    batches go one at a time, so answers come back in order.
    """

    log = logs.logger("dhashmap.storage")

    def __init__(self, reactor: IReactorProcess, path: str, map_size: int) -> None:
        self._reactor = reactor
        self._path = path
        self._map_size = map_size
        self._waiting: list[Deferred] = []
        self._buffer = b""
        self._ended: Deferred | None = None
        self.dead: str | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "twisted_dhm.storage.lmdb_writer", self._path, str(self._map_size)]
        self._ended = Deferred()
        self._reactor.spawnProcess(self, sys.executable, args, env=dict(os.environ))

    def __call__(self, f: object, batch: dict[bytes, bytes | None]) -> Deferred:
        if self.dead is not None:
            return fail(StorageError(self.dead))
        d: Deferred = Deferred()
        self._waiting.append(d)
        self.transport.write(lmdb_writer.encode_batch(batch))
        return d

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            if self._buffer[:1] == b"K":
                self._buffer = self._buffer[1:]
                self._answer(None)
            elif self._buffer[:1] == b"E" and len(self._buffer) >= 6:
                kind = self._buffer[1]
                (size,) = struct.unpack(">I", self._buffer[2:6])
                if len(self._buffer) < 6 + size:
                    return
                message = self._buffer[6 : 6 + size].decode("utf-8", "replace")
                self._buffer = self._buffer[6 + size :]
                error = StorageFull(message + "; raise --lmdb-map-size") if kind == lmdb_writer.FULL \
                    else StorageError(message)
                self._answer(Failure(error))
            elif self._buffer[:1] == b"E":
                return  # the rest of the error is on its way
            else:
                self.transport.loseConnection()
                self._fail_all(f"the LMDB commit process said something unexpected: {self._buffer[:16]!r}")
                return

    def _answer(self, result: Failure | None) -> None:
        if not self._waiting:
            return
        d = self._waiting.pop(0)
        if result is None:
            d.callback(None)
        else:
            d.errback(result)

    def errReceived(self, data: bytes) -> None:
        self.log.error("LMDB commit process: {text}", text=data.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason: Failure) -> None:
        if not reason.check(ProcessDone):
            self._fail_all(f"the LMDB commit process for {self._path} exited: {reason.getErrorMessage()}")
        else:
            self._fail_all(f"the LMDB commit process for {self._path} has exited")
        if self._ended is not None and not self._ended.called:
            self._ended.callback(None)

    def _fail_all(self, message: str) -> None:
        self.dead = message
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(StorageError(message))

    def stop(self) -> Deferred:
        """Close its input: it finishes nothing more (no batch is in flight) and exits."""
        if self._ended is None or self._ended.called:
            return succeed(None)
        self.transport.closeStdin()
        return self._ended


@implementer(IStorageEngine)
class LMDBEngine:
    """Records in one LMDB named database under ``path``.

    ``run_in_thread(f, *args)`` runs a commit away from the reactor and returns a
    Deferred for its result; the default is a one-thread pool.  Tests pass a
    function that holds commits until they let them finish.
    """

    log = logs.logger("dhashmap.storage")

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads | IReactorThreads | IReactorTime,
        map_size: int = 16 << 30,
        run_in_thread: RunInThread | None = None,
        commit_in: str = "thread",
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._map_size = map_size
        self._run_in_thread = run_in_thread
        self._commit_in = commit_in  # "thread" or "process"
        self._process: ProcessCommitter | None = None
        self._pool: ThreadPool | None = None
        self._env: lmdb.Environment | None = None
        self._db = None
        self._max_key = 511  # LMDB's (the environment says, once open)
        self._reactor_thread = -1
        self._turn_txn: lmdb.Transaction | None = None  # the reactor turn's client reads (get_view)
        # key -> newest Record (None: removal) of writes queued or committing
        self._pending: dict[bytes, Record | None] = {}
        self._queue: dict[bytes, bytes | None] = {}
        self._waiters: list[Deferred] = []
        # background writes: key -> (encoded, the waiters of every write of it still queued)
        self._background: dict[bytes, tuple[bytes | None, list[Deferred]]] = {}
        self._committing: Deferred | None = None
        self._flush_scheduled = False
        self._idle_waiters: list[Deferred] = []
        self._closing = False
        self.commits = 0
        self.writes = 0

    # -- life cycle -----------------------------------------------------------------

    def open(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            self._env = lmdb.open(
                self.path,
                map_size=self._map_size,
                max_dbs=8,
                sync=True,
                metasync=True,
                readahead=False,
                max_spare_txns=4,
            )
        except (lmdb.Error, OSError) as e:
            raise StorageError(f"cannot open LMDB store at {self.path}: {e}") from None
        self._db = self._env.open_db(_RECORDS_DB)
        self._max_key = self._env.max_key_size()
        self._reactor_thread = threading.get_ident()  # opened by the node in the reactor's thread
        if self._run_in_thread is None and self._commit_in == "process":
            self._process = ProcessCommitter(self._reactor, self.path, self._map_size)  # type: ignore[arg-type]
            self._process.start()
            self._run_in_thread = self._process
        if self._run_in_thread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="dhashmap-lmdb-commit")
            self._pool.start()
            pool = self._pool
            self._run_in_thread = lambda f, *a: deferToThreadPool(self._reactor, pool, f, *a)

    def close(self) -> Deferred:
        """Refuse new writes, let queued ones commit, then close the environment."""
        self._closing = True
        if self._committing is None and not self._queue and not self._background:
            d = succeed(None)
        else:
            d = Deferred()
            self._idle_waiters.append(d)
        d.addCallback(lambda _: self._release())
        return d

    def _release(self) -> Deferred | None:
        if self._process is not None:
            process, self._process = self._process, None
            return process.stop().addCallback(lambda _: self._release())
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        if self._env is not None:
            self._end_turn_reads()
            self._env.close()
            self._env = None
        return None

    # -- reads ------------------------------------------------------------------------

    def _require_open(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError("the store is not open")
        return self._env

    def get(self, key: bytes) -> Record | None:
        env = self._require_open()
        with env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else decode_record(raw)

    def get_view(self, key: bytes) -> Record | RecordView | None:
        """Client reads in the reactor's thread share one read transaction per reactor turn
        (opened by the turn's first, ended when the turn is over, or sooner): under load a
        turn answers dozens of reads, and each transaction's begin and end cost as much as its
        read.

        The transaction also ends when a commit finishes, before the commit's writes are
        acknowledged (``_flush``), so a read never misses a write that was acknowledged before
        it was made, even a pipelined HTTP GET that Twisted handles in the same call as its
        PUT's answer.  Reads in the transaction see the store as of its first read: writes not
        yet acknowledged, which a client cannot tell from writes still on their way.  (Never
        used to build a write: ``get``.)  Other threads (gRPC's) read in a transaction of their
        own.
        """
        if threading.get_ident() != self._reactor_thread:
            env = self._require_open()
            with env.begin(db=self._db) as txn:
                raw = txn.get(key)
        else:
            txn = self._turn_txn
            if txn is None:
                txn = self._turn_txn = self._require_open().begin(db=self._db)
                self._reactor.callLater(0, self._end_turn_reads)  # type: ignore[union-attr]
            raw = txn.get(key)
        return None if raw is None else view_record(raw)

    def _end_turn_reads(self) -> None:
        txn, self._turn_txn = self._turn_txn, None
        if txn is not None:
            txn.abort()

    def latest(self, key: bytes) -> Record | None:
        if key in self._pending:
            return self._pending[key]
        return self.get(key)

    def latest_encoded(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """One read transaction for all the keys; the bytes are not decoded or checked."""
        env = self._require_open()
        out: list[bytes | None] = []
        with env.begin(db=self._db) as txn:
            for key in keys:
                if key in self._pending:
                    record = self._pending[key]
                    out.append(None if record is None else encode_record(record))
                else:
                    out.append(txn.get(key))
        return out

    def scan(self, prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        env = self._require_open()
        out: list[ScanEntry] = []
        with env.begin(db=self._db, buffers=True) as txn:
            cursor = txn.cursor()
            start = prefix if after is None or after < prefix else after
            if not cursor.set_range(start):
                return out
            for key, value in cursor:
                key = bytes(key)
                if after is not None and key == after:
                    continue
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                try:
                    out.append(peek_entry(key, value))
                except CorruptRecord as e:
                    # Skipped, as if absent: a replica's copy will replace it (anti-entropy, read repair).
                    self.log.warn("record for {key!r} is corrupt: {e}", key=key, e=e)
        return out

    def stats(self) -> StorageStats:
        env = self._require_open()
        with env.begin(db=self._db) as txn:
            st = txn.stat(self._db)
        info = env.info()
        page = env.stat()["psize"]
        return StorageStats(keys=st["entries"], bytes=(info["last_pgno"] + 1) * page)

    # -- writes -----------------------------------------------------------------------

    def _check_key(self, key: bytes) -> None:
        # Here, not in the commit: one key LMDB cannot take would fail the whole group commit,
        # every other client's writes in it with it.
        if not key or len(key) > self._max_key:
            raise StorageError(f"LMDB keys are 1 to {self._max_key} bytes; this one is {len(key)}")

    def write(self, key: bytes, record: Record | None, background: bool = False) -> Deferred:
        if self._env is None or self._closing:
            return fail(StorageError("the store is closed"))
        self._check_key(key)
        encoded = None if record is None else encode_record(record)  # may raise: before any state changes
        if not background or key in self._queue:
            return self._queue_writes([(key, record, encoded)])
        self._pending[key] = record
        waiter: Deferred = Deferred()
        queued = self._background.get(key)
        if queued is None:
            self._background[key] = (encoded, [waiter])
        else:
            queued[1].append(waiter)
            self._background[key] = (encoded, queued[1])
        self.writes += 1
        self._schedule_flush()
        return waiter

    def write_many(self, items: Sequence[tuple[bytes, Record | None]], background: bool = False) -> Deferred:
        """Client writes queue together, with one waiter for all (they share the next commit);
        background ones, which commit in slices, are written one by one."""
        if background:
            return all_durable([self.write(key, record, background=True) for key, record in items])
        if self._env is None or self._closing:
            return fail(StorageError("the store is closed"))
        # Checked and encoded first: a bad item refuses the batch before any state changes.
        for key, _ in items:
            self._check_key(key)
        return self._queue_writes([(key, record, None if record is None else encode_record(record))
                                   for key, record in items])

    def _queue_writes(self, encoded: list[tuple[bytes, Record | None, bytes | None]]) -> Deferred:
        """Client writes, into the next commit; one waiter for them all."""
        for key, record, raw in encoded:
            self._pending[key] = record
            # A key has one place in the queues: the newest write of it is what commits.
            queued = self._background.pop(key, None)
            if queued is not None:
                self._waiters.extend(queued[1])
            self._queue[key] = raw
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        self.writes += len(encoded)
        self._schedule_flush()
        return waiter

    def _schedule_flush(self) -> None:
        if self._committing is None and not self._flush_scheduled:
            # Not now: the rest of this reactor turn's writes can share the commit.
            self._flush_scheduled = True
            self._reactor.callLater(0, self._flush_if_idle)

    def durable(self, key: bytes) -> Deferred:
        """Fires once the newest write of ``key`` queued so far is durable: at once when none is
        waiting, else with the barrier of every write queued so far (rarely needed: a replica
        asks only when a write lost to one not yet durable)."""
        return self.flushed() if key in self._pending else succeed(None)

    def flushed(self) -> Deferred:
        """Fires once every write queued so far is durable (errors included: it is a barrier)."""
        waits: list[Deferred] = []
        if self._queue:
            d: Deferred = Deferred()
            self._waiters.append(d)  # fires with the commit that takes the queue
            waits.append(d)
        for _, waiters in self._background.values():
            d = Deferred()
            waiters.append(d)  # fires with the commit that takes this key
            waits.append(d)
        if self._committing is not None:
            d = Deferred()
            self._committing.addBoth(lambda result, d=d: (d.callback(None), result)[1])
            waits.append(d)
        if not waits:
            return succeed(None)
        for d in waits:
            d.addErrback(lambda _: None)
        return gatherResults(waits).addCallback(lambda _: None)

    def _flush_if_idle(self) -> None:
        self._flush_scheduled = False
        if self._committing is None and (self._queue or self._background):
            self._flush()

    def _flush(self) -> None:
        """Hand every client write queued so far, and a slice of background ones, to the
        commit thread as one transaction."""
        batch, self._queue = self._queue, {}
        waiters, self._waiters = self._waiters, []
        if self._background:
            size = 0
            for key in list(itertools.islice(self._background, BACKGROUND_SLICE)):
                encoded, key_waiters = self._background.pop(key)
                batch[key] = encoded
                waiters.extend(key_waiters)
                size += len(key) + (len(encoded) if encoded is not None else 0)
                if size >= BACKGROUND_SLICE_BYTES:
                    break
        landed = {key: self._pending.get(key) for key in batch}
        assert self._run_in_thread is not None
        self._committing = d = self._run_in_thread(self._commit, batch)

        def finished(result: object) -> None:
            self._committing = None
            # Before any waiter hears of it: every client read from here on (even one a
            # pipelined request makes in this very call) must see this commit.
            self._end_turn_reads()
            if not isinstance(result, Failure):
                self.commits += 1
            for key, record in landed.items():
                # A newer write to the same key may already be queued behind this batch.
                if self._pending.get(key, _ABSENT) is record:
                    del self._pending[key]
            if self._queue or self._background:
                self._flush()
            elif self._idle_waiters:
                idle, self._idle_waiters = self._idle_waiters, []
                for w in idle:
                    w.callback(None)
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)

        def failed(failure: Failure) -> Failure:
            self.log.failure("commit of {n} writes failed", failure, n=len(batch))
            if not failure.check(StorageError):
                failure = Failure(StorageError(f"commit failed: {failure.value}"))
            return failure

        d.addErrback(failed)
        d.addBoth(finished)

    def _commit(self, batch: dict[bytes, bytes | None]) -> None:
        """Runs in the commit thread: one transaction, synced on commit."""
        env = self._env
        if env is None:
            raise StorageError("the store was closed during a commit")
        try:
            with env.begin(write=True, db=self._db) as txn:
                for key, value in batch.items():
                    if value is None:
                        txn.delete(key)
                    else:
                        txn.put(key, value)
        except lmdb.MapFullError:
            raise StorageFull(
                f"the store at {self.path} is full (map size {self._map_size} bytes); "
                "raise --lmdb-map-size"
            ) from None
        except lmdb.Error as e:
            raise StorageError(f"LMDB commit failed: {e}") from None
