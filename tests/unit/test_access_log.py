"""Request ids (X-Request-Id) and the optional access log: the real Site and channel over StringTransport."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.logs import event_as_json_line
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator


class RequestIdTests(SynchronousTestCase):
    access_log = True

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        engine = MemoryEngine()
        coordinator = single_node_coordinator(engine, self.clock)
        self.site = build_site(coordinator, NodeMetrics(engine, process=False), self.clock, Limits(), 60, "n1",
                               lambda: True, access_log=self.access_log)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def request(self, method, path, body=None, headers=None):
        """One request on a new connection; the answer's status and headers."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = StringTransport()
        protocol.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: n1", f"Content-Length: {len(body or b'')}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        protocol.dataReceived("\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + (body or b""))
        head = transport.value().split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        response = type("Response", (), {})()
        response.code = int(head[0].split()[1])
        response.headers = Headers()
        for line in head[1:]:
            name, _, value = line.partition(b": ")
            response.headers.addRawHeader(name, value)
        protocol.connectionLost(None)
        return response

    def access_events(self):
        return [e for e in self.events if e.get("log_namespace") == "dhashmap.access"]


class AccessLogOnTests(RequestIdTests):
    def test_client_id_is_passed_through_and_logged(self):
        response = self.request("PUT", "/v1/kv/k", b"v", {"X-Request-Id": "trace-42"})
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"trace-42"])
        (event,) = self.access_events()
        self.assertEqual(event["request_id"], "trace-42")
        self.assertEqual((event["method"], event["uri"], event["code"]), ("PUT", "/v1/kv/k", 201))
        line = json.loads(event_as_json_line(event, "n1"))
        self.assertEqual((line["node"], line["subsystem"], line["request_id"]), ("n1", "dhashmap.access", "trace-42"))
        self.assertIn("PUT /v1/kv/k 201", line["message"])

    def test_ids_are_made_when_the_client_sends_none_or_a_bad_one(self):
        first = self.request("GET", "/health").headers.getRawHeaders(b"x-request-id")[0]
        bad = self.request("GET", "/v1/kv/nope", headers={"X-Request-Id": "no spaces or \u00e9 allowed"})
        self.assertEqual(bad.code, 404)
        second = bad.headers.getRawHeaders(b"x-request-id")[0]
        prefix = b"n1-%x-" % 1_700_000_000
        self.assertEqual((first, second), (prefix + b"1", prefix + b"2"))
        self.assertEqual([e["request_id"] for e in self.access_events()], [first.decode(), second.decode()])
        too_long = self.request("GET", "/health", headers={"X-Request-Id": "x" * 129})
        self.assertEqual(too_long.headers.getRawHeaders(b"x-request-id"), [prefix + b"3"])


class AccessLogOffTests(RequestIdTests):
    access_log = False

    def test_no_log_and_no_made_up_ids(self):
        response = self.request("PUT", "/v1/kv/k", b"v")
        self.assertIsNone(response.headers.getRawHeaders(b"x-request-id"))
        passed = self.request("GET", "/v1/kv/k", headers={"X-Request-Id": "abc"})
        self.assertEqual(passed.headers.getRawHeaders(b"x-request-id"), [b"abc"])
        self.assertEqual(self.access_events(), [])


class JsonLineTests(SynchronousTestCase):
    def test_no_request_id_no_field(self):
        line = json.loads(event_as_json_line({"log_format": "x", "log_namespace": "a", "request_id": None}, "n"))
        self.assertNotIn("request_id", line)
