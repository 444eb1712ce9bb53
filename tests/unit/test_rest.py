"""The REST API through StubTreq: no reactor, no sockets, an injected clock."""

import base64
import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.api.rest import Limits, build_site
from twisted_dhm.cluster.coordinator import LATER
from twisted_dhm.storage.lmdb_engine import LMDBEngine
from twisted_dhm.storage.memory import MemoryEngine
from twisted_dhm.testing.stack import single_node_coordinator


class RestTestCase(SynchronousTestCase):
    limits = Limits(max_key_size=64, max_value_size=1024)

    def make_engine(self):
        return MemoryEngine()

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.engine = self.make_engine()
        self.engine.open()
        self.ready = True
        coordinator = self.coordinator = single_node_coordinator(self.engine, self.clock)
        self.metrics = NodeMetrics(self.engine, process=False)
        site = build_site(coordinator, self.metrics, self.clock, self.limits, 60, "n1", lambda: self.ready)
        self.treq = StubTreq(site.resource)

    def request(self, method, path, body=b"", headers=None):
        d = self.treq.request(method, "http://node" + path, data=body or None, headers=headers or {})
        self.treq.flush()
        self.clock.advance(0)  # an LMDB engine's group commit
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response, content

    def kv(self, key: bytes) -> str:
        return "/v1/kv/" + quote(key, safe="")

    def assertError(self, response, content, status, code):
        self.assertEqual(response.code, status, content)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(json.loads(content)["error"]["code"], code)


class KeyValueTests(RestTestCase):
    def test_put_get_delete_round_trip(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"value")
        self.assertEqual(r.code, 201)
        tag = r.headers.getRawHeaders("etag")[0]
        self.assertTrue(tag.startswith('"') and tag.endswith('"'))
        r, body = self.request("GET", self.kv(b"k"))
        self.assertEqual((r.code, body), (200, b"value"))
        self.assertEqual(r.headers.getRawHeaders("etag"), [tag])
        self.assertEqual(r.headers.getRawHeaders("content-type"), ["application/octet-stream"])
        self.assertEqual(r.length, 5, "an explicit Content-Length, not chunked")
        r, _ = self.request("PUT", self.kv(b"k"), b"other")
        self.assertEqual(r.code, 204)
        self.assertNotEqual(r.headers.getRawHeaders("etag"), [tag])
        r, _ = self.request("DELETE", self.kv(b"k"))
        self.assertEqual(r.code, 204)
        self.assertTrue(r.headers.getRawHeaders("etag"), "the tombstone's version")
        r, body = self.request("GET", self.kv(b"k"))
        self.assertError(r, body, 404, "not_found")

    def test_head(self):
        self.request("PUT", self.kv(b"k"), b"12345")
        r, body = self.request("HEAD", self.kv(b"k"))
        self.assertEqual((r.code, body), (200, b""))
        self.assertTrue(r.headers.getRawHeaders("etag"))

    def test_a_read_this_node_alone_answers_is_answered_in_the_call(self):
        self.request("PUT", self.kv(b"k"), b"v")
        asked = []
        get = self.coordinator.get
        self.coordinator.get = lambda *args, **kw: asked.append(args) or get(*args, **kw)
        r, body = self.request("GET", self.kv(b"k"))
        self.assertEqual((r.code, body, asked), (200, b"v", []), "no Deferred: get_now answered")
        self.assertEqual(self.request("GET", self.kv(b"nope"))[0].code, 404)
        self.coordinator.get_now = lambda key, r: LATER  # other replicas to ask
        r, body = self.request("GET", self.kv(b"k"))
        self.assertEqual((r.code, body, len(asked)), (200, b"v", 1))

    def test_empty_value(self):
        r, _ = self.request("PUT", self.kv(b"empty"))
        self.assertEqual(r.code, 201)
        r, body = self.request("GET", self.kv(b"empty"))
        self.assertEqual((r.code, body), (200, b""))

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(st.binary(min_size=1, max_size=64), st.binary(max_size=300))
    def test_any_key_bytes_round_trip(self, key, value):
        r, _ = self.request("PUT", self.kv(key), value)
        self.assertIn(r.code, (201, 204))
        r, body = self.request("GET", self.kv(key))
        self.assertEqual((r.code, body), (200, value))
        self.assertEqual(self.engine.get(key).value, value, "stored under the exact key bytes")

    def test_slash_in_key_is_not_a_separator(self):
        self.request("PUT", "/v1/kv/a%2Fb", b"encoded")
        self.request("PUT", "/v1/kv/a/b", b"raw")
        self.assertEqual(self.engine.get(b"a/b").value, b"raw", "both spellings name the key a/b")
        r, body = self.request("GET", "/v1/kv/a%2Fb")
        self.assertEqual(body, b"raw")

    def test_bad_escape(self):
        for path in ("/v1/kv/%zz", "/v1/kv/a%2", "/v1/kv/%"):
            r, body = self.request("GET", path)
            self.assertError(r, body, 400, "invalid_request")

    def test_empty_key(self):
        r, body = self.request("PUT", "/v1/kv/", b"x")
        self.assertError(r, body, 400, "invalid_request")

    def test_key_too_long(self):
        r, body = self.request("PUT", self.kv(b"k" * 65), b"x")
        self.assertError(r, body, 414, "key_too_long")
        r, _ = self.request("PUT", self.kv(b"k" * 64), b"x")
        self.assertEqual(r.code, 201)

    def test_value_too_large(self):
        r, body = self.request("PUT", self.kv(b"k"), b"x" * 1025)
        self.assertError(r, body, 413, "value_too_large")
        self.assertIsNone(self.engine.get(b"k"))

    def test_method_not_allowed(self):
        r, body = self.request("POST", self.kv(b"k"), b"x")
        self.assertError(r, body, 405, "method_not_allowed")
        self.assertEqual(r.headers.getRawHeaders("allow"), ["GET, HEAD, PUT, DELETE"])


class TTLTests(RestTestCase):
    def test_ttl_expires(self):
        r, _ = self.request("PUT", self.kv(b"k") + "?ttl=5", b"v")
        self.assertEqual(r.code, 201)
        self.clock.advance(4.9)
        self.assertEqual(self.request("GET", self.kv(b"k"))[0].code, 200)
        self.clock.advance(0.1)
        self.assertEqual(self.request("GET", self.kv(b"k"))[0].code, 404)

    def test_bad_ttl(self):
        for ttl in ("0", "-1", "abc", "1.5", "999999999999"):
            r, body = self.request("PUT", self.kv(b"k") + "?ttl=" + ttl, b"v")
            self.assertError(r, body, 400, "invalid_request")
        r, body = self.request("PUT", self.kv(b"k") + "?ttl=1&ttl=2", b"v")
        self.assertError(r, body, 400, "invalid_request")


class ConditionalTests(RestTestCase):
    def test_if_match(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"1")
        tag1 = r.headers.getRawHeaders("etag")[0]
        r, _ = self.request("PUT", self.kv(b"k"), b"2", {"If-Match": tag1})
        self.assertEqual(r.code, 204)
        tag2 = r.headers.getRawHeaders("etag")[0]
        r, body = self.request("PUT", self.kv(b"k"), b"3", {"If-Match": tag1})
        self.assertError(r, body, 412, "precondition_failed")
        self.assertEqual(self.request("GET", self.kv(b"k"))[1], b"2")
        r, _ = self.request("PUT", self.kv(b"k"), b"3", {"If-Match": f'"junk", {tag2}'})
        self.assertEqual(r.code, 204, "any tag of a list may match")

    def test_if_match_garbage_and_weak_never_match(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"1")
        tag = r.headers.getRawHeaders("etag")[0]
        for header in ("garbage", '"AAAA"', "W/" + tag):
            r, body = self.request("PUT", self.kv(b"k"), b"2", {"If-Match": header})
            self.assertError(r, body, 412, "precondition_failed")

    def test_if_match_on_missing_key(self):
        r, body = self.request("PUT", self.kv(b"k"), b"1", {"If-Match": "*"})
        self.assertError(r, body, 412, "precondition_failed")

    def test_if_none_match_star(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"1", {"If-None-Match": "*"})
        self.assertEqual(r.code, 201)
        r, body = self.request("PUT", self.kv(b"k"), b"2", {"If-None-Match": "*"})
        self.assertError(r, body, 412, "precondition_failed")

    def test_conditional_delete(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"1")
        tag = r.headers.getRawHeaders("etag")[0]
        self.request("PUT", self.kv(b"k"), b"2")
        r, body = self.request("DELETE", self.kv(b"k"), headers={"If-Match": tag})
        self.assertError(r, body, 412, "precondition_failed")
        self.assertEqual(self.request("GET", self.kv(b"k"))[0].code, 200)

    def test_get_if_none_match_gives_304(self):
        r, _ = self.request("PUT", self.kv(b"k"), b"1")
        tag = r.headers.getRawHeaders("etag")[0]
        r, body = self.request("GET", self.kv(b"k"), headers={"If-None-Match": tag})
        self.assertEqual((r.code, body), (304, b""))
        self.request("PUT", self.kv(b"k"), b"2")
        r, body = self.request("GET", self.kv(b"k"), headers={"If-None-Match": tag})
        self.assertEqual((r.code, body), (200, b"2"))


class ListTests(RestTestCase):
    def list(self, query):
        r, body = self.request("GET", "/v1/kv" + query)
        self.assertEqual(r.code, 200, body)
        return json.loads(body)

    def test_prefix_and_pages(self):
        for k in [b"user/1", b"user/2", b"user/3", b"users", b"zz"]:
            self.request("PUT", self.kv(k), b"v")
        page = self.list("?prefix=user%2F&limit=2")
        self.assertEqual(page["keys"], ["user/1", "user/2"])
        page = self.list(f"?prefix=user%2F&limit=2&cursor={page['cursor']}")
        self.assertEqual(page, {"keys": ["user/3"], "cursor": None})
        self.assertEqual(self.list("")["keys"], ["user/1", "user/2", "user/3", "users", "zz"])

    def test_binary_keys_need_base64(self):
        self.request("PUT", self.kv(b"\xff\x00"), b"v")
        r, body = self.request("GET", "/v1/kv")
        self.assertError(r, body, 400, "invalid_request")
        self.assertIn(b"encoding=base64", body)
        page = self.list("?encoding=base64")
        self.assertEqual([base64.b64decode(k) for k in page["keys"]], [b"\xff\x00"])

    def test_bad_parameters(self):
        for query in ("?limit=0", "?limit=10001", "?limit=x", "?encoding=rot13", "?cursor=%%%"):
            r, body = self.request("GET", "/v1/kv" + query)
            self.assertError(r, body, 400, "invalid_request")


class OperationalEndpointTests(RestTestCase):
    def test_health_and_ready(self):
        r, body = self.request("GET", "/health")
        self.assertEqual((r.code, json.loads(body)["status"]), (200, "ok"))
        self.assertEqual(self.request("GET", "/ready")[0].code, 200)
        self.ready = False
        self.assertEqual(self.request("GET", "/ready")[0].code, 503)

    def test_unknown_path_is_json_404(self):
        r, body = self.request("GET", "/nothing/here")
        self.assertError(r, body, 404, "no_route")

    def test_wrong_method_on_klein_route(self):
        r, body = self.request("DELETE", "/health")
        self.assertError(r, body, 405, "method_not_allowed")

    def test_metrics(self):
        self.request("PUT", self.kv(b"k"), b"v")
        self.request("GET", self.kv(b"k"))
        self.request("GET", self.kv(b"missing"))
        self.clock.advance(0)
        r, body = self.request("GET", "/metrics")
        self.assertEqual(r.code, 200)
        text = body.decode()
        self.assertIn('dhashmap_requests_total{code="201",op="put"} 1.0', text)
        self.assertIn('dhashmap_requests_total{code="404",op="get"} 1.0', text)
        self.assertIn('dhashmap_request_duration_seconds_count{op="get"} 2.0', text)
        self.assertIn("dhashmap_storage_keys 1.0", text)

    def test_openapi_matches_docs_copy(self):
        import pathlib

        r, body = self.request("GET", "/openapi.json")
        self.assertEqual(r.code, 200)
        doc = json.loads(body)
        self.assertTrue(doc["openapi"].startswith("3."))
        for path in ("/v1/kv/{key}", "/v1/kv", "/health", "/ready", "/metrics"):
            self.assertIn(path, doc["paths"])
        from twisted_dhm.api.rest import RestAPI

        for rule in RestAPI.app.url_map.iter_rules():  # every Klein route, with each of its methods
            self.assertIn(rule.rule, doc["paths"], "undocumented endpoint")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                self.assertIn(method.lower(), doc["paths"][rule.rule], f"undocumented {method} {rule.rule}")
        docs_copy = pathlib.Path(__file__).parents[2] / "docs" / "openapi.json"
        self.assertEqual(json.loads(docs_copy.read_text()), doc, "docs/openapi.json is current")


class LMDBRestTestCase(RestTestCase):
    """The same requests against the LMDB engine (commits run at once, at the end of the turn):
    reads answered from stored bytes, versions left encoded (RecordView)."""

    def make_engine(self):
        engine = LMDBEngine(self.mktemp(), self.clock, map_size=1 << 24,
                            run_in_thread=lambda f, *args: maybeDeferred(f, *args))
        self.addCleanup(lambda: self.successResultOf(engine.close()))
        return engine


class LMDBKeyValueTests(LMDBRestTestCase, KeyValueTests):
    pass


class LMDBTTLTests(LMDBRestTestCase, TTLTests):
    pass


class LMDBConditionalTests(LMDBRestTestCase, ConditionalTests):
    pass
