"""Operating a live 3-node SWIM cluster: the dashboard in headless Chromium, /metrics through
promtool and the Grafana dashboard, JSON logs with request ids.

One cluster (real twistd processes, LMDB on disk, gossip over UDP) serves every test of this
module; the fixture always stops it.
"""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest
from dhashmap_client import NativeClient

from twisted_dhm.api import kv_pb2, kv_pb2_grpc
from twisted_dhm.testing.process import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration

IDS = ("node1", "node2", "node3")
GOSSIP_TIMING = ("--gossip-probe-interval", "0.5", "--gossip-probe-timeout", "0.2", "--gossip-interval", "0.1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("ops")
    nodes = []
    seed = None
    try:
        for node_id in IDS:
            gossip_port = free_port()
            seed = seed or gossip_port
            node = NodeProcess(base / node_id / "data", node_id=node_id)
            node.extra_args = ("--discovery", "swim", "--gossip-port", str(gossip_port),
                               "--seed-nodes", f"127.0.0.1:{seed}", *GOSSIP_TIMING,
                               "--log-format", "json", "--access-log", "true",
                               *(("--log-level", "warn") if node_id == IDS[-1] else ()))
            nodes.append(node)
            node.start()
        assert wait_for(lambda: all(n.member_states() == dict.fromkeys(IDS, "alive") for n in nodes)), \
            [n.log() for n in nodes]
        for i in range(20):  # some traffic, so request rates, latencies and storage have numbers
            assert nodes[i % 3].request("PUT", f"/v1/kv/ops-{i}", b"v%d" % i)[0] in (201, 204)
            assert nodes[(i + 1) % 3].request("GET", f"/v1/kv/ops-{i}")[0] == 200
        # ... over the native protocol and gRPC too (their metrics appear with their first request).
        with NativeClient(nodes[0].host, nodes[0].peer_port, timeout=5.0) as native:
            assert native.get(b"ops-1").value == b"v1"
        with grpc.insecure_channel(f"127.0.0.1:{nodes[0].grpc_port}") as channel:
            assert kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"ops-2"), timeout=5).value == b"v2"
        # (gRPC's count is made on its own thread as the call returns: maybe a moment after the answer.)
        assert wait_for(lambda: b"dhashmap_grpc_requests_total{" in nodes[0].request("GET", "/metrics")[2])
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the dashboard test needs headless Chromium: apt-get install chromium (.ci/run does)"
    return path


def run_chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    env = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", *args, url],
        capture_output=True, timeout=90, env=env)


class DomRows(HTMLParser):
    """The members table's rows and the ring's arcs, from Chromium's dump of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.members: dict[str, str] = {}
        self.arc_owners: set[str] = set()
        self.request_ops: set[str] = set()
        self.swatch_styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-member" in a:
            self.members[a["data-member"]] = a.get("data-state", "")
        if tag == "path" and a.get("data-owner"):
            self.arc_owners.add(a["data-owner"])
        if tag == "tr" and "data-op" in a:
            self.request_ops.add(a["data-op"])
        if tag == "span" and a.get("class") == "swatch":
            self.swatch_styles.append(a.get("style") or "")


def test_dashboard_renders_the_live_cluster(cluster, tmp_path):
    node = cluster[0]
    result = run_chromium(tmp_path, f"{node.url}/ui/", "--dump-dom")
    dom = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    rows = DomRows()
    rows.feed(dom)
    assert rows.members == dict.fromkeys(IDS, "alive"), dom[-3000:]
    assert rows.arc_owners == set(IDS), "the ring is coloured by all three owners"
    assert {"get", "put"} <= rows.request_ops
    # Each member's colour, in the table and the legend (set through the CSSOM: the page's CSP has no inline styles).
    assert len(rows.swatch_styles) == 6 and all("background" in s for s in rows.swatch_styles), rows.swatch_styles
    assert re.search(r"<h1>dhashmap <span id=\"node-id\">— node1</span>", dom)
    assert "cannot reach" not in dom


def test_dashboard_screenshot(cluster, tmp_path):
    shot = tmp_path / "dashboard.png"
    result = run_chromium(tmp_path, f"{cluster[1].url}/ui/", f"--screenshot={shot}", "--window-size=1280,1100",
                          "--hide-scrollbars")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_node_stats_of_every_member_allow_cross_origin_reads(cluster):
    for node in cluster:
        status, headers, body = node.request("GET", "/v1/node/stats", headers={"Origin": "http://elsewhere"})
        assert status == 200 and headers["access-control-allow-origin"] == "*"
        stats = json.loads(body)
        assert stats["node"] == node.node_id
        assert stats["requests"]["put"]["count"] + stats["requests"]["get"]["count"] > 0


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "the metrics test needs promtool: apt-get install prometheus (.ci/run does)"
    return path


def scrape(node: NodeProcess) -> str:
    status, headers, body = node.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def sample_names(exposition: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines() if line and line[0] != "#"}


def test_metrics_pass_promtool(cluster):
    for node in cluster:
        text = scrape(node)
        result = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True,
                                timeout=60)
        assert (result.returncode, result.stdout + result.stderr) == (0, b""), (node.node_id, result)
        names = sample_names(text)
        assert {"dhashmap_requests_total", "dhashmap_request_duration_seconds_bucket", "dhashmap_storage_keys",
                "dhashmap_storage_commits_total", "dhashmap_members", "dhashmap_gossip_probes_total",
                "dhashmap_hints_queued", "process_cpu_seconds_total"} <= names, names
        assert 'dhashmap_members{state="alive"} 3.0' in text
    # The fixture's writes were counted where they arrived.
    assert any(re.search(r'dhashmap_requests_total\{code="20[14]",op="put"\} [1-9]', scrape(n)) for n in cluster)


GRAFANA = Path(__file__).parents[2] / "docs" / "grafana" / "dhashmap.json"


def test_grafana_dashboard_uses_only_metrics_the_nodes_export(cluster):
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["title"] and dashboard["uid"]
    queries = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        queries += [target["expr"] for target in panel["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    referenced = set(re.findall(r"\b(?:dhashmap|process)_[a-z0-9_]+", " ".join(queries)))
    assert len(referenced) > 20
    exported = set().union(*(sample_names(scrape(node)) for node in cluster))
    assert referenced - exported == set(), "the dashboard queries metrics no node exports"


def log_records(node: NodeProcess) -> list[dict]:
    """Every line of the node's output, each of which must be one JSON object."""
    return [json.loads(line) for line in node.log_path.read_text().splitlines() if line.strip()]


def test_json_logs_carry_node_subsystem_and_request_id(cluster):
    node = cluster[0]
    status, headers, _ = node.request("GET", "/v1/kv/ops-1", headers={"X-Request-Id": "walkthrough-1"})
    assert status == 200 and headers["x-request-id"] == "walkthrough-1"
    status, headers, _ = node.request("GET", "/v1/kv/ops-2")
    made_up = headers["x-request-id"]
    assert made_up.startswith("node1-")

    def ours():
        return [r for r in log_records(node) if r.get("request_id") in ("walkthrough-1", made_up)]

    assert wait_for(lambda: len(ours()) == 2, deadline=10), node.log()
    passed, generated = sorted(ours(), key=lambda r: r["request_id"] != "walkthrough-1")
    assert passed["subsystem"] == "dhashmap.access" and "GET /v1/kv/ops-1 200" in passed["message"]
    assert generated["subsystem"] == "dhashmap.access" and "GET /v1/kv/ops-2 200" in generated["message"]
    for n in cluster[:-1]:  # --log-level info, the default
        records = log_records(n)
        assert records and all(r["node"] == n.node_id for r in records)
        assert all(r["time"] and r["level"] in ("info", "warn", "error", "critical") for r in records
                   if r["subsystem"].startswith("dhashmap."))
        assert {"dhashmap.node", "dhashmap.access"} <= {r["subsystem"] for r in records}
    # The last node runs with --log-level warn: its start-up and access lines (info) are not written.
    records = log_records(cluster[-1])
    assert records and all(r["node"] == cluster[-1].node_id for r in records)
    assert [r for r in records if r["subsystem"].startswith("dhashmap.") and r["level"] in ("debug", "info")] == []
