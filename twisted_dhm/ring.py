"""Partitioning: keys to fixed partitions, partitions to nodes on a consistent-hash ring.

* A key's hash is **xxHash64 with seed 0** of its bytes (the XXH64 of the xxHash
  specification); its partition is ``hash % Q``.  Q (default 1024) is fixed for the
  life of a cluster.  Test vectors for other languages: docs/partitioning.md.
* Each node places ``weight × vnodes`` tokens on a 64-bit ring; token ``i`` of
  node ``id`` is ``xxh64(f"{id}#{i}")``.  Partition ``p`` sits at ring position
  ``p × ⌊2^64 / Q⌋``; walking clockwise from there, the first N distinct nodes are
  its preference list, and the nodes after them are its fallbacks (sloppy quorum).

A ``PartitionTable`` is immutable and built only when membership changes; a request
only indexes into it.  Adding a node only inserts tokens, so a partition's list can
gain the new node and drop its last member, and no other node gains anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

import xxhash

DEFAULT_PARTITIONS = 1024
DEFAULT_REPLICAS = 3
DEFAULT_VNODES = 128
RING_SIZE = 1 << 64


key_hash: Callable[[bytes], int] = xxhash.xxh64_intdigest
"""XXH64 of the key, seed 0 (docs/partitioning.md): the C function itself, as every request hashes."""


def partition_of(key: bytes, partitions: int = DEFAULT_PARTITIONS) -> int:
    return key_hash(key) % partitions


def node_tokens(node_id: str, count: int) -> list[int]:
    return [key_hash(f"{node_id}#{i}".encode()) for i in range(count)]


class PartitionTable:
    """Who holds which partition, for one membership view."""

    def __init__(
        self,
        weights: Mapping[str, int],
        partitions: int = DEFAULT_PARTITIONS,
        replicas: int = DEFAULT_REPLICAS,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if partitions < 1 or replicas < 1 or vnodes < 1:
            raise ValueError("partitions, replicas and vnodes must be positive")
        for node, weight in weights.items():
            if weight < 1:
                raise ValueError(f"weight of {node!r} must be at least 1")
        self.partitions = partitions
        self.replicas = replicas
        self.nodes = frozenset(weights)
        ring = sorted(
            (token, node) for node, weight in weights.items() for token in node_tokens(node, weight * vnodes)
        )
        self._tokens = [token for token, _ in ring]
        self._owners = [node for _, node in ring]
        step = RING_SIZE // partitions
        self._start = [bisect.bisect_left(self._tokens, p * step) for p in range(partitions)]
        n = min(replicas, len(self.nodes))
        self._preference = tuple(tuple(self._walk_from(start, n)) for start in self._start)

    def _walk_from(self, index: int, limit: int) -> Iterator[str]:
        seen: set[str] = set()
        size = len(self._owners)
        for step in range(size):
            node = self._owners[(index + step) % size]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == limit:
                    return

    def partition(self, key: bytes) -> int:
        return key_hash(key) % self.partitions

    def preference_list(self, partition: int) -> tuple[str, ...]:
        """The N distinct nodes that hold ``partition`` (fewer if the cluster is smaller)."""
        return self._preference[partition]

    def walk(self, partition: int) -> Iterator[str]:
        """Every node in ring order from ``partition``: its preference list, then fallbacks."""
        return self._walk_from(self._start[partition], len(self.nodes))

    def owned_by(self, node: str) -> list[int]:
        return [p for p, owners in enumerate(self._preference) if node in owners]

    def as_dict(self) -> dict[int, tuple[str, ...]]:
        return dict(enumerate(self._preference))
