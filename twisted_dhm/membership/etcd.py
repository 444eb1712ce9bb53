"""Membership from etcd (``--discovery etcd``), through etcd's v3 JSON gateway with treq.

Each node registers a member record under ``--etcd-prefix`` (by default
``/dhashmap/<cluster>/members/<node-id>``) attached to a lease of ``--etcd-ttl``
seconds that it keeps alive every third of the TTL; a clean stop revokes the
lease, so the record goes at once, and a dead node's record goes when its lease
expires.  Every node reads the prefix and then watches it (the streaming
``/v3/watch``) from the next revision, resuming from the last revision it saw
after a disconnect; if watching does not work it polls every
``--etcd-poll-interval``.

A registered member is as alive as the native-protocol health checks say (they
run as with static membership, so a hung node that keeps its lease alive is
still routed around); a member whose record is gone is ``dead``: routed
around, with hints kept for it, until it registers again.

When etcd cannot be reached the node keeps its last view, keeps serving,
retries with backoff, and says so in ``/ready`` and in
``dhashmap_discovery_healthy``; once etcd answers again it re-registers (with a
new lease if the old one expired).

The gateway's JSON follows the protobuf JSON mapping: bytes are base64, 64-bit
numbers are strings, and fields with default values are left out.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from typing import Any

import attrs
from treq import collect
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_dhm.httpclient import TLSFiles, http_client
from twisted_dhm.membership.static import StaticMembership
from twisted_dhm.membership.view import ALIVE, DEAD, Member, MembershipView
from twisted_dhm.network import INetwork
from twisted_dhm.peer.pool import PeerPool
from twisted_dhm.versions import NODE_ID

log = Logger(namespace="dhashmap.etcd")

#: Largest answer read from etcd (a range of every member record fits easily).
MAX_BODY = 16 * 1024 * 1024
#: Largest single line of the watch stream.
MAX_WATCH_LINE = 4 * 1024 * 1024
#: Watch attempts that fail in a row before falling back to polling.
WATCH_FAILURES_BEFORE_POLLING = 3


class EtcdError(Exception):
    """etcd answered, but not with what we asked for; the message says what it said."""


class BadAnswer(EtcdError):
    """Something answered that is not etcd's gateway (not JSON, not an object, far too big)."""


class Unreachable(Exception):
    """No endpoint answered."""


class WatchCanceled(Exception):
    """etcd ended our watch (its history was compacted past our revision): read everything again."""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(value: Any, what: str) -> int:
    """A 64-bit number from the gateway (a JSON string, or absent for 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EtcdError(f"{what} is not a number: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise EtcdError(f"{what} is not a number: {value!r}") from None


@attrs.frozen
class MemberRecord:
    """What a node writes about itself under the prefix."""

    id: str
    host: str
    peer: int
    rest: int
    weight: int
    version: str
    started_at_ms: int

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.id, "addresses": {"host": self.host, "peer": self.peer, "rest": self.rest},
            "weight": self.weight, "version": self.version, "started_at_ms": self.started_at_ms,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MemberRecord:
        try:
            data = json.loads(raw)
            addresses = data["addresses"]
            record = cls(
                id=data["id"], host=addresses["host"], peer=addresses["peer"], rest=addresses["rest"],
                weight=data.get("weight", 1), version=data.get("version", ""),
                started_at_ms=data.get("started_at_ms", 0),
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"not a member record: {e!r}") from None
        if not isinstance(record.id, str) or not NODE_ID.match(record.id):
            raise ValueError(f"member record id {record.id!r} is not a node id")
        if not isinstance(record.host, str) or not record.host or len(record.host) > 253:
            raise ValueError("member record host must be a host name or address")
        for name, value, low in (("peer", record.peer, 1), ("rest", record.rest, 0), ("weight", record.weight, 1)):
            if type(value) is not int or not low <= value <= (100 if name == "weight" else 65535):
                raise ValueError(f"member record {name} is out of range: {value!r}")
        if not isinstance(record.version, str) or type(record.started_at_ms) is not int:
            raise ValueError("member record version/started_at_ms have the wrong type")
        return record

    def member(self, state: str) -> Member:
        return Member(self.id, self.host, self.peer, self.rest, state, self.weight, self.version)


class EtcdGateway:
    """POSTs to etcd's v3 JSON gateway, failing over between endpoints."""

    def __init__(self, network: INetwork, clock: IReactorTime, endpoints: Sequence[str], timeout: float,
                 username: str | None = None, password: str | None = None, tls: TLSFiles | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd discovery needs at least one endpoint")
        self.urls = [e if "://" in e else f"http://{e}" for e in endpoints]
        self.clock = clock
        self.timeout = timeout
        self.username = username
        self.password = password
        self._current = 0
        self._token: str | None = None
        self._client = http_client(network, clock, connect_timeout=timeout, tls=tls)
        self._stream_client = http_client(network, clock, connect_timeout=timeout, tls=tls, persistent=False)

    @property
    def endpoint(self) -> str:
        return self.urls[self._current]

    def _failover(self, failed: str) -> None:
        if self.urls[self._current] == failed:
            self._current = (self._current + 1) % len(self.urls)

    @inlineCallbacks
    def post(self, path: str, body: dict) -> Any:
        """The answer's JSON object; EtcdError if etcd refused, Unreachable if no endpoint answered."""
        errors = []
        for _ in range(len(self.urls)):
            url = self.endpoint
            try:
                answer = yield self._post_once(url, path, body)
            except BadAnswer as e:  # not etcd at all: another endpoint may be
                errors.append(f"{url}: {e}")
                self._failover(url)
                continue
            except EtcdError as e:
                if e.args and "invalid auth token" in str(e) and self.username:
                    self._token = None  # expired: authenticate again, once
                    answer = yield self._post_once(url, path, body)
                else:
                    raise
            except Exception as e:  # connection refused, timeout, reset: try the next endpoint
                errors.append(f"{url}: {e.__class__.__name__}: {e}")
                self._failover(url)
                continue
            return answer
        raise Unreachable("; ".join(errors))

    @inlineCallbacks
    def _post_once(self, url: str, path: str, body: dict) -> Any:
        headers = yield self._auth_headers(url)
        response = yield self._client.post(url + path, data=json.dumps(body).encode(), headers=headers,
                                           reactor=self.clock, timeout=self.timeout)
        raw = yield _read_limited(response, MAX_BODY)
        return _decode_answer(response.code, raw, path)

    @inlineCallbacks
    def _auth_headers(self, url: str) -> Any:
        headers = {b"content-type": [b"application/json"]}
        if self.username:
            if self._token is None:
                response = yield self._client.post(
                    url + "/v3/auth/authenticate",
                    data=json.dumps({"name": self.username, "password": self.password or ""}).encode(),
                    reactor=self.clock, timeout=self.timeout)
                raw = yield _read_limited(response, MAX_BODY)
                token = _decode_answer(response.code, raw, "/v3/auth/authenticate").get("token")
                if not isinstance(token, str) or not token:
                    raise EtcdError("etcd authentication gave no token")
                self._token = token
            headers[b"authorization"] = [self._token.encode()]
        return headers

    @inlineCallbacks
    def stream(self, path: str, body: dict, on_line: Any) -> Any:
        """POST to a streaming endpoint; ``on_line(obj)`` for every JSON line; fires when it ends."""
        url = self.endpoint
        try:
            headers = yield self._auth_headers(url)
            response = yield self._stream_client.post(url + path, data=json.dumps(body).encode(),
                                                      headers=headers, reactor=self.clock, timeout=self.timeout,
                                                      unbuffered=True)
        except EtcdError:
            raise
        except Exception:
            self._failover(url)
            raise
        if response.code != 200:
            raw = yield _read_limited(response, MAX_BODY)
            _decode_answer(response.code, raw, path)
            raise EtcdError(f"{path}: HTTP {response.code}")
        buffer = bytearray()

        def chunk(data: bytes) -> None:
            buffer.extend(data)
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > MAX_WATCH_LINE:
                        raise EtcdError(f"{path}: a line of more than {MAX_WATCH_LINE} bytes")
                    return
                line = bytes(buffer[:end]).strip()
                del buffer[: end + 1]
                if line:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        raise EtcdError(f"{path}: a line that is not JSON: {line[:80]!r}") from None
                    on_line(obj)

        yield collect(response, chunk)


def _read_limited(response: Any, limit: int) -> Deferred:
    chunks: list[bytes] = []
    size = [0]

    def chunk(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise BadAnswer(f"an answer of more than {limit} bytes")
        chunks.append(data)

    return collect(response, chunk).addCallback(lambda _: b"".join(chunks))


def _decode_answer(code: int, raw: bytes, path: str) -> dict:
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        raise BadAnswer(f"{path}: HTTP {code} with a body that is not JSON: {raw[:80]!r}") from None
    if not isinstance(answer, dict):
        raise BadAnswer(f"{path}: HTTP {code} with JSON that is not an object")
    if code != 200 or "error" in answer:
        message = answer.get("message") or answer.get("error") or f"HTTP {code}"
        raise EtcdError(f"{path}: {message}")
    return answer


class EtcdMembership(StaticMembership):
    """``--discovery etcd``: register with a lease, watch the prefix, health-check the members."""

    name = "membership"

    def __init__(self, view: MembershipView, pool: PeerPool, clock: IReactorTime, rng: random.Random,
                 gateway: EtcdGateway, prefix: str, ttl: int, poll_interval: float, record: MemberRecord,
                 interval: float = 1.0, timeout: float = 1.0, threshold: int = 3) -> None:
        super().__init__(view, pool, clock, (), interval, timeout, threshold)
        self.rng = rng
        self.gateway = gateway
        self.prefix = prefix.encode()
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.record = record
        self.lease = 0
        self.revision = 0
        self.registered: dict[str, MemberRecord] = {}
        self.healthy = False  # etcd answered our last request
        self.problem = "not yet in touch with etcd"
        self.errors = 0
        self.polling = False
        self._watch_failures = 0
        self._watch_backoff = 0.0
        self._timers: dict[str, IDelayedCall] = {}
        self._backoff: dict[str, float] = {}
        self._watching: Deferred | None = None
        self._watch_started_unhealthy = True
        self._restart_watch = False
        self._stopping = False

    # -- life cycle --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        log.info("registering with etcd at {urls} as {key}", urls=",".join(self.gateway.urls),
                 key=(self.prefix + self.record.id.encode()).decode(errors="replace"))
        self._run("register", self._register)
        self._run("sync", self._sync)

    def stopService(self) -> Deferred:
        """Revoke the lease, so the record goes at once; then stop everything."""
        super().stopService()
        self._stopping = True
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        if self._watching is not None:
            self._watching.cancel()
        if not self.lease:
            return succeed(None)
        lease, self.lease = self.lease, 0
        d = self.gateway.post("/v3/lease/revoke", {"ID": str(lease)})

        def revoked(_: object) -> None:
            log.info("etcd lease {lease} revoked: this node's record is gone", lease=lease)

        def failed(f: Failure) -> None:
            log.warn("could not revoke etcd lease {lease} ({e}); the record goes when it expires",
                     lease=lease, e=f.getErrorMessage())

        return d.addCallbacks(revoked, failed)

    # -- retries -----------------------------------------------------------------------------

    def _run(self, job: str, fn: Any) -> None:
        """Run a job now; on failure, mark etcd unhealthy and run it again after a backoff."""
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
        old = self._timers.get(job)
        if old is not None and old.active():
            old.cancel()
        self._timers[job] = self.clock.callLater(delay, fn, *args)

    def _trouble(self, problem: str) -> None:
        self.errors += 1
        if self.healthy or not self.problem:
            log.warn("etcd: {problem}; keeping the last known members and retrying", problem=problem)
        else:
            log.debug("etcd: {problem}", problem=problem)
        self.healthy = False
        self.problem = problem

    def _fine(self) -> None:
        if not self.healthy:
            log.info("etcd reachable at {url}", url=self.gateway.endpoint)
            if self._watching is not None and self._watch_started_unhealthy is False:
                # A watch stream from before the outage may be silently dead (no reset came):
                # start a fresh one from the last revision seen.
                self._restart_watch = True
                self._watching.cancel()
        self.healthy = True
        self.problem = ""

    def problems(self) -> list[str]:
        """What /ready reports as degraded."""
        return [] if self.healthy else [f"etcd: {self.problem}"]

    # -- registration ------------------------------------------------------------------------

    @inlineCallbacks
    def _register(self) -> Any:
        grant = yield self.gateway.post("/v3/lease/grant", {"TTL": str(self.ttl)})
        lease = _int(grant.get("ID"), "lease ID")
        if not lease:
            raise EtcdError("lease grant gave no lease ID")
        key = self.prefix + self.record.id.encode()
        yield self.gateway.post("/v3/kv/put", {"key": _b64(key), "value": _b64(self.record.to_json()),
                                               "lease": str(lease)})
        self.lease = lease
        self._fine()
        log.info("registered in etcd with lease {lease} (TTL {ttl}s)", lease=lease, ttl=self.ttl)
        self._later("keepalive", self.ttl / 3, self._keepalive)

    def _keepalive(self) -> None:
        if self._stopping:
            return
        d = self.gateway.post("/v3/lease/keepalive", {"ID": str(self.lease)})

        def answered(answer: dict) -> None:
            result = answer.get("result", answer)
            if not isinstance(result, dict) or _int(result.get("TTL"), "lease TTL") <= 0:
                log.warn("etcd lease {lease} had expired; registering again", lease=self.lease)
                self.lease = 0
                self._run("register", self._register)
                return
            self._fine()
            self._later("keepalive", self.ttl / 3, self._keepalive)

        def failed(f: Failure) -> None:
            if self._stopping:
                return
            self._trouble(f"keepalive: {f.getErrorMessage()}")
            self._later("keepalive", min(1.0, self.ttl / 3), self._keepalive)

        d.addCallback(answered).addErrback(failed)

    # -- discovery ---------------------------------------------------------------------------

    @inlineCallbacks
    def _sync(self) -> Any:
        """Read every record under the prefix, then watch (or poll) from the next revision."""
        answer = yield self.gateway.post("/v3/kv/range", {"key": _b64(self.prefix),
                                                          "range_end": _b64(prefix_end(self.prefix))})
        header = answer.get("header") or {}
        revision = _int(header.get("revision") if isinstance(header, dict) else None, "revision")
        kvs = answer.get("kvs") or []
        if not isinstance(kvs, list):
            raise EtcdError("range answer's kvs is not a list")
        seen: dict[str, MemberRecord] = {}
        for kv in kvs:
            record = self._record_of(kv)
            if record is not None:
                seen[record.id] = record
        for member_id in list(self.registered):
            if member_id not in seen:
                self._unregistered(member_id)
        for record in seen.values():
            self._registered(record)
        self.revision = revision
        self._fine()
        if self.polling:
            self._later("poll", self.poll_interval, self._run, "sync", self._sync)
        else:
            self._watch()

    def _watch(self) -> None:
        if self._stopping:
            return
        request = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix)),
                                      "start_revision": str(self.revision + 1)}}
        self._watch_started_unhealthy = not self.healthy
        d = self._watching = self.gateway.stream("/v3/watch", request, self._watch_line)

        def ended(result: object) -> None:
            self._watching = None
            if self._stopping:
                return
            if self._restart_watch or (isinstance(result, Failure) and result.check(WatchCanceled)):
                self._restart_watch = False
                delay = 0.0
            elif isinstance(result, Failure):
                # Only a watch that etcd answers badly (no gateway watch, a broken stream) counts
                # towards polling; an unreachable etcd is retried the same either way.
                if result.check(EtcdError):
                    self._watch_failures += 1
                self._trouble(f"watch: {result.getErrorMessage()}")
                if self._watch_failures >= WATCH_FAILURES_BEFORE_POLLING and not self.polling:
                    log.warn("etcd watch keeps failing; polling every {s}s instead", s=self.poll_interval)
                    self.polling = True
                    self._later("poll", self.poll_interval, self._run, "sync", self._sync)
                    return
                self._watch_backoff = min(max(0.5, 2 * self._watch_backoff), max(2.0, self.ttl / 3))
                delay = self._watch_backoff * (0.8 + 0.4 * self.rng.random())
            else:
                delay = 0.1  # the stream ended cleanly (etcd restarted, proxy timeout): resume
            self._later("watch", delay, self._resume)

        d.addBoth(ended)

    def _resume(self) -> None:
        if self.revision:
            self._watch()
        else:
            self._run("sync", self._sync)

    def _watch_line(self, obj: Any) -> None:
        result = obj.get("result") if isinstance(obj, dict) else None
        if not isinstance(result, dict):
            error = obj.get("error") if isinstance(obj, dict) else None
            raise EtcdError(f"watch: {error or 'a line without a result'}")
        if result.get("canceled"):
            compacted = _int(result.get("compact_revision"), "compact_revision")
            reason = result.get("cancel_reason") or (f"compacted at {compacted}" if compacted else "canceled")
            log.info("etcd watch ended ({reason}); reading the members again", reason=reason)
            self.revision = 0  # re-read everything, then watch from there
            raise WatchCanceled(reason)
        if result.get("created"):
            self._watch_failures = 0
            self._watch_backoff = 0.0
            self._fine()
        events = result.get("events") or []
        if not isinstance(events, list):
            raise EtcdError("watch events is not a list")
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("kv"), dict):
                raise EtcdError("watch event without a kv")
            kv = event["kv"]
            mod = _int(kv.get("mod_revision"), "mod_revision")
            if event.get("type", "PUT") == "DELETE":
                member_id = self._id_of(kv)
                if member_id is not None:
                    self._unregistered(member_id)
            else:
                record = self._record_of(kv)
                if record is not None:
                    self._registered(record)
            self.revision = max(self.revision, mod)  # a resumed watch starts after it

    def _id_of(self, kv: dict) -> str | None:
        try:
            key = base64.b64decode(kv.get("key", ""), validate=True)
        except (ValueError, TypeError):
            raise EtcdError("a key that is not base64") from None
        if not key.startswith(self.prefix):
            return None
        member_id = key[len(self.prefix):].decode("utf-8", "replace")
        return member_id if NODE_ID.match(member_id) else None

    def _record_of(self, kv: dict) -> MemberRecord | None:
        member_id = self._id_of(kv)
        if member_id is None:
            return None
        try:
            record = MemberRecord.from_json(base64.b64decode(kv.get("value", ""), validate=True))
        except (ValueError, TypeError) as e:
            log.warn("ignoring the etcd record of {id}: {e}", id=member_id, e=e)
            return None
        if record.id != member_id:
            log.warn("ignoring the etcd record under {id}: it names {other}", id=member_id, other=record.id)
            return None
        return record

    # -- the member view ---------------------------------------------------------------------

    def _registered(self, record: MemberRecord) -> None:
        known = self.registered.get(record.id)
        self.registered[record.id] = record
        if record.id == self.view.local_id:
            return
        current = self.view.get(record.id)
        if known != record or current is None or current.state == DEAD:
            log.info("member {id} registered at {host}:{port}", id=record.id, host=record.host, port=record.peer)
            self.missed.pop(record.id, None)
            self.view.upsert(record.member(ALIVE))

    def _unregistered(self, member_id: str) -> None:
        if self.registered.pop(member_id, None) is None:
            return
        if member_id == self.view.local_id:
            if not self._stopping and self.lease:  # expired while etcd could not hear us, or deleted
                log.warn("this node's etcd record is gone; registering again")
                self.lease = 0
                self._run("register", self._register)
            return
        log.info("member {id} is dead: its etcd record is gone (lease expired or revoked)", id=member_id)
        self.view.set_state(member_id, DEAD)

    def health_changed(self, member_id: str, state: str, reason: str) -> None:
        """Pings decide only for registered members; one without a record stays dead."""
        if member_id in self.registered:
            super().health_changed(member_id, state, reason)

    def introduce(self, hello: Any, host: str) -> None:
        """etcd is the source of members; a Hello alone does not make one."""

