"""EtcdMembership against a scripted gateway on task.Clock: events, hostile answers, fallbacks."""

import base64
import json
import random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.config import ConfigError, load_config
from twisted_dhm.membership import ALIVE, DEAD, Member, MembershipView
from twisted_dhm.membership.etcd import EtcdError, EtcdMembership, prefix_end
from twisted_dhm.membership.registry import MemberRecord, Unreachable

PREFIX = "/dhashmap/c/members/"


def record(node_id, peer=7000):
    return MemberRecord(node_id, "127.0.0.1", peer, 8080, 1, "0.1.0", 1)


def kv(node_id, raw=None, mod=5):
    key = base64.b64encode((PREFIX + node_id).encode()).decode()
    value = base64.b64encode(raw if raw is not None else record(node_id).to_json()).decode()
    return {"key": key, "value": value, "mod_revision": str(mod)}


class FakeGateway:
    """Answers scripted per path; ``streams`` collects watch calls so a test can feed lines."""

    urls = ["http://etcd:2379"]
    endpoint = urls[0]

    def __init__(self):
        self.calls = []
        self.answers = {}
        self.streams = []
        self.range_kvs = []
        self.revision = 10
        self.lease = 0

    def post(self, path, body):
        self.calls.append((path, body))
        if path in self.answers:
            answer = self.answers[path]
            return answer(body) if callable(answer) else (fail(answer) if isinstance(answer, Exception)
                                                          else succeed(answer))
        if path == "/v3/lease/grant":
            self.lease += 1
            return succeed({"ID": str(self.lease), "TTL": body["TTL"]})
        if path == "/v3/kv/range":
            return succeed({"header": {"revision": str(self.revision)}, "kvs": self.range_kvs})
        if path == "/v3/lease/keepalive":
            return succeed({"result": {"ID": body["ID"], "TTL": "9"}})
        return succeed({})

    def stream(self, path, body, on_line):
        d = Deferred()
        self.streams.append((body, on_line, d))
        return d


class EtcdMembershipTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.view = MembershipView(Member("me", "127.0.0.1", 7000))
        self.gateway = FakeGateway()
        self.gateway.range_kvs = [kv("me"), kv("b")]
        pool = type("Pool", (), {"request": lambda *a, **k: Deferred(), "probe": lambda *a: Deferred()})()
        self.m = EtcdMembership(self.view, pool, self.clock, random.Random(1), self.gateway, PREFIX, 9, 5.0,
                                record("me"), interval=100)
        self.m.startService()

    def feed(self, obj):
        body, on_line, d = self.gateway.streams[-1]
        on_line(obj)

    def test_registers_with_a_lease_reads_then_watches_from_the_next_revision(self):
        puts = [b for p, b in self.gateway.calls if p == "/v3/kv/put"]
        self.assertEqual(len(puts), 1)
        self.assertEqual(puts[0]["lease"], "1")
        self.assertEqual(base64.b64decode(puts[0]["key"]), (PREFIX + "me").encode())
        self.assertEqual(self.view.get("b").state, ALIVE)
        self.assertEqual(self.gateway.streams[-1][0]["create_request"]["start_revision"], "11")
        self.assertEqual(self.m.problems(), [])

    def test_watch_events_add_and_remove_members(self):
        self.feed({"result": {"created": True}})
        self.feed({"result": {"events": [{"kv": kv("c", mod=12)}]}})
        self.assertEqual(self.view.get("c").state, ALIVE)
        self.feed({"result": {"events": [{"type": "DELETE", "kv": {"key": kv("c")["key"], "mod_revision": "13"}}]}})
        self.assertEqual(self.view.get("c").state, DEAD)
        self.assertEqual(self.m.revision, 13)
        # A dead member's pings do not revive it: only a new record does.
        self.m.health_changed("c", ALIVE, "answered")
        self.assertEqual(self.view.get("c").state, DEAD)

    def test_a_watch_that_ends_resumes_from_the_last_revision(self):
        self.feed({"result": {"events": [{"kv": kv("c", mod=14)}]}})
        self.gateway.streams[-1][2].callback(None)
        self.clock.advance(1)
        self.assertEqual(self.gateway.streams[-1][0]["create_request"]["start_revision"], "15")

    def test_compaction_reads_everything_again(self):
        self.gateway.range_kvs = [kv("me")]  # b went while we were not watching
        self.gateway.revision = 40
        on_line, d = self.gateway.streams[-1][1:]
        try:
            on_line({"result": {"canceled": True, "compact_revision": "30"}})
        except Exception as e:  # the stream reader turns this into the stream's failure
            d.errback(e)
        self.clock.advance(1)
        self.assertEqual(self.view.get("b").state, DEAD)
        self.assertEqual(self.gateway.streams[-1][0]["create_request"]["start_revision"], "41")

    def test_hostile_records_and_lines_are_refused_not_fatal(self):
        port_zero = json.dumps({"id": "x", "addresses": {"host": "h", "peer": 0, "rest": 1}}).encode()
        deep = b"[" * 100_000 + b"]" * 100_000
        for raw in (b"not json", b"[]", port_zero, deep, record("other").to_json()):  # the last: under the wrong key
            self.feed({"result": {"events": [{"kv": kv("x", raw=raw)}]}})
        self.assertIsNone(self.view.get("x"))
        self.assertIsNone(self.view.get("other"))
        on_line = self.gateway.streams[-1][1]
        for line in ({"result": {"events": "nope"}}, {"error": "boom"}, [], {"result": {"events": [{"kv": 3}]}}):
            with self.assertRaises(EtcdError):
                on_line(line)

    def test_an_expired_lease_is_replaced(self):
        self.gateway.answers["/v3/lease/keepalive"] = {"result": {"ID": "1"}}  # no TTL: the lease is gone
        self.clock.advance(3)
        self.clock.advance(0)
        puts = [b for p, b in self.gateway.calls if p == "/v3/kv/put"]
        self.assertEqual([p["lease"] for p in puts], ["1", "2"])

    def test_unreachable_etcd_degrades_and_recovers(self):
        self.gateway.answers["/v3/lease/keepalive"] = Unreachable("http://etcd:2379: refused")
        self.clock.advance(3)
        self.assertEqual(self.m.problems(), ["etcd: keepalive: http://etcd:2379: refused"])
        self.assertEqual(self.view.get("b").state, ALIVE, "the last known view stays")
        del self.gateway.answers["/v3/lease/keepalive"]
        self.clock.advance(1)
        self.assertEqual(self.m.problems(), [])

    def test_a_watch_etcd_cannot_serve_falls_back_to_polling(self):
        for _ in range(3):
            self.gateway.streams[-1][2].errback(EtcdError("/v3/watch: Not Found"))
            self.clock.advance(5)
        self.assertTrue(self.m.polling)
        ranges = sum(1 for p, _ in self.gateway.calls if p == "/v3/kv/range")
        self.gateway.range_kvs = [kv("me"), kv("b"), kv("d")]
        self.clock.advance(5)
        self.assertGreater(sum(1 for p, _ in self.gateway.calls if p == "/v3/kv/range"), ranges)
        self.assertEqual(self.view.get("d").state, ALIVE)

    def test_stop_revokes_the_lease(self):
        self.successResultOf(self.m.stopService())
        self.assertEqual(self.gateway.calls[-1], ("/v3/lease/revoke", {"ID": "1"}))


class EtcdHelpersTests(SynchronousTestCase):
    def test_prefix_end(self):
        self.assertEqual(prefix_end(b"/a/"), b"/a0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff"), b"\x00")

    def test_settings(self):
        config = load_config({"discovery": "etcd", "etcd_endpoints": "10.0.0.1:2379,https://etcd.example:2379",
                              "cluster": "prod"}, {})
        self.assertEqual(config.etcd_endpoints, ("http://10.0.0.1:2379", "https://etcd.example:2379"))
        self.assertEqual(config.etcd_prefix, "/dhashmap/prod/members/")
        for bad in ({"etcd_endpoints": "ftp://x:1"}, {"etcd_endpoints": "nohost"}, {"etcd_prefix": "no/slash"},
                    {"etcd_ttl": "1"}):
            with self.assertRaises(ConfigError):
                load_config(bad, {})


class HungMemberTests(SynchronousTestCase):
    def test_a_registered_member_that_stops_answering_pings_is_routed_around(self):
        """Its lease may still be alive (only its native protocol hangs): the health checks decide."""
        clock = Clock()
        view = MembershipView(Member("me", "127.0.0.1", 7000))
        gateway = FakeGateway()
        gateway.range_kvs = [kv("me"), kv("b")]
        answers = {"b": False}

        class Pool:
            def request(self, member_id, frame, timeout=None):
                return succeed(None) if answers[member_id] else fail(TimeoutError("no answer"))

            def probe(self, host, port):
                return Deferred()

        m = EtcdMembership(view, Pool(), clock, random.Random(1), gateway, PREFIX, 9, 5.0, record("me"),
                           interval=1.0, timeout=0.5, threshold=3)
        m.startService()
        clock.pump([1.0] * 3)
        self.assertEqual(view.get("b").state, DEAD)
        self.assertIn("b", m.registered, "still registered in etcd")
        answers["b"] = True
        clock.advance(1.0)
        self.assertEqual(view.get("b").state, ALIVE)
