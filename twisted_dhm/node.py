"""The composition root: builds one node's services from injected parts.

Everything that touches the outside world is handed in: the reactor (clock,
threads, listening), the random source and the storage engine.  The daemon
passes the real ones; tests pass ``task.Clock``, a seeded ``Random`` and the
memory engine.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.cluster.coordinator import Coordinator
from twisted_dhm.config import Config
from twisted_dhm.storage import IStorageEngine, StorageError
from twisted_dhm.storage.lmdb_engine import LMDBEngine
from twisted_dhm.storage.memory import MemoryEngine

log = Logger(namespace="dhashmap.node")


def make_engine(config: Config, reactor: Any) -> IStorageEngine:
    if config.storage == "memory":
        return MemoryEngine()
    return LMDBEngine(config.data_dir, reactor, map_size=config.lmdb_map_size)


class StoreService(Service):
    """Opens the engine on start; on stop, lets queued writes land, then closes it."""

    name = "store"

    def __init__(self, engine: IStorageEngine) -> None:
        self.engine = engine

    def startService(self) -> None:
        try:
            self.engine.open()
        except StorageError as e:
            # A clear line, not a traceback: this is the operator's to fix.
            raise SystemExit(f"dhashmap: cannot start: {e}") from None
        super().startService()

    def stopService(self) -> Deferred:
        super().stopService()
        return self.engine.close()


class DhashmapNode(MultiService):
    """One node: ``store`` then ``rest``; later issues add their children here."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        rng: random.Random,
        engine: IStorageEngine | None = None,
        listen: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.rng = rng
        self.engine = engine if engine is not None else make_engine(config, reactor)
        listen = listen or (lambda description: serverFromString(reactor, description))

        self.store = StoreService(self.engine)
        self.store.setServiceParent(self)

        self.coordinator = Coordinator(config.node_id, self.engine, reactor)
        self.metrics = NodeMetrics(self.engine)
        limits = Limits(config.max_key_size, config.max_value_size)
        self.site = build_site(
            self.coordinator, self.metrics, reactor, limits, config.http_idle_timeout,
            config.node_id, is_ready=self.is_ready,
        )
        self.rest = StreamServerEndpointService(listen(config.rest_endpoint()), self.site)
        self.rest.setName("rest")
        self.rest.setServiceParent(self)

    def is_ready(self) -> bool:
        return self.running and self.store.running

    def startService(self) -> None:
        log.info(
            "node {node_id} starting: REST on {endpoint}, storage {storage} at {data_dir}",
            node_id=self.config.node_id, endpoint=self.config.rest_endpoint(),
            storage=self.config.storage, data_dir=self.config.data_dir,
        )
        super().startService()
