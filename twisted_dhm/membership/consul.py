"""Membership from Consul (``--discovery consul``), through the local agent's HTTP API with treq.

Each node registers with its local agent as service ``--consul-service``
(``dhashmap``), ID ``dhashmap-<node-id>``, with its addresses, ring weight and
cluster name in the service's ``Meta``, and a TTL check it passes every third
of ``--consul-ttl``; a clean stop deregisters it.  Every node follows
``/v1/health/service/<service>?passing`` with blocking queries (``index`` and
``wait``), keeping only members of its own cluster, and handles the index the
way Consul's documentation asks: reset to 0 when it goes backwards, never
below 1, and never more than one query per ``MIN_QUERY_INTERVAL``.

What a listed or vanished member means, and what happens while the agent is
down, is shared with etcd: see ``registry.py``.  A node whose check stops
passing (it died, or hung so badly it cannot pass its check) drops out of the
passing list and is ``dead`` to the others.
"""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import quote

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

log = logs.logger("dhashmap.consul")

#: How long one blocking query may wait for a change (Consul adds up to wait/16 of jitter).
BLOCKING_WAIT = 30.0
#: Never query faster than this, whatever the index does (Consul's advice against busy loops).
MIN_QUERY_INTERVAL = 0.2


class ConsulError(RegistryError):
    """The agent answered with an error; the message says what it said."""


class ConsulAgent:
    """Requests to a Consul agent's HTTP API."""

    def __init__(self, network: INetwork, clock: IReactorTime, address: str, timeout: float,
                 token: str | None = None, tls: TLSFiles | None = None) -> None:
        self.url = address if "://" in address else f"http://{address}"
        self.clock = clock
        self.timeout = timeout
        self.token = token
        self._client = http_client(network, clock, connect_timeout=timeout, tls=tls)

    @inlineCallbacks
    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                timeout: float | None = None) -> Any:
        """(JSON answer or None, X-Consul-Index or None); ConsulError, BadAnswer or Unreachable."""
        headers = {b"content-type": [b"application/json"]}
        if self.token:
            headers[b"x-consul-token"] = [self.token.encode()]
        try:
            response = yield self._client.request(
                method, self.url + path, params=params, headers=headers,
                data=None if body is None else json.dumps(body).encode(),
                reactor=self.clock, timeout=timeout or self.timeout)
            raw = yield read_limited(response)
        except (RegistryError, BadAnswer):
            raise
        except Exception as e:
            raise Unreachable(f"{self.url}: {e.__class__.__name__}: {e}") from None
        if response.code != 200:
            text = raw[:200].decode("utf-8", "replace").strip() or f"HTTP {response.code}"
            raise ConsulError(f"{method} {path}: HTTP {response.code}: {text}")
        index = response.headers.getRawHeaders(b"x-consul-index", [None])[0]
        return decode_json(response.code, raw, path), index


class ConsulMembership(RegistryMembership):
    """``--discovery consul``: a service with a TTL check, and a blocking query on the passing list."""

    registry = "consul"

    def __init__(self, view: MembershipView, pool: PeerPool, clock: IReactorTime, rng: random.Random,
                 agent: ConsulAgent, service: str, cluster: str, ttl: float, record: MemberRecord,
                 interval: float = 1.0, timeout: float = 1.0, threshold: int = 3,
                 wait: float = BLOCKING_WAIT) -> None:
        super().__init__(view, pool, clock, rng, ttl, record, interval, timeout, threshold)
        self.agent = agent
        self.service = service
        self.cluster = cluster
        self.service_id = f"{service}-{record.id}"
        self.wait = wait
        self.index = 0
        self.is_registered = False
        self._query: Deferred | None = None
        self._last_query = -MIN_QUERY_INTERVAL

    # -- life cycle --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        log.info("registering with the Consul agent at {url} as service {service}, ID {id}",
                 url=self.agent.url, service=self.service, id=self.service_id)
        self._run("register", self._register)
        self._run("watch", self._watch)

    def stopService(self) -> Deferred:
        """Deregister, so the others drop this node at once; then stop everything."""
        super().stopService()
        if self._query is not None:
            self._query.cancel()
        if not self.is_registered:
            return succeed(None)
        self.is_registered = False
        d = self.agent.request("PUT", f"/v1/agent/service/deregister/{quote(self.service_id, safe='')}")

        def done(_: object) -> None:
            log.info("deregistered {id} from Consul", id=self.service_id)

        def failed(f: Failure) -> None:
            log.warn("could not deregister {id} from Consul ({e}); its check will turn critical",
                     id=self.service_id, e=f.getErrorMessage())

        return d.addCallbacks(done, failed)

    def _lost_own_record(self) -> None:
        if self.is_registered:  # e.g. the agent restarted without its state, or a deregister by hand
            log.warn("this node's Consul service is gone; registering again")
            self.is_registered = False
            self._run("register", self._register)

    # -- registration ------------------------------------------------------------------------

    def _registration(self) -> dict:
        r = self.record
        return {
            "ID": self.service_id, "Name": self.service, "Address": r.host, "Port": r.rest,
            "Tags": [f"cluster={self.cluster}"],
            "Meta": {"node_id": r.id, "cluster": self.cluster, "peer_port": str(r.peer), "rest_port": str(r.rest),
                     "weight": str(r.weight), "version": r.version, "started_at_ms": str(r.started_at_ms)},
            "Check": {"CheckID": self._check_id(), "Name": "dhashmap node TTL", "TTL": f"{self.ttl:g}s",
                      # A node gone for good is cleaned out of the catalog eventually.
                      "DeregisterCriticalServiceAfter": f"{max(60.0, 30 * self.ttl):g}s"},
        }

    def _check_id(self) -> str:
        return f"service:{self.service_id}"

    @inlineCallbacks
    def _register(self) -> Any:
        yield self.agent.request("PUT", "/v1/agent/service/register", self._registration())
        if self._stopping:  # stopped meanwhile: take it back
            self.agent.request("PUT", f"/v1/agent/service/deregister/{quote(self.service_id, safe='')}") \
                .addErrback(lambda _: None)
            return
        yield self.agent.request("PUT", f"/v1/agent/check/pass/{quote(self._check_id(), safe=':')}")
        self.is_registered = True
        self._fine()
        log.info("registered with Consul (TTL check {ttl}s)", ttl=self.ttl)
        self._later("pass", self.ttl / 3, self._pass)

    def _pass(self) -> None:
        if self._stopping:
            return
        d = self.agent.request("PUT", f"/v1/agent/check/pass/{quote(self._check_id(), safe=':')}")

        def passed(_: object) -> None:
            self._fine()
            self._later("pass", self.ttl / 3, self._pass)

        def failed(f: Failure) -> None:
            if self._stopping:
                return
            if f.check(ConsulError) and "HTTP 404" in f.getErrorMessage():
                log.warn("Consul no longer knows our check ({e}); registering again", e=f.getErrorMessage())
                self.is_registered = False
                self._run("register", self._register)
                return
            self._trouble(f"check: {f.getErrorMessage()}")
            self._later("pass", min(1.0, self.ttl / 3), self._pass)

        d.addCallbacks(passed, failed)

    # -- discovery ---------------------------------------------------------------------------

    @inlineCallbacks
    def _watch(self) -> Any:
        """One blocking query after another, for as long as the service runs."""
        while not self._stopping:
            wait = max(0.0, self._last_query + MIN_QUERY_INTERVAL - self.clock.seconds())
            if wait:
                yield _sleep(self.clock, wait)
            self._last_query = self.clock.seconds()
            params = {"passing": "true"}
            if self.index:
                params.update(index=str(self.index), wait=f"{self.wait:g}s")
            self._query = self.agent.request("GET", f"/v1/health/service/{quote(self.service, safe='')}",
                                             params=params, timeout=self.wait * 1.1 + self.agent.timeout)
            try:
                entries, index = yield self._query
            finally:
                self._query = None
            self._next_index(index)
            self._apply(entries)
            self._fine()

    def _next_index(self, raw: Any) -> None:
        try:
            index = int(raw)
        except (TypeError, ValueError):
            raise BadAnswer(f"health query without a usable X-Consul-Index ({raw!r})") from None
        if index < self.index:
            self.index = 0  # it went backwards (a new leader, a restored snapshot): start over
        else:
            self.index = max(index, 1)  # never 0 after an answer: that would not block

    def _apply(self, entries: Any) -> None:
        if not isinstance(entries, list):
            raise BadAnswer("the health query did not answer a list")
        self._listed(self._record_of(entry) for entry in entries)

    def _record_of(self, entry: Any) -> MemberRecord | None:
        try:
            service = entry["Service"]
            meta = service.get("Meta") or {}
            if meta.get("cluster") != self.cluster:
                return None  # another cluster's node under the same service name
            return MemberRecord.from_dict({
                "id": meta["node_id"],
                "addresses": {"host": service.get("Address") or entry["Node"]["Address"],
                              "peer": int(meta["peer_port"]), "rest": int(meta["rest_port"])},
                "weight": int(meta.get("weight", "1")), "version": meta.get("version", ""),
                "started_at_ms": int(meta.get("started_at_ms", "0")),
            })
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # (int(Infinity))
            sid = entry.get("Service", {}).get("ID") if isinstance(entry, dict) and isinstance(
                entry.get("Service"), dict) else None
            log.warn("ignoring Consul service entry {id}: {e}", id=sid, e=e)
            return None


def _sleep(clock: IReactorTime, seconds: float) -> Deferred:
    d: Deferred = Deferred()
    call = clock.callLater(seconds, d.callback, None)
    d.addErrback(lambda f: call.cancel() if call.active() else None)
    return d
