"""The transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Each item is news about one member, keyed by the member's name: queueing news
about a name drops whatever older news about it was still waiting, so the queue
never holds more items than there are members and never spreads stale news.

Items are sent fewest-transmissions first (within one transmission count,
most recently queued first) and dropped after ``limit`` transmissions, where
the caller computes ``limit = retransmit_mult * ceil(log10(N + 1))``.

Items live in one insertion-ordered dict per transmission count, so packing a
packet touches only the items it takes (plus a bounded number it skips for
being too big for the room left): no sort and no scan of the whole queue per
packet, which matters when a thousand nodes run in one simulator process.
"""

from __future__ import annotations

#: Room below which no entry can fit (the smallest entry, an ack, is 6 bytes).
MIN_ENTRY = 6
#: How many too-big items a single take() steps over before giving up.
MAX_MISSES = 16


class BroadcastQueue:
    def __init__(self) -> None:
        self._buckets: list[dict[str, bytes]] = [{}]
        self._where: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def put(self, key: str, entry: bytes) -> None:
        """Queue ``entry`` as the latest news about ``key``, replacing older news."""
        old = self._where.get(key)
        if old is not None:
            del self._buckets[old][key]
        self._buckets[0][key] = entry
        self._where[key] = 0

    def drop(self, key: str) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old][key]

    def transmits(self, key: str) -> int | None:
        """How often the news about ``key`` went out so far (None: not queued)."""
        return self._where.get(key)

    def take(self, room: int, limit: int) -> list[bytes]:
        """Entries that fit in ``room`` bytes, counting one transmission for each."""
        if not self._where or room < MIN_ENTRY:
            return []
        buckets = self._buckets
        if len(buckets) > limit:
            # The cluster shrank: news sent `limit` times already has done its job.
            for bucket in buckets[max(limit, 1) :]:
                for key in bucket:
                    del self._where[key]
            del buckets[max(limit, 1) :]
        taken: list[tuple[int, str]] = []
        out: list[bytes] = []
        misses = 0
        done = False
        for level, bucket in enumerate(buckets):
            for key in reversed(bucket):
                item = bucket[key]
                if len(item) <= room:
                    taken.append((level, key))
                    out.append(item)
                    room -= len(item)
                    if room < MIN_ENTRY:
                        done = True
                        break
                else:
                    misses += 1
                    if misses > MAX_MISSES:
                        done = True
                        break
            if done:
                break
        # Oldest first, so that within the next level the newest news still comes first.
        for level, key in reversed(taken):
            item = buckets[level].pop(key)
            nxt = level + 1
            if nxt >= limit:
                del self._where[key]
                continue
            if nxt == len(buckets):
                buckets.append({})
            buckets[nxt][key] = item
            self._where[key] = nxt
        return out
