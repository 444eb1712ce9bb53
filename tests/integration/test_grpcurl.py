"""A real node through grpcurl, a gRPC client nobody here wrote, with server reflection only.

grpcurl comes from ``tools/get-grpcurl.sh`` (``go install`` at a pinned version, cached in
``~/.cache/dhashmap``); when it cannot be had the tests fail, they do not skip.  No ``.proto``
file is given to grpcurl: every name it resolves comes from the node's reflection service.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted_dhm.testing.process import NodeProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def grpcurl_binary() -> str:
    explicit = os.environ.get("DHASHMAP_GRPCURL")
    if explicit:
        return explicit
    result = subprocess.run([str(ROOT / "tools" / "get-grpcurl.sh")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"no grpcurl for the tests: tools/get-grpcurl.sh failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def grpcurl() -> str:
    return grpcurl_binary()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path_factory.mktemp("grpcurl") / "data", node_id="gc1",
                          extra_args=("--storage", "memory"))
    try:
        process.start()
        yield process
    finally:
        process.stop()


def run(grpcurl: str, node: NodeProcess, *args: str, data: dict | None = None,
        flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [grpcurl, "-plaintext", "-max-time", "10", *flags]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [f"127.0.0.1:{node.grpc_port}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"grpcurl exited {result.returncode}: {result.stderr}"
    return result.stdout


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_grpcurl_lists_the_services(grpcurl: str, node: NodeProcess) -> None:
    services = ok(run(grpcurl, node, "list")).split()
    assert {"dhashmap.v1.KV", "dhashmap.v1.Cluster", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    methods = ok(run(grpcurl, node, "list", "dhashmap.v1.KV")).split()
    assert {f"dhashmap.v1.KV.{m}" for m in ("Get", "Put", "Delete", "CompareAndSwap", "BatchGet", "BatchPut",
                                             "Scan")} == set(methods)


def test_grpcurl_describes_a_method_and_its_messages(grpcurl: str, node: NodeProcess) -> None:
    # A method's full name is what grpcurl and ghz look up first (FileContainingSymbol).
    method = ok(run(grpcurl, node, "describe", "dhashmap.v1.KV.Get"))
    assert "dhashmap.v1.KV.Get is a method" in method
    assert "rpc Get ( .dhashmap.v1.GetRequest ) returns ( .dhashmap.v1.GetResponse )" in method
    scan = ok(run(grpcurl, node, "describe", "dhashmap.v1.KV.Scan"))
    assert "returns ( stream .dhashmap.v1.ScanResponse )" in scan
    message = ok(run(grpcurl, node, "describe", "dhashmap.v1.PutRequest"))
    assert "bytes key = 1;" in message and "ttl_seconds" in message
    missing = run(grpcurl, node, "describe", "dhashmap.v1.KV.NoSuchMethod")
    assert missing.returncode != 0 and "Symbol not found" in missing.stderr


def test_grpcurl_put_then_get_through_reflection(grpcurl: str, node: NodeProcess) -> None:
    key, value = b"grpcurl/\x00\xffkey", bytes(range(256))
    put = json.loads(ok(run(grpcurl, node, "dhashmap.v1.KV/Put", data={"key": b64(key), "value": b64(value)})))
    assert put["created"] is True and put["version"]
    got = json.loads(ok(run(grpcurl, node, "dhashmap.v1.KV.Get", data={"key": b64(key)})))
    assert base64.b64decode(got["value"]) == value
    assert got["version"] == put["version"]
    # The same key through REST: one node, one store, whichever API wrote it.
    status, headers, body = node.request("GET", "/v1/kv/" + "".join(f"%{b:02X}" for b in key))
    assert (status, body, headers["etag"]) == (200, value, f'"{put["version"]}"')


def test_grpcurl_shows_not_found_for_a_missing_key(grpcurl: str, node: NodeProcess) -> None:
    result = run(grpcurl, node, "dhashmap.v1.KV/Get", data={"key": b64(b"grpcurl/missing")},
                 flags=("-format-error",))
    # grpcurl exits 64 + the status code on an RPC error: NOT_FOUND is 5.
    assert result.returncode == 64 + 5, result.stderr
    error = json.loads(result.stderr)  # -format-error: the status as JSON, on stderr
    assert error["code"] == 5 and error["message"]


def test_grpcurl_health_check_is_serving(grpcurl: str, node: NodeProcess) -> None:
    for service in ("", "dhashmap.v1.KV", "dhashmap.v1.Cluster"):
        answer = json.loads(ok(run(grpcurl, node, "grpc.health.v1.Health/Check", data={"service": service})))
        assert answer == {"status": "SERVING"}, service


def test_grpcurl_streams_a_scan_and_reads_the_ring(grpcurl: str, node: NodeProcess) -> None:
    for i in range(3):
        ok(run(grpcurl, node, "dhashmap.v1.KV/Put", data={"key": b64(b"scan/%d" % i), "value": b64(b"v")}))
    pages = ok(run(grpcurl, node, "dhashmap.v1.KV/Scan", data={"prefix": b64(b"scan/"), "page_size": 2}))
    decoder, text, keys = json.JSONDecoder(), pages.strip(), []
    while text:
        page, end = decoder.raw_decode(text)
        keys += [base64.b64decode(k) for k in page.get("keys", [])]
        text = text[end:].strip()
    assert keys == [b"scan/0", b"scan/1", b"scan/2"]
    ring = json.loads(ok(run(grpcurl, node, "dhashmap.v1.Cluster/Ring")))
    assert ring["partitions"] == 1024 and ring["hash"] == "xxh64"
