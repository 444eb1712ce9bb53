"""Hinted handoff: writes held for a node that was down go home when it is back.

Hints live in their own store, keyed ``<target node> NUL <key>``, so one prefix
scan finds a node's hints.  Each round, for every target that is routable
again, a batch is sent as ordinary replica writes; a hint is removed only after
the target acknowledged it durably, and only if no newer hint replaced it
meanwhile.  A target that fails keeps its hints for the next round.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_dhm.cluster.replica import HINT_SEPARATOR, LocalReplica, split_hint_key
from twisted_dhm.cluster.replicas import ReplicaClient
from twisted_dhm.membership import MembershipView

log = Logger(namespace="dhashmap.handoff")


class HintedHandoff(Service):
    name = "handoff"

    def __init__(self, replica: LocalReplica, view: MembershipView, replicas: ReplicaClient,
                 clock: IReactorTime, interval: float = 1.0, batch: int = 500,
                 batch_bytes: int = 4 * 1024 * 1024) -> None:
        self.replica = replica
        self.view = view
        self.replicas = replicas
        self.interval = interval
        self.batch = batch
        self.batch_bytes = batch_bytes  # keeps a batch inside one native-protocol frame
        self.delivered = 0
        self._busy: set[str] = set()
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def targets(self) -> list[str]:
        """Nodes that have hints waiting here."""
        found, after = [], None
        hints = self.replica.hints
        while True:
            entries = hints.scan(b"", after, 1)
            if not entries:
                return found
            target, _ = split_hint_key(entries[0].key)
            found.append(target)
            after = target.encode() + b"\x01"  # past every "<target>\0..." key

    def queued(self) -> int:
        return self.replica.hints.stats().keys

    def run_once(self) -> Deferred:
        rounds = [self._deliver(t) for t in self.targets() if t not in self._busy and self.view.is_routable(t)]
        if not rounds:
            return succeed(None)

        return gatherResults(rounds, consumeErrors=True).addErrback(lambda _: None)

    def _deliver(self, target: str) -> Deferred:
        hints = self.replica.hints
        prefix = target.encode() + HINT_SEPARATOR
        entries = hints.scan(prefix, None, self.batch)
        batch, size = [], 0
        for entry in entries:
            record = hints.get(entry.key)
            if record is None:
                continue
            if batch and size + len(entry.key) + len(record.value) > self.batch_bytes:
                break  # the rest go next round; a single record always fits a frame
            batch.append((entry.key, record))
            size += len(entry.key) + len(record.value)
        if not batch:
            return succeed(None)
        self._busy.add(target)
        items = [(split_hint_key(hk)[1], record) for hk, record in batch]

        def delivered(_: object) -> Deferred | None:
            removals = [hints.write(hk, None) for hk, record in batch if hints.latest(hk) == record]
            self.delivered += len(batch)
            log.info("handed {n} hinted writes to {target}", n=len(batch), target=target)
            if not removals:
                return None

            return gatherResults(removals, consumeErrors=True)

        def failed(failure: Failure) -> None:
            log.info("hinted handoff to {target} failed, will retry: {e}", target=target,
                     e=failure.getErrorMessage())

        def finished(result: object) -> None:
            self._busy.discard(target)

        d = self.replicas.write(target, items).addCallbacks(delivered, failed)
        d.addBoth(finished)
        return d
