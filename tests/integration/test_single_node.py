"""One real node: twistd process, LMDB on disk, loopback sockets."""

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from twisted_dhm.config import SETTINGS
from twisted_dhm.testing.process import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration


def kv(key: bytes) -> str:
    return "/v1/kv/" + quote(key, safe="")


def poll(predicate, deadline=10.0, step=0.05):
    return wait_for(predicate, deadline, step)


def test_binary_round_trip(node):
    key = bytes(range(256))
    value = bytes(reversed(range(256))) * 10
    status, headers, _ = node.request("PUT", kv(key), value)
    assert status == 201
    status, got_headers, body = node.request("GET", kv(key))
    assert (status, body) == (200, value)
    assert got_headers["etag"] == headers["etag"]
    assert got_headers["content-type"] == "application/octet-stream"
    status, _, body = node.request("GET", "/v1/kv?encoding=base64")
    assert status == 200 and len(json.loads(body)["keys"]) == 1
    assert node.request("DELETE", kv(key))[0] == 204
    assert node.request("GET", kv(key))[0] == 404


def test_curl_round_trip(node):
    curl = ["curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}"]
    url = node.url + "/v1/kv/dir%2Ffile%20%E2%9C%93"
    out = subprocess.run(curl + ["-X", "PUT", "--data-binary", "@-", url], input=b"\x00\x01bin",
                         capture_output=True, check=True).stdout
    assert out.endswith(b"201")
    out = subprocess.run(curl + [url], capture_output=True, check=True).stdout
    assert out == b"\x00\x01bin\n200"


def test_acknowledged_writes_survive_kill_9(start_node, tmp_path):
    node = start_node()
    acked = {}

    def put(i):
        key, value = b"durable/%05d" % i, b"value-%d" % i
        status, _, _ = node.request("PUT", kv(key), value)
        return key, value, status

    with ThreadPoolExecutor(max_workers=32) as pool:
        for key, value, status in pool.map(put, range(2000)):
            assert status == 201
            acked[key] = value
    node.kill()  # SIGKILL right after the last acknowledgement
    again = NodeProcess(node.data_dir, node_id="node1", port=free_port()).start()
    try:
        def read(key):
            status, _, body = again.request("GET", kv(key))
            return key, status, body

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(read, acked))
        assert len(answers) == len(acked) == 2000
        for key, status, body in answers:
            assert (status, body) == (200, acked[key])
    finally:
        again.kill()


def test_graceful_stop_and_restart(start_node, tmp_path):
    node = start_node()
    node.request("PUT", kv(b"k"), b"kept")
    # twistd shuts down cleanly, then re-raises SIGTERM so the exit status tells why it stopped.
    assert node.stop() in (0, -15)
    assert "Server Shut Down." in node.log()
    again = start_node(data_dir=node.data_dir)
    assert again.request("GET", kv(b"k"))[2] == b"kept"


def test_ttl_expiry(node):
    assert node.request("PUT", kv(b"short") + "?ttl=1", b"v")[0] == 201
    assert node.request("PUT", kv(b"long") + "?ttl=3600", b"v")[0] == 201
    assert node.request("GET", kv(b"short"))[0] == 200
    assert poll(lambda: node.request("GET", kv(b"short"))[0] == 404)
    assert node.request("GET", kv(b"long"))[0] == 200


def test_stale_if_match(node):
    _, h1, _ = node.request("PUT", kv(b"k"), b"1")
    _, h2, _ = node.request("PUT", kv(b"k"), b"2", headers={"If-Match": h1["etag"]})
    status, _, body = node.request("PUT", kv(b"k"), b"3", headers={"If-Match": h1["etag"]})
    assert status == 412
    assert json.loads(body)["error"]["code"] == "precondition_failed"
    assert node.request("GET", kv(b"k"))[2] == b"2"


def raw_exchange(node, data: bytes, read_timeout=5.0) -> bytes:
    with socket.create_connection((node.host, node.port), timeout=read_timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_an_oversized_upload_reads_its_413_every_time(node):
    """The node answers 413 early but keeps reading (and dropping) the upload until the client
    closes: closing at once would reset the connection and destroy the answer."""
    import http.client

    body = b"v" * (8 * 1024 * 1024 + 1)
    for i in range(10):
        conn = http.client.HTTPConnection(node.host, node.port, timeout=10)
        try:
            conn.request("PUT", f"/v1/kv/oversized{i}", body=body)
            response = conn.getresponse()
            assert response.status == 413 and b"value_too_large" in response.read()
        finally:
            conn.close()
    assert node.request("GET", kv(b"oversized0"))[0] == 404


def test_hostile_requests_get_4xx_and_node_keeps_serving(node):
    # A body declared far over the limit: 413 before the upload, connection closed.
    answer = raw_exchange(node, b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    # A body with no declared length that grows over the limit (8 MiB default) as it streams.
    chunk = b"x" * 65536
    stream = b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream += (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 129 + b"0\r\n\r\n"
    answer = raw_exchange(node, stream)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"value_too_large" in answer, answer[:200]
    assert node.request("GET", kv(b"big"))[0] == 404
    # Bad percent-encoding, an over-long key, an over-long request line, garbage.
    assert node.request("GET", "/v1/kv/%zz")[0] == 400
    assert node.request("GET", kv(b"k" * 5000))[0] == 414
    long_line = b"GET /v1/kv/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"
    assert raw_exchange(node, long_line).startswith(b"HTTP/1.1 414")
    assert raw_exchange(node, b"\xff\xfe\x00 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    # Slow clients holding connections open do not stop others being served.
    slow = [socket.create_connection((node.host, node.port)) for _ in range(50)]
    try:
        for s in slow:
            s.sendall(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        assert node.request("PUT", kv(b"fine"), b"ok")[0] == 201
        assert node.request("GET", kv(b"fine"))[2] == b"ok"
    finally:
        for s in slow:
            s.close()
    assert node.request("GET", kv(b"slow"))[0] == 404
    assert node.request("GET", "/health")[0] == 200
    assert "Traceback" not in node.log()


def test_twistd_help_documents_every_option():
    twistd = str(Path(sys.executable).with_name("twistd"))
    out = subprocess.run([twistd, "dhashmap", "--help"], capture_output=True, text=True, check=True).stdout
    for setting in SETTINGS:
        assert setting.flag in out and setting.env in out
    assert "--config" in out


def test_bad_setting_stops_start_with_one_line(tmp_path):
    node = NodeProcess(tmp_path / "d", extra_args=("--storage", "floppy"))
    node.start(wait=False)
    assert node.proc.wait(timeout=30) == 2
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert lines == ["dhashmap: configuration error: --storage: must be one of lmdb, memory, got 'floppy'"]


def test_unknown_yaml_key_is_an_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("node_id: n1\nprot: 8080\n")
    node = NodeProcess(tmp_path / "d", extra_args=("--config", str(config)))
    node.start(wait=False)
    assert node.proc.wait(timeout=30) == 2
    assert "unknown setting 'prot'" in node.log()


def test_unusable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    node = NodeProcess(blocker / "data", log_path=tmp_path / "node.log")
    node.start(wait=False)
    assert node.proc.wait(timeout=30) != 0
    assert "cannot start: cannot open LMDB store" in node.log()
    assert "Traceback" not in node.log()


def test_port_in_use_is_a_clear_error(node, tmp_path):
    for flag, port in (("--port", node.port), ("--peer-port", node.peer_port), ("--grpc-port", node.grpc_port)):
        other = NodeProcess(tmp_path / flag / "data", node_id="other", log_path=tmp_path / f"{flag}.log",
                            **({"port": port} if flag == "--port" else {"peer_port": port} if flag == "--peer-port"
                               else {}))
        if flag == "--grpc-port":
            other.grpc_port = port
        other.start(wait=False)
        assert other.proc.wait(timeout=30) != 0
        assert f"cannot listen on 127.0.0.1:{port}" in other.log()
        assert "Traceback" not in other.log()
    assert node.request("GET", "/health")[0] == 200


def test_dhashmap_server_accepts_single_dash_flags(tmp_path):
    port = free_port()
    server = str(Path(sys.executable).with_name("dhashmap-server"))
    node = NodeProcess(tmp_path / "d", port=port, command=[
        server, "-node-id", "single", "-port", str(port), "-bind", "127.0.0.1", "-peer-port", str(free_port()),
        "-grpc-port", str(free_port()),
        "-data-dir", str(tmp_path / "d"),
    ])
    try:
        node.start()
        status, _, body = node.request("GET", "/health")
        assert status == 200 and json.loads(body)["node"] == "single"
    finally:
        node.kill()


def test_environment_and_json_logs(tmp_path):
    port = free_port()
    node = NodeProcess(tmp_path / "d", port=port, command=[
        str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "dhashmap",
    ], env={"NODE_ID": "envnode", "PORT": str(port), "BIND": "127.0.0.1", "PEER_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path / "d"), "STORAGE": "memory", "LOG_FORMAT": "json"})
    try:
        node.start()
        assert json.loads(node.request("GET", "/health")[2])["node"] == "envnode"
        records = [json.loads(line) for line in node.log().splitlines() if line.strip()]
        assert records and all(r["node"] == "envnode" for r in records)
        assert any("envnode starting" in r["message"] for r in records)
    finally:
        node.kill()
