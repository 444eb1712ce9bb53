"""Smart routing: send each key's request straight to a replica of the key.

Any node answers any request (it coordinates with the key's replicas), so routing is only an
optimisation: it saves the coordinator's hop to a replica, and the answers are the same.  The
client fetches the partition table and the members, computes the key's partition exactly as
docs/partitioning.md says (XXH64 of the key's bytes, seed 0, modulo the partition count), and
sends the request to the first live owner of the partition's preference list.

``Router`` keeps the table fresh: it is fetched again when older than ``max_age``, after
``invalidate()``, after a routed node could not be reached (``node_failed``), which also
makes the router avoid that node for ``node_down`` seconds, and when a routed node answers that
it is not one of the key's owners (``not_owner``: the server's "not mine", docs/api.md): then
in the background, at most once per ``refresh_interval`` seconds.  When routing cannot decide (no
table, every owner down) the request goes to the node the client was given.  The native and
gRPC clients (``NativeClient``, ``GrpcClient`` with ``smart_routing=True``) share it; only how
the table is fetched and which port addresses a member differ.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["xxh64", "partition_of", "Topology", "Router"]

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def _merge(acc: int, val: int) -> int:
    return ((acc ^ _round(0, val)) * _P1 + _P4) & _MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (the xxHash specification), in pure Python: no extension needed."""
    n = len(data)
    i = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed & _MASK
        v4 = (seed - _P1) & _MASK
        while i + 32 <= n:
            a, b, c, d = struct.unpack_from("<4Q", data, i)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while i + 8 <= n:
        (lane,) = struct.unpack_from("<Q", data, i)
        h = (_rotl(h ^ _round(0, lane), 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        (lane,) = struct.unpack_from("<I", data, i)
        h = (_rotl(h ^ (lane * _P1) & _MASK, 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5) & _MASK, 11) * _P1) & _MASK
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    h ^= h >> 32
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (docs/partitioning.md)."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"the partition count must be a positive int, not {partitions!r}")
    return xxh64(bytes(key)) % partitions


_ROUTABLE = frozenset(("alive", "suspect"))


class Topology:
    """One snapshot of the cluster's layout: each partition's owners and the members' addresses.

    ``ring`` has the shape of ``GrpcClient.ring()`` (``{"partitions", "table": {p: [owners]}}``)
    or of the REST ``/v1/cluster/ring`` (``"table": [{"partition", "owners"}]``).  ``members``
    are dicts with ``"id"``, ``"state"``, ``"host"`` and the port named ``port`` (``"grpc_port"``,
    ``"peer_port"``), or the REST shape with ``"addresses": {"host", "peer", "grpc", ...}``.
    ``seed_host`` stands in for a member that advertises no host (bound to every interface).
    """

    def __init__(self, ring: Mapping[str, Any], members: Iterable[Mapping[str, Any]], port: str,
                 seed_host: str, fetched_at: float = 0.0) -> None:
        self.partitions = int(ring["partitions"])
        if self.partitions < 1:
            raise ValueError("a ring without partitions")
        if ring.get("hash", "xxh64") not in ("xxh64", ""):
            raise ValueError(f"the cluster hashes keys with {ring['hash']}; this client knows only xxh64")
        self.fetched_at = fetched_at
        self._owners: list[list[str]] = [[] for _ in range(self.partitions)]
        table = ring["table"]
        rows = table.items() if isinstance(table, Mapping) else ((r["partition"], r["owners"]) for r in table)
        for partition, owners in rows:
            if 0 <= int(partition) < self.partitions:
                self._owners[int(partition)] = [str(o) for o in owners]
        self._addresses: dict[str, tuple[str, int]] = {}
        self._routable: set[str] = set()
        rest_name = {"peer_port": "peer", "grpc_port": "grpc", "rest_port": "rest"}.get(port, port)
        for m in members:
            addresses = m.get("addresses")
            if isinstance(addresses, Mapping):
                host, number = addresses.get("host"), addresses.get(rest_name)
            else:
                host, number = m.get("host"), m.get(port)
            if not isinstance(number, int) or number <= 0:
                continue
            if not host or host in ("0.0.0.0", "::"):
                host = seed_host
            self._addresses[str(m["id"])] = (str(host), number)
            if m.get("state") in _ROUTABLE:
                self._routable.add(str(m["id"]))

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def owners_of(self, key: bytes) -> list[str]:
        """Node ids of the key's preference list, the first owner first."""
        return list(self._owners[self.partition(key)])

    def live_owner_addresses(self, key: bytes) -> list[tuple[str, int]]:
        """``(host, port)`` of the key's owners that are alive (or suspect), in preference order."""
        return [self._addresses[i] for i in self._owners[self.partition(key)]
                if i in self._routable and i in self._addresses]

    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every live member."""
        return [a for i, a in self._addresses.items() if i in self._routable]


class Router:
    """The current ``Topology``, fetched with ``load`` when missing or stale; thread-safe.

    ``load(known)`` returns a fresh ``Topology`` (``known``: the live members' addresses of the
    table in hand, to ask when the seed does not answer) or raises.  A failed load keeps the
    table in hand: routing to a stale owner still works (it coordinates), it only costs a hop.
    ``clock`` is injected (``time.monotonic`` by default), so tests need not wait.
    """

    def __init__(self, load: Callable[[list[tuple[str, int]]], Topology], max_age: float = 30.0,
                 node_down: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 refresh_interval: float = 1.0) -> None:
        self._load = load
        self.max_age = max_age
        self.node_down = node_down
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._stale = True
        self._down: dict[tuple[str, int], float] = {}
        self._refreshing = False
        self._last_refresh: float | None = None
        self.loads = 0  # how many tables were fetched (for tests and debugging)
        self.not_owner_refreshes = 0  # of those, how many a "not mine" answer asked for
        # How a "not mine" refresh runs: a daemon thread; tests run it in place.
        self._spawn: Callable[[Callable[[], None]], None] = _in_a_thread

    @property
    def topology(self) -> Topology | None:
        return self._topology

    def current(self) -> Topology | None:
        """The table, fetched first when there is none, it is older than ``max_age`` or was invalidated."""
        with self._lock:
            topology = self._topology
            fresh = topology is not None and not self._stale and self._clock() - topology.fetched_at < self.max_age
            if fresh:
                return topology
            known = topology.addresses() if topology is not None else []
            try:
                topology = self._load(known)
            except Exception:
                self._stale = self._topology is None  # keep a table in hand until max_age; retry at once without one
                return self._topology
            topology.fetched_at = self._clock()
            self._topology, self._stale = topology, False
            self.loads += 1
            return topology

    def targets(self, key: bytes) -> list[tuple[str, int]]:
        """The key's live owners, those not recently unreachable first; empty without a table."""
        topology = self.current()
        if topology is None:
            return []
        now = self._clock()
        owners = topology.live_owner_addresses(key)
        up = [a for a in owners if self._down.get(a, 0.0) <= now]
        return up + [a for a in owners if a not in up]

    def node_failed(self, address: tuple[str, int]) -> None:
        """``address`` could not be reached: avoid it for a while and fetch the table again soon."""
        with self._lock:
            self._down[address] = self._clock() + self.node_down
            self._stale = True

    def invalidate(self) -> None:
        """Fetch the table again before the next routed request."""
        with self._lock:
            self._stale = True

    def not_owner(self, owners: Iterable[str] = ()) -> bool:
        """A routed node answered that it does not own the key (``owners``: the ones it named).

        Fetches the table again in the background, unless one such fetch is running or one
        started less than ``refresh_interval`` seconds ago; requests meanwhile keep the table in
        hand (the node they reach coordinates them: a hop more, the same answer).  Returns
        whether a fetch was started.
        """
        with self._lock:
            now = self._clock()
            if self._refreshing or (self._last_refresh is not None
                                    and now - self._last_refresh < self.refresh_interval):
                return False
            self._refreshing, self._last_refresh = True, now
            known = self._topology.addresses() if self._topology is not None else []
        self._spawn(lambda: self._refresh(known))
        return True

    def _refresh(self, known: list[tuple[str, int]]) -> None:
        try:
            topology = self._load(known)
        except Exception:
            topology = None  # keep the table in hand; age or the next "not mine" tries again
        with self._lock:
            self._refreshing = False
            if topology is not None:
                topology.fetched_at = self._clock()
                self._topology, self._stale = topology, False
                self.loads += 1
                self.not_owner_refreshes += 1


def _in_a_thread(f: Callable[[], None]) -> None:
    threading.Thread(target=f, name="dhashmap-routing-refresh", daemon=True).start()
