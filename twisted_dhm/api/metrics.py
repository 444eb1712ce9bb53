"""Prometheus metrics of one node, in a registry of its own.

A registry per node (not prometheus_client's global one) lets a test or the
simulator run many nodes in one process.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from twisted_dhm.membership import STATES
from twisted_dhm.storage import IStorageEngine

# Sub-millisecond to multi-second: group commit puts PUTs at a few ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class _StorageCollector(Collector):
    def __init__(self, engine: IStorageEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator:
        try:
            stats = self._engine.stats()
        except Exception:
            return
        yield GaugeMetricFamily(
            "dhashmap_storage_keys", "Records stored on this node, tombstones included.", stats.keys
        )
        yield GaugeMetricFamily(
            "dhashmap_storage_bytes", "Bytes the storage engine uses on this node.", stats.bytes
        )
        commits = getattr(self._engine, "commits", None)
        if commits is not None:
            yield CounterMetricFamily(
                "dhashmap_storage_commits", "Durable commits (each one fsync) of the engine.", commits
            )
            yield CounterMetricFamily(
                "dhashmap_storage_writes",
                "Writes made durable; writes/commits is the group-commit batch size.",
                self._engine.writes,  # type: ignore[attr-defined]
            )


class _ClusterCollector(Collector):
    """Membership, hints and repair, read from the node when scraped."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator:
        node = self._node
        members = GaugeMetricFamily("dhashmap_members", "Members of the cluster by state, as this node sees them.",
                                    labels=("state",))
        counts = dict.fromkeys(STATES, 0)
        for member in node.view.members():
            counts[member.state] += 1
        for state, count in counts.items():
            members.add_metric((state,), count)
        yield members
        yield GaugeMetricFamily("dhashmap_partitions_owned", "Partitions whose preference list holds this node.",
                                len(node.routing.table.owned_by(node.view.local_id)))
        try:
            queued = node.handoff.queued()
        except Exception:
            queued = 0
        yield GaugeMetricFamily("dhashmap_hints_queued", "Writes held here for nodes that were down.", queued)
        yield CounterMetricFamily("dhashmap_hints_delivered", "Hinted writes handed to their home nodes.",
                                  node.handoff.delivered)
        yield CounterMetricFamily("dhashmap_read_repairs", "Replicas updated by read repair.",
                                  node.coordinator.read_repairs)
        yield CounterMetricFamily("dhashmap_tombstones_reclaimed",
                                  "Tombstones and expired values purged after the grace period.",
                                  node.reaper.reclaimed)
        rebalance = getattr(node, "rebalance", None)
        if rebalance is not None:
            yield from _rebalance_metrics(rebalance)


def _rebalance_metrics(rebalance: Any) -> Iterator:
    """Data movement and anti-entropy (docs/rebalancing.md)."""
    yield GaugeMetricFamily("dhashmap_partitions_held", "Partitions this node has records for (owned or not).",
                            len(rebalance.engine.index.held()))
    yield GaugeMetricFamily("dhashmap_partitions_pulling",
                            "Owned partitions still being pulled from other members.", len(rebalance.pulling))
    transfers = GaugeMetricFamily("dhashmap_transfers_active", "Partition transfers in flight, by kind.",
                                  labels=("kind",))
    kinds = dict.fromkeys(("pull", "handoff", "drain", "repair"), 0)
    for transfer in rebalance.transfers.values():
        kinds[transfer.kind] = kinds.get(transfer.kind, 0) + 1
    for kind, count in kinds.items():
        transfers.add_metric((kind,), count)
    yield transfers
    yield GaugeMetricFamily("dhashmap_transfers_queued", "Partition transfers waiting their turn.",
                            rebalance.queued)
    counters = rebalance.counters
    moved = CounterMetricFamily("dhashmap_transfer_keys", "Records copied by transfers and repairs, by direction.",
                                labels=("direction",))
    moved.add_metric(("received",), counters["keys_received"])
    moved.add_metric(("sent",), counters["keys_sent"])
    yield moved
    moved_bytes = CounterMetricFamily("dhashmap_transfer_bytes", "Bytes copied by transfers and repairs, by direction.",
                                      labels=("direction",), unit="bytes")
    moved_bytes.add_metric(("received",), counters["bytes_received"])
    moved_bytes.add_metric(("sent",), counters["bytes_sent"])
    yield moved_bytes
    yield CounterMetricFamily("dhashmap_handoff_keys_dropped",
                              "Local records removed after every new owner acknowledged them.",
                              counters["keys_handed_off"])
    yield CounterMetricFamily("dhashmap_anti_entropy_rounds", "Anti-entropy rounds run by this node.",
                              counters["anti_entropy_rounds"])
    yield CounterMetricFamily("dhashmap_anti_entropy_keys_repaired",
                              "Records anti-entropy stored on a replica that lacked them or had older ones.",
                              counters["keys_repaired"])
    yield CounterMetricFamily("dhashmap_anti_entropy_conflicts",
                              "Records another replica holds with the same version but different bytes (not copied).",
                              counters["conflicts"])
    yield CounterMetricFamily("dhashmap_index_corrections",
                              "Hash-tree entries the background scrub found not matching the store (lost or "
                              "damaged on disk).", counters["index_corrections"])
    yield GaugeMetricFamily("dhashmap_draining", "1 while this node hands its data over to leave the ring.",
                            1 if rebalance.draining else 0)


# Gossip counters from the SWIM core's stats: metric name suffix and help.
GOSSIP_COUNTERS = {
    "probes": "Direct probes this node started.",
    "probe_failures": "Probes that got no ack, direct or indirect, in their protocol period.",
    "indirect_probes": "Probes that needed ping-req through other members.",
    "nacks_received": "Nacks from helpers that could not reach a probe's target (Lifeguard).",
    "suspicions": "Members this node started to suspect.",
    "refutations": "Times this node refuted a suspicion or death of itself (raised its incarnation).",
    "dead_declared": "Members this node declared dead after their suspicion timed out.",
    "packets_sent": "Gossip datagrams sent.",
    "packets_received": "Gossip datagrams received.",
    "bytes_sent": "Gossip datagram bytes sent.",
    "bytes_received": "Gossip datagram bytes received.",
    "decode_errors": "Gossip packets and streams dropped because they did not decode.",
    "auth_failures": "Gossip packets and streams dropped because no installed key opened them (or they "
                     "were plaintext on an encrypted node, or the other way round).",
    "push_pulls": "Full state syncs over TCP, served and started.",
    "stream_failures": "State syncs this node started that failed.",
}


class _DiscoveryCollector(Collector):
    """A registry (etcd, Consul) as the membership source: reachable or not, and errors."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator:
        membership = getattr(self._node, "membership", None)
        if membership is None or not hasattr(membership, "problems"):
            return
        yield GaugeMetricFamily("dhashmap_discovery_healthy",
                                "1 when the membership registry answered our last request, 0 when it did not "
                                "(the node keeps its last known members).", 0 if membership.problems() else 1)
        yield CounterMetricFamily("dhashmap_discovery_errors", "Failed requests to the membership registry.",
                                  membership.errors)


class _GossipCollector(Collector):
    """SWIM's counters, health score and queue, read from the membership service when scraped."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator:
        membership = getattr(self._node, "membership", None)
        core = getattr(membership, "core", None)
        if core is None:
            return
        for key, help_text in GOSSIP_COUNTERS.items():
            yield CounterMetricFamily(f"dhashmap_gossip_{key}", help_text, core.stats.get(key, 0))
        yield GaugeMetricFamily("dhashmap_gossip_health_score",
                                "Lifeguard local health: 0 is healthy; each point slows probing and widens "
                                "timeouts.", core.health_score)
        yield GaugeMetricFamily("dhashmap_gossip_queue_depth", "Updates waiting to be gossiped.", core.queue_depth)
        yield GaugeMetricFamily("dhashmap_gossip_incarnation", "This node's own incarnation number.",
                                core.incarnation)
        sizes = HistogramMetricFamily("dhashmap_gossip_packet_bytes", "Sizes of gossip datagrams.",
                                      labels=("direction",))
        for direction, counts in membership.packet_sizes.items():
            buckets, total = [], 0
            for bound, count in zip(membership.PACKET_BUCKETS, counts, strict=True):
                total += count
                buckets.append((str(bound), total))
            buckets.append(("+Inf", total))
            sizes.add_metric((direction,), buckets, membership.packet_size_sums[direction])
        yield sizes


class _Families(Collector):
    def __init__(self, families: Callable[[], Iterator]) -> None:
        self._families = families

    def collect(self) -> Iterator:
        return self._families()


class RequestStats:
    """Requests answered, by operation and status, and their latency: a counter and a histogram.

    The counts are plain integers, turned into Prometheus families when scraped.  A
    prometheus_client ``Counter`` and ``Histogram`` take a lock on every update (about 1 µs
    for the pair), a few per cent of a native-protocol GET; here an update is two dict
    lookups and a bisect.  Updated by one thread (the reactor's) unless ``locked``: the gRPC
    API's handlers run on grpc's own thread, and the scrape on the reactor's.

    ``requests`` and ``latency`` are the two collectors (``<name>s`` with labels
    ``(label, "code")``, ``<name>_duration_seconds`` with ``(label,)``).
    """

    def __init__(self, name: str, what: str, label: str, codes: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 locked: bool = False) -> None:
        self.name, self.what, self.label, self.codes = name, what, label, codes
        self.buckets = buckets
        self._lock = threading.Lock() if locked else None
        self._counts: dict[tuple[str, object], int] = {}
        self._latency: dict[str, list] = {}  # op -> per bucket (and +Inf) counts, then the sum
        self.requests = _Families(self._count_families)
        self.latency = _Families(self._latency_families)
        # observe(op, code, seconds): one call on the hot path when no lock is needed.
        self.observe: Callable[[str, object, float], None] = self._observe if self._lock is None else self._locked

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.requests)
        registry.register(self.latency)

    def _locked(self, op: str, code: object, seconds: float) -> None:
        assert self._lock is not None
        with self._lock:
            self._observe(op, code, seconds)

    def _observe(self, op: str, code: object, seconds: float) -> None:
        key = (op, code)
        self._counts[key] = self._counts.get(key, 0) + 1
        counts = self._latency.get(op)
        if counts is None:
            counts = self._latency[op] = [0] * (len(self.buckets) + 1) + [0.0]
        counts[bisect_left(self.buckets, seconds)] += 1  # the first bucket whose bound is >= seconds
        counts[-1] += seconds

    def _snapshot(self) -> tuple[dict, dict]:
        if self._lock is None:
            return dict(self._counts), {op: list(c) for op, c in self._latency.items()}
        with self._lock:
            return dict(self._counts), {op: list(c) for op, c in self._latency.items()}

    def _count_families(self) -> Iterator:
        counts, _ = self._snapshot()
        family = CounterMetricFamily(f"{self.name}s", f"{self.what} answered, by {self.label} and {self.codes}.",
                                     labels=(self.label, "code"))
        for (op, code), n in sorted(counts.items(), key=lambda item: (item[0][0], str(item[0][1]))):
            family.add_metric((op, str(code)), n)
        yield family

    def _latency_families(self) -> Iterator:
        _, latency = self._snapshot()
        family = HistogramMetricFamily(f"{self.name}_duration_seconds",
                                       f"Time from a request's arrival to its answer, by {self.label}.",
                                       labels=(self.label,))
        for op, counts in sorted(latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=False):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric((op,), buckets, counts[-1])
        yield family


class NodeMetrics:
    def __init__(self, engine: IStorageEngine, process: bool = True, cluster: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # REST (the names predate the other APIs), the native protocol's client requests, gRPC calls.
        self.rest = RequestStats("dhashmap_request", "Client requests (REST)", "op", "HTTP status code")
        self.native = RequestStats("dhashmap_native_request", "Client requests over the native protocol", "op",
                                   "result (ok or the error code of the answer)")
        self.grpc = RequestStats("dhashmap_grpc_request", "gRPC calls", "method", "gRPC status code", locked=True)
        for stats in (self.rest, self.native, self.grpc):
            stats.register(self.registry)
        self.requests, self.latency = self.rest.requests, self.rest.latency
        self.registry.register(_StorageCollector(engine))
        if cluster is not None:
            self.registry.register(_ClusterCollector(cluster))
            self.registry.register(_GossipCollector(cluster))
            self.registry.register(_DiscoveryCollector(cluster))
        if process:
            ProcessCollector(registry=self.registry)
        self.observe = self.rest.observe  # REST: op, HTTP status code, seconds

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
