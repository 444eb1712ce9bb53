"""The dashboard's files (``/ui``) and its JSON (``/v1/node/stats``), through StubTreq on a simulated node."""

import json
import re
from importlib import resources

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.introspect import jsonable
from twisted_dhm.testing.simulation import SimCluster


class DashboardTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = SimCluster(3, partitions=64)
        self.cluster.run(5)
        self.node = self.cluster.nodes["node1"]
        self.treq = StubTreq(self.node.site.resource)

    def request(self, method, path, body=None):
        d = self.treq.request(method, "http://node1:8080" + path, data=body, allow_redirects=False)
        out = []
        d.addCallback(lambda response: response.content().addCallback(lambda body: (response, body)))
        d.addBoth(out.append)
        for _ in range(1000):  # replication runs on the simulated clock and network
            self.treq.flush()
            if out:
                break
            self.cluster.run(0.01)
        self.assertTrue(out, f"no answer to {method} {path}")
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def test_page_and_assets(self):
        response, body = self.request("GET", "/ui/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b'<table id="members">', body)
        # Everything the page loads comes from this node: no other site, no CDN.
        for ref in re.findall(rb'(?:src|href)="([^"]+)"', body):
            self.assertTrue(ref.startswith(b"/ui/"), ref)
            asset, content = self.request("GET", ref.decode())
            self.assertEqual(asset.code, 200, ref)
            self.assertTrue(content)
        js = self.request("GET", "/ui/dashboard.js")[1]
        self.assertNotRegex(js, rb"https?://(?!www\.w3\.org/2000/svg\b)")  # the SVG namespace is a name
        self.assertIn(b"/v1/node/stats", js)

    def test_bare_ui_redirects_and_unknown_files_are_404(self):
        response, _ = self.request("GET", "/ui")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/"])
        for path in ("/ui/nope.js", "/ui/../setup.py", "/ui/%2e%2e/openapi.json", "/ui/ui/dashboard.js"):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["error"]["code"], "no_route")
        response, body = self.request("POST", "/ui/", b"x")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertEqual(json.loads(body)["error"]["code"], "method_not_allowed")

    def test_assets_ship_in_the_package(self):
        files = {p.name for p in resources.files("twisted_dhm.api").joinpath("ui").iterdir()}
        self.assertTrue({"index.html", "dashboard.js", "dashboard.css"} <= files)

    def test_node_stats(self):
        self.request("PUT", "/v1/kv/a", b"1")
        self.request("GET", "/v1/kv/a")
        self.request("GET", "/v1/kv/missing")
        response, body = self.request("GET", "/v1/node/stats")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        stats = json.loads(body)
        self.assertEqual(stats["node"], "node1")
        self.assertEqual(stats["time"], self.cluster.clock.seconds())
        get = stats["requests"]["get"]
        self.assertEqual((get["count"], get["by_code"]), (2, {"200": 1, "404": 1}))
        self.assertEqual(get["buckets"][-1], ["+Inf", 2])
        self.assertEqual(stats["requests"]["put"]["by_code"], {"201": 1})
        self.assertEqual(stats["hints"], {"queued": 0, "by_target": {}, "delivered": 0})
        self.assertEqual(stats["transfers"], [])
        self.assertEqual(stats["partitions_owned"], 64)

    def test_transfers_of_a_rebalancer_become_json(self):
        class Rebalancer:
            def in_flight(self):
                return [{"partition": 7, "to": "node2", "bytes": b"x"}, ("a", 1)]

        self.node.rebalance = Rebalancer()
        stats = json.loads(self.request("GET", "/v1/node/stats")[1])
        self.assertEqual(stats["transfers"], [{"partition": 7, "to": "node2", "bytes": "x"}, ["a", 1]])

    def test_jsonable(self):
        self.assertEqual(jsonable({1: {b"k", }, "o": object}), {"1": ["k"], "o": repr(object)})
