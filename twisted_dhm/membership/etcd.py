"""Membership from etcd (``--discovery etcd``), through etcd's v3 JSON gateway with treq.

Each node registers a member record under ``--etcd-prefix`` (by default
``/dhashmap/<cluster>/members/<node-id>``) attached to a lease of ``--etcd-ttl``
seconds that it keeps alive every third of the TTL; a clean stop revokes the
lease, so the record goes at once, and a dead node's record goes when its lease
expires.  Every node reads the prefix and then watches it (the streaming
``/v3/watch``) from the next revision, resuming from the last revision it saw
after a disconnect; if watching does not work it polls every
``--etcd-poll-interval``.

What a registered or vanished member means, and what happens while etcd is
down, is shared with Consul: see ``registry.py``.  Once etcd answers again the
node re-registers, with a new lease if the old one expired.

The gateway's JSON follows the protobuf JSON mapping: bytes are base64, 64-bit
numbers are strings, and fields with default values are left out.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from typing import Any

from treq import collect
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from twisted_dhm import logs
from twisted_dhm.httpclient import TLSFiles, http_client
from twisted_dhm.membership.registry import (
    BadAnswer,
    MemberRecord,
    RegistryError,
    RegistryMembership,
    Unreachable,
    decode_json,
    read_limited,
)
from twisted_dhm.membership.view import MembershipView
from twisted_dhm.network import INetwork
from twisted_dhm.peer.pool import PeerPool
from twisted_dhm.versions import NODE_ID

log = logs.logger("dhashmap.etcd")

#: Largest single line of the watch stream.
MAX_WATCH_LINE = 4 * 1024 * 1024
#: Watch attempts that fail in a row before falling back to polling.
WATCH_FAILURES_BEFORE_POLLING = 3


class EtcdError(RegistryError):
    """etcd answered, but not with what we asked for; the message says what it said."""


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
        raw = yield read_limited(response)
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
                raw = yield read_limited(response)
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
            raw = yield read_limited(response)
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

        body = collect(response, chunk)

        def abort(_: Deferred) -> None:
            # treq's collect() cannot be cancelled by itself: close the stream, or a cancelled
            # watch would live on and keep delivering events.
            transport = getattr(getattr(response, "original", response), "_transport", None)
            if transport is not None:
                transport.stopProducing()

        ended: Deferred = Deferred(abort)
        body.addBoth(lambda result: None if ended.called else ended.callback(result))
        yield ended


def _decode_answer(code: int, raw: bytes, path: str) -> dict:
    answer = decode_json(code, raw, path)
    if answer is None:
        answer = {}
    if not isinstance(answer, dict):
        raise BadAnswer(f"{path}: HTTP {code} with JSON that is not an object")
    if code != 200 or "error" in answer:
        message = answer.get("message") or answer.get("error") or f"HTTP {code}"
        raise EtcdError(f"{path}: {message}")
    return answer


class EtcdMembership(RegistryMembership):
    """``--discovery etcd``: register with a lease, watch the prefix, health-check the members."""

    registry = "etcd"

    def __init__(self, view: MembershipView, pool: PeerPool, clock: IReactorTime, rng: random.Random,
                 gateway: EtcdGateway, prefix: str, ttl: int, poll_interval: float, record: MemberRecord,
                 interval: float = 1.0, timeout: float = 1.0, threshold: int = 3) -> None:
        super().__init__(view, pool, clock, rng, ttl, record, interval, timeout, threshold)
        self.gateway = gateway
        self.prefix = prefix.encode()
        self.poll_interval = poll_interval
        self.lease = 0
        self.revision = 0
        self.polling = False
        self._watch_failures = 0
        self._watch_backoff = 0.0
        self._watching: Deferred | None = None
        self._watch_started_unhealthy = True
        self._restart_watch = False
        self._registering = False

    # -- life cycle --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        log.info("registering with etcd at {urls} as {key}", urls=",".join(self.gateway.urls),
                 key=(self.prefix + self.record.id.encode()).decode(errors="replace"))
        self._run("register", self._register)
        self._run("sync", self._sync)

    def stopService(self) -> Deferred:
        """Revoke the lease, so the record goes at once; then stop everything."""
        super().stopService()
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

    def _recovered(self) -> None:
        log.info("etcd answers at {url}", url=self.gateway.endpoint)
        if self._watching is not None and self._watch_started_unhealthy is False:
            # A watch stream from before the outage may be silently dead (no reset came):
            # start a fresh one from the last revision seen.
            self._restart_watch = True
            self._watching.cancel()

    def _lost_own_record(self) -> None:
        if self.lease:  # expired while etcd could not hear us, or deleted by hand
            log.warn("this node's etcd record is gone; registering again")
            self._register_again()

    def _register_again(self) -> None:
        """Forget the lease (and its keepalive) and register with a new one, once."""
        self.lease = 0
        self._cancel("keepalive")
        self._run("register", self._register)

    # -- registration ------------------------------------------------------------------------

    @inlineCallbacks
    def _register(self) -> Any:
        if self._registering:
            return  # one registration at a time
        self._registering = True
        try:
            grant = yield self.gateway.post("/v3/lease/grant", {"TTL": str(self.ttl)})
            lease = _int(grant.get("ID"), "lease ID")
            if not lease:
                raise EtcdError("lease grant gave no lease ID")
            if not self._stopping:
                key = self.prefix + self.record.id.encode()
                yield self.gateway.post("/v3/kv/put", {"key": _b64(key), "value": _b64(self.record.to_json()),
                                                       "lease": str(lease)})
            if self._stopping:  # stopped meanwhile: take back what we just made
                self.gateway.post("/v3/lease/revoke", {"ID": str(lease)}).addErrback(lambda _: None)
                return
        finally:
            self._registering = False
        self.lease = lease
        self._fine()
        log.info("registered in etcd with lease {lease} (TTL {ttl}s)", lease=lease, ttl=self.ttl)
        self._later("keepalive", self.ttl / 3, self._keepalive)

    def _keepalive(self) -> None:
        if self._stopping or not self.lease:
            return
        d = self.gateway.post("/v3/lease/keepalive", {"ID": str(self.lease)})

        def answered(answer: dict) -> None:
            result = answer.get("result", answer)
            if not isinstance(result, dict) or _int(result.get("TTL"), "lease TTL") <= 0:
                log.warn("etcd lease {lease} had expired; registering again", lease=self.lease)
                self._register_again()
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
        self._listed(self._record_of(kv) for kv in kvs)
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
