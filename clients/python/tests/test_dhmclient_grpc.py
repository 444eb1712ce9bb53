"""GrpcClient against the real node of conftest.py (its gRPC port), and against in-test stub servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from dhashmap_client import (
    Client,
    ConnectionError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    ServerError,
    StorageFull,
    Timeout,
    Unavailable,
    Value,
    ValueTooLarge,
)
from dhashmap_client._pb import kv_pb2 as pb
from dhashmap_client._pb import kv_pb2_grpc as pb_grpc
from dhashmap_client.grpc_client import GrpcClient, error_from_rpc

from twisted_dhm.testing.process import NodeProcess

ROOT = Path(__file__).resolve().parents[3]
CLIENT_PB = ROOT / "clients/python/dhashmap_client/_pb"
SERVER_PB = ROOT / "twisted_dhm/api"


@pytest.fixture
def db(node: NodeProcess) -> Iterator[GrpcClient]:
    with GrpcClient(f"127.0.0.1:{node.grpc_port}", timeout=5.0) as c:
        yield c


# -- the generated code ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kv_pb2.py", "kv_pb2.pyi"])
def test_the_client_copy_of_the_generated_code_is_the_servers(name: str) -> None:
    client_copy = (CLIENT_PB / name).read_bytes()
    assert client_copy == (SERVER_PB / name).read_bytes(), (
        f"clients/python/dhashmap_client/_pb/{name} differs from twisted_dhm/api/{name}: run `make proto`")
    if name.endswith(".py"):
        assert b"source: kv.proto" in client_copy


def test_the_client_copy_of_the_grpc_stubs_differs_only_in_the_import() -> None:
    client_copy = (CLIENT_PB / "kv_pb2_grpc.py").read_text()
    server_copy = (SERVER_PB / "kv_pb2_grpc.py").read_text()
    assert "from dhashmap_client._pb import kv_pb2 as kv__pb2\n" in client_copy
    assert client_copy.replace("from dhashmap_client._pb import", "from twisted_dhm.api import") == server_copy, (
        "clients/python/dhashmap_client/_pb/kv_pb2_grpc.py differs from twisted_dhm/api/kv_pb2_grpc.py: "
        "run `make proto`")


def test_the_makefile_regenerates_the_client_copy() -> None:
    makefile = (ROOT / "Makefile").read_text()
    proto_target = makefile.split("\nproto:", 1)[1].split("\n\n", 1)[0]
    line = next(ln for ln in proto_target.splitlines()
                if "--grpc_python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb" in ln)
    assert "--python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb" in line
    assert "--pyi_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb" in line
    assert "from dhashmap_client._pb import kv_pb2 as kv__pb2" in line


# -- round trips against the node --------------------------------------------------------------


def test_put_get_delete_round_trip(db: GrpcClient, prefix: bytes) -> None:
    key = prefix + b"a"
    version = db.put(key, b"hello")
    assert db.get(key) == Value(b"hello", version)
    db.put(prefix.decode() + "s", "text é")  # str keys and values are UTF-8
    assert db.get(prefix.decode() + "s").value == "text é".encode()
    assert db.delete(key) is None
    with pytest.raises(NotFound) as info:
        db.get(key)
    assert info.value.status is None and info.value.code == "not_found"
    db.delete(key)  # absent: still fine


def test_every_byte_value_survives(db: GrpcClient, prefix: bytes) -> None:
    every = bytes(range(256))
    key = prefix + b"\x00/\xff" + every
    db.put(key, every)
    assert db.get(key).value == every
    for b in range(256):
        db.put(prefix + b"k" + bytes([b]), bytes([b]))
    got = db.batch_get([prefix + b"k" + bytes([b]) for b in range(256)])
    assert [v.value for v in got if v is not None] == [bytes([b]) for b in range(256)]


def test_ttl_expires(db: GrpcClient, prefix: bytes) -> None:
    db.put(prefix + b"t", b"v", ttl=1)
    assert db.get(prefix + b"t").value == b"v"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            db.get(prefix + b"t")
        except NotFound:
            return
        time.sleep(0.2)
    pytest.fail("the value did not expire")


def test_ttl_is_checked_before_sending(db: GrpcClient, prefix: bytes) -> None:
    with pytest.raises(InvalidRequest):
        db.put(prefix + b"t", b"v", ttl=0)
    with pytest.raises(ValueError):
        db.put(prefix + b"t", b"v", ttl=1.5)


def test_cas_success_conflict_and_create_only(db: GrpcClient, prefix: bytes) -> None:
    key = prefix + b"c"
    first = db.cas(key, None, b"one")
    with pytest.raises(PreconditionFailed):
        db.cas(key, None, b"again")
    second = db.cas(key, first, b"two")
    assert second != first
    with pytest.raises(PreconditionFailed) as info:
        db.cas(key, first, b"stale")
    assert info.value.status is None
    assert db.get(key) == Value(b"two", second)
    third = db.put(key, b"three", if_match=second)
    with pytest.raises(PreconditionFailed):
        db.put(key, b"x", if_none_match=True)
    assert db.get(key).version == third
    with pytest.raises(ValueError):
        db.put(key, b"x", if_match="*")


def test_delete_with_a_stale_if_match_fails(db: GrpcClient, prefix: bytes) -> None:
    key = prefix + b"d"
    old = db.put(key, b"1")
    new = db.put(key, b"2")
    with pytest.raises(PreconditionFailed):
        db.delete(key, if_match=old)
    assert db.get(key).value == b"2"
    db.delete(key, if_match=f'"{new}"')  # a quoted ETag is accepted too
    with pytest.raises(NotFound):
        db.get(key)


def test_errors_are_mapped(db: GrpcClient, node: NodeProcess) -> None:
    with pytest.raises(InvalidRequest):
        db.get(b"")
    with pytest.raises(KeyTooLong):
        db.put(b"k" * 5000, b"v")
    with pytest.raises(KeyTooLong):
        db.get(b"k" * 5000)
    with pytest.raises(InvalidRequest):
        db.cas(b"some-key", "not-a-version", b"v")


def test_batch_get_and_put(db: GrpcClient, prefix: bytes) -> None:
    results = db.batch_put([(prefix + b"b1", b"one"), (prefix + b"b2", "two", 60)])
    assert isinstance(results[0], str) and isinstance(results[1], str)
    got = db.batch_get([prefix + b"b2", prefix + b"missing", prefix + b"b1"])
    assert got == [Value(b"two", results[1]), None, Value(b"one", results[0])]
    assert db.batch_get([]) == [] and db.batch_put({}) == []
    mapping = db.batch_put({prefix + b"m1": b"x", prefix + b"m2": b"y"})
    assert all(isinstance(v, str) for v in mapping)
    with pytest.raises(ValueError):
        db.batch_get([b"k"] * 1001)


def test_a_bad_item_fails_the_whole_batch(db: GrpcClient, prefix: bytes) -> None:
    with pytest.raises(KeyTooLong):
        db.batch_put([(prefix + b"ok", b"v"), (b"k" * 5000, b"v")])
    with pytest.raises(InvalidRequest):
        db.batch_get([prefix + b"ok", b""])
    with pytest.raises(NotFound):
        db.get(prefix + b"ok")


def test_scan_over_several_pages(db: GrpcClient, prefix: bytes) -> None:
    keys = [prefix + b"s%03d" % i for i in range(25)]
    assert all(isinstance(v, str) for v in db.batch_put([(k, b"v") for k in keys]))
    db.put(prefix[:-1] + b"-other", b"v")  # outside the prefix
    assert list(db.keys(prefix, page_size=7)) == keys
    page = db.list(prefix, limit=10)
    assert page.keys == keys[:10] and page.cursor is not None
    page2 = db.list(prefix, limit=10, cursor=page.cursor)
    assert page2.keys == keys[10:20] and page2.cursor is not None
    page3 = db.list(prefix, limit=10, cursor=page2.cursor)
    assert page3.keys == keys[20:] and page3.cursor is None
    assert db.list(prefix, limit=25).cursor is None
    assert db.list(prefix + b"nothing").keys == []


def test_members_ring_status(db: GrpcClient, node: NodeProcess) -> None:
    members = db.members()
    assert members["node"] == "client-tests"
    assert [m["id"] for m in members["members"]] == ["client-tests"]
    assert members["members"][0]["state"] == "alive"
    assert members["members"][0]["grpc_port"] == node.grpc_port
    ring = db.ring()
    assert ring["hash"] == "xxh64" and ring["partitions"] == len(ring["table"])
    assert all(owners == ["client-tests"] for owners in ring["table"].values())
    status = db.status()
    assert status["node"] == "client-tests" and status["ready"] is True
    assert status["members_by_state"]["alive"] == 1


def test_versions_are_shared_with_rest(db: GrpcClient, client: Client, prefix: bytes) -> None:
    key = prefix + b"x"
    version = db.put(key, b"from grpc")
    rest_version = client.put(key, b"from rest", if_match=version)
    assert client.get(key).version == rest_version
    assert db.get(key) == Value(b"from rest", rest_version)
    grpc_version = db.cas(key, rest_version, b"from grpc again")
    with pytest.raises(PreconditionFailed):
        client.put(key, b"stale", if_match=version)
    client.delete(key, if_match=grpc_version)


def test_close_and_reuse(node: NodeProcess, prefix: bytes) -> None:
    db = GrpcClient(f"127.0.0.1:{node.grpc_port}", timeout=5.0)
    db.put(prefix + b"r", b"v")
    db.close()
    db.close()
    assert db.get(prefix + b"r").value == b"v"  # a new channel
    db.close()


def test_an_unreachable_node_is_a_transport_error(unused_port: int) -> None:
    with GrpcClient(f"127.0.0.1:{unused_port}", timeout=2.0, retries=1, backoff=0.01) as db:
        with pytest.raises((ConnectionError, Unavailable)):
            db.get(b"k")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- stub servers: retries and deadlines --------------------------------------------------------


class FlakyKV(pb_grpc.KVServicer):
    """Fails each method ``failures`` times with UNAVAILABLE (acks 1, required 2), then answers."""

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _fail(self, name: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            n = self.calls[name]
        if n <= self.failures:
            context.set_trailing_metadata((("acks", "1"), ("required", "2")))
            context.abort(grpc.StatusCode.UNAVAILABLE, "not enough replicas answered")

    def Get(self, request, context):  # noqa: N802
        self._fail("Get", context)
        return pb.GetResponse(value=b"v", version="ver")

    def Put(self, request, context):  # noqa: N802
        self._fail("Put", context)
        return pb.PutResponse(version="ver")

    def Delete(self, request, context):  # noqa: N802
        self._fail("Delete", context)
        return pb.DeleteResponse()

    def BatchPut(self, request, context):  # noqa: N802
        return pb.BatchPutResponse(results=[
            pb.BatchPutResponse.Result(key=request.items[0].key, version="ver"),
            pb.BatchPutResponse.Result(key=request.items[1].key, code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                       message="LMDB map full")])

    def Scan(self, request, context):  # noqa: N802
        # The first page arrives, then the stream fails; a resumed scan starts after the last key.
        with self.lock:
            self.calls["Scan"] = self.calls.get("Scan", 0) + 1
            n = self.calls["Scan"]
        keys = [b"a", b"b", b"c", b"d"]
        if request.has_start_after:
            keys = [k for k in keys if k > request.start_after]
        yield pb.ScanResponse(keys=keys[:1])
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not enough replicas answered")
        yield pb.ScanResponse(keys=keys[1:])


class SlowKV(pb_grpc.KVServicer):
    def __init__(self) -> None:
        self.release = threading.Event()

    def Get(self, request, context):  # noqa: N802
        self.release.wait(5)
        return pb.GetResponse(value=b"late", version="v")


def _serve(servicer: pb_grpc.KVServicer) -> Iterator[tuple[int, pb_grpc.KVServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        if isinstance(servicer, SlowKV):
            servicer.release.set()
        server.stop(grace=None)


@pytest.fixture
def flaky() -> Iterator[tuple[int, FlakyKV]]:
    yield from _serve(FlakyKV())  # type: ignore[misc]


@pytest.fixture
def slow() -> Iterator[tuple[int, SlowKV]]:
    yield from _serve(SlowKV())  # type: ignore[misc]


def _recording(db: GrpcClient) -> list[float]:
    sleeps: list[float] = []
    db._sleep = sleeps.append
    db._random = lambda: 1.0  # the upper bound of the jitter, so the delays are known
    return sleeps


def test_idempotent_calls_are_retried_on_unavailable(flaky: tuple[int, FlakyKV]) -> None:
    port, stub = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0, retries=2, backoff=0.05, backoff_max=1.0) as db:
        sleeps = _recording(db)
        started = time.monotonic()
        assert db.get(b"k") == Value(b"v", "ver")
        assert stub.calls["Get"] == 3
        assert sleeps == [0.05, 0.1]  # exponential
        db.delete(b"k")
        assert stub.calls["Delete"] == 3
    assert time.monotonic() - started < 1.5


def test_the_backoff_is_real_and_bounded(flaky: tuple[int, FlakyKV]) -> None:
    port, stub = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0, retries=2, backoff=0.02, backoff_max=0.03) as db:
        started = time.monotonic()
        assert db.get(b"k").value == b"v"
        elapsed = time.monotonic() - started
    assert stub.calls["Get"] == 3
    assert elapsed < 1.0  # at most 0.02 + 0.03 of sleeping, plus three round trips


def test_retries_give_up_with_the_acks(flaky: tuple[int, FlakyKV]) -> None:
    port, stub = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0, retries=1) as db:
        sleeps = _recording(db)
        with pytest.raises(Unavailable) as info:
            db.get(b"k")
    assert stub.calls["Get"] == 2 and len(sleeps) == 1
    assert (info.value.acks, info.value.required) == (1, 2)
    assert info.value.status is None


def test_writes_are_not_retried(flaky: tuple[int, FlakyKV]) -> None:
    port, stub = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0, retries=5) as db:
        sleeps = _recording(db)
        with pytest.raises(Unavailable):
            db.put(b"k", b"v")
        with pytest.raises(Unavailable):
            db.delete(b"k", if_match="some-version")
    assert stub.calls == {"Put": 1, "Delete": 1}
    assert sleeps == []


def test_batch_put_item_errors_are_typed_not_raised(flaky: tuple[int, FlakyKV]) -> None:
    port, _ = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0) as db:
        results = db.batch_put([(b"a", b"1"), (b"b", b"2")])
    assert results[0] == "ver"
    assert isinstance(results[1], StorageFull) and results[1].message == "LMDB map full"


def test_a_scan_resumes_after_the_last_key(flaky: tuple[int, FlakyKV]) -> None:
    port, stub = flaky
    with GrpcClient(f"127.0.0.1:{port}", timeout=2.0, retries=2) as db:
        sleeps = _recording(db)
        assert list(db.keys(b"")) == [b"a", b"b", b"c", b"d"]
    assert stub.calls["Scan"] == 3 and len(sleeps) == 2


def test_deadline_exceeded_is_a_timeout(slow: tuple[int, SlowKV]) -> None:
    port, _ = slow
    with GrpcClient(f"127.0.0.1:{port}", timeout=0.2, retries=3) as db:
        sleeps = _recording(db)
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            db.get(b"k")
        elapsed = time.monotonic() - started
    assert info.value.code == "timeout" and info.value.status is None
    assert sleeps == []  # a timeout is not retried
    assert elapsed < 2.0


class _Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize(("code", "details", "cls"), [
    (grpc.StatusCode.NOT_FOUND, "no value for this key", NotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, "version mismatch", PreconditionFailed),
    (grpc.StatusCode.INVALID_ARGUMENT, "the key is empty", InvalidRequest),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "the key is 5000 bytes; the limit is 4096", KeyTooLong),
    # The store's message names its path, which may say "key": still a full store.
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "the store at /var/lib/keyvalue is full (map size 1024 bytes)", StorageFull),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "the value is 9 bytes; the limit is 8", ValueTooLarge),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "LMDB map full", StorageFull),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", ConnectionError),
    (grpc.StatusCode.UNAVAILABLE, "storage error", Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Timeout),
    (grpc.StatusCode.INTERNAL, "see its log", ServerError),
])
def test_status_codes_map_to_the_typed_errors(code: grpc.StatusCode, details: str, cls: type) -> None:
    error = error_from_rpc(_Status(code, details))
    assert type(error) is cls
    assert error.status is None


def test_unavailable_reads_acks_and_required() -> None:
    error = error_from_rpc(_Status(grpc.StatusCode.UNAVAILABLE, "not enough replicas",
                                   (("acks", "1"), ("required", "3"))))
    assert isinstance(error, Unavailable) and (error.acks, error.required) == (1, 3)
