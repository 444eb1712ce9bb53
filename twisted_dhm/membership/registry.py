"""What every registry-backed membership source shares (etcd, Consul).

A node registers itself in a registry that forgets it when it stops renewing,
and follows what the registry says about the others.  A member the registry
lists is as alive as the native-protocol health checks say (they run as with
static membership, so a hung node that still renews is routed around); a member
the registry no longer lists is ``dead``: routed around, with hints kept for it,
until it registers again.

When the registry cannot be reached the node keeps its last view, keeps
serving, retries each job with backoff, and reports itself degraded in
``/ready`` and ``dhashmap_discovery_healthy``.
"""

from __future__ import annotations

import json
import random
from typing import Any

import attrs
from treq import collect
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.membership.static import StaticMembership
from twisted_dhm.membership.view import ALIVE, DEAD, MAX_WEIGHT, Member, MembershipView
from twisted_dhm.peer.pool import PeerPool
from twisted_dhm.versions import NODE_ID

log = logs.logger("dhashmap.discovery")

#: Largest answer read from a registry (every member record of a big cluster fits easily).
MAX_BODY = 16 * 1024 * 1024


class RegistryError(Exception):
    """The registry answered, but not with what we asked for; the message says what it said."""


class BadAnswer(RegistryError):
    """Something answered that is not the registry (not JSON, not the right shape, far too big)."""


class Unreachable(Exception):
    """No endpoint answered."""


def read_limited(response: Any, limit: int = MAX_BODY) -> Deferred:
    """The body of a treq response, refused (BadAnswer) past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = [0]

    def chunk(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise BadAnswer(f"an answer of more than {limit} bytes")
        chunks.append(data)

    return collect(response, chunk).addCallback(lambda _: b"".join(chunks))


def decode_json(code: int, raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise BadAnswer(f"{what}: HTTP {code} with a body that is not JSON: {raw[:80]!r}") from None


@attrs.frozen
class MemberRecord:
    """What a node publishes about itself."""

    id: str
    host: str
    peer: int
    rest: int
    weight: int
    version: str
    started_at_ms: int

    def to_dict(self) -> dict:
        return {"id": self.id, "addresses": {"host": self.host, "peer": self.peer, "rest": self.rest},
                "weight": self.weight, "version": self.version, "started_at_ms": self.started_at_ms}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MemberRecord:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:  # (RecursionError: nested a few thousand deep)
            raise ValueError(f"not a member record: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> MemberRecord:
        try:
            addresses = data["addresses"]
            record = cls(
                id=data["id"], host=addresses["host"], peer=addresses["peer"], rest=addresses["rest"],
                weight=data.get("weight", 1), version=data.get("version", ""),
                started_at_ms=data.get("started_at_ms", 0),
            )
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"not a member record: {e!r}") from None
        if not isinstance(record.id, str) or not NODE_ID.match(record.id):
            raise ValueError(f"member record id {record.id!r} is not a node id")
        if not isinstance(record.host, str) or not record.host or len(record.host) > 253:
            raise ValueError("member record host must be a host name or address")
        for name, value, low, high in (("peer", record.peer, 1, 65535), ("rest", record.rest, 0, 65535),
                                       ("weight", record.weight, 1, MAX_WEIGHT)):
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"member record {name} is out of range: {value!r}")
        if not isinstance(record.version, str) or type(record.started_at_ms) is not int:
            raise ValueError("member record version/started_at_ms have the wrong type")
        return record

    def member(self, state: str) -> Member:
        return Member(self.id, self.host, self.peer, self.rest, state, self.weight, self.version)


class RegistryMembership(StaticMembership):
    """Registration, retries, health reporting and the member view; subclasses speak the registry."""

    name = "membership"
    registry = "registry"  # the name used in logs and /ready

    def __init__(self, view: MembershipView, pool: PeerPool, clock: IReactorTime, rng: random.Random,
                 ttl: float, record: MemberRecord, interval: float = 1.0, timeout: float = 1.0,
                 threshold: int = 3) -> None:
        super().__init__(view, pool, clock, (), interval, timeout, threshold)
        self.rng = rng
        self.ttl = ttl
        self.record = record
        self.registered: dict[str, MemberRecord] = {}
        self.healthy = False  # the registry answered our last request
        self.problem = f"not yet in touch with {self.registry}"
        self.errors = 0
        self._timers: dict[str, IDelayedCall] = {}
        self._backoff: dict[str, float] = {}
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False

    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()

    # -- retries -----------------------------------------------------------------------------

    def _run(self, job: str, fn: Any) -> None:
        """Run a job now; on failure, note the trouble and run it again after a backoff."""
        if self._stopping:
            return
        d = fn()

        def ok(_: object) -> None:
            self._backoff.pop(job, None)

        def failed(f: Failure) -> None:
            if self._stopping:
                return
            self._trouble(f"{job}: {f.getErrorMessage()}")
            delay = min(max(0.5, 2 * self._backoff.get(job, 0.25)), max(2.0, self.ttl / 3))
            self._backoff[job] = delay
            self._later(job, delay * (0.8 + 0.4 * self.rng.random()), self._run, job, fn)

        d.addCallbacks(ok, failed)

    def _later(self, job: str, delay: float, fn: Any, *args: Any) -> None:
        if self._stopping:
            return
        old = self._timers.get(job)
        if old is not None and old.active():
            old.cancel()
        self._timers[job] = self.clock.callLater(delay, fn, *args)

    def _cancel(self, job: str) -> None:
        call = self._timers.pop(job, None)
        if call is not None and call.active():
            call.cancel()

    def _trouble(self, problem: str) -> None:
        self.errors += 1
        if self.healthy or not self.problem:
            log.warn("{registry}: {problem}; keeping the last known members and retrying",
                     registry=self.registry, problem=problem)
        else:
            log.debug("{registry}: {problem}", registry=self.registry, problem=problem)
        self.healthy = False
        self.problem = problem

    def _fine(self) -> None:
        if not self.healthy:
            log.info("{registry} is reachable again" if self.errors else "{registry} is reachable",
                     registry=self.registry)
            self._recovered()
        self.healthy = True
        self.problem = ""

    def _recovered(self) -> None:
        """The registry answers again after trouble (a hook)."""

    def problems(self) -> list[str]:
        """What /ready reports as degraded."""
        return [] if self.healthy else [f"{self.registry}: {self.problem}"]

    # -- the member view ---------------------------------------------------------------------

    def _listed(self, records: Any) -> None:
        """The registry's whole list: members missing from it are unregistered, the rest registered."""
        seen = {record.id: record for record in records if record is not None}
        for member_id in list(self.registered):
            if member_id not in seen:
                self._unregistered(member_id)
        for record in seen.values():
            self._registered(record)

    def _registered(self, record: MemberRecord) -> None:
        known = self.registered.get(record.id)
        self.registered[record.id] = record
        if record.id == self.view.local_id:
            return
        current = self.view.get(record.id)
        # New or changed registrations (a restart registers anew) make the member alive; a
        # listing that merely repeats it does not, so a member the health checks found dead
        # stays dead until it answers a ping again.
        if known != record or current is None:
            log.info("member {id} registered at {host}:{port}", id=record.id, host=record.host, port=record.peer)
            self.missed.pop(record.id, None)
            self.view.upsert(record.member(ALIVE))

    def _unregistered(self, member_id: str) -> None:
        if self.registered.pop(member_id, None) is None:
            return
        if member_id == self.view.local_id:
            if not self._stopping:
                self._lost_own_record()
            return
        log.info("member {id} is dead: it is no longer registered in {registry}", id=member_id,
                 registry=self.registry)
        self.view.set_state(member_id, DEAD)

    def _lost_own_record(self) -> None:
        """This node's own registration vanished while it runs (a hook: register again)."""

    def health_changed(self, member_id: str, state: str, reason: str) -> None:
        """Pings decide only for registered members; one the registry does not list stays dead."""
        if member_id in self.registered:
            super().health_changed(member_id, state, reason)

    def introduce(self, hello: Any, host: str) -> None:
        """The registry is the source of members; a Hello alone does not make one."""
