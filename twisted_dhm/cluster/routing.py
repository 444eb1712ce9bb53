"""Where a key's replicas are, given the current members.

The partition table is rebuilt only when the set of members holding partitions
(or their weights) changes; liveness changes only change which of a partition's
nodes are used, never the table.
"""

from __future__ import annotations

import attrs

from twisted_dhm.membership import Member, MembershipView
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
    def __init__(self, view: MembershipView, partitions: int, replicas: int, vnodes: int = 128) -> None:
        self.view = view
        self.partitions = partitions
        self.replicas = replicas
        self.vnodes = vnodes
        self._weights: dict[str, int] = {}
        self.table = PartitionTable({}, partitions, replicas, vnodes)
        self.rebuilds = 0
        # Write plans per (partition, sloppy), valid until the next membership change.
        self._plans: dict[tuple[int, bool], WritePlan] = {}
        self._rebuild()
        view.subscribe(self._changed)

    def _changed(self, view: MembershipView, member: Member, old: Member | None) -> None:
        self._plans.clear()
        if view.ring_weights() != self._weights:
            self._rebuild()

    def _rebuild(self) -> None:
        self._weights = self.view.ring_weights()
        self.table = PartitionTable(self._weights, self.partitions, self.replicas, self.vnodes)
        self.rebuilds += 1

    def preference(self, key: bytes) -> tuple[str, ...]:
        return self.table.preference_list(self.table.partition(key))

    def read_targets(self, key: bytes) -> tuple[int, list[str]]:
        """The key's replica count and those of its preference list that are up."""
        preference = self.preference(key)
        return len(preference), [node for node in preference if self.view.is_routable(node)]

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
