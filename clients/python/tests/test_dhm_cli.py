"""``dhm``, the command line: in-process through ``main(argv)`` and as the installed entry point,
against the real node of conftest.py (and a second one for copying), plus a scripted fake node
for the answers a healthy node never gives (not ready, 503, 500)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dhashmap_client import Client, NotFound
from dhashmap_client._cli_io import Progress, encode_record, escape_key, parse_record, unescape_key
from dhashmap_client.cli import main

from twisted_dhm.testing.process import NodeProcess, free_port

pytestmark = pytest.mark.integration

DHM = Path(sys.executable).with_name("dhm")
ALL_BYTES = bytes(range(256))


class Result:
    def __init__(self, code: int, out: bytes, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> object:
        return json.loads(self.out)


class TTYStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(node_url: str, *argv: str | bytes, stdin: bytes = b"") -> Result:
    """``main`` in-process, with binary stdin/stdout and a text stderr."""
    out, err = io.BytesIO(), io.StringIO()
    args = [a if isinstance(a, str) else os.fsdecode(a) for a in argv]
    code = main(["--node", node_url, *args], stdin=io.BytesIO(stdin), stdout=out, stderr=err, env={})
    return Result(code, out.getvalue(), err.getvalue())


def dhm(node_url: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess:
    """The installed entry point, as a user runs it."""
    assert DHM.exists(), f"{DHM} is missing: run .venv/bin/pip install -e clients/python"
    env = {**os.environ, "DHM_NODE": node_url}
    env.pop("DHM_DEBUG", None)
    return subprocess.run([str(DHM), *argv], env=env, capture_output=True, timeout=60, **kwargs)


@pytest.fixture
def url(node: NodeProcess) -> str:
    return node.url


@pytest.fixture(scope="module")
def second_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path_factory.mktemp("dhm-copy") / "data", node_id="dhm-copy",
                          extra_args=("--storage", "memory"))
    try:
        process.start(wait=False)
        process.wait_ready()
        yield process
    finally:
        process.stop()


# -- binary values through pipes --------------------------------------------------------------

def test_all_byte_values_round_trip_through_shell_redirections(url: str, prefix: bytes, tmp_path: Path) -> None:
    source, copy = tmp_path / "value.bin", tmp_path / "out.bin"
    source.write_bytes(ALL_BYTES * 3 + b"\n\r\n\x00")
    key = os.fsdecode(prefix + b"blob")
    script = f'"$DHM" put "$KEY" < {source} && "$DHM" get "$KEY" > {copy} && cmp {source} {copy}'
    done = subprocess.run(["bash", "-c", script], env={**os.environ, "DHM_NODE": url, "DHM": str(DHM), "KEY": key},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == source.read_bytes()
    assert done.stderr.decode().startswith("version ")  # put's version, on stderr only
    with Client(url) as c:
        assert c.get(prefix + b"blob").value == ALL_BYTES * 3 + b"\n\r\n\x00"


def test_binary_value_and_key_in_process(url: str, prefix: bytes) -> None:
    key = prefix + b"\x00\xff\n\\"
    assert run(url, "put", key, stdin=ALL_BYTES).code == 0
    got = run(url, "get", key)
    assert (got.code, got.out, got.err) == (0, ALL_BYTES, "")
    escaped = escape_key(key)
    assert run(url, "get", "--escaped", escaped).out == ALL_BYTES


# -- put / get / delete / cas -----------------------------------------------------------------

def test_put_get_delete_with_exit_codes(url: str, prefix: bytes) -> None:
    key = os.fsdecode(prefix + b"k")
    put = run(url, "put", key, "hello")
    assert put.code == 0 and put.out == b""
    version = put.err.strip().removeprefix("version ")
    got = run(url, "--json", "get", key)
    assert got.json() == {"key": key, "value": "hello", "version": version}

    as_json = run(url, "put", key, "again", "--json")  # options after the command too
    assert as_json.code == 0 and set(as_json.json()) == {"version"}
    assert run(url, "get", key).out == b"again"

    stale = run(url, "delete", key, "--if-match", version)
    assert stale.code == 3 and "precondition_failed" in stale.err and stale.err.count("\n") == 1
    assert run(url, "delete", key).code == 0
    missing = run(url, "get", key)
    assert (missing.code, missing.out) == (1, b"")
    assert missing.err.startswith("dhm get: ") and missing.err.count("\n") == 1
    again = run(url, "delete", key)
    assert again.code == 1 and "nothing was deleted" in again.err


def test_put_with_ttl_and_binary_json_get(url: str, prefix: bytes) -> None:
    key = os.fsdecode(prefix + b"ttl")
    assert run(url, "put", "--ttl", "100", key, stdin=b"\xff\x00").code == 0
    record = run(url, "get", "--json", key).json()
    assert record["encoding"] == "base64"
    assert base64.b64decode(record["value"]) == b"\xff\x00"
    assert run(url, "put", "--ttl", "0", key, "v").code == 2  # refused before sending
    assert run(url, "put", "--ttl", "999999999999", key, "v").code == 2  # refused by the node (400)


def test_cas(url: str, prefix: bytes) -> None:
    key = os.fsdecode(prefix + b"cas")
    created = run(url, "--json", "cas", key, "-", "one")
    assert created.code == 0
    v1 = created.json()["version"]
    assert run(url, "cas", key, "-", "two").code == 3  # exists already
    assert run(url, "cas", "--create", key, "two").code == 3
    assert run(url, "cas", key, v1, stdin=b"two").code == 0  # value from stdin
    assert run(url, "get", key).out == b"two"
    stale = run(url, "cas", key, v1, "three")
    assert stale.code == 3 and stale.err.count("\n") == 1
    assert run(url, "get", key).out == b"two"
    fresh = os.fsdecode(prefix + b"cas-created")
    assert run(url, "cas", "--create", fresh, "x").code == 0
    assert run(url, "get", fresh).out == b"x"


# -- list -------------------------------------------------------------------------------------

def test_list_binary_keys_escaped_and_as_json(url: str, prefix: bytes) -> None:
    keys = sorted([prefix + bytes([b]) for b in range(256)] + [prefix + "café\\".encode(), prefix + b"a b"])
    with Client(url) as c:
        for k in keys:
            c.put(k, b"v")
    listed = run(url, "list", prefix)
    assert listed.code == 0
    lines = listed.out.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert [unescape_key(line) for line in lines[:-1]] == keys
    assert escape_key(prefix + "café\\".encode()).encode() + b"\n" in listed.out  # readable, not \xc3\xa9
    as_json = run(url, "list", "--json", prefix)
    assert [base64.b64decode(k) for k in as_json.json()] == keys
    limited = run(url, "list", prefix, "--limit", "3")
    assert [unescape_key(line) for line in limited.out.decode().splitlines()] == keys[:3]
    assert run(url, "list", "--json", prefix + b"nothing-here").json() == []


def test_escaping_is_reversible_and_one_line() -> None:
    samples = [bytes([b]) for b in range(256)] + [ALL_BYTES, b"\\x41", "日本\u2028\u00a0".encode(), b"\xed\xa0\x80"]
    for key in samples:
        text = escape_key(key)
        assert "\n" not in text and "\r" not in text and text.isprintable()
        assert unescape_key(text) == key
    assert escape_key(b"user/42 ok") == "user/42 ok"
    with pytest.raises(ValueError):
        unescape_key("a\\n")


# -- members / ring / status ------------------------------------------------------------------

def test_members_ring_status_human_and_json(url: str, node: NodeProcess) -> None:
    members = run(url, "members")
    assert members.code == 0
    header, row = members.out.decode().splitlines()
    assert header.split() == ["ID", "STATE", "HOST", "REST", "PEER", "GOSSIP", "WEIGHT", "INCARNATION", "VERSION"]
    assert row.split()[:5] == ["*", node.node_id, "alive", "127.0.0.1", str(node.port)]
    raw = run(url, "members", "--json").json()
    assert raw["node"] == node.node_id and [m["id"] for m in raw["members"]] == [node.node_id]

    ring = run(url, "ring")
    lines = ring.out.decode().splitlines()
    assert lines[0].startswith("partitions ") and "hash xxh64" in lines[0]
    ring_json = run(url, "--json", "ring").json()
    assert lines[2].split()[:4] == [node.node_id, str(ring_json["partitions"]), "0", str(ring_json["partitions"])]
    with_partitions = run(url, "ring", "--partitions").out.decode().splitlines()
    assert f"0          {node.node_id}" in with_partitions

    status = run(url, "status")
    assert status.code == 0
    text = status.out.decode()
    assert f"node     {node.node_id} ({url})" in text and "ready    ready" in text and "members  1 (1 alive)" in text
    doc = run(url, "status", "--json").json()
    assert doc["ready"] is True and doc["members"] == {"total": 1, "by_state": {"alive": 1}}
    (mine,) = doc["nodes"]
    assert mine["node"] == node.node_id and mine["partitions_owned"] == ring_json["partitions"]
    table = text.splitlines()[text.splitlines().index("") + 1:]
    assert table[0].split()[:5] == ["NODE", "STATE", "OWNED", "HELD", "PULLING"]
    assert table[1].split()[:3] == [node.node_id, "ready", str(ring_json["partitions"])]


def test_leave_drains_a_node_which_then_exits(tmp_path: Path) -> None:
    staying = NodeProcess(tmp_path / "a" / "data", node_id="stays")
    leaving = NodeProcess(tmp_path / "b" / "data", node_id="leaves")
    seeds = f"127.0.0.1:{staying.peer_port},127.0.0.1:{leaving.peer_port}"
    staying.extra_args = leaving.extra_args = ("--seed-nodes", seeds, "--request-timeout", "1")
    try:
        staying.start()
        leaving.start()
        for i in range(50):
            assert run(leaving.url, "put", f"k{i}", f"v{i}").code == 0
        done = run(leaving.url, "leave", "--wait", "60")
        assert done.code == 0, done.err
        assert "leaves is draining" in done.err and "leaves has left" in done.err
        assert leaving.proc.wait(timeout=10) == 0
        assert staying.member_states()["leaves"] == "left"
        for i in range(50):
            got = run(staying.url, "get", f"k{i}")
            assert (got.code, got.out) == (0, f"v{i}".encode())
    finally:
        leaving.kill()
        staying.kill()


def test_installed_entry_point_members_and_status(url: str, node: NodeProcess) -> None:
    done = dhm(url, "members", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["node"] == node.node_id
    done = dhm(url, "status")
    assert done.returncode == 0 and b"ready    ready" in done.stdout


# -- load / dump ------------------------------------------------------------------------------

def test_load_reports_bad_lines_by_number(url: str, prefix: bytes, tmp_path: Path) -> None:
    p = prefix.decode()
    good_b64 = json.dumps({"key": base64.b64encode(prefix + b"\xff").decode(),
                           "value": base64.b64encode(ALL_BYTES).decode(), "encoding": "base64"})
    lines = [
        json.dumps({"key": p + "a", "value": "1"}),
        "{not json",
        json.dumps({"key": p + "b"}),
        "",
        good_b64,
        json.dumps({"key": p + "c", "value": "3", "ttl": 60}),
        json.dumps({"key": p + "d", "value": "4", "ttl": 0}),
        json.dumps({"key": p + "e", "value": "5", "tll": 5}),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = dhm(url, "load", str(path))
    assert done.returncode == 2, done.stderr
    err = done.stderr.decode()
    assert "line 2: not JSON" in err and 'line 3: no "value"' in err
    assert "line 7: " in err and "line 8: unknown field 'tll'" in err
    assert "failed lines: 2,3,7,8" in err and "3 written, 4 failed" in err
    assert "Traceback" not in err
    with Client(url) as c:
        assert c.get(prefix + b"a").value == b"1"
        assert c.get(prefix + b"\xff").value == ALL_BYTES
        assert c.get(prefix + b"c").value == b"3"
        with pytest.raises(NotFound):
            c.get(prefix + b"d")

    summary = run(url, "load", "--json", "-", stdin=b'{"key": "' + prefix + b'z", "value": "z"}\n[1]\n')
    assert summary.code == 2
    doc = summary.json()
    assert doc["written"] == 1 and [f["line"] for f in doc["failed"]] == [2]


def test_dump_piped_into_load_copies_exactly_to_another_node(url: str, prefix: bytes,
                                                             second_node: NodeProcess) -> None:
    data = {prefix + b"text": "héllo\n".encode(), prefix + b"bin\x00\xff": ALL_BYTES,
            prefix + b"empty": b"", prefix + b"\xc3": b"utf-8 value, key is not"}
    data.update({prefix + b"n/%03d" % i: b"v%d" % i for i in range(150)})
    with Client(url) as c:
        for k, v in data.items():
            c.put(k, v)
    script = f'"$DHM" dump "$PREFIX" | "$DHM" --node {second_node.url} load --workers 4 -'
    done = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, timeout=60,
                          env={**os.environ, "DHM_NODE": url, "DHM": str(DHM), "PREFIX": prefix.decode()})
    assert done.returncode == 0, done.stderr
    assert f"{len(data)} written, 0 failed".encode() in done.stderr
    with Client(second_node.url) as copy:
        assert list(copy.keys(prefix)) == sorted(data)
        for k, v in data.items():
            assert copy.get(k).value == v

    dumped = run(url, "dump", prefix).out.decode().splitlines()
    records = [parse_record(line) for line in dumped]
    assert {k: v for k, v, _ in records} == data
    assert json.loads(dumped[0]) == json.loads(encode_record(sorted(data)[0], data[sorted(data)[0]]))
    by_key = {parse_record(line)[0]: json.loads(line) for line in dumped}
    assert "encoding" not in by_key[prefix + b"text"]
    assert by_key[prefix + b"bin\x00\xff"]["encoding"] == "base64"


def test_progress_on_a_terminal_and_in_a_log() -> None:
    now = [0.0]
    tty = TTYStringIO()
    progress = Progress(tty, total_bytes=200, clock=lambda: now[0])
    progress.update(1, 0, 10)  # too soon after the start: nothing drawn
    assert tty.getvalue() == ""
    now[0] = 1.0
    progress.update(10, 1, 100)
    assert tty.getvalue().startswith("\r[" + "#" * 15 + "." * 15 + "]  50%  10 lines, 1 failed, 10/s")
    progress.finish(20, 1, 200)
    assert tty.getvalue().endswith("\n") and "100%" in tty.getvalue()

    log = io.StringIO()
    plain = Progress(log, total_bytes=200, clock=lambda: now[0], plain_interval=5.0)
    for step in range(1, 12):
        now[0] = 1.0 + step
        plain.update(step, 0, step)
    assert log.getvalue().splitlines() == ["dhm load: 5 lines, 0 failed, 1/s", "dhm load: 10 lines, 0 failed, 1/s"]
    plain.finish(11, 0, 11)
    assert "\r" not in log.getvalue() and len(log.getvalue().splitlines()) == 2


def test_records_parse_and_encode() -> None:
    assert parse_record(encode_record(b"k", b"v", ttl=5)) == (b"k", b"v", 5)
    assert parse_record(encode_record(b"\xff", b"v")) == (b"\xff", b"v", None)
    for bad, reason in [('{"key": "", "value": "v"}', "empty"), ('{"key": "k", "value": 1}', "string"),
                        ('{"key": "!!", "value": "v", "encoding": "base64"}', "base64"),
                        ('{"key": "k", "value": "v", "ttl": true}', "ttl"),
                        ('{"key": "\\udc80", "value": "v"}', "Unicode")]:
        with pytest.raises(ValueError, match=reason):
            parse_record(bad)


# -- errors: usage, unreachable, what a sick node says ----------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["get"], ["put"], ["cas", "k"], ["cas", "k", "v1", "v", "extra"],
    ["cas", "--create", "k", "a", "b"], ["list", "--limit", "0"], ["get", "--escaped", "bad\\q"],
    ["--timeout", "-1", "status"], ["delete", "k", "--if-match", 'no"quotes'],
])
def test_usage_errors_exit_2_with_one_line(url: str, argv: list[str]) -> None:
    result = run(url, *argv)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("dhm")


def test_bad_node_url_and_help() -> None:
    err = io.StringIO()
    assert main(["--node", "ftp://x", "get", "k"], stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=err, env={}) == 2
    assert "http://" in err.getvalue()
    done = dhm("http://127.0.0.1:1", "load", "-h")
    assert done.returncode == 0 and b"examples:" in done.stdout and b"exit codes:" in done.stdout
    done = dhm("http://127.0.0.1:1")
    assert done.returncode == 2 and done.stderr.count(b"\n") == 1


def test_unreachable_node_exits_5_with_one_line() -> None:
    port = free_port()  # nothing listens there
    for argv in (["get", "k"], ["status"], ["members"], ["delete", "k"]):
        done = dhm(f"http://127.0.0.1:{port}", *argv)
        assert done.returncode == 5, done.stderr
        assert done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr
        assert done.stderr.startswith(b"dhm ") and f"cannot reach http://127.0.0.1:{port}".encode() in done.stderr
    done = dhm(f"http://127.0.0.1:{port}", "load", "-", input=b'{"key": "a", "value": "b"}\n' * 100)
    assert done.returncode == 5 and b"stopped after line" in done.stderr


class _SickNode(BaseHTTPRequestHandler):
    """Not ready; PUT of key ``busy`` is a 503 (too few replicas), anything else a 500."""

    def _send(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ready":
            self._send(503, {"status": "not_ready", "node": "sick"})
        elif self.path == "/health":
            self._send(200, {"status": "ok", "node": "sick"})
        elif self.path == "/v1/cluster/members":
            self._send(200, {"node": "sick", "members": [{"id": "sick", "state": "alive"},
                                                         {"id": "other", "state": "dead"}]})
        else:
            self._send(500, {"error": {"code": "internal", "message": "boom"}})

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/busy"):
            self._send(503, {"error": {"code": "unavailable", "message": "1 of 2 replicas", "acks": 1,
                                       "required": 2}})
        else:
            self._send(500, {"error": {"code": "internal", "message": "boom"}})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sick_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SickNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_not_ready_unavailable_and_server_errors(sick_url: str) -> None:
    status = run(sick_url, "status")
    assert status.code == 4
    assert "ready    not_ready" in status.out.decode() and "members  2 (1 alive, 1 dead)" in status.out.decode()
    assert run(sick_url, "status", "--json").json()["ready"] is False
    busy = run(sick_url, "put", "busy", "v")
    assert busy.code == 4 and "1 of 2 replicas" in busy.err and busy.err.count("\n") == 1
    broken = run(sick_url, "get", "k")
    assert broken.code == 6 and "boom" in broken.err
