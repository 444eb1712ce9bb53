"""Data movement and repair: every key on its N owners, whatever the membership does.

One mechanism serves joining, leaving, failure and drift: a node compares a
partition's hash tree (``index.py``) with another member's, descends only into
the buckets that differ, and copies the records that differ, in the direction
needed.  Records merge by version, as every replica write does, so copying in
any order, twice, or while clients write, converges.

* **Pulling (join, re-replication, return).**  When the partition table gives
  this node a partition it did not own, or a member appears that it has not
  synced with, the partition is *pulling* from those members.  Meanwhile reads
  of its keys also ask them (``LocalReplica.read``), so the new owner answers
  as the old owners would; writes reach it at once.  When every such member
  has been compared and copied from, the partition is complete.
* **Handing off (join, return).**  Records this node holds for a partition it
  no longer owns are pushed to the partition's owners once the table has been
  stable for ``settle`` seconds; when every owner has acknowledged them (they
  hold each record or a newer one), the local copies are removed.
* **Draining (leave).**  ``drain()`` pushes every partition this node holds to
  its owners in the table without this node, tells every member it is leaving
  (``left``: out of their tables), pushes again what arrived meanwhile, and
  only then reports done.
* **Anti-entropy.**  Every ``anti_entropy_interval`` the node compares the
  roots of the partitions it shares with each other owner (one message per
  member) and repairs the ones that differ, in both directions.

All copying goes through one byte-rate limit (``--handoff-rate``), at most
``concurrency`` partitions at a time, so client traffic keeps its share.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.cluster.index import BUCKETS, IndexedEngine
from twisted_dhm.cluster.reaper import reclaimable_since
from twisted_dhm.cluster.replica import LocalReplica
from twisted_dhm.cluster.replicas import Replicas
from twisted_dhm.cluster.routing import Routing
from twisted_dhm.membership import DEAD, LEFT, Member, MembershipView
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.ring import PartitionTable
from twisted_dhm.storage import Record
from twisted_dhm.storage.interface import CorruptRecord, encode_record

log = logs.logger("dhashmap.rebalance")

KEYS_PAGE = 2000  # keys (with digests) per TreeKeys answer
KEYS_PAGE_BYTES = 1 << 20  # and about this many bytes of keys
CHUNK_KEYS = 20  # records per copy request: small, so no reactor turn is long (100 measured worse)
CHUNK_BYTES = 64 << 10
SCRUB_KEYS = 1000  # index entries checked against the store per tick
REMOVE_STEP = 50  # handed-off records dropped per reactor turn
SCRUB_STEP = 50  # of them per reactor turn: one step is a few store reads, never a long pause


class RateLimiter:
    """A byte budget per second on the injected clock; ``take(n)`` fires when ``n`` may go."""

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self.clock = clock
        self.rate = float(rate)
        self._credit = 0.0
        self._stamp = clock.seconds()

    def take(self, n: int) -> Deferred:
        now = self.clock.seconds()
        # At most a quarter second of unused budget carries over, so a burst stays short.
        self._credit = min(self.rate / 4, self._credit + (now - self._stamp) * self.rate)
        self._stamp = now
        self._credit -= n
        if self._credit >= 0:
            return succeed(None)
        return deferLater(self.clock, -self._credit / self.rate, lambda: None)


@attrs.define
class Transfer:
    """One partition being copied between this node and a peer."""

    kind: str  # pull, handoff, drain, repair
    partition: int
    peer: str
    started: float
    keys_total: int = 0  # an estimate, from the tree
    keys_done: int = 0
    bytes_done: int = 0

    def to_json(self, now: float) -> dict:
        elapsed = max(now - self.started, 1e-9)
        left = max(self.keys_total - self.keys_done, 0)
        rate = self.keys_done / elapsed
        return {
            "kind": self.kind, "partition": self.partition, "peer": self.peer,
            "keys_done": self.keys_done, "keys_total": self.keys_total, "bytes_done": self.bytes_done,
            "seconds": round(elapsed, 3), "eta_seconds": round(left / rate, 1) if rate > 0 else None,
        }


class SyncError(Exception):
    """A peer's answer did not make sense for the partition compared."""


class Rebalancer(Service):
    name = "rebalance"

    def __init__(self, node_id: str, view: MembershipView, routing: Routing, replica: LocalReplica,
                 engine: IndexedEngine, replicas: Replicas, peers: Any, clock: IReactorTime,
                 rate: float, anti_entropy_interval: float, tombstone_grace: float, tick: float = 1.0,
                 settle: float = 5.0, concurrency: int = 2, request_timeout: float = 10.0) -> None:
        self.node_id = node_id
        self.view = view
        self.routing = routing
        self.replica = replica
        self.engine = engine
        self.replicas = replicas
        self.peers = peers  # request(node_id, frame, timeout=...) -> Deferred (the PeerPool)
        self.clock = clock
        self.limiter = RateLimiter(clock, rate)
        self.anti_entropy_interval = anti_entropy_interval
        self.grace_ms = int(tombstone_grace * 1000)
        self.tick = tick
        self.settle = settle
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.forward_timeout = min(request_timeout, 1.0)
        # partition -> members this node still has to pull it from; read by LocalReplica
        self.pulling: dict[int, set[str]] = {}
        self.owned: frozenset[int] = frozenset()
        self.draining = False
        self.drained = False
        self._drain_waiters: list[Deferred] = []
        self._scrub_partition = 0
        self._scrub_after: bytes | None = None
        self._pulling_answers: dict[str, tuple[float, bool]] = {}  # owner -> (asked at, pulls from us)
        self._scrub_left = 0  # entries of this tick's budget still to check
        self._scrub_call: Any = None
        self.transfers: dict[tuple[str, int, str], Transfer] = {}
        self.counters: Counter[str] = Counter()
        self.last_anti_entropy: dict | None = None
        self._table: PartitionTable | None = None
        self._table_since = clock.seconds()
        self._queue: deque = deque()
        self._queued: set[tuple[str, int, str]] = set()
        self._running = 0
        self._starting = False
        self._asking: set[str] = set()
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = clock
        self._ae_loop = LoopingCall(self.anti_entropy)
        self._ae_loop.clock = clock
        replica.sync = self
        view.subscribe(self._member_changed)

    # -- life cycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._check_table()
        self._loop.start(self.tick, now=False)
        if self.anti_entropy_interval > 0:
            self._ae_loop.start(self.anti_entropy_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._ae_loop):
            if loop.running:
                loop.stop()
        if self._scrub_call is not None and self._scrub_call.active():
            self._scrub_call.cancel()
        self._scrub_call = None
        self._queue.clear()
        self._queued.clear()

    # -- what this node must pull --------------------------------------------------------------

    def sources(self, key: bytes) -> Collection[str]:
        return self.pulling.get(self.engine.index.partition(key), ())

    def remote_read(self, node: str, keys: Sequence[bytes], include_pending: bool) -> Deferred:
        """A read this node forwards while it pulls: bounded by ``forward_timeout``, so a
        member that hangs delays this replica's answers only that long (then it is left out)."""
        d = self.replicas.read(node, keys, include_pending, local_only=True)
        return d.addTimeout(self.forward_timeout, self.clock)

    def _others(self) -> set[str]:
        return {m.id for m in self.view.members() if m.id != self.node_id and m.routable}

    def _check_table(self) -> None:
        table = self.routing.table
        if table is self._table:
            return
        owned = frozenset(table.owned_by(self.node_id))
        gained = owned - self.owned
        others = self._others()
        if gained and others:
            for p in gained:
                self.pulling[p] = set(others)
        for p in self.owned - owned:
            self.pulling.pop(p, None)
        if self._table is not None:
            log.info("partition table changed: this node owns {owned} partitions ({gained} new, {lost} lost)",
                     owned=len(owned), gained=len(gained), lost=len(self.owned - owned))
        self.owned = owned
        self._table = table
        self._table_since = self.clock.seconds()

    def _member_changed(self, view: MembershipView, member: Member, old: Member | None) -> None:
        self._check_table()
        if member.id == self.node_id:
            return
        if member.routable and (old is None or old.state in (DEAD, LEFT)):
            # New, or back: it may hold records this node has not seen (it was an owner
            # before this node knew it, or it took writes on the far side of a partition).
            for p in self.owned:
                self.pulling.setdefault(p, set()).add(member.id)
            if self.running and member.id not in self._asking:
                # Compare at once: usually the trees agree (or it is empty) and this is one round trip.
                self._compare_pulls(member.id)
        elif not member.routable:
            for p in list(self.pulling):
                self._pulled(p, member.id)

    def _pulled(self, partition: int, member: str) -> None:
        members = self.pulling.get(partition)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self.pulling[partition]
            if not self.pulling:
                log.info("every partition of this node is complete")

    # -- the loop ------------------------------------------------------------------------------

    def run_once(self) -> None:
        self._check_table()
        self._scrub_left = SCRUB_KEYS
        if self._scrub_call is None:  # else the last tick's steps are still going: they take this budget
            self._scrub_step()
        for member in sorted({m for members in self.pulling.values() for m in members} - self._asking):
            self._compare_pulls(member)
        if not self.draining and self._stable(3 * self.settle):
            # Later than pulls: a new owner pulls from every holder once the table is stable, so
            # a handoff that starts at the same time copies the same records a second time.
            self._plan_handoffs()

    def _scrub_step(self) -> None:
        """One small step of the tick's scrub, the next one on a later reactor turn."""
        self._scrub_call = None
        step = min(SCRUB_STEP, self._scrub_left)
        self._scrub_left -= step
        self.counters["index_corrections"] += self._scrub(step)
        if self._scrub_left > 0 and self.running:
            self._scrub_call = self.clock.callLater(0, self._scrub_step)

    def _scrub(self, budget: int) -> int:
        """Check ``budget`` more index entries against the store, in a cycle over all partitions.

        The index is built at start and kept by every write through this node; a record lost or
        damaged on disk underneath it (a bad sector, a tool) shows up here, and the partition's
        root then differs from the other replicas', so anti-entropy brings a good copy.
        """
        index = self.engine.index
        fixed = 0
        for _ in range(index.partitions):
            p = self._scrub_partition
            fixed_here, self._scrub_after, budget = self.engine.verify(p, self._scrub_after, budget)
            fixed += fixed_here
            if self._scrub_after is not None:
                return fixed  # budget spent inside this partition
            self._scrub_partition = (p + 1) % index.partitions
            if budget <= 0:
                return fixed
        return fixed

    def _stable(self, seconds: float | None = None) -> bool:
        """The partition table has not changed for ``seconds`` (default ``settle``)."""
        return self.clock.seconds() - self._table_since >= (self.settle if seconds is None else seconds)

    def _compare_pulls(self, member: str) -> None:
        parts = sorted(p for p, members in self.pulling.items() if member in members)
        self._asking.add(member)

        def compared(answer: tuple[list[int], list[int]]) -> None:
            roots, counts = answer
            for p, root, count in zip(parts, roots, counts, strict=True):
                if member not in self.pulling.get(p, ()):
                    continue
                if root == self.engine.index.roots[p] or count == 0:
                    self._pulled(p, member)
                elif self._stable():
                    self._enqueue("pull", p, member, count)
                # else: compared again next tick. While members are still being discovered the
                # table changes several times; copying for a table that lasts a second would
                # move data this node hands on again (reads forward meanwhile).

        def failed(failure: Failure) -> None:
            log.info("could not compare partitions with {member}: {e}", member=member, e=failure.getErrorMessage())

        d = self._roots(member, parts).addCallbacks(compared, failed)
        d.addBoth(lambda _: self._asking.discard(member))

    def _plan_handoffs(self) -> None:
        """Queue a handoff for each partition held here but no longer owned.

        Not for partitions one of whose owners still pulls from this node: their owners are
        asked once per tick (one status request each), and only the others are queued.
        """
        table = self.routing.table
        planned = []
        for p in self.engine.index.held():
            if p in self.owned:
                continue
            peer = ",".join(owners := table.preference_list(p))
            if owners and ("handoff", p, peer) not in self._queued and all(self.view.is_routable(o) for o in owners):
                planned.append((p, owners, peer))
        if not planned:
            return

        def plan(waiting: set[str]) -> None:
            if not self.running:
                return
            for p, owners, peer in planned:
                if not waiting.isdisjoint(owners):
                    self.counters["handoffs_postponed"] += 1
                elif p not in self.owned and self.engine.index.keys[p]:  # the table may have changed meanwhile
                    self._enqueue("handoff", p, peer, len(self.engine.index.keys[p]))

        self._pulling_from_me({o for _, owners, _ in planned for o in owners}).addCallback(
            lambda waiting: plan(set(waiting)))

    # -- jobs ----------------------------------------------------------------------------------

    def _enqueue(self, kind: str, partition: int, peer: str, keys: int) -> None:
        job = (kind, partition, peer)
        if job in self._queued:
            return
        self._queued.add(job)
        self._queue.append((job, keys))
        self._next()

    def _next(self) -> None:
        # Jobs that end at once (a handoff that waits, a peer that cannot be reached) call this
        # again from their own end: the loop already running picks them up, no recursion.
        if self._starting:
            return
        self._starting = True
        try:
            self._start_jobs()
        finally:
            self._starting = False

    def _start_jobs(self) -> None:
        while self._running < self.concurrency and self._queue and self.running:
            job, keys = self._queue.popleft()
            self._running += 1
            kind, partition, peer = job
            transfer = Transfer(kind, partition, peer, self.clock.seconds(), keys_total=keys)
            self.transfers[job] = transfer
            if kind == "pull":
                d = self._sync(peer, partition, transfer, pull=True, push=False)
                d.addCallback(lambda _, p=partition, m=peer: self._pulled(p, m))
            elif kind == "repair":
                d = self._sync(peer, partition, transfer, pull=True, push=True)
            else:  # handoff
                d = self._hand_off(partition, peer.split(","), transfer)

            def finished(result: object, job: tuple = job) -> None:
                self._running -= 1
                self._queued.discard(job)
                self.transfers.pop(job, None)
                if isinstance(result, Failure):
                    log.info("{kind} of partition {p} with {peer} failed, will retry: {e}", kind=job[0], p=job[1],
                             peer=job[2], e=result.getErrorMessage())
                self._next()

            d.addBoth(finished)

    @inlineCallbacks
    def _hand_off(self, partition: int, owners: Sequence[str], transfer: Transfer) -> Any:
        """Push the partition to every owner; then drop what they all acknowledged.

        Not while an owner still pulls from this node: that pull brings it this copy anyway, and
        pushing at the same time would send the same records twice.  ``_plan_handoffs`` does
        not queue those; this checks again for a job that waited in the queue meanwhile.
        """
        waiting = yield self._pulling_from_me(owners)
        if waiting:
            self.counters["handoffs_postponed"] += 1
            log.debug("handoff of partition {p} waits: {owners} still pulling from this node",
                      p=partition, owners=",".join(waiting))
            return
        snapshot = dict(self.engine.index.keys[partition])
        for owner in owners:
            transfer.peer = owner
            yield self._sync(owner, partition, transfer, pull=False, push=True)
        # The owners' trees include writes still waiting for their commit: wait until what they
        # acknowledged is on disk before this copy goes.
        yield self._barrier(owners)
        if partition in self.owned or self.draining:
            return  # the table changed back meanwhile: keep it
        current = self.engine.index.keys[partition]
        items = list(snapshot.items())
        removals = []
        for start in range(0, len(items), REMOVE_STEP):  # a few removals per reactor turn
            if start:
                yield deferLater(self.clock, 0, lambda: None)
            step = [key for key, digest in items[start : start + REMOVE_STEP] if current.get(key) == digest]
            # Dropping a record costs the node about as much as copying it: both share the budget.
            yield self.limiter.take(sum(len(k) + len(b or b"") for k, b in zip(
                step, self.engine.latest_encoded(step), strict=True)))
            if partition in self.owned or self.draining:
                break
            for key in step:
                if current.get(key) == snapshot[key]:  # not written since the push: the owners have this
                    removals.append(self.engine.write(key, None, background=True))
        yield gatherResults(removals, consumeErrors=True)
        self.counters["keys_handed_off"] += len(removals)
        log.info("handed partition {p} ({n} keys) to {owners}", p=partition, n=len(removals), owners=",".join(owners))

    def _pulling_from_me(self, owners: Sequence[str]) -> Deferred:
        """The owners whose status says they still pull from this node (unanswered: not counted).

        An answer is reused for one tick: the handoffs of one tick ask each owner once.
        """
        now = self.clock.seconds()
        asks = []
        for owner in owners:
            if owner == self.node_id:
                continue
            known = self._pulling_answers.get(owner)
            if known is not None and now - known[0] < self.tick:
                asks.append(succeed(owner if known[1] else None))
                continue
            frame = pb.Frame()
            frame.node_status.SetInParent()
            d = self.peers.request(owner, frame, timeout=self.forward_timeout)

            def answered(answer: pb.Frame, owner: str = owner) -> str | None:
                status = json.loads(answer.node_status_result.json)
                # A draining owner is about to leave the table: what it pushed here early (before
                # its leave was announced) stays until it has, rather than going back to it.
                pulling = self.node_id in status.get("pulling_from", ()) or status.get("state") == "draining"
                self._pulling_answers[owner] = (now, pulling)
                return owner if pulling else None

            d.addCallback(answered)
            d.addErrback(lambda _: None)  # an owner that cannot say does not hold the handoff up
            asks.append(d)
        return gatherResults(asks).addCallback(lambda found: [o for o in found if o is not None])

    # -- comparing and copying one partition ---------------------------------------------------

    def _barrier(self, nodes: Iterable[str]) -> Deferred:
        """Fires once each node has made durable every write it had queued (an empty ReplicaPut)."""
        return gatherResults([self.replicas.barrier(node) for node in nodes], consumeErrors=True).addErrback(
            lambda f: f.value.subFailure)

    def _request(self, node: str, frame: pb.Frame) -> Deferred:
        return self.peers.request(node, frame, timeout=self.request_timeout)

    def _roots(self, node: str, partitions: Sequence[int]) -> Deferred:
        frame = pb.Frame()
        frame.tree_roots.partitions.extend(partitions)

        def answered(answer: pb.Frame) -> tuple[list[int], list[int]]:
            result = answer.tree_roots_result
            if len(result.roots) != len(partitions) or len(result.keys) != len(partitions):
                raise SyncError(f"{node} answered {len(result.roots)} roots for {len(partitions)} partitions")
            return list(result.roots), list(result.keys)

        return self._request(node, frame).addCallback(answered)

    @inlineCallbacks
    def _sync(self, peer: str, partition: int, transfer: Transfer, pull: bool, push: bool) -> Any:
        """Copy the records that differ between this node and ``peer`` for one partition."""
        frame = pb.Frame()
        frame.tree_buckets.partition = partition
        answer = yield self._request(peer, frame)
        remote_buckets = list(answer.tree_buckets_result.buckets)
        if len(remote_buckets) != BUCKETS:
            raise SyncError(f"{peer} answered {len(remote_buckets)} buckets, not {BUCKETS}")
        local_buckets = self.engine.index.buckets[partition]
        differ = {b for b in range(BUCKETS) if remote_buckets[b] != local_buckets[b]}
        if not differ:
            return
        remote: dict[bytes, int] = {}
        after: bytes | None = None
        while True:
            frame = pb.Frame()
            frame.tree_keys.partition = partition
            frame.tree_keys.buckets.extend(sorted(differ))
            frame.tree_keys.limit = KEYS_PAGE
            if after is not None:
                frame.tree_keys.after = after
                frame.tree_keys.has_after = True
            answer = yield self._request(peer, frame)
            result = answer.tree_keys_result
            if len(result.keys) != len(result.digests):
                raise SyncError(f"{peer} answered {len(result.keys)} keys with {len(result.digests)} digests")
            remote.update(zip(result.keys, result.digests, strict=True))
            if not result.more or not result.keys:
                break
            after = result.keys[-1]
        local, _ = self.engine.index.bucket_keys(partition, differ, None, 1 << 62)
        mine = dict(local)
        conflicts: set[bytes] = set()
        if pull:
            wanted = [key for key, digest in remote.items() if mine.get(key) != digest]
            transfer.keys_total = max(transfer.keys_total, len(wanted))
            conflicts = yield self._pull(peer, wanted, transfer)
        if push:
            offered = [key for key, digest in mine.items() if remote.get(key) != digest and key not in conflicts]
            transfer.keys_total = max(transfer.keys_total, len(offered))
            yield self._push(peer, offered, transfer)

    def _reclaimable(self, record: Record) -> bool:
        """Past the tombstone grace: the reaper's to remove, not anyone's to copy."""
        since = reclaimable_since(record.tombstone, record.expires_at, record.version.hlc)
        return since is not None and since <= int(self.clock.seconds() * 1000) - self.grace_ms

    @inlineCallbacks
    def _pull(self, peer: str, keys: Sequence[bytes], transfer: Transfer) -> Any:
        """Fetch ``keys`` from ``peer`` and keep what wins; returns the keys in conflict.

        A conflict is the same version with different bytes: no version can say which is
        right (records carry a checksum, so it takes a bug or a forged write), so it is
        counted and logged rather than copied back and forth every round.
        """
        conflicts: set[bytes] = set()
        for start in range(0, len(keys), CHUNK_KEYS):
            chunk = keys[start : start + CHUNK_KEYS]
            records = yield self.replicas.read(peer, chunk, False, local_only=True)
            items = []
            for k, r in zip(chunk, records, strict=True):
                if r is None or self._reclaimable(r):
                    continue
                try:
                    mine = self.engine.latest(k)
                except CorruptRecord:
                    mine = None
                if mine is not None and mine.version == r.version:
                    if encode_record(mine) != encode_record(r):
                        conflicts.add(k)
                        self.counters["conflicts"] += 1
                        log.warn("{key!r}: {peer} has the same version with different bytes; left as it is",
                                 key=k, peer=peer)
                    continue
                items.append((k, r))
            size = sum(len(k) + len(encode_record(r)) for k, r in items)
            yield self.limiter.take(size)
            stored = yield self.replica.apply(items, background=True) if items else succeed(0)
            transfer.keys_done += len(chunk)
            transfer.bytes_done += size
            self.counters["keys_received"] += len(items)
            self.counters["bytes_received"] += size
            if transfer.kind == "repair":
                self.counters["keys_repaired"] += stored
        return conflicts

    @inlineCallbacks
    def _push(self, peer: str, keys: Sequence[bytes], transfer: Transfer) -> Any:
        for items in self._chunks(keys):
            size = sum(len(k) + len(encode_record(r)) for k, r in items)
            yield self.limiter.take(size)
            stored = yield self.replicas.write_counted(peer, items)
            transfer.keys_done += len(items)
            transfer.bytes_done += size
            self.counters["keys_sent"] += len(items)
            self.counters["bytes_sent"] += size
            if transfer.kind == "repair":
                self.counters["keys_repaired"] += stored or 0

    def _chunks(self, keys: Iterable[bytes]) -> Iterable[list[tuple[bytes, Record]]]:
        items: list[tuple[bytes, Record]] = []
        size = 0
        for key in keys:
            try:
                record = self.engine.latest(key)
            except CorruptRecord:
                continue  # a replica will send this node a good copy
            if record is None or self._reclaimable(record):
                continue
            grows = len(key) + len(encode_record(record))
            if items and (len(items) >= CHUNK_KEYS or size + grows > CHUNK_BYTES):
                yield items
                items, size = [], 0
            items.append((key, record))
            size += grows
        if items:
            yield items

    # -- anti-entropy --------------------------------------------------------------------------

    @inlineCallbacks
    def anti_entropy(self) -> Any:
        """One round: compare every shared partition's root with each other owner; repair differences.

        Each pair of owners is compared by the one with the smaller id, in both directions.
        """
        if self.draining:
            return
        started = self.clock.seconds()
        table = self.routing.table
        shared: dict[str, list[int]] = {}
        for p in sorted(self.owned):
            if p in self.pulling:
                continue  # still being pulled: that comparison comes first
            for owner in table.preference_list(p):
                if owner > self.node_id and self.view.is_routable(owner):
                    shared.setdefault(owner, []).append(p)
        compared = differing = 0
        for member, parts in sorted(shared.items()):
            if (yield self._pulling_from_me([member])):
                continue  # its pull from this node compares and copies these partitions already
            try:
                roots, _ = yield self._roots(member, parts)
            except Exception as e:  # noqa: BLE001 - a member that cannot answer now is compared next round
                log.info("anti-entropy with {member} skipped: {e}", member=member, e=e)
                continue
            compared += len(parts)
            for p, root in zip(parts, roots, strict=True):
                if root != self.engine.index.roots[p]:
                    differing += 1
                    self._enqueue("repair", p, member, 0)
        self.counters["anti_entropy_rounds"] += 1
        self.last_anti_entropy = {
            "at": self.clock.seconds(), "partitions_compared": compared, "partitions_differing": differing,
            "members": len(shared), "duration_seconds": round(self.clock.seconds() - started, 4),
        }

    # -- leaving -------------------------------------------------------------------------------

    def drain(self, announce: Any, hand_over_hints: Any) -> Deferred:
        """Hand every partition and hint to the owners without this node, then leave the ring.

        ``announce()`` tells the cluster this node is leaving; ``hand_over_hints(table)`` sends
        the hinted writes held here to their keys' owners in ``table``.  After the announce,
        passes copy what was written here meanwhile until a pass finds nothing new.  Retries,
        without end, a partition whose owners cannot take it yet: a node leaves only once its
        data is elsewhere.  Every caller gets a Deferred that fires when the one drain is done.
        """
        waiter: Deferred = Deferred()
        if self.drained:
            waiter.callback(None)
            return waiter
        self._drain_waiters.append(waiter)
        if not self.draining:
            self.draining = True
            self._drain(announce, hand_over_hints).addBoth(self._drain_finished)
        return waiter

    def _drain_finished(self, result: object) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    @inlineCallbacks
    def _drain(self, announce: Any, hand_over_hints: Any) -> Any:
        log.info("draining: handing every partition to its next owners")
        yield self._push_all("drain")
        yield hand_over_hints(self.routing.table_without(self.node_id))
        yield announce()
        # Writes that were on their way when the others heard: let them land, copy them too,
        # and again until a pass finds nothing new (a bounded number of times).
        for _ in range(10):
            before = list(self.engine.index.roots)
            yield deferLater(self.clock, self.request_timeout, lambda: None)
            yield self._push_all("drain")
            yield hand_over_hints(self.routing.table_without(self.node_id))
            if self.engine.index.roots == before:
                break
        self.drained = True
        log.info("drained: every partition is with its next owners")

    @inlineCallbacks
    def _push_all(self, kind: str) -> Any:
        while True:
            table = self.routing.table_without(self.node_id)
            failures = 0
            for p in self.engine.index.held():
                for owner in table.preference_list(p):
                    transfer = Transfer(kind, p, owner, self.clock.seconds(), len(self.engine.index.keys[p]))
                    job = (kind, p, owner)
                    self.transfers[job] = transfer
                    try:
                        yield self._sync(owner, p, transfer, pull=False, push=True)
                    except Exception as e:  # noqa: BLE001 - retried below, for as long as it takes
                        failures += 1
                        log.info("drain: partition {p} to {owner} failed: {e}", p=p, owner=owner, e=e)
                    finally:
                        self.transfers.pop(job, None)
            if not failures:
                try:
                    # Every owner has what it acknowledged on disk, not only queued.
                    yield self._barrier({o for p in self.engine.index.held() for o in table.preference_list(p)})
                    return
                except Exception as e:  # noqa: BLE001 - the pass is repeated
                    log.info("drain: an owner could not confirm its writes are durable: {e}", e=e)
            yield deferLater(self.clock, self.tick, lambda: None)

    # -- what other members ask ----------------------------------------------------------------

    def tree_roots(self, msg: pb.TreeRoots) -> pb.Frame:
        index = self.engine.index
        answer = pb.Frame()
        result = answer.tree_roots_result
        for p in msg.partitions:
            self._check_partition(p)
            result.roots.append(index.roots[p])
            result.keys.append(len(index.keys[p]))
        return answer

    def tree_buckets(self, msg: pb.TreeBuckets) -> pb.Frame:
        self._check_partition(msg.partition)
        answer = pb.Frame()
        answer.tree_buckets_result.buckets.extend(self.engine.index.buckets[msg.partition])
        return answer

    def tree_keys(self, msg: pb.TreeKeys) -> pb.Frame:
        self._check_partition(msg.partition)
        buckets = set(msg.buckets)
        if any(b >= BUCKETS for b in buckets):
            raise SyncError(f"buckets are numbered 0 to {BUCKETS - 1}")
        limit = min(max(msg.limit, 1), KEYS_PAGE)
        entries, more = self.engine.index.bucket_keys(msg.partition, buckets, msg.after if msg.has_after else None,
                                                      limit)
        answer = pb.Frame()
        result = answer.tree_keys_result
        size = 0
        for key, digest in entries:
            if size > KEYS_PAGE_BYTES:  # long keys: the answer must stay well inside one frame
                more = True
                break
            result.keys.append(key)
            result.digests.append(digest)
            size += len(key) + 12
        result.more = more
        return answer

    def _check_partition(self, p: int) -> None:
        if not 0 <= p < self.engine.index.partitions:
            raise SyncError(f"partition {p} does not exist (0 to {self.engine.index.partitions - 1})")

    # -- what operators see --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Transfers waiting for one of the ``concurrency`` slots."""
        return len(self._queue)

    def status(self) -> dict:
        now = self.clock.seconds()
        index = self.engine.index
        held = set(index.held())
        ae = None
        if self.last_anti_entropy is not None:
            ae = dict(self.last_anti_entropy)
            ae["seconds_ago"] = round(now - ae.pop("at"), 3)
        return {
            "partitions_owned": len(self.owned),
            "partitions_held": len(held),
            "partitions_to_hand_off": len(held - self.owned),
            "partitions_pulling": len(self.pulling),
            "pulling_from": sorted({m for members in self.pulling.values() for m in members}),
            "draining": self.draining,
            "transfers": [t.to_json(now) for t in self.transfers.values()],
            "transfers_queued": self.queued,
            "anti_entropy": {
                "interval_seconds": self.anti_entropy_interval,
                "rounds": self.counters["anti_entropy_rounds"],
                "last_round": ae,
                "keys_repaired": self.counters["keys_repaired"],
            },
            "moved": {k: self.counters[k] for k in ("keys_received", "bytes_received", "keys_sent", "bytes_sent",
                                                     "keys_handed_off")},
        }
