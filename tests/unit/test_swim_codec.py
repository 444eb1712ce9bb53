"""Gossip wire format and hostile input: nothing from the network may raise."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_dhm.membership.swim import Keyring, NodeInfo, Swim, SwimConfig, codec
from twisted_dhm.membership.swim import gossip_pb2 as pb
from twisted_dhm.membership.swim.config import PROFILES

ME = ("10.0.0.1", 7946)
SRC = ("10.0.0.2", 7946)
KEY = b"k" * 16


def new_swim(keyring: Keyring | None = None) -> Swim:
    swim = Swim(SwimConfig(), NodeInfo("me", ME, b""), random.Random(1), keyring=keyring)
    swim.start(0.0, [])
    body = b"".join(codec.alive(1, f"m{i}", f"10.0.1.{i}", 7946, b"") for i in range(3))
    swim.receive_packet(0.0, SRC, codec.seal(body, keyring, codec.PACKET_LABEL))
    return swim


def names(swim: Swim) -> set[str]:
    return {m.name for m in swim.members()}


def valid_entries() -> list[bytes]:
    return [
        codec.ping(7, "me", "m0", "10.0.1.0", 7946),
        codec.indirect_ping(8, "m1", "10.0.1.1", 7946, True, 500, "m0"),
        codec.ack(9),
        codec.nack(10),
        codec.alive(3, "m2", "10.0.1.2", 7946, b"meta"),
        codec.suspect(1, "m1", "m0"),
        codec.dead(1, "m0", "m1"),
    ]


# --- round trips and framing ---------------------------------------------------------------


def test_entries_concatenate_into_a_compound_packet():
    entries = valid_entries()
    body = b"".join(entries)
    pkt = pb.SwimPacket.FromString(body)
    assert [m.WhichOneof("body") for m in pkt.messages] == [
        "ping",
        "indirect_ping",
        "ack",
        "nack",
        "alive",
        "suspect",
        "dead",
    ]
    assert pkt.SerializeToString() == body  # the hand-made framing is exactly protobuf's
    assert pkt.messages[4].alive.meta == b"meta" and pkt.messages[6].dead.from_node == "m1"
    assert len(codec.ack(1)) <= 6  # one tag byte, one length byte, then the message


def test_long_entries_use_multi_byte_lengths():
    e = codec.alive(1, "n" * 128, "h" * 255, 65535, b"m" * 512)
    assert pb.SwimPacket.FromString(e + codec.ack(3)).messages[1].ack.seq == 3


def test_plain_and_sealed_frames():
    body = b"".join(valid_entries())
    plain = codec.seal(body, None, codec.PACKET_LABEL)
    assert plain[0] == 0 and codec.open_frame(plain, None, codec.PACKET_LABEL) == body
    ring = Keyring([KEY])
    sealed = codec.seal(body, ring, codec.PACKET_LABEL)
    assert len(sealed) == len(body) + codec.overhead(ring) and codec.overhead(None) == 1
    assert codec.open_frame(sealed, ring, codec.PACKET_LABEL) == body
    for data, ring_, auth in ((plain, ring, True), (sealed, None, True), (b"", None, False), (b"\x07x", None, False)):
        with pytest.raises(codec.FrameRejected) as err:
            codec.open_frame(data, ring_, codec.PACKET_LABEL)
        assert err.value.auth is auth


def test_push_pull_round_trip():
    members = [
        ("a", "10.0.0.1", 1, b"", 1, "alive"),
        ("b", "10.0.0.2", 2, b"x", 7, "left"),
        ("c", "10.0.0.3", 3, b"", 2, "dead"),
        ("d", "10.0.0.4", 4, b"", 3, "suspect"),
    ]
    msg = codec.parse_push_pull(codec.push_pull(True, members))
    assert msg.join
    got = [(m.name, m.host, m.port, m.meta, m.incarnation, codec.PB_TO_STATE[m.state]) for m in msg.members]
    assert got == members


def test_limits():
    assert codec.valid_name("a" * 128) and not codec.valid_name("a" * 129) and not codec.valid_name("")
    assert codec.valid_name("é" * 64) and not codec.valid_name("é" * 65)  # bytes, not characters
    assert codec.valid_meta(b"m" * 512) and not codec.valid_meta(b"m" * 513)
    assert codec.valid_addr("h", 1) and not codec.valid_addr("h", 0) and not codec.valid_addr("", 1)
    assert not codec.valid_addr("h" * 256, 1) and not codec.valid_addr("h", 65536)


def test_profiles_and_config_validation():
    assert SwimConfig.profile("lan") == SwimConfig()
    wan = SwimConfig.profile("wan")
    assert (wan.probe_interval, wan.probe_timeout, wan.suspicion_mult, wan.gossip_nodes) == (5.0, 3.0, 6, 4)
    local = SwimConfig.profile("local", mtu=9000)
    assert (local.probe_timeout, local.indirect_checks, local.retransmit_mult, local.mtu) == (0.2, 1, 2, 9000)
    assert set(PROFILES) == {"lan", "wan", "local"}
    with pytest.raises(ValueError):
        SwimConfig.profile("moon")
    with pytest.raises(ValueError):
        SwimConfig(mtu=500)
    with pytest.raises(ValueError):
        SwimConfig(probe_interval=0)


# --- hostile input through the core -----------------------------------------------------------


def test_oversized_and_malformed_fields_are_dropped_and_counted():
    swim = new_swim()
    before = swim.stats["decode_errors"]
    bad = [
        codec.alive(1, "n" * 129, "10.0.0.9", 1, b""),
        codec.alive(1, "meta-too-big", "10.0.0.9", 1, b"m" * 513),
        codec.alive(1, "no-port", "10.0.0.9", 0, b""),
        codec.alive(1, "", "10.0.0.9", 1, b""),
        codec.suspect(1, "m0", ""),
        codec.dead(1, "", "m0"),
        codec.indirect_ping(1, "m0", "", 7946, True, 500, "x"),
        codec.entry(b""),  # a message with no body
        codec.entry(b"\xfa\x06\x00"),  # field 111: a message type from the future
    ]
    swim.receive_packet(1.0, SRC, codec.seal(b"".join(bad), None, codec.PACKET_LABEL))
    assert swim.stats["decode_errors"] - before == len(bad)
    assert names(swim) == {"me", "m0", "m1", "m2"}
    assert [m.state for m in swim.members()] == ["alive"] * 4


def test_oversized_push_pull_is_refused(monkeypatch):
    monkeypatch.setattr(codec, "MAX_PUSH_PULL_MEMBERS", 10)
    swim = new_swim()
    many = [(f"x{i}", "10.0.0.9", 1, b"", 1, "alive") for i in range(11)]
    reply, outs = swim.handle_stream(1.0, SRC, codec.seal(codec.push_pull(False, many), None, codec.STREAM_LABEL))
    assert reply is None and outs == []
    assert swim.stats["decode_errors"] == 1 and names(swim) == {"me", "m0", "m1", "m2"}


def test_push_pull_with_some_bad_entries_merges_the_good_ones():
    swim = new_swim()
    members = [
        ("good", "10.0.0.9", 1, b"", 1, "alive"),
        ("n" * 200, "10.0.0.9", 1, b"", 1, "alive"),
        ("badport", "10.0.0.9", 0, b"", 1, "alive"),
    ]
    msg = pb.SwimPushPull.FromString(codec.push_pull(False, members))
    msg.members.add(name="weird-state", host="h", port=1, state=9)
    reply, _ = swim.handle_stream(1.0, SRC, codec.seal(msg.SerializeToString(), None, codec.STREAM_LABEL))
    assert reply is not None
    assert "good" in names(swim) and "weird-state" not in names(swim)
    assert swim.stats["decode_errors"] == 1


def _feed_everything(swim: Swim, data: bytes) -> None:
    before = swim.stats["packets_received"]
    assert isinstance(swim.receive_packet(2.0, SRC, data), list)
    assert swim.stats["packets_received"] == before + 1
    reply, outs = swim.handle_stream(2.0, SRC, data)
    assert reply is None or isinstance(reply, bytes)
    assert isinstance(outs, list)
    assert isinstance(swim.stream_reply(2.0, SRC, data), list)
    assert isinstance(swim.advance(3.0), list)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    swim = new_swim()
    _feed_everything(swim, data)
    _feed_everything(swim, b"\x00" + data)  # past the framing byte, into protobuf


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_with_encryption(data):
    swim = new_swim(Keyring([KEY]))
    _feed_everything(swim, data)
    _feed_everything(swim, b"\x01" + data)
    assert swim.stats["auth_failures"] + swim.stats["decode_errors"] >= 3


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        if op == "flip":
            buf[i] ^= val or 1
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf.insert(i, val)
        else:
            del buf[i]
    return bytes(buf)


@given(st.lists(st.sampled_from(range(7)), min_size=1, max_size=7), mutations)
def test_mutated_valid_packets_never_raise(picks, ops):
    entries = valid_entries()
    body = b"".join(entries[i] for i in picks)
    swim = new_swim()
    _feed_everything(swim, _mutate(codec.seal(body, None, codec.PACKET_LABEL), ops))
    # Whatever got through, the member table still has sane values.
    for m in swim.members():
        assert codec.valid_name(m.name) and codec.valid_meta(m.meta) and m.state in ("alive", "suspect", "dead", "left")


@given(mutations)
def test_mutated_push_pull_never_raises(ops):
    members = [
        (f"m{i}", f"10.0.1.{i}", 7946, b"meta", 2, state)
        for i, state in enumerate(["alive", "suspect", "dead", "left", "alive"])
    ]
    swim = new_swim()
    frame = codec.seal(codec.push_pull(True, members), None, codec.STREAM_LABEL)
    _feed_everything(swim, _mutate(frame, ops))


@given(mutations)
def test_mutated_sealed_packets_are_rejected_as_auth_failures(ops):
    ring = Keyring([KEY])
    swim = new_swim(ring)
    good = codec.seal(b"".join(valid_entries()), ring, codec.PACKET_LABEL)
    bad = _mutate(good, ops)
    if bad == good:
        return
    before = dict(swim.stats)
    swim.receive_packet(2.0, SRC, bad)
    assert swim.stats["auth_failures"] + swim.stats["decode_errors"] == (
        before["auth_failures"] + before["decode_errors"] + 1
    )
