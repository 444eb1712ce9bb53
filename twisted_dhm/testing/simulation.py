"""Whole clusters in one process, on simulated time: the same node code as the daemon.

``SimCluster`` builds real ``DhashmapNode`` objects on one ``task.Clock``, one
seeded ``MemoryNetwork`` (each node sees it from its own host) and memory
engines that survive a node's crash, so a node can be killed and restarted
with its "disk".  Same seed, same run.
"""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twisted_dhm.config import load_config
from twisted_dhm.network import MemoryNetwork
from twisted_dhm.node import DhashmapNode
from twisted_dhm.storage.memory import MemoryEngine

PEER_PORT = 7000
REST_PORT = 8080
GOSSIP_PORT = 7946


def run_for(clock: Clock, seconds: float) -> None:
    """Advance event by event, so work scheduled by a due call runs at its own time."""
    end = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls()]
        if not due or min(due) > end:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


class SimCluster:
    def __init__(self, size: int, seed: int = 0, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # a plausible epoch, for HLC stamps
        self.rng = random.Random(seed)
        self.network = MemoryNetwork(self.clock, random.Random(self.rng.random()))
        self.settings = {
            "health_interval": "0.5", "health_timeout": "0.5", "health_threshold": "3",
            "request_timeout": "1", "handoff_interval": "1", "partitions": "256", **settings,
        }
        self.hosts = [f"node{i}" for i in range(1, size + 1)]
        self.disks = {host: (MemoryEngine(), MemoryEngine()) for host in self.hosts}
        self.nodes: dict[str, DhashmapNode] = {}
        for host in self.hosts:
            self.start(host)

    def config(self, host: str, **overrides: object):  # type: ignore[no-untyped-def]
        settings = {**self.settings, **overrides}
        if settings.get("discovery") == "swim":
            # Gossip joins through one seed: the first node (which seeds itself, harmlessly).
            seeds = f"{self.hosts[0]}:{GOSSIP_PORT}"
        else:
            seeds = ",".join(f"{h}:{PEER_PORT}" for h in self.hosts)
        flags = {"node_id": host, "bind": host, "advertise": host, "port": str(REST_PORT),
                 "peer_port": str(PEER_PORT), "seed_nodes": seeds, "storage": "memory",
                 "gossip_port": str(GOSSIP_PORT), "grpc_port": "0",  # gRPC opens real sockets: not here
                 **{k: str(v) for k, v in settings.items()}}
        return load_config(flags, {})

    def start(self, host: str, **overrides: object) -> DhashmapNode:
        if host not in self.disks:
            self.disks[host] = (MemoryEngine(), MemoryEngine())
            self.hosts.append(host)
        node = DhashmapNode(
            self.config(host, **overrides), reactor=self.clock, rng=random.Random(self.rng.random()),
            network=self.network.as_host(host), engines=self.disks[host],
        )
        node.startService()
        self.nodes[host] = node
        return node

    def crash(self, host: str) -> None:
        """Kill the process: sockets vanish, nothing is flushed; the 'disk' stays."""
        self.network.crash(host)
        node = self.nodes.pop(host)
        for name in ("membership", "handoff"):
            service = node.getServiceNamed(name)
            halt = getattr(service, "halt", None)  # SWIM: no graceful leave from a dead process
            if halt is not None:
                halt()
            else:
                service.stopService()  # its timers die with the process

    def run(self, seconds: float) -> None:
        run_for(self.clock, seconds)

    def result(self, d: Deferred, seconds: float = 10.0) -> object:
        """Run the clock until ``d`` fires; its result, or raise its failure."""
        out: list = []
        d.addBoth(out.append)
        end = self.clock.seconds() + seconds
        while not out and self.clock.seconds() < end:
            self.run(0.01)
        if not out:
            raise AssertionError(f"no result after {seconds}s of simulated time")
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def holders(self, key: bytes) -> set[str]:
        """Nodes whose record store (not hint store) has the key."""
        return {host for host, (engine, _) in self.disks.items() if engine.get(key) is not None}
