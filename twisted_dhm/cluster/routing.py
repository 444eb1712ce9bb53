"""Where a key's replicas are, given the current members.

The partition table is rebuilt only when the set of members holding partitions
(or their weights) changes; liveness changes only change which of a partition's
nodes are used, never the table.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from twisted_dhm.membership import DEAD, Member, MembershipView
from twisted_dhm.ring import PartitionTable


@attrs.frozen
class WritePlan:
    n: int  # replicas the key has (fewer than --replicas while the cluster is smaller)
    preference: tuple[str, ...]
    targets: tuple[tuple[str, str], ...]  # (node, hint_for): hint_for names the down node it stands in for
    # Down nodes no fallback stands in for (no spare node, or strict quorum): the
    # coordinator keeps a hint for each, which does not count towards w.
    orphans: tuple[str, ...] = ()


class Routing:
    """The partition table of the current members, and each request's replicas.

    A member that is ``dead`` keeps its partitions (writes for it go to fallbacks as
    hints) for ``rereplicate_after`` seconds; after that the table is rebuilt without
    it, so its partitions get new owners that copy them from the surviving replicas.
    """

    def __init__(self, view: MembershipView, partitions: int, replicas: int, vnodes: int = 128,
                 clock: IReactorTime | None = None, rereplicate_after: float | None = None) -> None:
        self.view = view
        self.partitions = partitions
        self.replicas = replicas
        self.vnodes = vnodes
        self.clock = clock
        self.rereplicate_after = rereplicate_after if clock is not None else None
        self._dead_since: dict[str, float] = {}
        self._weights: dict[str, int] = {}
        self.table = PartitionTable({}, partitions, replicas, vnodes)
        self.rebuilds = 0
        # Write plans per (partition, sloppy) and read targets per partition, valid until the
        # next membership change.
        self._plans: dict[tuple[int, bool], WritePlan] = {}
        self._reads: dict[int, tuple[int, tuple[str, ...]]] = {}
        self._rebuild()
        view.subscribe(self._changed)

    def _changed(self, view: MembershipView, member: Member, old: Member | None) -> None:
        self._plans.clear()
        self._reads = {}
        if member.state == DEAD:
            if member.id not in self._dead_since and self.clock is not None:
                self._dead_since[member.id] = self.clock.seconds()
                if self.rereplicate_after is not None:
                    self.clock.callLater(self.rereplicate_after, self._recheck)
        else:
            self._dead_since.pop(member.id, None)
        self._recheck()

    def _recheck(self) -> None:
        if self.ring_weights() != self._weights:
            self._plans.clear()
            self._rebuild()
            self._reads = {}  # after the new table: see read_targets

    def ring_weights(self, without: str | None = None) -> dict[str, int]:
        """Members that hold partitions: not ``left``, not dead for longer than ``rereplicate_after``."""
        weights = self.view.ring_weights()
        if self.rereplicate_after is not None:
            now = self.clock.seconds()  # type: ignore[union-attr]
            for member_id, since in self._dead_since.items():
                if now - since >= self.rereplicate_after:
                    weights.pop(member_id, None)
        if without is not None:
            weights.pop(without, None)
        return weights

    def table_without(self, member_id: str) -> PartitionTable:
        """The table once ``member_id`` has left: where a draining node's data goes."""
        return PartitionTable(self.ring_weights(without=member_id), self.partitions, self.replicas, self.vnodes)

    def _rebuild(self) -> None:
        self._weights = self.ring_weights()
        self.table = PartitionTable(self._weights, self.partitions, self.replicas, self.vnodes)
        self.rebuilds += 1

    def preference(self, key: bytes) -> tuple[str, ...]:
        return self.table.preference_list(self.table.partition(key))

    def read_targets(self, key: bytes) -> tuple[int, tuple[str, ...]]:
        """The key's replica count and those of its preference list that are up.

        Safe to call from another thread (gRPC's reads): the cache is replaced, not cleared,
        after each change of members or table, so an answer worked out from what was there
        before can only land in a cache that is no longer read.
        """
        reads = self._reads
        table = self.table
        partition = table.partition(key)
        targets = reads.get(partition)
        if targets is None:
            preference = table.preference_list(partition)
            targets = reads[partition] = (
                len(preference), tuple(node for node in preference if self.view.is_routable(node)))
        return targets

    def write_plan(self, key: bytes, sloppy: bool = True) -> WritePlan:
        """Preference nodes that are up, plus (sloppy) fallbacks holding hints for those that are not."""
        partition = self.table.partition(key)
        plan = self._plans.get((partition, sloppy))
        if plan is None:
            plan = self._plans[(partition, sloppy)] = self._plan(partition, sloppy)
        return plan

    def _plan(self, partition: int, sloppy: bool) -> WritePlan:
        preference = self.table.preference_list(partition)
        targets = [(node, "") for node in preference if self.view.is_routable(node)]
        missing = [node for node in preference if not self.view.is_routable(node)]
        if sloppy and missing:
            for node in self.table.walk(partition):
                if not missing:
                    break
                if node not in preference and self.view.is_routable(node):
                    targets.append((node, missing.pop(0)))
        return WritePlan(len(preference), preference, tuple(targets), tuple(missing))
