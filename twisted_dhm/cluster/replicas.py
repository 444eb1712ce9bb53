"""Replica operations on any node: this one directly, others over the native protocol.

Operations for the same peer within one reactor turn travel together: under load a
coordinator sends one ``ReplicaPut`` (or ``ReplicaGet``) frame with many records instead
of one frame per request, which is what the peer protocol and the peer's replica are
cheapest at.  A batch leaves at the end of the turn (``callLater(0)``), or at once when it
would pass ``max_batch`` items or ``max_batch_bytes`` (then the next item starts a new one),
so a frame holds at most ``max_batch_bytes`` or one single record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from twisted_dhm.cluster.replica import UNKNOWN, LocalReplica
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.codec import key_records_from_pb, key_records_to_pb
from twisted_dhm.storage import Record, ScanEntry


class PeerRequester(Protocol):
    def request(self, node_id: str, frame: pb.Frame) -> Deferred: ...


class ReplicaClient(Protocol):
    def read(self, node: str, keys: Sequence[bytes], include_pending: bool = False,
             local_only: bool = False) -> Deferred: ...
    def write(self, node: str, items: Sequence[tuple[bytes, Record]], hint_for: str = "",
              current: object = UNKNOWN) -> Deferred: ...
    def scan(self, node: str, prefix: bytes, after: bytes | None, limit: int) -> Deferred: ...


class _Batch:
    def __init__(self) -> None:
        self.items: list = []
        self.waiters: list[tuple[Deferred, int, int]] = []  # (waiter, first item, item count)
        self.size = 0

    def add(self, items: Sequence, size: int) -> Deferred:
        d: Deferred = Deferred()
        self.waiters.append((d, len(self.items), len(items)))
        self.items.extend(items)
        self.size += size
        return d

    def fail(self, failure: Failure) -> None:
        for d, _, _ in self.waiters:
            d.errback(failure)


class Replicas:
    """Routes replica operations: to the local replica, or batched through the peer pool."""

    def __init__(self, local_id: str, local: LocalReplica, peers: PeerRequester | None,
                 clock: IReactorTime | None = None, max_batch: int = 1000,
                 max_batch_bytes: int = 4 * 1024 * 1024) -> None:
        self.local_id = local_id
        self.local = local
        self.peers = peers
        self.clock = clock
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._puts: dict[tuple[str, str], _Batch] = {}
        self._gets: dict[tuple[str, bool, bool], _Batch] = {}
        self.frames_sent: Counter[str] = Counter()  # by body: replica_put, replica_get, ...

    def _remote(self, node: str, frame: pb.Frame) -> Deferred:
        if self.peers is None:
            return fail(ConnectionError(f"no peer connections to reach {node}"))
        self.frames_sent[frame.WhichOneof("body")] += 1
        return self.peers.request(node, frame)

    def _batch(self, batches: dict, key: tuple, send, count: int, size: int) -> _Batch:  # type: ignore[no-untyped-def]
        """The open batch for ``key`` with room for ``count`` more items of ``size`` bytes."""
        batch = batches.get(key)
        if batch is not None and batch.items and (
            len(batch.items) + count > self.max_batch or batch.size + size > self.max_batch_bytes
        ):
            send(key, batch)
            batch = None
        if batch is None:
            batch = batches[key] = _Batch()
            self.clock.callLater(0, send, key, batch)  # type: ignore[union-attr]
        return batch

    # -- reads -------------------------------------------------------------------------------

    def read(self, node: str, keys: Sequence[bytes], include_pending: bool = False,
             local_only: bool = False) -> Deferred:
        """Records for ``keys`` from ``node`` (``local_only``: its own store, asking nobody else)."""
        if node == self.local_id:
            return maybeDeferred(self.local.read, keys, include_pending, local_only)
        if self.clock is None:
            return self._send_get(node, list(keys), include_pending, local_only)
        size = sum(len(k) for k in keys)
        return self._batch(self._gets, (node, include_pending, local_only), self._flush_gets, len(keys),
                           size).add(keys, size)

    def _send_get(self, node: str, keys: list[bytes], include_pending: bool, local_only: bool = False) -> Deferred:
        """Records for every key: a ``partial`` answer (it would not fit a frame) is followed up."""
        frame = pb.Frame()
        frame.replica_get.keys.extend(keys)
        frame.replica_get.include_pending = include_pending
        frame.replica_get.local_only = local_only

        def answered(answer: pb.Frame) -> list[Record | None] | Deferred:
            result = answer.replica_get_result
            records = [record for _, record in key_records_from_pb(result.records)]
            if not result.partial:
                return records
            if not records or len(records) >= len(keys):
                raise ConnectionError(f"{node} sent a partial answer with {len(records)} of {len(keys)} keys")
            rest = self._send_get(node, keys[len(records):], include_pending, local_only)
            return rest.addCallback(lambda more: records + more)

        return self._remote(node, frame).addCallback(answered)

    def _flush_gets(self, key: tuple[str, bool, bool], batch: _Batch) -> None:
        if self._gets.get(key) is not batch:
            return  # already sent
        del self._gets[key]

        def answered(records: list[Record | None]) -> None:
            if len(records) != len(batch.items):
                batch.fail(Failure(ConnectionError(f"{key[0]} answered {len(records)} of {len(batch.items)} keys")))
                return
            for d, first, count in batch.waiters:
                d.callback(records[first : first + count])

        # (maybeDeferred: whatever goes wrong in sending fails the batch's waiters, not the reactor)
        maybeDeferred(self._send_get, key[0], batch.items, key[1], key[2]).addCallbacks(answered, batch.fail)

    # -- writes ------------------------------------------------------------------------------

    def write(self, node: str, items: Sequence[tuple[bytes, Record]], hint_for: str = "",
              current: object = UNKNOWN) -> Deferred:
        """Fires when ``node`` has the records on disk (or already had newer ones)."""
        if node == self.local_id:
            return self.local.apply(items, hint_for, current)
        if self.clock is None:
            return self._send_put(node, list(items), hint_for)
        size = sum(len(k) + len(r.value) for k, r in items)
        return self._batch(self._puts, (node, hint_for), self._flush_puts, len(items), size).add(items, size)

    def barrier(self, node: str) -> Deferred:
        """Fires once ``node`` has made durable every write it had queued (an empty ReplicaPut,
        sent on its own: in a batch with other writes it would be an ordinary one)."""
        if node == self.local_id:
            return self.local.apply([])
        return self._send_put(node, [], "")

    def write_counted(self, node: str, items: Sequence[tuple[bytes, Record]]) -> Deferred:
        """Like ``write``, in a frame of its own, firing with how many records ``node`` stored
        (newer than what it had), not how many were sent.  Data movement: ``node`` commits
        them behind its client writes (``background``)."""
        if node == self.local_id:
            return self.local.apply(items, background=True)
        return self._send_put(node, list(items), "", background=True)

    def _send_put(self, node: str, items: list[tuple[bytes, Record]], hint_for: str,
                  background: bool = False) -> Deferred:
        frame = pb.Frame()
        key_records_to_pb(items, frame.replica_put.records)
        frame.replica_put.hint_for = hint_for
        frame.replica_put.background = background
        return self._remote(node, frame).addCallback(lambda answer: answer.replica_put_result.stored)

    def _flush_puts(self, key: tuple[str, str], batch: _Batch) -> None:
        if self._puts.get(key) is not batch:
            return
        del self._puts[key]

        def answered(_: object) -> None:
            for d, _first, count in batch.waiters:
                d.callback(count)

        maybeDeferred(self._send_put, key[0], batch.items, key[1]).addCallbacks(answered, batch.fail)

    # -- scans -------------------------------------------------------------------------------

    def scan(self, node: str, prefix: bytes, after: bytes | None, limit: int) -> Deferred:
        if node == self.local_id:
            return succeed(self.local.scan(prefix, after, limit))
        frame = pb.Frame()
        frame.replica_scan.prefix = prefix
        if after is not None:
            frame.replica_scan.after = after
            frame.replica_scan.has_after = True
        frame.replica_scan.limit = limit
        return self._remote(node, frame).addCallback(
            lambda answer: [ScanEntry(e.key, e.tombstone, e.expires_at, e.hlc)
                            for e in answer.replica_scan_result.entries]
        )
