"""This node as a replica: stores what coordinators send and answers their reads.

A replica stores a record only if it wins over what it already has (causally
newer, or the deterministic last-writer-wins choice between concurrent ones),
so replicas converge whatever order writes arrive in.  Records sent with a hint
("hold this for node X") go to the hint store instead, to be handed to X later.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed

from twisted_dhm.storage import IStorageEngine, Record, ScanEntry
from twisted_dhm.versions import HybridLogicalClock

HINT_SEPARATOR = b"\x00"
UNKNOWN = object()
"""``apply(current=UNKNOWN)``: the caller did not just read the key, so apply reads it."""


def hint_key(target: str, key: bytes) -> bytes:
    return target.encode() + HINT_SEPARATOR + key


def split_hint_key(raw: bytes) -> tuple[str, bytes]:
    target, _, key = raw.partition(HINT_SEPARATOR)
    return target.decode(), key


class LocalReplica:
    def __init__(self, engine: IStorageEngine, hints: IStorageEngine, hlc: HybridLogicalClock) -> None:
        self.engine = engine
        self.hints = hints
        self.hlc = hlc

    def read(self, keys: Sequence[bytes], include_pending: bool = False) -> list[Record | None]:
        """Records, tombstones and expired ones included: the coordinator decides.

        Durable ones only, unless ``include_pending``: a write being built on this
        read must also see writes still waiting for their commit.
        """
        get = self.engine.latest if include_pending else self.engine.get
        return [get(key) for key in keys]

    def apply(self, items: Sequence[tuple[bytes, Record]], hint_for: str = "",
              current: object = UNKNOWN) -> Deferred:
        """Store the records that win; fires with how many were stored, once durable.

        ``current`` may pass the record the caller read for a single key in this same
        reactor turn (with pending writes), so it is not read and decoded twice.
        """
        writes = []
        known = current
        for key, record in items:
            self.hlc.observe(record.version.hlc)
            if hint_for:
                store, store_key = self.hints, hint_key(hint_for, key)
            else:
                store, store_key = self.engine, key
            if known is not UNKNOWN and len(items) == 1 and not hint_for:
                current = known
            else:
                current = store.latest(store_key)
            if current is not None and not record.version.wins_over(current.version):
                continue
            writes.append(store.write(store_key, record))
        if not writes:
            return succeed(0)
        if len(writes) == 1:
            return writes[0].addCallback(lambda _: 1)
        return DeferredList(writes, fireOnOneErrback=True, consumeErrors=True).addCallback(
            lambda _: len(writes)
        ).addErrback(lambda f: f.value.subFailure)

    def scan(self, prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        return self.engine.scan(prefix, after, limit)
