"""The coordinator: any node takes any client operation and runs it on the key's replicas.

* **Reads** go to every reachable node of the key's preference list and are
  answered after ``r`` of them reply; the newest version wins (vector clock,
  then HLC).  When all have replied, the ones that returned something older or
  nothing get the winner (read repair), after the client has its answer.
* **Writes** get a new version and go to the preference list; a node that is
  down is stood in for by the next healthy node on the ring, which keeps the
  write as a hint (sloppy quorum) unless the request asks for strict quorum.
  The answer comes after ``w`` durable acknowledgements.
* **Versions.**  An unconditional write through a node that holds the key
  builds on that node's newest version: one round trip, and concurrent writes
  resolve last-writer-wins by HLC, as in Cassandra.  A conditional write
  (``If-Match``/``If-None-Match``), one through a node that is not a replica of
  the key, or one whose local replica has nothing for it, first reads a quorum and
  builds on everything it saw, so the precondition is checked against the
  quorum's newest version.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.cluster.replica import UNKNOWN
from twisted_dhm.cluster.replicas import ReplicaClient
from twisted_dhm.cluster.routing import Routing, WritePlan
from twisted_dhm.errors import InvalidRequest, KVError, PreconditionFailed, Unavailable
from twisted_dhm.storage import Record, RecordView, ScanEntry
from twisted_dhm.storage.interface import encode_record
from twisted_dhm.versions import HybridLogicalClock, Version, b64url_decode

log = logs.logger("dhashmap.coordinator")

ANY = "*"
"""A precondition that matches any existing value (``If-Match: *``)."""
LATER = object()
"""``get_now``: the answer needs other replicas (use ``get``)."""
MAX_SCAN = 40_000  # entries one replica examines for one listing page (replicas cap requests here)
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""The longest time to live a write may ask for (ten years), whichever API it came through."""

Match = None | str | Sequence[Version]
LEVELS = ("one", "quorum", "all")


@attrs.frozen
class Precondition:
    """HTTP-style conditions on the current value of a key.

    ``if_match``: ``None`` (no condition), ``ANY`` (the key must exist) or the
    versions of which the current one must be one.  ``if_none_match``: ``ANY``
    (the key must not exist) or versions the current one must not be.
    """

    if_match: Match = None
    if_none_match: Match = None

    def check(self, current: Record | None) -> None:
        if self.if_match is not None:
            if current is None:
                raise PreconditionFailed("If-Match: the key does not exist")
            if self.if_match != ANY and current.version not in self.if_match:
                raise PreconditionFailed("If-Match: the current version is a different one")
        if self.if_none_match is not None and current is not None:
            if self.if_none_match == ANY:
                raise PreconditionFailed("If-None-Match: the key already exists")
            if current.version in self.if_none_match:
                raise PreconditionFailed("If-None-Match: the current version matches")


NO_CONDITION = Precondition()


@attrs.frozen
class WriteResult:
    version: Version
    created: bool  # for a put: no live value existed before; for a delete: nothing was there


@attrs.frozen
class Page:
    keys: list[bytes]
    cursor: str | None


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> bytes:
    try:
        return b64url_decode(cursor)
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not one this server handed out") from None


def parse_level(raw: str | None, name: str) -> str | int | None:
    """``one``, ``quorum``, ``all`` or a positive count; ``None`` for the default (quorum)."""
    if raw is None or raw == "":
        return None
    if raw in LEVELS:
        return raw
    try:
        count = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be one, quorum, all or a number of replicas") from None
    if count < 1:
        raise InvalidRequest(f"{name} must be at least 1")
    return count


def required(level: str | int | None, n: int, name: str) -> int:
    if level is None or level == "quorum":
        return n // 2 + 1
    if level == "one":
        return 1
    if level == "all":
        return n
    assert isinstance(level, int)
    if level > n:
        raise InvalidRequest(f"{name}={level}, but the key has {n} replicas")
    return level


def newest(records: Iterable[Record | None]) -> Record | None:
    best: Record | None = None
    for record in records:
        if record is not None and (best is None or record.version.wins_over(best.version)):
            best = record
    return best


class _Gather:
    """Answers from several replicas: ``quorum`` fires after ``need`` successes, or fails with
    Unavailable when every replica has answered and too few succeeded (each replica's wait is
    bounded by the request timeout); ``done`` fires when every one is in."""

    def __init__(self, total: int, need: int, what: str) -> None:
        self.total = total
        self.need = need
        self.what = what
        self.answers: dict[str, object] = {}
        self.errors: dict[str, Failure] = {}
        self.quorum: Deferred = Deferred()
        self._done: Deferred | None = None  # made when asked for: a write never waits for all
        if total == 0:
            self._check()

    @property
    def done(self) -> Deferred:
        if self._done is None:
            self._done = Deferred()
            if len(self.answers) + len(self.errors) == self.total:
                self._done.callback(self.answers)
        return self._done

    def add(self, node: str, d: Deferred) -> None:
        d.addCallbacks(self._ok, self._failed, callbackArgs=(node,), errbackArgs=(node,))

    def _ok(self, result: object, node: str) -> None:
        self.answers[node] = result
        self._check()

    def _failed(self, failure: Failure, node: str) -> None:
        self.errors[node] = failure
        if not failure.check(KVError):
            log.debug("{what} on {node} failed: {error}", what=self.what, node=node, error=failure.value)
        self._check()

    def _check(self) -> None:
        complete = len(self.answers) + len(self.errors) == self.total
        if not self.quorum.called:
            if len(self.answers) >= self.need:
                self.quorum.callback(dict(self.answers))
            elif complete:
                # Only once every replica has answered: the error must say exactly how many acked.
                self.quorum.errback(self._unavailable())
        if complete and self._done is not None and not self._done.called:
            self._done.callback(self.answers)

    def _unavailable(self) -> Failure:
        for failure in self.errors.values():
            if failure.check(PreconditionFailed, InvalidRequest):
                return failure
        acks = len(self.answers)
        reasons = "; ".join(f"{node}: {f.getErrorMessage()}" for node, f in sorted(self.errors.items()))
        message = f"{self.what}: {acks} of {self.need} required replicas answered"
        if reasons:
            message += f" ({reasons})"
        return Failure(Unavailable(message, acks=acks, required=self.need))


class Coordinator:
    """Get, put, delete and list on the cluster, from any node."""

    def __init__(self, node_id: str, replicas: ReplicaClient, routing: Routing, clock: IReactorTime,
                 hlc: HybridLogicalClock, sloppy_quorum: bool = True) -> None:
        self.node_id = node_id
        self.replicas = replicas
        self.routing = routing
        self._clock = clock
        self._hlc = hlc
        self.sloppy_quorum = sloppy_quorum
        self.read_repairs = 0
        # key -> fires when the conditional write under way on it has its answer (see _write)
        self._conditional: dict[bytes, Deferred] = {}

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _live(self, record: Record | RecordView | None) -> Record | RecordView | None:
        # (The clock is read only for a record that expires: every read comes through here.)
        if record is None or record.tombstone or (record.expires_at and not record.is_live(self._now_ms())):
            return None
        return record

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: bytes, r: str | int | None = None) -> Deferred:
        """Fires with the live record for ``key`` (a Record, or a RecordView when this node's
        replica alone answered: see ``get_now``) or ``None``."""
        try:
            found = self.get_now(key, r)
        except Exception:  # a bad r, a store that cannot read: a failed Deferred, as from replicas
            return fail()
        if found is not LATER:
            return succeed(found)
        return self._read(key, r).addCallback(lambda found: self._live(found[0]))

    def get_now(self, key: bytes, r: str | int | None = None) -> Record | RecordView | None | object:
        """``get``'s answer in this very call when this node's replica alone is asked (the
        key's only replica that is up, with ``r`` = 1: a one-node cluster), else ``LATER``.
        The answer is a RecordView: its ``value`` and ``token`` are what a client is sent.
        Raises KVError for a bad ``r``, StorageError when the store cannot read.

        It only reads (the routing table, the store's committed records), so gRPC's thread
        may call it too, while the node is running: the store must not close meanwhile.
        """
        n, nodes = self.routing.read_targets(key)
        if len(nodes) != 1 or nodes[0] != self.node_id or (n > 1 if r is None else required(r, n, "r") != 1):
            return LATER  # (r None is a quorum: one replica only when the key has one)
        local = self.replicas.local  # type: ignore[attr-defined]
        if local.sync is not None and local.syncing(key):
            return LATER  # still pulling the key's partition: the sources must be asked too
        return self._live(local.read_one(key))

    def _read(self, key: bytes, r: str | int | None, for_write: bool = False) -> Deferred:
        """Fires with (newest record or None, all versions seen) once ``r`` replicas answered."""
        n, nodes = self.routing.read_targets(key)
        try:
            need = required(r, n, "r")
        except KVError:
            return fail()
        if len(nodes) == 1 and need == 1:  # a single replica: nothing to gather or repair
            return self.replicas.read(nodes[0], [key], for_write).addCallback(
                lambda records: (records[0], [records[0].version] if records[0] else []))
        gather = _Gather(len(nodes), need, "read")
        for node in nodes:
            gather.add(node, self.replicas.read(node, [key], for_write).addCallback(lambda records: records[0]))
        gather.done.addCallback(lambda answers: self._repair(key, answers)).addErrback(
            lambda f: log.failure("read repair of {key!r} failed", f, key=key))
        return gather.quorum.addCallback(
            lambda answers: (newest(answers.values()), [rec.version for rec in answers.values() if rec])
        )

    def _repair(self, key: bytes, answers: dict[str, Record | None]) -> None:
        winner = newest(answers.values())
        if winner is None:
            return
        for node, record in answers.items():
            if record is None or record.version != winner.version:
                self.read_repairs += 1
                self.replicas.write(node, [(key, winner)]).addErrback(
                    lambda f, node=node: log.info("read repair of {node} failed: {e}", node=node,
                                                  e=f.getErrorMessage()))

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, ttl: float | None = None,
            precondition: Precondition = NO_CONDITION, w: str | int | None = None,
            sloppy: bool | None = None) -> Deferred:
        """Fires with a WriteResult once ``w`` replicas have the new version on disk."""
        if ttl is not None and not 0 < ttl <= MAX_TTL_SECONDS:
            return fail(InvalidRequest(f"ttl must be from 1 to {MAX_TTL_SECONDS} seconds"))

        def make(version: Version) -> Record:
            expires_at = 0 if ttl is None else self._now_ms() + max(1, int(ttl * 1000))
            return Record(value, version, tombstone=False, expires_at=expires_at)

        return self._write(key, make, precondition, w, sloppy)

    def delete(self, key: bytes, precondition: Precondition = NO_CONDITION, w: str | int | None = None,
               sloppy: bool | None = None) -> Deferred:
        """Writes a tombstone; fires with a WriteResult (``created``: nothing live was there)."""
        return self._write(key, lambda version: Record(b"", version, tombstone=True), precondition, w, sloppy)

    def _write(self, key: bytes, make, precondition: Precondition, w, sloppy) -> Deferred:  # type: ignore[no-untyped-def]
        if precondition is NO_CONDITION or precondition == NO_CONDITION:
            return self._write_now(key, make, precondition, w, sloppy)
        # Conditional writes of one key through this node go one at a time: the next one's
        # quorum read starts once the one before has its acknowledgements, so two writes with
        # the same If-Match (or two create-only writes) cannot both see the old version.
        previous = self._conditional.get(key)
        mine: Deferred = Deferred()
        self._conditional[key] = mine
        answer: Deferred = Deferred()

        def finished(outcome: object) -> None:
            if self._conditional.get(key) is mine:
                del self._conditional[key]
                mine.callback(None)
            else:
                # The next one starts from the reactor, not from this call: writes that fail at
                # once (no quorum) would otherwise start each other ever deeper in one stack.
                self._clock.callLater(0, mine.callback, None)
            if isinstance(outcome, Failure):
                answer.errback(outcome)
            else:
                answer.callback(outcome)

        def start(_: object = None) -> None:
            maybeDeferred(self._write_now, key, make, precondition, w, sloppy).addBoth(finished)

        if previous is None:
            start()
        else:
            previous.addCallback(start)
        return answer

    def _write_now(self, key: bytes, make, precondition: Precondition, w, sloppy) -> Deferred:  # type: ignore[no-untyped-def]
        plan = self.routing.write_plan(key, self.sloppy_quorum if sloppy is None else sloppy)
        try:
            need = required(w, plan.n, "w")
        except KVError:
            return fail()
        if len(plan.targets) < need:
            return fail(Unavailable(
                f"write: only {len(plan.targets)} replicas can take it, w={need}", acks=0, required=need))

        def replicate(base: tuple[Record | None, list[Version]], current: object = UNKNOWN) -> Deferred:
            previous, seen = base
            live = self._live(previous)
            precondition.check(live)
            record = make(self._next_version(seen))
            result = WriteResult(record.version, created=live is None)
            return self._replicate(key, record, plan, need, current).addCallback(lambda _: result)

        def from_local(records: list[Record | None]) -> Deferred:
            local = records[0]
            if local is None:
                # This replica has nothing: it may have missed the key's writes (or reaped its
                # tombstone), so build on what a quorum has instead, or on as many replicas as
                # the write itself needs, if that is fewer (w=one stays available).
                base_r = min(need, plan.n // 2 + 1)
                return self._read(key, base_r, for_write=True).addCallback(replicate)
            # Read from this node's replica in this very turn: apply need not read it again.
            return replicate((local, [local.version]), local)

        local = self.replicas.local  # type: ignore[attr-defined]
        if precondition == NO_CONDITION and self.node_id in plan.preference:
            if local.syncing(key):
                # This replica is still pulling the key's partition: build on the others, as
                # when it has nothing for the key.
                return self._read(key, min(need, plan.n // 2 + 1), for_write=True).addCallback(replicate)
            try:
                return from_local(local.read_local([key], True))
            except Exception:  # a store that cannot read, a record that cannot be encoded
                return fail()
        # A precondition is checked against a quorum; an unconditional write through a node that
        # is not a replica builds on as many as the write itself needs, if that is fewer.
        base_r = plan.n // 2 + 1 if precondition != NO_CONDITION else min(need, plan.n // 2 + 1)
        return self._read(key, base_r, for_write=True).addCallback(replicate)

    def _next_version(self, seen: list[Version]) -> Version:
        """A version that descends from every version seen, stamped after all of them."""
        if len(seen) == 1:
            base = seen[0]
            self._hlc.observe(base.hlc)
        else:
            base = Version()
            for version in seen:
                self._hlc.observe(version.hlc)
                base = base.merge(version, 0)
        return base.increment(self.node_id, self._hlc.now())

    def _replicate(self, key: bytes, record: Record, plan: WritePlan, need: int,
                   current: object = UNKNOWN) -> Deferred:
        # Encoded now (once, for the disk and every peer): a record that cannot be (its vector
        # clock is full) fails this write alone, not the batch of other writes it would join.
        encode_record(record)
        if len(plan.targets) == 1 and need == 1 and not plan.orphans and plan.targets[0][0] == self.node_id:
            return self.replicas.write(self.node_id, [(key, record)], plan.targets[0][1], current)
        gather = _Gather(len(plan.targets), need, "write")
        for node, hint_for in plan.targets:
            mine = node == self.node_id and not hint_for
            d = self.replicas.write(node, [(key, record)], hint_for, current if mine else UNKNOWN)
            if not hint_for and node != self.node_id:
                d.addErrback(self._hint_on_failure, key, record, node)
            gather.add(node, d)
        for orphan in plan.orphans:
            self.replicas.write(self.node_id, [(key, record)], orphan).addErrback(
                lambda f, orphan=orphan: log.warn("could not keep a hint for {node}: {e}", node=orphan,
                                                  e=f.getErrorMessage()))
        return gather.quorum

    def _hint_on_failure(self, failure: Failure, key: bytes, record: Record, node: str) -> Failure:
        """A replica that did not answer (down before the failure detector noticed) gets a hint."""
        if not failure.check(KVError):
            self.replicas.write(self.node_id, [(key, record)], node).addErrback(
                lambda f: log.warn("could not keep a hint for {node}: {e}", node=node, e=f.getErrorMessage()))
        return failure

    # -- listing -----------------------------------------------------------------------------

    def list(self, prefix: bytes, cursor: str | None, limit: int) -> Deferred:
        """One page of live keys with ``prefix`` in byte order, merged from every member.

        Each member is asked for at most ``4 * limit + 100`` stored entries, so a long
        run of deleted or expired keys cannot make one request scan a whole store; a
        page may then be short, or empty, with a cursor to go on.
        """
        try:
            after = decode_cursor(cursor) if cursor else None
        except InvalidRequest:
            return fail()
        budget = min(4 * limit + 100, MAX_SCAN)
        nodes = [m.id for m in self.routing.view.members() if m.routable]
        gather = _Gather(len(nodes), 1, "list")
        gather.quorum.addErrback(lambda _: None)  # the page is built from `done`, whatever answered
        for node in nodes:
            gather.add(node, maybeDeferred(self.replicas.scan, node, prefix, after, budget))
        return gather.done.addCallback(self._page, limit, budget, len(nodes))

    def _page(self, answers: dict[str, list[ScanEntry]], limit: int, budget: int, asked: int) -> Page:
        if not answers and asked:
            raise Unavailable("list: no member answered", acks=0, required=1)
        best: dict[bytes, ScanEntry] = {}
        horizon: bytes | None = None
        for entries in answers.values():
            for entry in entries:
                seen = best.get(entry.key)
                if seen is None or entry.hlc > seen.hlc:
                    best[entry.key] = entry
            if len(entries) >= budget:  # this member has more: nothing past its last key is complete
                last = entries[-1].key
                horizon = last if horizon is None or last < horizon else horizon
        now = self._now_ms()
        keys: list[bytes] = []
        for key in sorted(best):
            if horizon is not None and key > horizon:
                break
            if not best[key].is_live(now):
                continue
            if len(keys) == limit:
                return Page(keys, encode_cursor(keys[-1]))
            keys.append(key)
        return Page(keys, None if horizon is None else encode_cursor(horizon))
