"""Prometheus metrics of one node, in a registry of its own.

A registry per node (not prometheus_client's global one) lets a test or the
simulator run many nodes in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from twisted_dhm.membership import STATES
from twisted_dhm.storage import IStorageEngine

OPERATIONS = ("get", "put", "delete", "list")

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


class NodeMetrics:
    def __init__(self, engine: IStorageEngine, process: bool = True, cluster: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dhashmap_requests",
            "Client requests answered, by operation and HTTP status code.",
            ("op", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "dhashmap_request_duration_seconds",
            "Time from a request's arrival to its answer, by operation.",
            ("op",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StorageCollector(engine))
        if cluster is not None:
            self.registry.register(_ClusterCollector(cluster))
            self.registry.register(_GossipCollector(cluster))
            self.registry.register(_DiscoveryCollector(cluster))
        if process:
            ProcessCollector(registry=self.registry)
        # Label children looked up once: .labels() costs more than .observe().
        self._latency = {op: self.latency.labels(op) for op in OPERATIONS}
        self._counts: dict[tuple[str, int], Counter] = {}

    def observe(self, op: str, code: int, seconds: float) -> None:
        self._latency[op].observe(seconds)
        child = self._counts.get((op, code))
        if child is None:
            child = self._counts[(op, code)] = self.requests.labels(op, str(code))
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
