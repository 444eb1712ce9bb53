"""Smart routing in the Python client: the hash against docs/partitioning.md, the router on a fake
clock, and NativeClient / GrpcClient with ``smart_routing=True`` against a real 3-node cluster."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from dhashmap_client import ConnectionError, GrpcClient, NativeClient, NotFound
from dhashmap_client.routing import Router, Topology, partition_of, xxh64

from twisted_dhm.testing.process import NodeProcess, wait_for

ROOT = Path(__file__).resolve().parents[3]


# -- the hash --------------------------------------------------------------------------------


def partitioning_vectors() -> list[tuple[bytes, int, int]]:
    """The test vectors table of docs/partitioning.md: (key, xxh64, partition for Q = 1024)."""
    text = (ROOT / "docs" / "partitioning.md").read_text()
    rows = re.findall(r"^\| `([0-9a-f]*)` \| `([0-9a-f]{16})` \| (\d+) \|$", text, re.MULTILINE)
    return [(bytes.fromhex(k), int(h, 16), int(p)) for k, h, p in rows]


def test_xxh64_matches_the_test_vectors_of_the_partitioning_doc() -> None:
    vectors = partitioning_vectors()
    assert len(vectors) >= 6
    for key, digest, partition in vectors:
        assert xxh64(key) == digest, key
        assert partition_of(key, 1024) == partition, key


def test_xxh64_matches_the_xxhash_library_at_every_tail_length() -> None:
    for n in range(0, 100):
        data = os.urandom(n)
        assert xxh64(data) == xxhash.xxh64_intdigest(data), n
    assert xxh64(b"x" * 4097) == xxhash.xxh64_intdigest(b"x" * 4097)


# -- the topology and the router -------------------------------------------------------------


RING = {"partitions": 4, "hash": "xxh64", "table": {p: ["a", "b", "c"] for p in range(4)}}


def members(**states: str) -> list[dict[str, Any]]:
    return [{"id": i, "state": states.get(i, "alive"), "host": f"10.0.0.{n}", "grpc_port": 9090, "peer_port": 7000}
            for n, i in enumerate("abc", 1)]


def test_topology_orders_live_owners_and_reads_the_rest_shape_too() -> None:
    topology = Topology(RING, members(b="dead"), "grpc_port", "seed.example")
    assert topology.owners_of(b"k") == ["a", "b", "c"]
    assert topology.live_owner_addresses(b"k") == [("10.0.0.1", 9090), ("10.0.0.3", 9090)]
    rest_ring = {"partitions": 2, "table": [{"partition": 0, "owners": ["x"]}, {"partition": 1, "owners": ["x"]}]}
    rest_members = [{"id": "x", "state": "suspect", "addresses": {"host": "0.0.0.0", "peer": 7001, "rest": 8081}}]
    native = Topology(rest_ring, rest_members, "peer_port", "seed.example")
    assert native.live_owner_addresses(b"k") == [("seed.example", 7001)]  # 0.0.0.0: reached like the seed
    with pytest.raises(ValueError, match="only xxh64"):
        Topology({**RING, "hash": "murmur"}, [], "grpc_port", "s")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_router_fetches_the_table_when_stale_and_after_a_node_failed() -> None:
    clock = FakeClock()
    loads: list[list[tuple[str, int]]] = []

    def load(known: list[tuple[str, int]]) -> Topology:
        loads.append(known)
        return Topology(RING, members(), "grpc_port", "s")

    router = Router(load, max_age=30.0, node_down=5.0, clock=clock)
    assert router.targets(b"k")[0] == ("10.0.0.1", 9090)
    clock.now += 29.9
    router.targets(b"k")
    assert len(loads) == 1  # still fresh
    clock.now += 0.1
    router.targets(b"k")
    assert len(loads) == 2  # max_age passed
    assert loads[1] == [("10.0.0.1", 9090), ("10.0.0.2", 9090), ("10.0.0.3", 9090)]

    router.node_failed(("10.0.0.1", 9090))
    # Fetched again at once, and a is tried last until node_down has passed.
    assert router.targets(b"k") == [("10.0.0.2", 9090), ("10.0.0.3", 9090), ("10.0.0.1", 9090)]
    assert len(loads) == 3
    clock.now += 5.0
    assert router.targets(b"k")[0] == ("10.0.0.1", 9090)
    router.invalidate()
    router.targets(b"k")
    assert len(loads) == 4 and router.loads == 4


def test_router_keeps_its_table_when_a_fetch_fails() -> None:
    clock = FakeClock()
    answers: list[Any] = [Topology(RING, members(), "grpc_port", "s"), ConnectionError("down")]

    def load(known: list[tuple[str, int]]) -> Topology:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    router = Router(load, max_age=1.0, clock=clock)
    first = router.current()
    clock.now += 2
    assert router.current() is first
    assert answers == []
    empty = Router(lambda known: (_ for _ in ()).throw(ConnectionError("down")), clock=clock)
    assert empty.targets(b"k") == []  # no table: the caller's own node serves


def test_not_mine_refreshes_once_in_the_background_at_most_once_per_interval() -> None:
    clock = FakeClock()
    loads: list[list[tuple[str, int]]] = []
    spawned: list[Any] = []

    def load(known: list[tuple[str, int]]) -> Topology:
        loads.append(known)
        return Topology(RING, members(), "grpc_port", "seed")

    router = Router(load, max_age=30.0, clock=clock)
    router._spawn = spawned.append  # run the background refresh when the test says
    router.current()
    assert len(loads) == 1
    assert router.not_owner(["b"]) is True
    assert router.not_owner(["b"]) is False, "one refresh at a time"
    spawned.pop()()
    assert len(loads) == 2 and router.not_owner_refreshes == 1
    assert loads[1] == router.topology.addresses(), "the members in hand are asked if the seed is not"
    clock.now += 0.5
    assert router.not_owner(["b"]) is False, "at most one refresh per refresh_interval"
    clock.now += 0.6
    assert router.not_owner(["b"]) is True
    spawned.pop()()
    assert len(loads) == 3 and router.not_owner_refreshes == 2
    router.current()
    assert len(loads) == 3, "a refreshed table is fresh"


# -- against a live cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    root = tmp_path_factory.mktemp("routing")
    nodes = [NodeProcess(root / f"r{i}" / "data", node_id=f"r{i}") for i in range(1, 4)]
    seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in nodes)
    try:
        for node in nodes:
            node.extra_args = ("--seed-nodes", seeds, "--storage", "memory", "--health-interval", "0.3",
                               "--health-threshold", "3", "--request-timeout", "2")
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        ids = {n.node_id for n in nodes}
        assert wait_for(lambda: all({i for i, s in n.member_states().items() if s == "alive"} == ids for n in nodes),
                        deadline=20), [n.log() for n in nodes]
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def first_owner(node: NodeProcess, key: bytes) -> str:
    ring = json.loads(node.request("GET", "/v1/cluster/ring")[2])
    table = {row["partition"]: row["owners"] for row in ring["table"]}
    return table[partition_of(key, ring["partitions"])][0]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str, bytes]]:
    """Each keyed request as it was sent: (the client object sending it, its node's address, key)."""
    record: list[tuple[Any, str, bytes]] = []
    once, send = GrpcClient._once, NativeClient._send

    def grpc_once(self: GrpcClient, call: Any, idempotent: bool, *rest: Any) -> Any:
        if call.method in ("Get", "Put", "Delete", "CompareAndSwap"):
            record.append((self, self.target, call.request.key))
        return once(self, call, idempotent, *rest)

    def native_send(self: NativeClient, conn: Any, request: Any) -> Any:
        body = request.WhichOneof("body")
        if body in ("get", "put", "delete"):
            record.append((self, f"{self.host}:{self.port}", getattr(request, body).key))
        return send(self, conn, request)

    monkeypatch.setattr(GrpcClient, "_once", grpc_once)
    monkeypatch.setattr(NativeClient, "_send", native_send)
    return record


def clients(cluster: list[NodeProcess], transport: str, node: int, **kw: Any) -> Any:
    if transport == "grpc":
        return GrpcClient(f"127.0.0.1:{cluster[node].grpc_port}", timeout=5.0, **kw)
    return NativeClient("127.0.0.1", cluster[node].peer_port, timeout=5.0, **kw)


@pytest.mark.parametrize("transport", ["grpc", "native"])
def test_each_key_goes_straight_to_its_first_owner(cluster: list[NodeProcess], sent: list[tuple[Any, str, bytes]],
                                                   transport: str) -> None:
    seed = cluster[0]
    address = {n.node_id: f"127.0.0.1:{n.grpc_port if transport == 'grpc' else n.peer_port}" for n in cluster}
    with clients(cluster, transport, 0, smart_routing=True) as routed, clients(cluster, transport, 1) as plain:
        keys = [f"route-{transport}/{i}".encode() for i in range(40)]
        for i, key in enumerate(keys):
            version = routed.put(key, b"v%d" % i)
            assert plain.get(key).version == version  # the same answers as an unrouted client
            assert routed.get(key).value == b"v%d" % i
            routed.cas(key, version, b"w")
            routed.delete(key)
            with pytest.raises(NotFound):
                plain.get(key)
        owner = {key: address[first_owner(seed, key)] for key in keys}
        by_node: dict[str, int] = {}
        for sender, where, key in sent:
            if sender is plain:
                continue
            assert where == owner[key], f"{key!r} went to {where}; its first owner is {owner[key]}"
            by_node[where] = by_node.get(where, 0) + 1
        # put, get, cas and delete of every key, each sent once, spread over all three nodes
        assert sum(by_node.values()) == 4 * len(keys)
        assert len(by_node) == 3, by_node
        assert routed.route(keys[0])["owners"][0] == first_owner(seed, keys[0])


def test_a_node_that_went_away_is_routed_around_and_the_table_fetched_again(cluster: list[NodeProcess]) -> None:
    """Last in this file: it kills a node of the module's cluster."""
    seed, gone = cluster[0], cluster[2]
    with clients(cluster, "grpc", 0, smart_routing=True, backoff=0.01) as via_grpc, \
            clients(cluster, "native", 0, smart_routing=True) as via_native:
        keys = [k for k in (b"away/%d" % i for i in range(1000)) if first_owner(seed, k) == gone.node_id][:2]
        versions = [c.put(k, b"before") for c, k in zip((via_grpc, via_native), keys, strict=True)]
        loads = [c.router.loads for c in (via_grpc, via_native)]
        gone.kill()
        for c, key, version, before in zip((via_grpc, via_native), keys, versions, loads, strict=True):
            # A read moves on to the next owner, and the table is fetched again...
            assert c.get(key).version == version
            assert c.router.loads > before, f"{c!r}: the table was not fetched again"
            # ...and so does a write, which could not be sent to the dead node.
            c.put(key, b"after")
            assert c.get(key).value == b"after"


# -- "not mine": a table made stale against a live cluster where each key has one replica ---------


@pytest.fixture(scope="module")
def single_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    root = tmp_path_factory.mktemp("notmine")
    nodes = [NodeProcess(root / f"m{i}" / "data", node_id=f"m{i}") for i in range(1, 3)]
    seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in nodes)
    try:
        for node in nodes:
            node.extra_args = ("--seed-nodes", seeds, "--storage", "memory", "--replicas", "1")
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        ids = {n.node_id for n in nodes}
        assert wait_for(lambda: all({i for i, s in n.member_states().items() if s == "alive"} == ids for n in nodes),
                        deadline=20), [n.log() for n in nodes]
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def swapped(topology: Topology) -> Topology:
    """The same table with each partition given to the other node: every route is wrong."""
    stale = Topology({"partitions": 1, "table": {}}, [], "grpc_port", "x")
    stale.__dict__.update(topology.__dict__)
    other = {"m1": "m2", "m2": "m1"}
    stale._owners = [[other[o] for o in owners] for owners in topology._owners]
    return stale


@pytest.mark.parametrize("transport", ["grpc", "native"])
def test_a_stale_table_is_refreshed_once_and_a_correct_one_never(
        single_replica: list[NodeProcess], sent: list[tuple[Any, str, bytes]], transport: str) -> None:
    address = {n.node_id: f"127.0.0.1:{n.grpc_port if transport == 'grpc' else n.peer_port}" for n in single_replica}
    with clients(single_replica, transport, 0, smart_routing=True) as routed:
        router = routed.router
        keys = [f"notmine-{transport}/{i}".encode() for i in range(20)]
        for key in keys:  # a correct table: the owner answers, nobody says "not mine"
            routed.put(key, b"v")
            assert routed.get(key).value == b"v"
        assert (router.loads, router.not_owner_refreshes) == (1, 0)
        owner = {key: address[first_owner(single_replica[0], key)] for key in keys}
        assert all(where == owner[key] for _, where, key in sent)

        refreshed: list[Any] = []
        router._spawn = lambda f: (f(), refreshed.append(f))  # the background refresh, run in place
        router._topology = swapped(router.topology)
        sent.clear()
        for key in keys:  # the first answer says "not mine": one refresh, then the right nodes
            assert routed.get(key).value == b"v"
            routed.put(key, b"w")
        assert (router.loads, router.not_owner_refreshes, len(refreshed)) == (2, 1, 1)
        wrong = [(where, key) for _, where, key in sent if where != owner[key]]
        assert wrong == [(sent[0][1], keys[0])], "only the first request went to the wrong node"
        assert all(routed.get(key).value == b"w" for key in keys)
        assert router.not_owner_refreshes == 1
