"""A one-node coordinator stack with no network, for unit tests of the layers above it."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from twisted_dhm.cluster.coordinator import Coordinator
from twisted_dhm.cluster.replica import LocalReplica
from twisted_dhm.cluster.replicas import Replicas
from twisted_dhm.cluster.routing import Routing
from twisted_dhm.membership import Member, MembershipView
from twisted_dhm.storage import IStorageEngine
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.versions import HybridLogicalClock


def single_node_coordinator(engine: IStorageEngine, clock: IReactorTime, node_id: str = "n1",
                            hints: IStorageEngine | None = None) -> Coordinator:
    hlc = HybridLogicalClock(clock)
    view = MembershipView(Member(node_id, "127.0.0.1", 7000))
    routing = Routing(view, partitions=64, replicas=3)
    replica = LocalReplica(engine, hints if hints is not None else MemoryEngine(), hlc)
    return Coordinator(node_id, Replicas(node_id, replica, None), routing, clock, hlc)
