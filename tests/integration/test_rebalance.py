"""Data movement with real processes: grow under writes, drain, lose a node and its disk, repair, deletes.

Every check reads the nodes' LMDB files directly: "each key on exactly its owners"
is a fact about disks, not about what the API answers.
"""

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lmdb
import pytest

from tests.integration.test_cluster import disk_records, get_many, kv, put_many
from twisted_dhm.ring import partition_of
from twisted_dhm.storage.interface import CorruptRecord
from twisted_dhm.testing.process import NodeProcess, wait_for

pytestmark = pytest.mark.integration

FAST = ("--health-interval", "0.3", "--health-threshold", "3", "--handoff-interval", "0.5",
        "--request-timeout", "2", "--anti-entropy-interval", "2", "--rereplicate-after", "3")


class Cluster:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.nodes: dict[str, NodeProcess] = {}

    def add(self, names):
        new = [NodeProcess(self.tmp_path / n / "data", node_id=n) for n in names]
        everyone = list(self.nodes.values()) + new
        seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in everyone)
        for node in new:
            node.extra_args = ("--seed-nodes", seeds, *FAST)
            self.nodes[node.node_id] = node
            node.start()
        return new

    def running(self):
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]

    def wait_members(self, ids):
        assert wait_for(lambda: all(alive(n) == set(ids) for n in self.running()), deadline=30), \
            [n.log() for n in self.running()]

    def ring(self, via=None):
        node = via or self.running()[0]
        table = json.loads(node.request("GET", "/v1/cluster/ring")[2])["table"]
        return {row["partition"]: row["owners"] for row in table}

    def placement_problems(self, keys):
        """Keys not on exactly their owners' disks (owners by the first running node's ring)."""
        ring = self.ring()
        disks = {n.node_id: disk_records(n) for n in self.running()}
        wrong = []
        for key in keys:
            owners = set(ring[partition_of(key)])
            holders = {node for node, records in disks.items() if key in records}
            if holders != owners:
                wrong.append((key, sorted(holders), sorted(owners)))
        return wrong

    def settled(self, keys):
        try:
            return not self.placement_problems(keys)
        except (lmdb.Error, OSError, ValueError):
            return False

    def kill_all(self):
        for node in self.nodes.values():
            node.kill()


def alive(node):
    return {m for m, state in node.member_states().items() if state == "alive"}


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.kill_all()


def keys_of(prefix, count):
    return [b"%s%05d" % (prefix, i) for i in range(count)]


def value_of(key):
    return b"value of " + key


def status(node):
    return json.loads(node.request("GET", "/v1/node/status")[2])


def test_growing_three_to_five_under_writes_loses_nothing_and_moves_about_two_fifths(cluster):
    first = cluster.add(["n1", "n2", "n3"])
    cluster.wait_members(["n1", "n2", "n3"])
    keys = keys_of(b"k", 2000)
    assert set(put_many(first[0], keys, value_of).values()) == {201}
    before = cluster.ring()

    acked: dict[bytes, bytes] = {}
    stop = threading.Event()

    def writer():
        # Bounded: at most 3000 writes or 60 s, whichever comes first.
        end = time.monotonic() + 60
        for i in range(3000):
            if stop.is_set() or time.monotonic() > end:
                return
            key = b"w%05d" % i
            node = first[i % 3]
            try:
                code = node.request("PUT", kv(key), value_of(key), timeout=5)[0]
            except OSError:
                continue
            if code in (200, 201, 204):
                acked[key] = value_of(key)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        cluster.add(["n4", "n5"])
        cluster.wait_members(["n1", "n2", "n3", "n4", "n5"])
        # Keep writing until some writes landed on the five-node table too.
        joined = len(acked)
        assert wait_for(lambda: len(acked) >= joined + 50, deadline=30), len(acked)
    finally:
        stop.set()
        thread.join(timeout=70)
    assert acked, "the writer got no write through"
    every = keys + sorted(acked)
    assert wait_for(lambda: cluster.settled(every), deadline=90, step=1), cluster.placement_problems(every)[:5]

    after = cluster.ring()
    moved_replicas = sum(len(set(after[p]) - set(before[p])) for p in after)
    share = moved_replicas / (3 * len(after))
    assert 0.3 < share < 0.5, share  # the new nodes' share: 2/5 of all replicas
    statuses = [status(n) for n in cluster.running()]
    received = sum(s["moved"]["keys_received"] + s["moved"]["keys_sent"] for s in statuses)
    # Every moved replica is copied once, pushed by a former owner or pulled by the new one;
    # a key may travel both ways when both ends act at once, never more.
    minimum = sum(1 for k in keys if set(after[partition_of(k)]) - set(before[partition_of(k)]))
    assert received <= 2 * (minimum * len(set(after[0]) | set(before[0]))) + len(acked) * 3
    answers = get_many(cluster.nodes["n5"], every)
    assert {k for k, (code, body) in answers.items() if code != 200 or body != value_of(k)} == set()


def test_a_drained_node_exits_only_after_its_data_is_elsewhere(cluster):
    nodes = cluster.add(["n1", "n2", "n3", "n4"])
    cluster.wait_members(["n1", "n2", "n3", "n4"])
    keys = keys_of(b"d", 1500)
    assert set(put_many(nodes[0], keys, value_of).values()) == {201}
    leaving = cluster.nodes["n4"]
    code, _, body = leaving.request("POST", "/v1/cluster/leave")
    assert code == 202 and json.loads(body)["status"] == "draining"
    assert leaving.proc.wait(timeout=120) == 0
    assert "drained: every partition is with its next owners" in leaving.log()
    for node in cluster.running():
        assert node.member_states()["n4"] == "left"
    assert not cluster.placement_problems(keys), cluster.placement_problems(keys)[:5]
    answers = get_many(nodes[0], keys)
    assert all(code == 200 and body == value_of(k) for k, (code, body) in answers.items())


def test_sigterm_with_drain_on_stop_hands_the_data_over_first(cluster):
    nodes = cluster.add(["n1", "n2", "n3"])
    leaving = cluster.add(["n4"])[0]
    cluster.wait_members(["n1", "n2", "n3", "n4"])
    keys = keys_of(b"s", 600)
    assert set(put_many(nodes[0], keys, value_of).values()) == {201}
    # A restart with the flag: only this node drains on SIGTERM.
    leaving.stop()
    leaving.extra_args = (*leaving.extra_args, "--drain-on-stop", "true")
    leaving.start()
    cluster.wait_members(["n1", "n2", "n3", "n4"])
    leaving.stop(timeout=120)  # twistd ends by re-raising SIGTERM: the status says "terminated"
    assert "--drain-on-stop: handing this node's data over before stopping" in leaving.log()
    assert "drained: every partition is with its next owners" in leaving.log()
    assert all(node.member_states()["n4"] == "left" for node in cluster.running())
    assert not cluster.placement_problems(keys), cluster.placement_problems(keys)[:5]


def test_a_lost_node_and_disk_are_rereplicated(cluster):
    nodes = cluster.add(["n1", "n2", "n3", "n4"])
    cluster.wait_members(["n1", "n2", "n3", "n4"])
    keys = keys_of(b"x", 1500)
    assert set(put_many(nodes[0], keys, value_of).values()) == {201}
    lost = cluster.nodes["n4"]
    lost.kill()
    shutil.rmtree(lost.data_dir.parent)
    # Dead after the health checks, out of the ring after --rereplicate-after (3 s): every key
    # is then back on three disks among the survivors.
    assert wait_for(lambda: "n4" not in {n for owners in cluster.ring().values() for n in owners}, deadline=30)
    assert wait_for(lambda: cluster.settled(keys), deadline=90, step=1), cluster.placement_problems(keys)[:5]


def test_lost_and_corrupt_records_on_one_disk_are_repaired(cluster):
    nodes = cluster.add(["n1", "n2", "n3"])
    cluster.wait_members(["n1", "n2", "n3"])
    keys = keys_of(b"c", 500)
    assert set(put_many(nodes[0], keys, value_of).values()) == {201}
    victim = cluster.nodes["n3"]
    victim.stop()
    env = lmdb.open(str(victim.data_dir), max_dbs=8)
    db = env.open_db(b"records")
    with env.begin(write=True, db=db) as txn:
        for key in keys[:40]:
            txn.delete(key)
        for key in keys[40:80]:
            txn.put(key, b"\xffnot a record")
    env.close()
    victim.start()

    def repaired():
        try:
            records = disk_records(victim)
        except CorruptRecord:
            return False
        return len(records) == len(keys) and all(r.value == value_of(k) for k, r in records.items())

    assert wait_for(repaired, deadline=60, step=1)
    assert wait_for(lambda: status(victim)["partitions_pulling"] == 0, deadline=30)


def test_a_key_deleted_while_a_replica_was_down_stays_deleted(cluster):
    nodes = cluster.add(["n1", "n2", "n3"])
    cluster.wait_members(["n1", "n2", "n3"])
    keys = keys_of(b"t", 100)
    assert set(put_many(nodes[0], keys, value_of).values()) == {201}
    down = cluster.nodes["n3"]
    down.kill()
    assert wait_for(lambda: nodes[0].member_states().get("n3") == "dead", deadline=20)
    deleted = keys[:40]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda k: nodes[0].request("DELETE", kv(k))[0], deleted))
    assert set(codes) == {204}
    down.start()
    cluster.wait_members(["n1", "n2", "n3"])
    assert wait_for(lambda: all(r.tombstone for k, r in disk_records(down).items() if k in set(deleted)),
                    deadline=60, step=1)
    for node in cluster.running():
        answers = get_many(node, deleted)
        assert {code for code, _ in answers.values()} == {404}
        answers = get_many(node, keys[40:])
        assert {code for code, _ in answers.values()} == {200}
