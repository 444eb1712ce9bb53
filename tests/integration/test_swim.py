"""SWIM between real processes: twistd nodes gossiping over UDP (and TCP push-pull) on 127.0.0.1."""

import base64
import json
import time

import pytest

from twisted_dhm.testing.process import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration

KEY_1 = base64.b64encode(bytes(range(32))).decode()
KEY_2 = base64.b64encode(bytes(range(100, 116))).decode()
# Faster than the LAN profile so the suite stays quick: 4 live members give a suspicion
# timeout of 3 x 0.5 s = 1.5 s at the least and 6 x that = 9 s at the most.
TIMING = ("--gossip-probe-interval", "0.5", "--gossip-probe-timeout", "0.2", "--gossip-suspicion-mult", "3",
          "--gossip-interval", "0.1")
DEAD_BOUND = 9 + 3 * 0.5 + 2  # suspicion max + three protocol periods + slack for a loaded machine



def state_of(node, member_id):
    return node.members().get(member_id, {}).get("state")


def metric(node, name) -> float:
    _, _, body = node.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def swim_cluster(tmp_path):
    started: list[NodeProcess] = []

    def start(size, extra=()):
        nodes = []
        seed_port = None
        for i in range(1, size + 1):
            gossip_port = free_port()
            seed_port = seed_port or gossip_port
            node = NodeProcess(tmp_path / f"s{i}" / "data", node_id=f"s{i}")
            node.gossip_port = gossip_port
            node.extra_args = ("--discovery", "swim", "--gossip-port", str(gossip_port),
                               "--seed-nodes", f"127.0.0.1:{seed_port}", *TIMING, *extra)
            nodes.append(node)
            started.append(node)
        for node in nodes:
            node.start()
        ids = {n.node_id for n in nodes}
        assert wait_for(lambda: all({m for m, v in n.members().items() if v["state"] == "alive"} == ids
                                    for n in nodes)), [n.log() for n in nodes]
        return nodes

    start.started = started
    yield start
    for node in started:
        node.kill()


def test_five_nodes_join_from_one_seed_detect_a_kill_and_take_it_back(swim_cluster):
    nodes = swim_cluster(5)
    n1, n3, n5 = nodes[0], nodes[2], nodes[4]
    # One store: a write through one node reads back through another.
    assert n1.request("PUT", "/v1/kv/greeting", b"hello")[0] in (200, 201, 204)
    assert n5.request("GET", "/v1/kv/greeting")[2] == b"hello"
    seen = n5.members()["s3"]
    assert seen["addresses"] == {"host": "127.0.0.1", "peer": n3.peer_port, "rest": n3.port,
                                 "gossip": n3.gossip_port}
    incarnation = seen["incarnation"]

    n3.kill()
    killed = time.monotonic()
    others = [n for n in nodes if n is not n3]
    assert wait_for(lambda: all(state_of(n, "s3") == "dead" for n in others), deadline=DEAD_BOUND + 5), \
        {n.node_id: state_of(n, "s3") for n in others}
    took = time.monotonic() - killed
    assert took <= DEAD_BOUND, f"dead everywhere after {took:.1f}s; bound {DEAD_BOUND}s"
    # Quorum writes go on with one of five down.
    assert n1.request("PUT", "/v1/kv/while-down", b"x")[0] in (200, 201, 204)

    n3.start()
    assert wait_for(lambda: all(state_of(n, "s3") == "alive" for n in others), deadline=20)
    assert all(n.members()["s3"]["incarnation"] > incarnation for n in others)
    assert n3.request("GET", "/v1/kv/while-down")[2] == b"x"


def test_sigterm_is_a_graceful_leave(swim_cluster):
    nodes = swim_cluster(3)
    leaving = nodes[1]
    assert leaving.stop() in (0, -15)  # twistd exits by the signal it handled
    # "left" arrives with the leave message itself, long before any suspicion could time out.
    assert wait_for(lambda: all(state_of(n, "s2") == "left" for n in (nodes[0], nodes[2])), deadline=1.5)


def test_encrypted_gossip_rotates_keys_and_refuses_strangers(swim_cluster, tmp_path):
    nodes = swim_cluster(3, extra=("--gossip-keys", KEY_1))
    status, _, body = nodes[0].request("GET", "/v1/cluster/gossip/keys")
    assert status == 200 and json.loads(body)["encrypted"] is True
    assert KEY_1 not in body.decode(), "the key ring API shows fingerprints, never keys"

    for action, key in (("install", KEY_2), ("use", KEY_2), ("remove", KEY_1)):
        for node in nodes:
            status, _, body = node.request("POST", "/v1/cluster/gossip/keys", json.dumps({action: key}).encode())
            assert status == 200, body
            time.sleep(0.2)  # one node after another, with gossip running between them
    # Let gossip run on the new key for a while (each node hears at least 20 more packets).
    heard = {n.node_id: metric(n, "dhashmap_gossip_packets_received_total") for n in nodes}
    assert wait_for(lambda: all(metric(n, "dhashmap_gossip_packets_received_total") >= heard[n.node_id] + 20
                                for n in nodes), deadline=20)
    for node in nodes:
        assert metric(node, "dhashmap_gossip_auth_failures_total") == 0, "no packet was refused mid-rotation"
        assert {m["state"] for m in node.members().values()} == {"alive"}
        assert len(json.loads(node.request("GET", "/v1/cluster/gossip/keys")[2])["keys"]) == 1
    status, _, body = nodes[0].request("POST", "/v1/cluster/gossip/keys", json.dumps({"remove": KEY_2}).encode())
    assert status == 409 and b"primary" in body

    # A node with only the old key cannot join, and its packets are counted as refused.
    seed = nodes[0].gossip_port
    stranger = NodeProcess(tmp_path / "stranger" / "data", node_id="stranger")
    stranger.extra_args = ("--discovery", "swim", "--gossip-port", str(free_port()),
                           "--seed-nodes", f"127.0.0.1:{seed}", "--gossip-keys", KEY_1, *TIMING)
    swim_cluster.started.append(stranger)
    stranger.start()
    assert wait_for(lambda: metric(nodes[0], "dhashmap_gossip_auth_failures_total") > 0, deadline=10)
    assert "stranger" not in nodes[0].members()
    assert set(stranger.members()) == {"stranger"}

    # The rotated ring was saved: a restarted node still speaks the new key.
    nodes[2].stop()
    nodes[2].start()
    assert wait_for(lambda: state_of(nodes[0], "s3") == "alive", deadline=15)
