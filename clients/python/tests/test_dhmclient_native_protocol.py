"""The native protocol helpers both native clients share: generated code, frames, errors, arguments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dhashmap_client
import pytest
from dhashmap_client import (
    ConnectionError,
    DhashmapError,
    HandshakeError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    ServerError,
    Timeout,
    TransportError,
    Unavailable,
    ValueTooLarge,
)
from dhashmap_client import _native as native
from dhashmap_client._pb import peer_pb2 as pb
from dhashmap_client.errors import error_from_response
from twisted.python.failure import Failure

import twisted_dhm.peer.errors as server_errors
from twisted_dhm import errors as server_kv_errors
from twisted_dhm.peer import peer_pb2 as server_pb
from twisted_dhm.peer.protocol import DEFAULT_MAX_FRAME, PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[3]
CLIENT_PB = ROOT / "clients/python/dhashmap_client/_pb"
SERVER_PB = ROOT / "twisted_dhm/peer"


# -- the generated code ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["peer_pb2.py", "peer_pb2.pyi"])
def test_the_client_copy_of_the_generated_code_is_the_servers(name: str) -> None:
    client_copy = (CLIENT_PB / name).read_bytes()
    assert client_copy == (SERVER_PB / name).read_bytes(), (
        f"clients/python/dhashmap_client/_pb/{name} differs from twisted_dhm/peer/{name}: run `make proto`")
    if name.endswith(".py"):
        assert b"source: peer.proto" in client_copy


def test_the_makefile_regenerates_the_client_copy() -> None:
    makefile = (ROOT / "Makefile").read_text()
    proto_target = makefile.split("\nproto:", 1)[1].split("\n\n", 1)[0]
    assert "--python_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb" in proto_target
    assert "--pyi_out=$(PROTO_OUT)/clients/python/dhashmap_client/_pb" in proto_target


def test_the_client_package_does_not_import_the_server_package() -> None:
    code = (
        "import sys, dhashmap_client, dhashmap_client.native, dhashmap_client.twisted_native\n"
        "dhashmap_client.TwistedNativeClient\n"
        "print(sorted(m for m in sys.modules if m.startswith('twisted_dhm')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


def test_the_client_and_the_server_agree_on_the_constants() -> None:
    assert native.PROTOCOL_VERSION == PROTOCOL_VERSION
    assert native.DEFAULT_MAX_FRAME >= DEFAULT_MAX_FRAME
    assert pb.Frame is server_pb.Frame  # one descriptor pool: the same file, the same classes


# -- frames ------------------------------------------------------------------------------------


def test_the_client_hello_is_the_bytes_the_spec_shows() -> None:
    data = native.encode(native.hello_frame("dhashmap"))
    assert data.hex() == "00000010120e0803120864686173686d61702002"
    spec = (ROOT / "docs/protocol.md").read_text()
    shown = re.search(r"```text\n# client Hello\n(.*?)```", spec, re.S)
    assert shown is not None, "docs/protocol.md lost its worked example"
    assert "".join(re.findall(r"\b[0-9a-f]{2}\b", shown.group(1))) == data.hex()


def test_the_hello_says_client_and_names_no_node() -> None:
    frame = pb.Frame.FromString(native.encode(native.hello_frame("c1"))[4:])
    assert frame.id == 0
    assert frame.hello.protocol_version == PROTOCOL_VERSION
    assert frame.hello.cluster == "c1"
    assert frame.hello.role == pb.ROLE_CLIENT
    assert frame.hello.node_id == "" and frame.hello.partitions == 0


def test_the_frame_reader_splits_a_stream_cut_anywhere() -> None:
    frames = [pb.Frame(id=i, ping=pb.Ping(sent_at_ms=i * 1000)) for i in range(1, 4)]
    stream = b"".join(native.encode(f) for f in frames)
    for cut in range(len(stream) + 1):
        reader = native.FrameReader()
        payloads = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [pb.Frame.FromString(p) for p in payloads] == frames
    reader = native.FrameReader()
    assert [p for byte in stream for p in reader.feed(bytes([byte]))] == [f.SerializeToString() for f in frames]


def test_the_frame_reader_refuses_a_frame_over_its_limit() -> None:
    reader = native.FrameReader(max_frame=10)
    assert reader.feed(b"\x00\x00\x00\x0a" + b"\x00" * 10) == [b"\x00" * 10]
    with pytest.raises(ConnectionError) as info:
        reader.feed(b"\x00\x00\x00\x0b")
    assert info.value.code == "bad_frame"


def test_an_undecodable_frame_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError) as info:
        native.decode(b"\xff\xff\xff")
    assert info.value.code == "bad_frame"


# -- the handshake -----------------------------------------------------------------------------


def _server_hello(cluster: str = "dhashmap", version: int = PROTOCOL_VERSION) -> pb.Frame:
    frame = pb.Frame(id=0)
    frame.hello.protocol_version = version
    frame.hello.cluster = cluster
    frame.hello.node_id = "n1"
    frame.hello.role = pb.ROLE_PEER
    return frame


def test_a_compatible_hello_is_accepted() -> None:
    assert native.check_hello(_server_hello(), "dhashmap").node_id == "n1"


@pytest.mark.parametrize(("frame", "code"), [
    (_server_hello(cluster="other"), "cluster_mismatch"),
    (_server_hello(version=99), "version_mismatch"),
    (server_errors.error_frame(server_pb.ERROR_CODE_CLUSTER_MISMATCH, "no"), "cluster_mismatch"),
    (server_errors.error_frame(server_pb.ERROR_CODE_VERSION_MISMATCH, "no"), "version_mismatch"),
])
def test_an_incompatible_node_raises_handshake_error(frame: pb.Frame, code: str) -> None:
    with pytest.raises(HandshakeError) as info:
        native.check_hello(frame, "dhashmap")
    assert info.value.code == code
    assert not isinstance(info.value, TransportError)  # retrying cannot help


def test_a_first_frame_that_is_no_hello_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError):
        native.check_hello(pb.Frame(id=1, pong=pb.Pong()), "dhashmap")


# -- errors ------------------------------------------------------------------------------------


def _error(code: int, message: str = "m", acks: int = 0, required: int = 0) -> pb.Error:
    return pb.Error(code=code, message=message, acks=acks, required=required)


@pytest.mark.parametrize(("code", "cls", "name"), [
    (pb.ERROR_CODE_NOT_FOUND, NotFound, "not_found"),
    (pb.ERROR_CODE_PRECONDITION_FAILED, PreconditionFailed, "precondition_failed"),
    (pb.ERROR_CODE_INVALID_REQUEST, InvalidRequest, "invalid_request"),
    (pb.ERROR_CODE_UNAVAILABLE, Unavailable, "unavailable"),
    (pb.ERROR_CODE_STORAGE, Unavailable, "storage_error"),
    (pb.ERROR_CODE_TIMEOUT, Timeout, "timeout"),
    (pb.ERROR_CODE_INTERNAL, ServerError, "internal"),
    (pb.ERROR_CODE_UNSPECIFIED, ServerError, "unspecified"),
    (99, ServerError, "error_code_99"),
])
def test_request_errors_become_the_rest_clients_classes(code: int, cls: type, name: str) -> None:
    error = native.request_error(_error(code, "why"))
    assert type(error) is cls
    assert error.code == name
    assert error.message == "why"
    assert error.status is None


def test_every_error_the_server_maps_gets_the_class_of_the_same_name() -> None:
    for server_cls, code in server_errors._CODE_OF.items():
        client_error = native.request_error(_error(code, server_cls.__name__))
        if code == pb.ERROR_CODE_TOO_LARGE:
            assert isinstance(client_error, KeyTooLong | ValueTooLarge)
        else:
            assert type(client_error).__name__ == server_cls.__name__


def test_the_server_sends_acks_and_required_that_the_client_keeps() -> None:
    frame = server_errors.error_for_failure(
        Failure(server_kv_errors.Unavailable("write: 1 of 2", acks=1, required=2)), 7)
    error = native.request_error(frame.error)
    assert isinstance(error, Unavailable)
    assert (error.acks, error.required) == (1, 2)


def test_too_large_names_the_key_or_the_value() -> None:
    assert type(native.request_error(_error(pb.ERROR_CODE_TOO_LARGE, "the key is 5000 bytes"))) is KeyTooLong
    assert type(native.request_error(_error(pb.ERROR_CODE_TOO_LARGE, "the value is 9 MiB"))) is ValueTooLarge


@pytest.mark.parametrize(("code", "cls", "name"), [
    (pb.ERROR_CODE_CLUSTER_MISMATCH, HandshakeError, "cluster_mismatch"),
    (pb.ERROR_CODE_VERSION_MISMATCH, HandshakeError, "version_mismatch"),
    (pb.ERROR_CODE_PARTITIONS_MISMATCH, HandshakeError, "partitions_mismatch"),
    (pb.ERROR_CODE_TOO_LARGE, ValueTooLarge, "frame_too_large"),
    (pb.ERROR_CODE_BAD_FRAME, ConnectionError, "bad_frame"),
    (pb.ERROR_CODE_INTERNAL, ConnectionError, "connection_error"),
])
def test_connection_errors_by_code(code: int, cls: type, name: str) -> None:
    error = native.connection_error(_error(code, "because"))
    assert type(error) is cls and error.code == name
    assert "because" in error.message


def test_the_rest_client_keeps_acks_and_required_too() -> None:
    body = b'{"error": {"code": "unavailable", "message": "m", "acks": 1, "required": 2}}'
    error = error_from_response(503, body)
    assert isinstance(error, Unavailable) and (error.acks, error.required) == (1, 2)
    assert error_from_response(503, b"proxy").acks is None


def test_an_answer_of_the_wrong_kind_is_a_bad_response() -> None:
    request = native.get_request(b"k")
    with pytest.raises(DhashmapError) as info:
        native.get_answer(request, pb.Frame(id=1, put_result=pb.PutResult(version="v")))
    assert info.value.code == "bad_response"


def test_a_get_result_not_found_raises_not_found() -> None:
    request = native.get_request(b"k")
    with pytest.raises(NotFound):
        native.get_answer(request, pb.Frame(id=1, get_result=pb.GetResult(found=False)))
    assert native.get_answer(request, pb.Frame(id=1, get_result=pb.GetResult(found=True, value=b"", version="v"))) \
        == dhashmap_client.Value(b"", "v")


# -- arguments ---------------------------------------------------------------------------------


def test_a_put_request_carries_every_field() -> None:
    frame = native.put_request("ключ", bytearray(b"v"), ttl=60.0, if_match='"AAEC"', w=2)
    put = frame.put
    assert (put.key, put.value, put.ttl_seconds) == ("ключ".encode(), b"v", 60)
    assert put.if_match == "AAEC"  # a quoted ETag is unquoted
    assert not put.if_none_match
    assert put.w.count == 2 and put.w.level == pb.Consistency.LEVEL_DEFAULT


def test_no_condition_and_no_ttl_leave_the_fields_empty() -> None:
    put = native.put_request(b"k", b"v").put
    assert (put.ttl_seconds, put.if_match, put.if_none_match) == (0, "", False)
    assert not put.HasField("w")
    assert native.put_request(b"k", b"v", if_match="*", if_none_match=True).put.if_match == "*"


@pytest.mark.parametrize(("level", "expected"), [
    ("one", pb.Consistency(level=pb.Consistency.LEVEL_ONE)),
    ("quorum", pb.Consistency(level=pb.Consistency.LEVEL_QUORUM)),
    ("all", pb.Consistency(level=pb.Consistency.LEVEL_ALL)),
    (3, pb.Consistency(count=3)),
])
def test_levels_and_counts(level: str | int, expected: pb.Consistency) -> None:
    assert native.get_request(b"k", r=level).get.r == expected
    assert native.delete_request(b"k", w=level).delete.w == expected


@pytest.mark.parametrize(("level", "error"), [
    (0, ValueError), (-1, ValueError), (2**32, ValueError), ("most", ValueError), ("2", ValueError),
    (True, TypeError), (1.0, TypeError),
])
def test_bad_levels_are_refused_before_sending(level: object, error: type) -> None:
    with pytest.raises(error):
        native.get_request(b"k", r=level)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, -1, 10 * 365 * 24 * 3600 + 1, 2**64])
def test_a_ttl_out_of_the_rest_apis_range_is_an_invalid_request(ttl: int) -> None:
    # On the wire 0 means "never expires", and the node does not check the range.
    with pytest.raises(InvalidRequest):
        native.put_request(b"k", b"v", ttl=ttl)


@pytest.mark.parametrize(("ttl", "error"), [(1.5, ValueError), (float("inf"), ValueError), ("60", TypeError),
                                            (True, TypeError)])
def test_a_ttl_that_is_not_whole_seconds_is_refused(ttl: object, error: type) -> None:
    with pytest.raises(error):
        native.put_request(b"k", b"v", ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", '""', "a b", 'a"b'])
def test_an_empty_or_malformed_if_match_is_refused(token: str) -> None:
    # An empty if_match on the wire would mean "no condition": an unconditional write.
    with pytest.raises(ValueError):
        native.put_request(b"k", b"v", if_match=token)
    with pytest.raises(ValueError):
        native.delete_request(b"k", if_match=token)


def test_keys_and_values_must_be_bytes_or_str() -> None:
    with pytest.raises(TypeError):
        native.get_request(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.put_request(b"k", 42)  # type: ignore[arg-type]


def test_a_ping_from_the_node_is_answered_and_other_requests_refused() -> None:
    pong = native.not_served(pb.Frame(id=5, ping=pb.Ping(sent_at_ms=9)))
    assert pong == pb.Frame(id=5, pong=pb.Pong(sent_at_ms=9))
    refusal = native.not_served(pb.Frame(id=6, replica_get=pb.ReplicaGet()))
    assert refusal is not None and refusal.id == 6 and refusal.error.code == pb.ERROR_CODE_INVALID_REQUEST
    assert native.not_served(pb.Frame(id=7, get_result=pb.GetResult())) is None
