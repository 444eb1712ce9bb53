"""Hinted handoff: writes held for a node that was down go home when it is back.

Hints live in their own store, keyed ``<target node> NUL <key>``, so one prefix
scan finds a node's hints.  Each round, for every target that is routable
again, a batch is sent as ordinary replica writes; a hint is removed only after
the target acknowledged it durably, and only if no newer hint replaced it
meanwhile.  A target that fails keeps its hints for the next round.  Hints for a node that
has left the ring (or been dead past ``--rereplicate-after``) go to their keys' current
owners instead, and a draining node hands every hint over before it exits.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.cluster.replica import HINT_SEPARATOR, LocalReplica, split_hint_key
from twisted_dhm.cluster.replicas import ReplicaClient
from twisted_dhm.cluster.routing import Routing
from twisted_dhm.membership import MembershipView
from twisted_dhm.ring import PartitionTable
from twisted_dhm.storage import Record
from twisted_dhm.storage.interface import CorruptRecord

log = logs.logger("dhashmap.handoff")


class HintedHandoff(Service):
    name = "handoff"

    def __init__(self, replica: LocalReplica, view: MembershipView, replicas: ReplicaClient,
                 clock: IReactorTime, interval: float = 1.0, batch: int = 500,
                 batch_bytes: int = 4 * 1024 * 1024, routing: Routing | None = None) -> None:
        self.replica = replica
        self.view = view
        self.replicas = replicas
        self.routing = routing
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.batch_bytes = batch_bytes  # keeps a batch inside one native-protocol frame
        self.delivered = 0
        self._busy: set[str] = set()
        self._loop = LoopingCall(self._pass)
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

    def _pass(self) -> Deferred:
        # A pass that fails must not end the loop (a LoopingCall stops at its first error).
        return maybeDeferred(self.run_once).addErrback(
            lambda f: log.failure("hinted handoff failed; trying again next pass", f))

    def run_once(self) -> Deferred:
        rounds = []
        for target in self.targets():
            if target in self._busy:
                continue
            if self.view.is_routable(target):
                rounds.append(self._deliver(target))
            elif (self.routing is not None and self.view.get(target) is not None
                  and target not in self.routing.table.nodes):
                # Left, or dead past --rereplicate-after: it will not come back for these
                # keys, so their current owners get them (the hint may be a write's only
                # second copy).  A target not known yet (a node just started) keeps its hints.
                rounds.append(self._redirect(target, self.routing.table))
        if not rounds:
            return succeed(None)

        return gatherResults(rounds, consumeErrors=True).addErrback(lambda _: None)

    def _take(self, target: str) -> list[tuple[bytes, Record]]:
        """The next batch of ``target``'s hints: (hint key, record), at most ``batch_bytes``."""
        hints = self.replica.hints
        prefix = target.encode() + HINT_SEPARATOR
        batch, size = [], 0
        for entry in hints.scan(prefix, None, self.batch):
            try:
                record = hints.get(entry.key)
            except CorruptRecord as e:
                # It cannot be delivered; kept, it would stop every later batch for its target.
                log.warn("hint {key!r} is corrupt and is dropped: {e}", key=entry.key, e=e)
                hints.write(entry.key, None, background=True).addErrback(lambda _: None)
                continue
            if record is None:
                continue
            if batch and size + len(entry.key) + len(record.value) > self.batch_bytes:
                break  # the rest go next round; a single record always fits a frame
            batch.append((entry.key, record))
            size += len(entry.key) + len(record.value)
        return batch

    def _settle(self, target: str, batch: list[tuple[bytes, Record]], sent: Deferred, where: str) -> Deferred:
        """Once ``sent`` fires, remove the batch's hints (those not replaced meanwhile)."""
        hints = self.replica.hints
        self._busy.add(target)

        def delivered(_: object) -> Deferred | None:
            removals = [hints.write(hk, None, background=True) for hk, record in batch if hints.latest(hk) == record]
            self.delivered += len(batch)
            log.info("handed {n} hinted writes for {target} to {where}", n=len(batch), target=target, where=where)
            if not removals:
                return None
            return gatherResults(removals, consumeErrors=True)

        def failed(failure: Failure) -> None:
            log.info("hinted handoff for {target} to {where} failed, will retry: {e}", target=target, where=where,
                     e=failure.getErrorMessage())

        def finished(result: object) -> None:
            self._busy.discard(target)

        return sent.addCallbacks(delivered, failed).addBoth(finished)

    def _deliver(self, target: str) -> Deferred:
        batch = self._take(target)
        if not batch:
            return succeed(None)
        items = [(split_hint_key(hk)[1], record) for hk, record in batch]
        return self._settle(target, batch, self.replicas.write(target, items), target)

    def _redirect(self, target: str, table: PartitionTable) -> Deferred:
        """Move ``target``'s hints elsewhere, keeping each write's copy.

        If ``target`` still owns the keys in ``table`` (it is only down), each hint goes to
        another live node as a hint for it; otherwise the records go, as ordinary writes,
        to every reachable owner of their key in ``table``.
        """
        batch = self._take(target)
        still_owner = target in table.nodes
        sends: dict[tuple[str, str], list[tuple[bytes, Record]]] = {}
        movable = []
        for hk, record in batch:
            key = split_hint_key(hk)[1]
            partition = table.partition(key)
            if still_owner:
                stand_in = next((n for n in table.walk(partition)
                                 if n not in (target, self.view.local_id) and self.view.is_routable(n)), None)
                destinations = [(stand_in, target)] if stand_in is not None else []
            else:
                destinations = [(n, "") for n in table.preference_list(partition)
                                if n != target and (n == self.view.local_id or self.view.is_routable(n))]
            if not destinations:
                continue  # nobody to take it now: kept for a later round
            movable.append((hk, record))
            for destination in destinations:
                sends.setdefault(destination, []).append((key, record))
        if not movable:
            return succeed(None)
        sent = gatherResults([self.replicas.write(node, items, hint_for) for (node, hint_for), items in sends.items()],
                             consumeErrors=True).addErrback(lambda f: f.value.subFailure)
        return self._settle(target, movable, sent, ",".join(sorted({node for node, _ in sends})))

    @inlineCallbacks
    def hand_over(self, table: PartitionTable) -> Any:
        """Every hint held here to its key's owners in ``table`` (a drain): fires when none is left.

        Retries for as long as it takes: a node that leaves must not take a write's copy with it.
        """
        while True:
            targets = [t for t in self.targets() if t not in self._busy]
            if not targets and not self._busy:
                return
            for target in targets:
                if self.view.is_routable(target):
                    yield self._deliver(target)
                else:
                    yield self._redirect(target, table)
            if self.targets():
                yield deferLater(self.clock, self.interval, lambda: None)
