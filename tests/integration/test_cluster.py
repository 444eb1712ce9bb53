"""Real clusters: twistd processes on 127.0.0.1, LMDB on disk, the native protocol between them."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import lmdb
import pytest

from twisted_dhm.ring import partition_of
from twisted_dhm.storage.interface import decode_record
from twisted_dhm.testing.process import NodeProcess, wait_for

pytestmark = pytest.mark.integration


def kv(key: bytes, query: str = "") -> str:
    return "/v1/kv/" + quote(key, safe="") + query


def alive_members(node) -> set[str]:
    try:
        status, _, body = node.request("GET", "/v1/cluster/members", timeout=2)
    except OSError:
        return set()
    return {m["id"] for m in json.loads(body)["members"] if m["state"] == "alive"} if status == 200 else set()


def disk_records(node) -> dict[bytes, object]:
    """Read a node's records straight from its LMDB files (read-only, beside the running process)."""
    env = lmdb.open(str(node.data_dir), readonly=True, lock=True, max_dbs=8, create=False)
    try:
        db = env.open_db(b"records", create=False)
        with env.begin(db=db) as txn:
            return {bytes(k): decode_record(bytes(v)) for k, v in txn.cursor()}
    finally:
        env.close()


@pytest.fixture
def cluster(tmp_path):
    started: list[NodeProcess] = []

    def start(size, extra=()):
        nodes = [NodeProcess(tmp_path / f"n{i}" / "data", node_id=f"n{i}") for i in range(1, size + 1)]
        seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in nodes)
        for node in nodes:
            node.extra_args = ("--seed-nodes", seeds, "--health-interval", "0.3", "--health-threshold", "3",
                               "--handoff-interval", "0.5", "--request-timeout", "2", *extra)
            started.append(node)
            node.start()
        ids = {n.node_id for n in nodes}
        assert wait_for(lambda: all(alive_members(n) == ids for n in nodes)), [n.log() for n in nodes]
        return nodes

    yield start
    for node in started:
        node.kill()


def put_many(node, keys, value_of, workers=32, query=""):
    def put(key):
        return key, node.request("PUT", kv(key, query), value_of(key))[0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(put, keys))


def get_many(node, keys, workers=32):
    def get(key):
        status, _, body = node.request("GET", kv(key))
        return key, (status, body)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(get, keys))


def test_three_nodes_every_key_everywhere(cluster):
    nodes = cluster(3)
    keys = [b"k%05d" % i for i in range(10000)]
    statuses = put_many(nodes[0], keys, lambda k: b"value-" + k)
    assert set(statuses.values()) == {201}
    for reader in nodes[1:]:
        answers = get_many(reader, keys)
        assert all(answers[k] == (200, b"value-" + k) for k in keys)
    # N = 3 on 3 nodes: once the writes beyond the quorum have landed, every key is on every
    # node's disk, with one version.
    def settled():
        disks = [disk_records(n) for n in nodes]
        return all(key in d for d in disks for key in keys) and all(
            len({d[key].version for d in disks}) == 1 for key in keys)

    assert wait_for(settled, deadline=60)


def test_five_nodes_each_key_on_exactly_its_preference_list(cluster):
    nodes = cluster(5)
    keys = [b"five/%04d" % i for i in range(2000)]
    assert set(put_many(nodes[2], keys, lambda k: k).values()) == {201}
    status, _, body = nodes[0].request("GET", "/v1/cluster/ring")
    ring = json.loads(body)
    owners = {row["partition"]: set(row["owners"]) for row in ring["table"]}
    assert ring["replicas"] == 3 and len(owners) == ring["partitions"]
    def placed_exactly():
        disks = {n.node_id: disk_records(n) for n in nodes}
        return all({node_id for node_id, records in disks.items() if key in records}
                   == owners[partition_of(key, ring["partitions"])] for key in keys)

    # A quorum write is acknowledged by 2 of 3; the third lands a moment later.
    assert wait_for(placed_exactly, deadline=60)
    answers = get_many(nodes[4], keys)
    assert all(answers[k] == (200, k) for k in keys)


def test_kill_9_of_one_node_loses_no_acknowledged_write(cluster):
    nodes = cluster(3)
    acked: dict[bytes, bytes] = {}
    failures = []
    stop = threading.Event()

    def writer(worker):
        i = 0
        while not stop.is_set() and i < 5000:
            key, value = b"w%d/%05d" % (worker, i), b"v%d" % i
            status, _, body = nodes[i % 2].request("PUT", kv(key), value)  # through node1 and node2
            if status in (201, 204):
                acked[key] = value
            else:
                failures.append((status, body))
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(acked) > 2000, deadline=60)
    nodes[2].kill()  # kill -9 in the middle of the load
    count_at_kill = len(acked)
    assert wait_for(lambda: len(acked) > count_at_kill + 2000, deadline=60)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert failures == [], failures[:5]  # quorum writes kept succeeding with one node down
    # Quorum reads of every acknowledged write, through the survivors.
    for reader in nodes[:2]:
        answers = get_many(reader, list(acked))
        assert all(answers[k] == (200, v) for k, v in acked.items())
    # The killed node comes back with its disk and receives what it missed.
    back = NodeProcess(nodes[2].data_dir, node_id="n3", port=nodes[2].port, peer_port=nodes[2].peer_port,
                       extra_args=nodes[2].extra_args)
    nodes.append(back)
    back.start()
    try:
        def converged():
            records = disk_records(back)
            return all(k in records and records[k].value == v for k, v in acked.items())

        assert wait_for(converged, deadline=60), "the returning node received every write it missed"
        status, _, metrics = nodes[0].request("GET", "/metrics")
        assert b"dhashmap_hints_delivered_total" in metrics
        answers = get_many(back, list(acked))
        assert all(answers[k] == (200, v) for k, v in acked.items())
    finally:
        back.kill()


def test_concurrent_writers_to_one_key_converge(cluster):
    nodes = cluster(3)

    def hammer(node_index):
        for i in range(200):
            nodes[node_index].request("PUT", kv(b"contended"), b"%d-%d" % (node_index, i))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    def one_winner():
        records = [disk_records(n).get(b"contended") for n in nodes]
        return all(records) and len({r.version for r in records}) == 1

    assert wait_for(one_winner, deadline=30)
    values = {n.request("GET", kv(b"contended"))[2] for n in nodes}
    assert len(values) == 1


def test_quorum_parameters_and_strictness(cluster):
    nodes = cluster(3)
    assert nodes[0].request("PUT", kv(b"q", "?w=all"), b"x")[0] == 201
    assert nodes[1].request("GET", kv(b"q", "?r=all"))[2] == b"x"
    status, _, body = nodes[0].request("PUT", kv(b"q", "?w=4"), b"x")
    assert status == 400 and b"3 replicas" in body
    assert nodes[0].request("PUT", kv(b"q", "?w=banana"), b"x")[0] == 400
    nodes[1].kill()
    nodes[2].kill()
    status, _, body = nodes[0].request("PUT", kv(b"q2"), b"x")
    error = json.loads(body)["error"]
    assert status == 503 and error["code"] == "unavailable"
    assert error["required"] == 2 and error["acks"] == 1
    assert nodes[0].request("PUT", kv(b"q3", "?w=one"), b"x")[0] == 201
    assert nodes[0].request("GET", kv(b"q3", "?r=one"))[2] == b"x"
