"""This node as a replica: stores what coordinators send and answers their reads.

A replica stores a record only if it wins over what it already has (causally
newer, or the deterministic last-writer-wins choice between concurrent ones),
so replicas converge whatever order writes arrive in.  Records sent with a hint
("hold this for node X") go to the hint store instead, to be handed to X later.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.storage import IStorageEngine, Record, RecordView, ScanEntry
from twisted_dhm.storage.interface import CorruptRecord, all_durable
from twisted_dhm.versions import HybridLogicalClock

log = logs.logger("dhashmap.replica")

HINT_SEPARATOR = b"\x00"
UNKNOWN = object()
"""``apply(current=UNKNOWN)``: the caller did not just read the key, so apply reads it."""


def hint_key(target: str, key: bytes) -> bytes:
    return target.encode() + HINT_SEPARATOR + key


def split_hint_key(raw: bytes) -> tuple[str, bytes]:
    target, _, key = raw.partition(HINT_SEPARATOR)
    return target.decode(), key


class Sources(Protocol):
    """Who else to ask while this replica is still pulling a partition (the rebalancer)."""

    pulling: dict  # partition -> members still to pull from; empty when there is nothing to pull

    def sources(self, key: bytes) -> Collection[str]: ...
    def remote_read(self, node: str, keys: Sequence[bytes], include_pending: bool) -> Deferred: ...


class LocalReplica:
    def __init__(self, engine: IStorageEngine, hints: IStorageEngine, hlc: HybridLogicalClock) -> None:
        self.engine = engine
        self.hints = hints
        self.hlc = hlc
        self.sync: Sources | None = None

    def _get(self, key: bytes, include_pending: bool) -> Record | None:
        try:
            return self.engine.latest(key) if include_pending else self.engine.get(key)
        except CorruptRecord as e:
            # As if absent: the coordinator's read repair (or anti-entropy) writes a good copy over it.
            log.warn("record for {key!r} is corrupt, answering as if absent: {e}", key=key, e=e)
            return None

    def read_local(self, keys: Sequence[bytes], include_pending: bool = False) -> list[Record | None]:
        """This replica's own records, tombstones and expired ones included: the coordinator decides.

        Durable ones only, unless ``include_pending``: a write being built on this
        read must also see writes still waiting for their commit.
        """
        return [self._get(key, include_pending) for key in keys]

    def read_one(self, key: bytes) -> Record | RecordView | None:
        """``read_local`` of one key, durable records only, to answer a client: its version may
        stay encoded (``get_view``)."""
        try:
            return self.engine.get_view(key)
        except CorruptRecord as e:
            log.warn("record for {key!r} is corrupt, answering as if absent: {e}", key=key, e=e)
            return None

    def syncing(self, key: bytes) -> bool:
        """Whether this replica is still pulling the key's partition from other members."""
        return self.sync is not None and bool(self.sync.pulling) and bool(self.sync.sources(key))

    def read(self, keys: Sequence[bytes], include_pending: bool = False,
             local_only: bool = False) -> list[Record | None] | Deferred:
        """Like ``read_local``; but for keys of a partition this replica is still pulling
        (it just gained it, or a member it had not synced with appeared), the members it
        pulls from are asked too and the newest record is the answer (a Deferred then).
        So a new owner answers as the old owners would, until its copy is complete."""
        records = self.read_local(keys, include_pending)
        if local_only or self.sync is None or not self.sync.pulling:
            return records
        asks: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            for node in self.sync.sources(key):
                asks.setdefault(node, []).append(i)
        if not asks:
            return records

        def merge(answer: list[Record | None], positions: list[int]) -> None:
            for i, record in zip(positions, answer, strict=False):
                if record is not None and (records[i] is None or record.version.wins_over(records[i].version)):
                    records[i] = record

        def unanswered(failure: Failure, node: str) -> None:
            # A member that cannot answer now is left out (it may be on its way down); the
            # coordinator still has the other replicas' answers.
            log.info("could not ask {node} for a partition still being pulled: {e}", node=node,
                     e=failure.getErrorMessage())

        waits = []
        for node, positions in asks.items():
            d = self.sync.remote_read(node, [keys[i] for i in positions], include_pending)
            waits.append(d.addCallbacks(merge, unanswered, callbackArgs=(positions,), errbackArgs=(node,)))
        return gatherResults(waits).addCallback(lambda _: records)

    def apply(self, items: Sequence[tuple[bytes, Record]], hint_for: str = "",
              current: object = UNKNOWN, background: bool = False) -> Deferred:
        """Store the records that win; fires with how many were stored, once durable.

        ``current`` may pass the record the caller read for a single key in this same
        reactor turn (with pending writes), so it is not read and decoded twice.
        ``background``: data movement, which the store commits after client writes.
        """
        if not items:
            # An empty write is a barrier: it answers once everything this replica has
            # acknowledged or queued is durable (rebalancing asks before dropping its copy).
            return gatherResults([self.engine.flushed(), self.hints.flushed()]).addCallback(lambda _: 0)
        store = self.hints if hint_for else self.engine
        # A batch may carry a key twice (a client's write and a read repair of it, sent to this
        # node in one turn): each is held against the winner so far, not only the store's.
        winners: dict[bytes, Record] = {}
        waits: list[Deferred] = []  # for the newer records losers lost to, still to be made durable
        known = current
        for key, record in items:
            self.hlc.observe(record.version.hlc)
            store_key = hint_key(hint_for, key) if hint_for else key
            current = winners.get(store_key)
            if current is None:
                if known is not UNKNOWN and len(items) == 1 and not hint_for:
                    current = known
                else:
                    try:
                        current = store.latest(store_key)
                    except CorruptRecord:
                        current = None  # what arrives replaces bytes that no longer decode
            if current is not None and not record.version.wins_over(current.version):
                # Not stored: what this replica has is as new or newer. That may be a write still
                # waiting for its commit, and the answer counts as an acknowledgement: it waits
                # for that write to be durable.
                if store_key not in winners:
                    pending = store.durable(store_key)
                    if not pending.called:
                        waits.append(pending)
                continue
            winners[store_key] = record
        stored = len(winners)
        if len(winners) == 1:
            [(store_key, record)] = winners.items()
            waits.append(store.write(store_key, record, background=background))
        elif winners:
            waits.append(store.write_many(list(winners.items()), background=background))  # one commit, one waiter
        if not waits:
            return succeed(0)
        if len(waits) == 1:
            return waits[0].addCallback(lambda _: stored)
        return all_durable(waits).addCallback(lambda _: stored)

    def scan(self, prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        return self.engine.scan(prefix, after, limit)
