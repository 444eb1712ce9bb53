"""Gossip wire format: framing byte, optional AES-GCM, protobuf messages (proto/dhashmap/v1/gossip.proto).

Senders build a compound packet by concatenating *entries*: an entry is one
serialized ``SwimMessage`` already wrapped as field 1 of ``SwimPacket`` (tag
byte + length varint + bytes).  A broadcast is therefore encoded once, when it
is queued, and packing it into any number of packets is a byte join; its size
on the wire is simply ``len(entry)``.

Decoding never trusts the sender: :func:`open_frame` turns anything that is not
a well-formed frame for our mode (plaintext or encrypted) into
:class:`FrameRejected`, and the ``valid_*`` helpers bound every string and
number before the state machine sees it.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from twisted_dhm.membership.swim import gossip_pb2 as pb
from twisted_dhm.membership.swim.keyring import ENCRYPTED_VERSION, AuthenticationFailed, Keyring
from twisted_dhm.membership.swim.keyring import OVERHEAD as ENCRYPTION_OVERHEAD

PLAIN_VERSION = 0
PACKET_LABEL = b"p"
STREAM_LABEL = b"s"

MAX_NAME_BYTES = 128
MAX_HOST_BYTES = 255
MAX_META_BYTES = 512
MAX_INCARNATION = 2**32 - 1
#: A push-pull frame listing more members than this is refused outright.
MAX_PUSH_PULL_MEMBERS = 100_000
#: Suggested Int32StringReceiver.MAX_LENGTH for the stream adapter: the largest
#: push-pull we would ever send (MAX_PUSH_PULL_MEMBERS members of ~1 KiB at worst
#: is more; 64 MiB covers any realistic cluster with full meta).
MAX_STREAM_FRAME = 64 * 1024 * 1024

_PLAIN_BYTE = bytes([PLAIN_VERSION])
_ENTRY_TAG = b"\x0a"  # SwimPacket.messages: field 1, wire type 2

STATE_TO_PB = {
    "alive": pb.SWIM_STATE_ALIVE,
    "suspect": pb.SWIM_STATE_SUSPECT,
    "dead": pb.SWIM_STATE_DEAD,
    "left": pb.SWIM_STATE_LEFT,
}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}


class FrameRejected(ValueError):
    """A datagram or stream frame that we drop; ``auth`` tells a key problem from garbage."""

    def __init__(self, message: str, auth: bool) -> None:
        super().__init__(message)
        self.auth = auth


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def entry(message: bytes) -> bytes:
    """Wrap one serialized SwimMessage so it can be concatenated into a SwimPacket."""
    return _ENTRY_TAG + _varint(len(message)) + message


def ping(seq: int, target: str, source: str, host: str, port: int) -> bytes:
    return entry(
        pb.SwimMessage(
            ping=pb.SwimPing(seq=seq, target=target, source=source, source_host=host, source_port=port)
        ).SerializeToString()
    )


def indirect_ping(seq: int, target: str, host: str, port: int, nack: bool, timeout_ms: int, source: str) -> bytes:
    msg = pb.SwimIndirectPing(
        seq=seq, target=target, target_host=host, target_port=port, nack=nack, timeout_ms=timeout_ms, source=source
    )
    return entry(pb.SwimMessage(indirect_ping=msg).SerializeToString())


def ack(seq: int) -> bytes:
    return entry(pb.SwimMessage(ack=pb.SwimAck(seq=seq)).SerializeToString())


def nack(seq: int) -> bytes:
    return entry(pb.SwimMessage(nack=pb.SwimNack(seq=seq)).SerializeToString())


def alive(incarnation: int, name: str, host: str, port: int, meta: bytes) -> bytes:
    msg = pb.SwimAlive(incarnation=incarnation, name=name, host=host, port=port, meta=meta)
    return entry(pb.SwimMessage(alive=msg).SerializeToString())


def suspect(incarnation: int, name: str, from_node: str) -> bytes:
    msg = pb.SwimSuspect(incarnation=incarnation, name=name, from_node=from_node)
    return entry(pb.SwimMessage(suspect=msg).SerializeToString())


def dead(incarnation: int, name: str, from_node: str) -> bytes:
    """A dead message; ``from_node == name`` announces a graceful leave."""
    msg = pb.SwimDead(incarnation=incarnation, name=name, from_node=from_node)
    return entry(pb.SwimMessage(dead=msg).SerializeToString())


def seal(body: bytes, keyring: Keyring | None, label: bytes) -> bytes:
    """Frame a packet or stream body: plaintext byte, or AES-GCM with the label as associated data."""
    if keyring is None:
        return _PLAIN_BYTE + body
    return keyring.encrypt(body, label)


def overhead(keyring: Keyring | None) -> int:
    return ENCRYPTION_OVERHEAD if keyring is not None else 1


def open_frame(data: bytes, keyring: Keyring | None, label: bytes) -> bytes:
    """The protobuf body of a frame, or :class:`FrameRejected`.

    A node with a keyring refuses plaintext and a node without one refuses
    ciphertext: mixing them would let an attacker inject membership news
    into an encrypted cluster, or silently split a cluster mid-rollout.
    """
    if not data:
        raise FrameRejected("empty frame", auth=False)
    version = data[0]
    if keyring is None:
        if version == PLAIN_VERSION:
            return data[1:]
        if version == ENCRYPTED_VERSION:
            raise FrameRejected("encrypted frame but no gossip keyring is configured", auth=True)
        raise FrameRejected(f"unknown frame version {version}", auth=False)
    if version == PLAIN_VERSION:
        raise FrameRejected("plaintext frame but gossip encryption is on", auth=True)
    if version != ENCRYPTED_VERSION:
        raise FrameRejected(f"unknown frame version {version}", auth=False)
    try:
        return keyring.decrypt(data, label)
    except AuthenticationFailed as e:
        raise FrameRejected(str(e), auth=True) from None


def parse_packet(body: bytes) -> pb.SwimPacket:
    try:
        return pb.SwimPacket.FromString(body)
    except (DecodeError, ValueError, TypeError, RecursionError) as e:
        raise FrameRejected(f"undecodable gossip packet: {e}", auth=False) from None


def push_pull(join: bool, members: list[tuple[str, str, int, bytes, int, str]]) -> bytes:
    """Serialize a push-pull body from (name, host, port, meta, incarnation, state) tuples."""
    msg = pb.SwimPushPull(join=join)
    add = msg.members.add
    for name, host, port, meta, incarnation, state in members:
        add(name=name, host=host, port=port, meta=meta, incarnation=incarnation, state=STATE_TO_PB[state])
    return msg.SerializeToString()


def parse_push_pull(body: bytes) -> pb.SwimPushPull:
    try:
        msg = pb.SwimPushPull.FromString(body)
    except (DecodeError, ValueError, TypeError, RecursionError) as e:
        raise FrameRejected(f"undecodable push-pull frame: {e}", auth=False) from None
    if len(msg.members) > MAX_PUSH_PULL_MEMBERS:
        raise FrameRejected(f"push-pull lists {len(msg.members)} members; at most {MAX_PUSH_PULL_MEMBERS}", auth=False)
    return msg


# --- validation: cheap checks first, encode only strings that might be too long ---


def valid_name(name: str) -> bool:
    n = len(name)
    return 0 < n and (n <= MAX_NAME_BYTES // 4 or len(name.encode()) <= MAX_NAME_BYTES)


def valid_optional_name(name: str) -> bool:
    return not name or valid_name(name)


def valid_addr(host: str, port: int) -> bool:
    n = len(host)
    return 0 < port < 65536 and 0 < n and (n <= MAX_HOST_BYTES // 4 or len(host.encode()) <= MAX_HOST_BYTES)


def valid_meta(meta: bytes) -> bool:
    return len(meta) <= MAX_META_BYTES
