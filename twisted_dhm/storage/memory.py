"""An in-memory engine, for caches, tests and the simulator."""

from __future__ import annotations

from collections.abc import Sequence

from sortedcontainers import SortedDict
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from twisted_dhm.storage.interface import (
    IStorageEngine,
    Record,
    ScanEntry,
    StorageStats,
    all_durable,
    encode_record,
)


@implementer(IStorageEngine)
class MemoryEngine:
    """Records in a sorted dict; every write is 'durable' at once.

    Values are kept as the Record objects themselves; ``stats().bytes`` counts
    their encoded size so the number is comparable with the LMDB engine.
    """

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()
        self._bytes = 0

    def open(self) -> None:
        pass

    def close(self) -> Deferred:
        return succeed(None)

    def get(self, key: bytes) -> Record | None:
        return self._data.get(key)

    latest = get_view = get

    def latest_encoded(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [None if (r := self._data.get(key)) is None else encode_record(r) for key in keys]

    def write(self, key: bytes, record: Record | None, background: bool = False) -> Deferred:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= len(key) + len(encode_record(old))
        if record is not None:
            self._data[key] = record
            self._bytes += len(key) + len(encode_record(record))
        return succeed(None)

    def write_many(self, items: Sequence[tuple[bytes, Record | None]], background: bool = False) -> Deferred:
        return all_durable([self.write(key, record, background) for key, record in items])

    def durable(self, key: bytes) -> Deferred:
        return succeed(None)  # every write is "durable" at once

    def flushed(self) -> Deferred:
        return succeed(None)  # every write is durable at once

    def scan(self, prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        start = prefix if after is None or after < prefix else after
        out = []
        for key in self._data.irange(minimum=start, inclusive=(after is None or after < prefix, True)):
            if not key.startswith(prefix) or len(out) >= limit:
                break
            record = self._data[key]
            out.append(ScanEntry(key, record.tombstone, record.expires_at, record.version.hlc))
        return out

    def stats(self) -> StorageStats:
        return StorageStats(keys=len(self._data), bytes=self._bytes)
