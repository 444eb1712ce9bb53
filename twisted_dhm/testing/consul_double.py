"""A faithful in-process double of the Consul agent endpoints dhashmap uses, for tests.

Implements, as Consul documents them:

- ``PUT /v1/agent/service/register`` (a service with one TTL check, which
  starts ``critical`` until passed, as Consul's TTL checks do);
- ``PUT /v1/agent/check/pass/<check-id>`` (404 for an unknown check);
- ``PUT /v1/agent/service/deregister/<service-id>``;
- ``GET /v1/health/service/<name>`` with ``passing`` and blocking queries:
  ``index`` and ``wait`` (default 5 m, at most 10 m, plus up to wait/16 of
  jitter), answering at once when ``index`` is absent, 0, or behind the
  current index, and otherwise when something changes or the wait is over;
  ``X-Consul-Index`` on every answer;
- ``X-Consul-Token`` checked when the double has a token.

A TTL check that is not passed within its TTL turns ``critical``; a service
critical for longer than ``DeregisterCriticalServiceAfter`` is removed.  Time
comes from the injected clock, so tests drive it with ``task.Clock``.  Test
hooks: :meth:`set_index` (make the index go backwards, as after a snapshot
restore), ``garbage`` (answer everything with bytes that are not JSON),
``down`` (refuse with 503).

``python -m twisted_dhm.testing.consul_double --port N`` serves it on the
real reactor, for tests with real node processes when no Consul agent binary
is available.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web import server
from twisted.web.resource import Resource

MAX_WAIT = 600.0


def _duration(text: str | None, default: float) -> float:
    if not text:
        return default
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not match:
        raise ValueError(f"bad duration {text!r}")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class ConsulDouble(Resource):
    isLeaf = True

    def __init__(self, clock: IReactorTime, token: str | None = None, node: str = "double",
                 address: str = "127.0.0.1") -> None:
        super().__init__()
        self.clock = clock
        self.token = token
        self.node = node
        self.address = address
        self.index = 1
        self.services: dict[str, dict] = {}  # id -> registration
        self.checks: dict[str, dict] = {}  # check id -> {"service": id, "status", "ttl", "deregister_after"}
        self._expiry: dict[str, IDelayedCall] = {}
        self._waiters: list[Deferred] = []
        self.garbage = False
        self.down = False
        self.requests: list[tuple[str, str]] = []

    # -- state changes -----------------------------------------------------------------------

    def _changed(self) -> None:
        self.index += 1
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def set_index(self, index: int) -> None:
        """Jump the index (backwards, as a restored snapshot would) and wake the blocked queries."""
        self.index = index - 1
        self._changed()

    def _arm(self, check_id: str) -> None:
        check = self.checks[check_id]
        old = self._expiry.pop(check_id, None)
        if old is not None and old.active():
            old.cancel()
        delay = check["ttl"] if check["status"] == "passing" else check["deregister_after"]
        if delay:
            self._expiry[check_id] = self.clock.callLater(delay, self._expire, check_id)

    def _expire(self, check_id: str) -> None:
        check = self.checks.get(check_id)
        if check is None:
            return
        if check["status"] == "passing":
            check["status"] = "critical"  # TTL missed
            self._arm(check_id)
        else:
            self._deregister(check["service"])  # critical for too long
        self._changed()

    def _deregister(self, service_id: str) -> bool:
        if self.services.pop(service_id, None) is None:
            return False
        for check_id in [c for c, v in self.checks.items() if v["service"] == service_id]:
            del self.checks[check_id]
            call = self._expiry.pop(check_id, None)
            if call is not None and call.active():
                call.cancel()
        return True

    # -- HTTP --------------------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        path = unquote(request.path.decode())  # as Go's net/http gives it to Consul
        method = request.method.decode()
        self.requests.append((method, path))
        if self.down:
            request.setResponseCode(503)
            return b"No cluster leader"
        if self.garbage:
            return b"\x00<html>not consul</html>"
        if self.token is not None and request.getHeader("x-consul-token") != self.token:
            request.setResponseCode(403)
            return b"ACL not found"
        try:
            body = json.loads(request.content.read() or b"null")
        except ValueError:
            request.setResponseCode(400)
            return b"Request decode failed"
        if method == "PUT" and path == "/v1/agent/service/register":
            return self._register(request, body)
        if method == "PUT" and path.startswith("/v1/agent/check/pass/"):
            return self._pass(request, path[len("/v1/agent/check/pass/"):])
        if method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            if self._deregister(path[len("/v1/agent/service/deregister/"):]):
                self._changed()
                return b""
            request.setResponseCode(404)
            return b"Unknown service ID"
        if method == "GET" and path.startswith("/v1/health/service/"):
            return self._health(request, path[len("/v1/health/service/"):])
        request.setResponseCode(404 if method in ("GET", "PUT") else 405)
        return b"no such endpoint in the double"

    def _register(self, request: server.Request, body: Any) -> bytes:
        if not isinstance(body, dict) or not body.get("Name"):
            request.setResponseCode(400)
            return b"Missing service name"
        service_id = body.get("ID") or body["Name"]
        self._deregister(service_id)
        self.services[service_id] = body
        check = body.get("Check")
        if check:
            check_id = check.get("CheckID") or f"service:{service_id}"
            self.checks[check_id] = {
                "service": service_id, "status": "critical", "ttl": _duration(check.get("TTL"), 0),
                "deregister_after": _duration(check.get("DeregisterCriticalServiceAfter"), 0),
            }
            self._arm(check_id)
        self._changed()
        return b""

    def _pass(self, request: server.Request, check_id: str) -> bytes:
        check = self.checks.get(check_id)
        if check is None or not check["ttl"]:
            request.setResponseCode(404)
            return f'CheckID "{check_id}" does not have associated TTL'.encode()
        was = check["status"]
        check["status"] = "passing"
        self._arm(check_id)
        if was != "passing":
            self._changed()
        return b""

    def _health(self, request: server.Request, name: str) -> Any:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        try:
            index = int(args.get("index", "0"))
            wait = min(_duration(args.get("wait"), 300.0), MAX_WAIT)
        except ValueError as e:
            request.setResponseCode(400)
            return str(e).encode()
        passing = "passing" in args and args["passing"] not in ("false", "0")

        def answer() -> bytes:
            entries = []
            for service_id, reg in sorted(self.services.items()):
                if reg["Name"] != name:
                    continue
                checks = [dict(CheckID=c, Status=v["status"], ServiceID=service_id)
                          for c, v in self.checks.items() if v["service"] == service_id]
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                entries.append({
                    "Node": {"Node": self.node, "Address": self.address},
                    "Service": {"ID": service_id, "Service": name, "Address": reg.get("Address", ""),
                                "Port": reg.get("Port", 0), "Meta": reg.get("Meta") or {},
                                "Tags": reg.get("Tags") or []},
                    "Checks": checks,
                })
            request.setHeader(b"x-consul-index", str(self.index).encode())
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(entries).encode()

        if index <= 0 or index < self.index:
            return answer()
        d: Deferred = Deferred()
        self._waiters.append(d)
        timer = self.clock.callLater(wait, lambda: d.callback(None) if not d.called else None)

        def respond(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not request._disconnected:
                request.write(answer())
                request.finish()

        d.addCallback(respond)
        request.notifyFinish().addErrback(lambda _: self._waiters.remove(d) if d in self._waiters else None)
        return server.NOT_DONE_YET


def main(argv: list[str]) -> None:
    """Serve the double on the real reactor: ``--port N [--host H] [--token T]``."""
    import argparse

    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token")
    args = parser.parse_args(argv)
    site = server.Site(ConsulDouble(reactor, token=args.token, address=args.host))
    site.noisy = False
    reactor.listenTCP(args.port, site, interface=args.host)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
