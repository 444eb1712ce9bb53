"""What a node holds, per partition: its keys and a hash tree over their records.

Anti-entropy and data movement need, for one partition, its keys and a cheap
way to tell whether two replicas agree.  The store is ordered by key, not by
partition, so the node keeps an index in memory, built once at start (a scan of
the store) and kept current by every write:

* a record's **digest** is XXH3-64 of its storage encoding, seeded with the
  key's XXH64 (the hash that also places the key), so it covers key, version,
  flags, expiry and value;
* a partition's keys fall in ``BUCKETS`` buckets by the same hash; a **bucket**
  is the XOR of its records' digests, the partition's **root** the XOR of its
  buckets.

XOR makes every update O(1): a write XORs the old digest out and the new one in.
Two replicas with equal roots hold the same records; where roots differ, the
buckets say where, and only those buckets' keys are compared (a hash tree of
depth two, docs/rebalancing.md).  The index costs about 150 bytes per key.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence

import xxhash
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_dhm import logs
from twisted_dhm.ring import key_hash
from twisted_dhm.storage import IStorageEngine, Record, RecordView, ScanEntry, StorageStats
from twisted_dhm.storage.interface import CorruptRecord, encode_record

log = logs.logger("dhashmap.index")

BUCKETS = 64
_SCAN_SLICE = 10_000


def digest(key_hash_: int, record: Record) -> int:
    return xxhash.xxh3_64_intdigest(encode_record(record), seed=key_hash_)


class PartitionIndex:
    """Keys and digests per partition, with bucket and root hashes.

    ``keys[p]`` maps each key to ``digest << 6 | bucket`` (compare those values for equality;
    ``digest_of`` takes the digest out), so listing a bucket needs no rehashing.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.keys: list[dict[bytes, int]] = [{} for _ in range(partitions)]
        self.buckets: list[list[int]] = [[0] * BUCKETS for _ in range(partitions)]
        self.roots: list[int] = [0] * partitions
        self._generation = [0] * partitions
        self._sorted: dict[tuple[int, tuple[int, ...]], tuple[int, list[bytes]]] = {}

    def locate(self, key: bytes) -> tuple[int, int, int]:
        """(key hash, partition, bucket)."""
        h = key_hash(key)
        return h, h % self.partitions, (h // self.partitions) % BUCKETS

    def partition(self, key: bytes) -> int:
        return key_hash(key) % self.partitions

    @staticmethod
    def digest_of(entry: int) -> int:
        return entry >> 6

    def entry(self, key: bytes, record: Record) -> int:
        """What ``keys[p][key]`` holds for ``record``."""
        h, _, b = self.locate(key)
        return digest(h, record) << 6 | b

    def update(self, key: bytes, record: Record | None) -> None:
        h, p, b = self.locate(key)
        keys = self.keys[p]
        old = keys.pop(key, None)
        delta = 0 if old is None else old >> 6
        if record is not None:
            new = digest(h, record)
            keys[key] = new << 6 | b
            delta ^= new
        elif old is None:
            return
        self._generation[p] += 1
        if delta:
            self.buckets[p][b] ^= delta
            self.roots[p] ^= delta

    def held(self) -> list[int]:
        """Partitions with at least one record here."""
        return [p for p, keys in enumerate(self.keys) if keys]

    def bucket_keys(self, partition: int, buckets: set[int], after: bytes | None, limit: int
                    ) -> tuple[list[tuple[bytes, int]], bool]:
        """(key, digest) of ``buckets`` in key order after ``after``; and whether more remain.

        The sorted key list of a (partition, buckets) pair is kept until the partition
        changes, so paging through a large partition sorts it once, not once per page.
        """
        keys = self.keys[partition]
        cache_key = (partition, tuple(sorted(buckets)))
        cached = self._sorted.get(cache_key)
        if cached is None or cached[0] != self._generation[partition]:
            chosen = sorted(k for k, e in keys.items() if e & (BUCKETS - 1) in buckets)
            if len(self._sorted) > 64:
                self._sorted.clear()
            self._sorted[cache_key] = (self._generation[partition], chosen)
        else:
            chosen = cached[1]
        start = 0 if after is None else bisect.bisect_right(chosen, after)
        page = chosen[start : start + limit]
        return [(k, keys[k] >> 6) for k in page], start + limit < len(chosen)


@implementer(IStorageEngine)
class IndexedEngine:
    """A storage engine that keeps a PartitionIndex of what it stores.

    Every write goes through here, so the index always describes the newest
    records (those still waiting for their commit included, as ``latest``).
    """

    def __init__(self, engine: IStorageEngine, partitions: int) -> None:
        self.engine = engine
        self.index = PartitionIndex(partitions)
        self.corrupt = 0
        self._scrub_keys: tuple[int, list[bytes]] | None = None  # (partition, its keys, sorted) of verify
        # A client read needs no index: the engine's own get_view, without a call in between.
        self.get_view: Callable[[bytes], Record | RecordView | None] = engine.get_view

    def open(self) -> None:
        self.engine.open()
        self.index = PartitionIndex(self.index.partitions)
        for key, record in self._records():
            self.index.update(key, record)

    def _records(self) -> Iterator[tuple[bytes, Record]]:
        after = None
        while True:
            entries = self.engine.scan(b"", after, _SCAN_SLICE)
            for entry in entries:
                try:
                    record = self.engine.get(entry.key)
                except CorruptRecord as e:
                    # Left out of the index: anti-entropy sees the key as missing here and
                    # brings a good copy from another replica, which replaces these bytes.
                    self.corrupt += 1
                    log.warn("record for {key!r} is corrupt, a replica will repair it: {e}", key=entry.key, e=e)
                    continue
                if record is not None:
                    yield entry.key, record
            if len(entries) < _SCAN_SLICE:
                return
            after = entries[-1].key

    def verify(self, partition: int, after: bytes | None, budget: int) -> tuple[int, bytes | None, int]:
        """Compare up to ``budget`` of the partition's entries (keys after ``after``) with the store.

        Returns (entries corrected, where to go on or ``None`` at the partition's end, budget left).
        """
        kept_entries = self.index.keys[partition]
        if not kept_entries:
            # Nothing to read (and no read transaction): a nearly empty store has many such
            # partitions, and the scrub walks through them all on every step.
            return 0, None, budget
        # The partition's keys are sorted once per pass through it (not once per step: that
        # made a pass quadratic in the partition's size); keys written since are checked next pass.
        if after is None or self._scrub_keys is None or self._scrub_keys[0] != partition:
            self._scrub_keys = (partition, sorted(k for k in kept_entries if after is None or k > after))
        ordered = self._scrub_keys[1]
        start = 0 if after is None else bisect.bisect_right(ordered, after)
        keys = ordered[start : start + budget + 1]
        if not keys:
            self._scrub_keys = None
            return 0, None, budget
        fixed = 0
        checking = keys[:budget]
        for key, raw in zip(checking, self.engine.latest_encoded(checking), strict=True):
            # Fast: hash the stored bytes as they are; only a mismatch (a damaged or lost
            # record, or one in the old format) is decoded and looked at closely.
            kept = kept_entries.get(key)
            if raw is not None and kept is not None and kept >> 6 == xxhash.xxh3_64_intdigest(raw, seed=key_hash(key)):
                continue
            try:
                record = self.engine.latest(key)
            except CorruptRecord:
                record = None
            actual = None if record is None else self.index.entry(key, record)
            if kept != actual:
                log.warn("index entry for {key!r} did not match the store (lost or damaged on disk); corrected",
                         key=key)
                self.index.update(key, record)
                fixed += 1
        if len(keys) > budget:
            return fixed, keys[budget - 1], 0
        self._scrub_keys = None
        return fixed, None, budget - len(keys)

    def flushed(self) -> Deferred:
        return self.engine.flushed()

    def durable(self, key: bytes) -> Deferred:
        return self.engine.durable(key)

    def close(self) -> Deferred:
        return self.engine.close()

    def get(self, key: bytes) -> Record | None:
        return self.engine.get(key)

    def latest(self, key: bytes) -> Record | None:
        return self.engine.latest(key)

    def latest_encoded(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.engine.latest_encoded(keys)

    def write(self, key: bytes, record: Record | None, background: bool = False) -> Deferred:
        # first: it may refuse (closed store, bad record)
        d = self.engine.write(key, record, background=background)
        self.index.update(key, record)
        return d.addErrback(self._failed, (key,))

    def write_many(self, items: Sequence[tuple[bytes, Record | None]], background: bool = False) -> Deferred:
        d = self.engine.write_many(items, background=background)  # first, as in write
        for key, record in items:
            self.index.update(key, record)
        return d.addErrback(self._failed, [key for key, _ in items])

    def _failed(self, failure: Failure, keys: Sequence[bytes]) -> Failure:
        # The writes did not land (disk full, commit error): describe what the store has.
        for key in keys:
            try:
                self.index.update(key, self.engine.latest(key))
            except Exception:  # noqa: BLE001 - corrupt or unreadable: as if absent
                self.index.update(key, None)
        return failure

    def scan(self, prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        return self.engine.scan(prefix, after, limit)

    def stats(self) -> StorageStats:
        return self.engine.stats()

    def __getattr__(self, name: str) -> object:
        # The wrapped engine's own counters and knobs (commits, writes, path, ...).
        return getattr(self.engine, name)
