"""The composition root: builds one node's services from injected parts.

Everything that touches the outside world is handed in: the reactor (clock and
threads), the network (every socket), the random source and the storage
engines.  The daemon passes the real ones; tests and the simulator pass
``task.Clock``, a ``MemoryNetwork``, a seeded ``Random`` and memory engines.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater

from twisted_dhm import __version__, logs
from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.cluster.coordinator import Coordinator
from twisted_dhm.cluster.handler import PeerHandler
from twisted_dhm.cluster.handoff import HintedHandoff
from twisted_dhm.cluster.index import IndexedEngine
from twisted_dhm.cluster.reaper import Reaper
from twisted_dhm.cluster.rebalance import Rebalancer
from twisted_dhm.cluster.replica import LocalReplica
from twisted_dhm.cluster.replicas import Replicas
from twisted_dhm.cluster.routing import Routing
from twisted_dhm.config import Config
from twisted_dhm.membership import ALIVE, LEFT, Member, MembershipView
from twisted_dhm.membership.static import StaticMembership
from twisted_dhm.network import INetwork, TCPNetwork
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.pool import PeerPool
from twisted_dhm.peer.protocol import LocalIdentity, PeerFactory, PeerProtocol
from twisted_dhm.storage import IStorageEngine, StorageError
from twisted_dhm.storage.lastalive import LastAlive
from twisted_dhm.storage.lmdb_engine import LMDBEngine
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.versions import HybridLogicalClock

log = logs.logger("dhashmap.node")

# Room for the largest value plus the frame's own fields.
FRAME_OVERHEAD = 1024 * 1024


def make_engines(config: Config, reactor: Any) -> tuple[IStorageEngine, IStorageEngine]:
    """The record store and the hint store."""
    if config.storage == "memory":
        return MemoryEngine(), MemoryEngine()
    return (
        LMDBEngine(config.data_dir, reactor, map_size=config.lmdb_map_size, commit_in=config.lmdb_commit),
        LMDBEngine(os.path.join(config.data_dir, "hints"), reactor, map_size=config.lmdb_map_size),
    )


class StoreService(Service):
    """Opens the engines on start; on stop, lets queued writes land, then closes them."""

    name = "store"

    def __init__(self, *engines: IStorageEngine) -> None:
        self.engines = engines

    def startService(self) -> None:
        try:
            for engine in self.engines:
                engine.open()
        except StorageError as e:
            # A clear line, not a traceback: this is the operator's to fix.
            raise SystemExit(f"dhashmap: cannot start: {e}") from None
        super().startService()

    def stopService(self) -> Deferred:
        super().stopService()
        return gatherResults([engine.close() for engine in self.engines], consumeErrors=True)


class ListenService(Service):
    """Listens on the injected network while running."""

    def __init__(self, name: str, network: INetwork, host: str, port: int, factory: Factory,
                 on_stop: Any = None) -> None:
        self.name = name
        self.network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.on_stop = on_stop
        self.listening: IListeningPort | None = None

    def startService(self) -> None:
        try:
            self.listening = self.network.listen(self.host, self.port, self.factory)
        except CannotListenError as e:
            # A clear line, not a traceback, and no node running without its listener.
            raise SystemExit(f"dhashmap: cannot start: cannot listen on {self.host}:{self.port} "
                             f"({self.name}): {e.socketError}") from None
        super().startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.on_stop is not None:
            self.on_stop()
        if self.listening is not None:
            port, self.listening = self.listening, None
            return port.stopListening()
        return None


class DhashmapNode(MultiService):
    """One node: ``store``, ``peer``, ``membership``, ``handoff``, ``reaper``, ``rest`` (started in that order)."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        rng: random.Random,
        network: INetwork | None = None,
        engines: tuple[IStorageEngine, IStorageEngine] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.rng = rng
        self.network = network if network is not None else TCPNetwork(reactor)
        engine, self.hints = engines if engines is not None else make_engines(config, reactor)
        # Every record write also updates the per-partition hash trees that data movement uses.
        self.engine = IndexedEngine(engine, config.partitions)
        self.hlc = HybridLogicalClock(reactor)

        local = Member(config.node_id, config.advertise, config.peer_port, config.port, ALIVE, config.weight,
                       __version__, grpc_port=config.grpc_port)
        self.view = MembershipView(local)
        self.routing = Routing(self.view, config.partitions, config.replicas, clock=reactor,
                               rereplicate_after=config.rereplicate_after)
        self.replica = LocalReplica(self.engine, self.hints, self.hlc)
        identity = LocalIdentity(
            cluster=config.cluster, node_id=config.node_id, role=pb.ROLE_PEER, host=config.advertise,
            peer_port=config.peer_port, rest_port=config.port, grpc_port=config.grpc_port, weight=config.weight,
            software_version=__version__, partitions=config.partitions,
        )
        max_frame = config.max_value_size + config.max_key_size + FRAME_OVERHEAD
        self.pool = PeerPool(
            self.network, reactor, rng, identity, address_of=self._address_of,
            connect_timeout=config.request_timeout, request_timeout=config.request_timeout, max_frame=max_frame,
        )
        # A batch of replica writes must fit in one frame: at most what one record may carry.
        batch_bytes = min(4 * 1024 * 1024, config.max_value_size + config.max_key_size)
        self.replicas = Replicas(config.node_id, self.replica, self.pool, clock=reactor,
                                 max_batch_bytes=batch_bytes)
        self.coordinator = Coordinator(config.node_id, self.replicas, self.routing, reactor, self.hlc,
                                       config.sloppy_quorum)
        handler = PeerHandler(self.replica, self.coordinator, config.max_key_size, config.max_value_size)
        self.pool.handler = handler

        if config.storage == "lmdb":
            # First: a directory away longer than the tombstone grace must not rejoin as it is.
            self.last_alive = LastAlive(config.data_dir, reactor, config.tombstone_grace)
            self.last_alive.setServiceParent(self)
        self.store = StoreService(self.engine, self.hints)
        self.store.setServiceParent(self)

        peer_factory = PeerFactory(identity, reactor, handler, max_frame, config.request_timeout,
                                   on_connection=self._inbound)
        self.peer = ListenService("peer", self.network, config.bind, config.peer_port, peer_factory,
                                  on_stop=self.pool.close)
        self.peer.setServiceParent(self)

        self.membership = self._make_membership(config, reactor, rng)
        self.membership.setServiceParent(self)

        self.handoff = HintedHandoff(self.replica, self.view, self.replicas, reactor, config.handoff_interval,
                                     routing=self.routing)
        self.handoff.setServiceParent(self)

        self.reaper = Reaper(self.engine, reactor, grace=config.tombstone_grace)
        self.reaper.setServiceParent(self)

        self.rebalance = Rebalancer(
            config.node_id, self.view, self.routing, self.replica, self.engine, self.replicas, self.pool, reactor,
            rate=config.handoff_rate, anti_entropy_interval=config.anti_entropy_interval,
            tombstone_grace=config.tombstone_grace, request_timeout=max(config.request_timeout, 5.0),
        )
        self.rebalance.setServiceParent(self)
        handler.sync = self.rebalance
        handler.on_leave = self._member_left
        handler.status = self.node_status
        self._identity = identity
        self._peer_factory = peer_factory
        # Called once a drain asked for over the API is complete (the daemon stops its reactor).
        self.after_drain: Any = None
        self._exit_asked = False

        self.metrics = NodeMetrics(self.engine, cluster=self)
        peer_factory.observe = self.metrics.native.observe  # clients' get/put/delete on the peer port
        limits = Limits(config.max_key_size, config.max_value_size)
        self.site = build_site(
            self.coordinator, self.metrics, reactor, limits, config.http_idle_timeout,
            config.node_id, is_ready=self.is_ready, cluster=self, access_log=config.access_log,
        )
        self.rest = ListenService("rest", self.network, config.bind, config.port, self.site)
        self.rest.setServiceParent(self)

        self.grpc: Any = None
        if config.grpc_port:
            # Imported only when wanted: grpcio is large, and the simulator never listens on it.
            from twisted_dhm.api.grpc_api import GrpcService

            self.grpc = GrpcService(self, reactor, config.bind, config.grpc_port, config.max_key_size,
                                    config.max_value_size)
            self.grpc.setServiceParent(self)

        if config.manhole is not None:
            from twisted_dhm.api.manhole import HOST_KEY_FILE, ManholeService, admin_namespace

            # The SSH host key is kept beside the data, so clients see the same key after a restart.
            host_key = os.path.join(config.data_dir, HOST_KEY_FILE) if config.storage == "lmdb" else None
            self.manhole = ManholeService(config.manhole, config.manhole_keys, lambda: admin_namespace(self),
                                          self.network, host_key)
            self.manhole.setServiceParent(self)

    def _make_membership(self, config: Config, reactor: Any, rng: random.Random) -> Service:
        if config.discovery == "swim":
            # Imported here: the static world need not load the gossip code (or cryptography).
            from twisted_dhm.membership.swim.config import SwimConfig
            from twisted_dhm.membership.swim.service import KEYRING_FILE, GossipError, SwimMembership, encode_meta

            swim_config = SwimConfig.profile(
                config.gossip_profile,
                probe_interval=config.gossip_probe_interval, probe_timeout=config.gossip_probe_timeout,
                indirect_checks=config.gossip_indirect_checks, suspicion_mult=config.gossip_suspicion_mult,
                retransmit_mult=config.gossip_retransmit_mult, gossip_interval=config.gossip_interval,
                gossip_nodes=config.gossip_nodes, push_pull_interval=config.gossip_push_pull_interval,
                mtu=config.gossip_mtu, lifeguard=config.gossip_lifeguard,
            )
            meta = encode_meta(config.peer_port, config.port, config.weight, __version__, config.grpc_port)
            keyring_path = os.path.join(config.data_dir, KEYRING_FILE) if config.storage == "lmdb" else None
            self.view.upsert(attrs.evolve(self.view.local, gossip_port=config.gossip_port))
            try:
                return SwimMembership(
                    self.view, self.network, reactor, rng, swim_config, config.bind, config.advertise,
                    config.gossip_port, config.seed_nodes, meta, config.gossip_keys, keyring_path,
                )
            except GossipError as e:
                raise SystemExit(f"dhashmap: cannot start: {e}") from None
        if config.discovery == "etcd":
            from twisted_dhm.httpclient import TLSFiles
            from twisted_dhm.membership.etcd import EtcdGateway, EtcdMembership

            tls = TLSFiles(config.etcd_ca_file or None, config.etcd_cert_file or None, config.etcd_key_file or None)
            gateway = EtcdGateway(self.network, reactor, config.etcd_endpoints, config.request_timeout,
                                  config.etcd_username or None, config.etcd_password or None, tls)
            return EtcdMembership(
                self.view, self.pool, reactor, rng, gateway, config.etcd_prefix, config.etcd_ttl,
                config.etcd_poll_interval, self._member_record(), config.health_interval, config.health_timeout,
                config.health_threshold,
            )
        if config.discovery == "consul":
            from twisted_dhm.httpclient import TLSFiles
            from twisted_dhm.membership.consul import ConsulAgent, ConsulMembership

            agent = ConsulAgent(self.network, reactor, config.consul_addr, config.request_timeout,
                                config.consul_token or None, TLSFiles(config.consul_ca_file or None))
            return ConsulMembership(
                self.view, self.pool, reactor, rng, agent, config.consul_service, config.cluster, config.consul_ttl,
                self._member_record(), config.health_interval, config.health_timeout, config.health_threshold,
            )
        return StaticMembership(
            self.view, self.pool, reactor, config.seed_nodes, config.health_interval, config.health_timeout,
            config.health_threshold,
        )

    def _member_record(self) -> Any:
        """What this node publishes about itself in a registry (etcd, Consul)."""
        from twisted_dhm.membership.registry import MemberRecord

        c = self.config
        return MemberRecord(c.node_id, c.advertise, c.peer_port, c.port, c.weight, __version__,
                            int(self.reactor.seconds() * 1000))

    def _address_of(self, node_id: str) -> tuple[str, int] | None:
        member = self.view.get(node_id)
        return None if member is None else (member.host, member.peer_port)

    def _inbound(self, protocol: PeerProtocol) -> None:
        def hello(msg: pb.Hello) -> None:
            peer = protocol.transport.getPeer()
            self.membership.introduce(msg, getattr(peer, "host", ""))

        protocol.when_ready().addCallbacks(hello, lambda _: None)

    def is_ready(self) -> bool:
        return self.running and self.store.running and not self.rebalance.draining

    # -- data movement -------------------------------------------------------------------------

    def node_status(self) -> dict:
        """This node's partitions, transfers, hints and repairs (GET /v1/node/status)."""
        status = {"node": self.config.node_id, "state": "draining" if self.rebalance.draining else
                  ("ready" if self.is_ready() else "not_ready")}
        status.update(self.rebalance.status())
        status["hints_queued"] = self.handoff.queued()
        status["hints_delivered"] = self.handoff.delivered
        return status

    def cluster_status(self) -> Deferred:
        """Every member's node_status, asked over the native protocol (GET /v1/cluster/status)."""
        names, asks = [], []
        for member in self.view.members():
            if member.id == self.config.node_id:
                continue
            if not member.routable:
                continue
            names.append(member.id)
            frame = pb.Frame()
            frame.node_status.SetInParent()
            asks.append(self.pool.request(member.id, frame, timeout=self.config.request_timeout).addCallback(
                lambda answer: json.loads(answer.node_status_result.json)))

        def collect(results: list) -> dict:
            nodes = [self.node_status()]
            for name, (ok, value) in zip(names, results, strict=True):
                nodes.append(value if ok else {"node": name, "error": value.getErrorMessage()})
            for member in self.view.members():
                if not member.routable and member.id != self.config.node_id:
                    nodes.append({"node": member.id, "state": member.state})
            nodes.sort(key=lambda n: n["node"])
            return {"node": self.config.node_id, "nodes": nodes}

        return DeferredList(asks, consumeErrors=True).addCallback(collect)

    def _member_left(self, member_id: str) -> None:
        if member_id != self.config.node_id:
            log.info("member {id} is leaving the ring", id=member_id)
            self.view.set_state(member_id, LEFT)

    @inlineCallbacks
    def _announce_leave(self) -> Any:
        """Tell every member this node leaves the ring; from now on it only finishes its work.

        Fires once every member that is up has acknowledged (retrying those that did not): a
        member that missed the news would go on sending this node writes after its last pass.
        """
        identity = attrs.evolve(self._identity, leaving=True)
        self.pool.identity = identity
        self._peer_factory.identity = identity
        leave = getattr(self.membership, "leave", None)
        if leave is not None:
            leave()  # SWIM: the leave also goes out by gossip
        self.view.upsert(attrs.evolve(self.view.local, state=LEFT))
        told: set[str] = set()
        while True:
            members = [m.id for m in self.view.members()
                       if m.id != self.config.node_id and m.routable and m.id not in told]
            if not members:
                return
            tells = []
            for member_id in members:
                frame = pb.Frame()
                frame.leave.node_id = self.config.node_id
                tells.append(self.pool.request(member_id, frame, timeout=self.config.request_timeout))
            results = yield DeferredList(tells, consumeErrors=True)
            acked = {m for m, (ok, _) in zip(members, results, strict=True) if ok}
            told |= acked
            if len(acked) < len(members):
                # Some did not answer (a member going down fails at once while its connection
                # backs off): wait, so that time passes and it is found dead, rather than ask
                # again in this very turn, for ever.
                yield deferLater(self.reactor, 1.0, lambda: None)

    def leave(self) -> Deferred:
        """Drain this node: its data to the next owners, then out of the ring (``dhm leave``).

        Any number of callers may ask; each gets a Deferred that fires when the one drain is done.
        """
        d = self.rebalance.drain(self._announce_leave, self.handoff.hand_over)
        if self.after_drain is not None and not self._exit_asked:
            self._exit_asked = True
            d.addCallback(lambda _: self.after_drain())
        return d

    def stopService(self) -> Deferred:
        if self.config.drain_on_stop and self.running and not self.rebalance.drained:
            log.info("--drain-on-stop: handing this node's data over before stopping")
            d = self.rebalance.drain(self._announce_leave, self.handoff.hand_over)
            return d.addBoth(lambda _: self._stop_services())
        return self._stop_services()

    def _stop_services(self) -> Deferred:
        """gRPC first, until its thread has ended (that thread reads the store directly:
        ``Coordinator.get_now``), then every other service as MultiService stops them."""
        if self.grpc is None or not self.grpc.running:
            return super().stopService()
        return maybeDeferred(self.grpc.stopService).addBoth(lambda _: super(DhashmapNode, self).stopService())

    def startService(self) -> None:
        log.info(
            "node {node_id} starting: REST on {bind}:{port}, native protocol on {bind}:{peer_port}, "
            "storage {storage} at {data_dir}, seeds {seeds}",
            node_id=self.config.node_id, port=self.config.port, bind=self.config.bind,
            peer_port=self.config.peer_port, storage=self.config.storage, data_dir=self.config.data_dir,
            seeds=",".join(f"{h}:{p}" for h, p in self.config.seed_nodes) or "none",
        )
        try:
            super().startService()
        except SystemExit:
            # A child could not start: stop those that did (the store's commit thread
            # would otherwise keep the process from exiting), then exit with the message.
            for service in reversed(list(self)):
                if service.running:
                    service.stopService()
            raise
