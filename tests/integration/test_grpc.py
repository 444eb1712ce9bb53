"""The gRPC API of a real node, through grpcio (the generated stubs, standard health and reflection)."""

import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from twisted_dhm.api import kv_pb2, kv_pb2_grpc
from twisted_dhm.testing.process import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration


# Plain `twistd dhashmap` (the epoll reactor: grpc.aio in a thread of its own) and `twistd -r asyncio`
# (grpc.aio on the reactor's loop): the two bridges of twisted_dhm/api/grpc_api.py.
REACTOR_CLASS = {"default": "twisted.internet.epollreactor.EPollReactor",
                 "asyncio": "twisted.internet.asyncioreactor.AsyncioSelectorReactor"}
REACTORS = tuple(REACTOR_CLASS)


def on_reactor(node, reactor):
    """Run the node under ``twistd -r <reactor>`` (nothing for the default)."""
    if reactor != "default":
        args = node.args()
        node.command = [*args[:args.index("dhashmap")], "-r", reactor, *args[args.index("dhashmap"):]]
    return node


@pytest.fixture(params=REACTORS)
def grpc_node(tmp_path, request):
    node = NodeProcess(tmp_path / "g1" / "data", node_id="g1")
    node.grpc_port = free_port()
    node.extra_args = ("--grpc-port", str(node.grpc_port))
    on_reactor(node, request.param).start()
    assert f"reactor class: {REACTOR_CLASS[request.param]}." in node.log_path.read_text()
    channel = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
    yield node, channel
    channel.close()
    node.kill()


def code_of(call, *args, **kw):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)
    return info.value.code()


def test_kv_round_trips_and_status_codes(grpc_node):
    node, channel = grpc_node
    kv = kv_pb2_grpc.KVStub(channel)
    key, value = bytes(range(256)), bytes(reversed(range(256)))
    put = kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=5)
    assert put.created and put.version
    got = kv.Get(kv_pb2.GetRequest(key=key), timeout=5)
    assert (got.value, got.version) == (value, put.version)
    # The version token is the REST ETag: one API's version is the other's If-Match.
    status, headers, body = node.request("GET", "/v1/kv/" + "".join(f"%{b:02X}" for b in key))
    assert status == 200 and headers["etag"] == f'"{put.version}"' and body == value

    assert code_of(kv.Get, kv_pb2.GetRequest(key=b"missing"), timeout=5) == grpc.StatusCode.NOT_FOUND
    assert code_of(kv.Get, kv_pb2.GetRequest(key=b""), timeout=5) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(kv.Get, kv_pb2.GetRequest(key=b"k" * 5000), timeout=5) == grpc.StatusCode.RESOURCE_EXHAUSTED
    cas = kv_pb2.CompareAndSwapRequest(key=key, expected_version=put.version, value=b"new")
    swapped = kv.CompareAndSwap(cas, timeout=5)
    assert code_of(kv.CompareAndSwap, cas, timeout=5) == grpc.StatusCode.FAILED_PRECONDITION  # stale now
    create = kv_pb2.CompareAndSwapRequest(key=b"fresh", create_only=True, value=b"1")
    kv.CompareAndSwap(create, timeout=5)
    assert code_of(kv.CompareAndSwap, create, timeout=5) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(kv.Delete, kv_pb2.DeleteRequest(key=key, if_match=put.version),
                   timeout=5) == grpc.StatusCode.FAILED_PRECONDITION
    kv.Delete(kv_pb2.DeleteRequest(key=key, if_match=swapped.version), timeout=5)
    assert code_of(kv.Get, kv_pb2.GetRequest(key=key), timeout=5) == grpc.StatusCode.NOT_FOUND
    assert code_of(kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", w=kv_pb2.Quorum(count=9)),
                   timeout=5) == grpc.StatusCode.INVALID_ARGUMENT

    items = [kv_pb2.BatchPutRequest.Item(key=b"b/%03d" % i, value=b"%d" % i) for i in range(250)]
    results = kv.BatchPut(kv_pb2.BatchPutRequest(items=items), timeout=10).results
    assert len(results) == 250 and all(r.version and r.code == 0 for r in results)
    batch = kv.BatchGet(kv_pb2.BatchGetRequest(keys=[b"b/007", b"nope", b"b/249"]), timeout=5).items
    assert [(i.key, i.found, i.value) for i in batch] == [(b"b/007", True, b"7"), (b"nope", False, b""),
                                                          (b"b/249", True, b"249")]
    pages = list(kv.Scan(kv_pb2.ScanRequest(prefix=b"b/", page_size=100), timeout=10))
    assert [len(p.keys) for p in pages] == [100, 100, 50]
    assert [k for p in pages for k in p.keys] == sorted(i.key for i in items)
    rest = list(kv.Scan(kv_pb2.ScanRequest(prefix=b"b/", start_after=b"b/239", has_start_after=True), timeout=10))
    assert [k for p in rest for k in p.keys] == [b"b/%03d" % i for i in range(240, 250)]

    # Every call is counted by method and status code on GET /metrics (the count is made as the
    # handler returns, on gRPC's thread: the scrape may come a moment before it).
    expected = ('dhashmap_grpc_requests_total{code="OK",method="Get"} 1.0',
                'dhashmap_grpc_requests_total{code="NOT_FOUND",method="Get"} 2.0',
                'dhashmap_grpc_requests_total{code="INVALID_ARGUMENT",method="Get"} 1.0',
                'dhashmap_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="Get"} 1.0',
                'dhashmap_grpc_requests_total{code="OK",method="CompareAndSwap"} 2.0',
                'dhashmap_grpc_requests_total{code="FAILED_PRECONDITION",method="CompareAndSwap"} 2.0',
                'dhashmap_grpc_requests_total{code="OK",method="Scan"} 2.0',
                'dhashmap_grpc_request_duration_seconds_count{method="Get"} 5.0')
    assert wait_for(lambda: all(line in node.request("GET", "/metrics")[2].decode() for line in expected), 10), \
        node.request("GET", "/metrics")[2].decode()


def test_cluster_health_and_reflection(grpc_node):
    node, channel = grpc_node
    cluster = kv_pb2_grpc.ClusterStub(channel)
    members = cluster.Members(kv_pb2.MembersRequest(), timeout=5)
    assert members.node == "g1" and [(m.id, m.state, m.grpc_port) for m in members.members] == [
        ("g1", "alive", node.grpc_port)]
    ring = cluster.Ring(kv_pb2.RingRequest(), timeout=5)
    assert ring.partitions == 1024 and ring.hash == "xxh64" and len(ring.table) == 1024
    status = cluster.Status(kv_pb2.StatusRequest(), timeout=5)
    assert status.ready and status.members_by_state["alive"] == 1 and not status.problems

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dhashmap.v1.KV", "dhashmap.v1.Cluster"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=5)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"dhashmap.v1.KV", "dhashmap.v1.Cluster", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("reactor", REACTORS)
def test_a_deadline_shorter_than_the_work_is_deadline_exceeded(tmp_path, reactor):
    nodes = [NodeProcess(tmp_path / f"d{i}" / "data", node_id=f"d{i}") for i in (1, 2)]
    seeds = ",".join(f"127.0.0.1:{n.peer_port}" for n in nodes)
    grpc_port = free_port()
    nodes[0].extra_args = ("--grpc-port", str(grpc_port), "--seed-nodes", seeds, "--request-timeout", "10")
    nodes[1].extra_args = ("--seed-nodes", seeds)
    on_reactor(nodes[0], reactor)
    try:
        for n in nodes:
            n.start()
        assert wait_for(lambda: b'"d2", "state": "alive"' in nodes[0].request("GET", "/v1/cluster/members")[2])
        os.killpg(nodes[1].proc.pid, signal.SIGSTOP)  # a replica that hangs: a w=all write cannot finish
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            request = kv_pb2.PutRequest(key=b"k", value=b"v", w=kv_pb2.Quorum(level=kv_pb2.Quorum.LEVEL_ALL))
            assert code_of(kv.Put, request, timeout=0.5) == grpc.StatusCode.DEADLINE_EXCEEDED
            # The node is not stuck: a call that can finish (w=one: this node's own replica) succeeds.
            one = kv_pb2.Quorum(level=kv_pb2.Quorum.LEVEL_ONE)
            assert kv.Put(kv_pb2.PutRequest(key=b"k2", value=b"v", w=one), timeout=5).version
    finally:
        if nodes[1].proc is not None:
            os.killpg(nodes[1].proc.pid, signal.SIGCONT)
        for n in nodes:
            n.kill()
