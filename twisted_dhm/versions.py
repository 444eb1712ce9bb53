"""Record versions: a vector clock for causality plus a hybrid logical clock (HLC) stamp.

The vector clock says whether one version descends from another or whether two
are concurrent; the HLC stamp orders concurrent versions for last-writer-wins
with a deterministic tie-break.  Both travel in the HTTP ``ETag`` as an opaque
token, so ``If-Match`` carries the full causal context back to the server.

HLC stamps are 64-bit integers: milliseconds since the epoch in the high 48
bits and a logical counter in the low 16 (the encoding CockroachDB and
MongoDB use), so they compare as plain integers.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterable, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime

LOGICAL_BITS = 16
MAX_STAMP = (1 << 63) - 1  # counters and HLC stamps from elsewhere must stay below this
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: no trailing newline
# How far ahead of this node's physical clock a stamp seen elsewhere may be and still move
# the HLC: a peer with a wildly wrong clock (or a hostile frame) must not drag every node's
# stamps into the future.
MAX_CLOCK_DRIFT_MS = 60_000
_ENTRY = struct.Struct(">Q")
_HEAD = struct.Struct(">QB")  # a version's HLC stamp and entry count
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64 -> base64url
# Node ids as they appear in encoded versions -> str: a cluster has few, decoded on every read.
_NODE_NAMES: dict[bytes, str] = {}
_MAX_NODE_NAMES = 4096  # ids from hostile input cannot grow it (or the next) further
# And the other way: node id -> its encoding in a version (length byte, UTF-8).
_NODE_PREFIXES: dict[str, bytes] = {}
MAX_CLOCK_ENTRIES = 255
MAX_NODE_ID_BYTES = 255


class VersionDecodeError(ValueError):
    """Bytes that do not hold a well-formed version."""


class Ordering:
    """How two vector clocks relate."""

    EQUAL = "equal"
    BEFORE = "before"  # self happened before other (other descends from self)
    AFTER = "after"  # self descends from other
    CONCURRENT = "concurrent"


@attrs.frozen
class Version:
    """One version of a record: vector clock entries (sorted by node) and an HLC stamp."""

    clock: tuple[tuple[str, int], ...] = ()
    hlc: int = 0
    # The encoded form, made once: a write encodes its version for the disk and for the ETag.
    _encoded: bytes | None = attrs.field(default=None, eq=False, hash=False, repr=False)

    @classmethod
    def from_mapping(cls, clock: Mapping[str, int], hlc: int) -> Version:
        return cls(tuple(sorted(clock.items())), hlc)

    def counter(self, node_id: str) -> int:
        for node, count in self.clock:
            if node == node_id:
                return count
        return 0

    def increment(self, node_id: str, hlc: int) -> Version:
        """The version a write coordinated by ``node_id`` makes on top of this one.

        The node's counter becomes at least the write's HLC stamp (a *hybrid* counter), not
        just one more than before: a node that lost track of a key's history (its tombstone
        was reaped, its memory store restarted) still makes versions that supersede every
        version it made before, instead of restarting at 1 under an old tombstone.
        """
        # (The entries stay sorted by node: the new or raised entry goes in its place.)
        entries = []
        placed = False
        for node, count in self.clock:
            if not placed and node >= node_id:
                placed = True
                if node == node_id:
                    entries.append((node, max(count + 1, hlc)))
                    continue
                entries.append((node_id, max(1, hlc)))
            entries.append((node, count))
        if not placed:
            entries.append((node_id, max(1, hlc)))
        if len(entries) > MAX_CLOCK_ENTRIES:
            # Full (a cluster whose members came and went for years): the entries written
            # longest ago go, as Riak prunes its clocks.  Their counters are the smallest
            # (counters are at least the HLC stamp of their write), so at worst a version that
            # still has them looks concurrent with this one, and the HLC stamp picks this one.
            by_age = sorted(entries, key=lambda e: (e[0] == node_id, e[1]))
            entries = sorted(by_age[len(entries) - MAX_CLOCK_ENTRIES :])
        return Version(tuple(entries), hlc)

    def merge(self, other: Version, hlc: int) -> Version:
        """The least version that descends from both (entry-wise maximum)."""
        entries = dict(self.clock)
        for node, count in other.clock:
            if count > entries.get(node, 0):
                entries[node] = count
        return Version.from_mapping(entries, hlc)

    def compare(self, other: Version) -> str:
        mine, theirs = self.clock, other.clock
        if mine == theirs:
            return Ordering.EQUAL
        mine, theirs = dict(mine), dict(theirs)
        less = greater = False
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
        if less and greater:
            return Ordering.CONCURRENT
        if less:
            return Ordering.BEFORE
        if greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def wins_over(self, other: Version) -> bool:
        """Whether this version should replace ``other`` when reconciling.

        Causality first; concurrent versions fall back to the higher HLC stamp and
        then to the encoded bytes, so every replica picks the same winner.
        """
        order = self.compare(other)
        if order == Ordering.AFTER:
            return True
        if order == Ordering.BEFORE:
            return False
        if self.hlc != other.hlc:
            return self.hlc > other.hlc
        return encode_version(self) > encode_version(other)

    def to_token(self) -> str:
        """The opaque, URL- and header-safe token used as an ETag value."""
        return version_token(encode_version(self))

    @classmethod
    def from_token(cls, token: str) -> Version:
        try:
            raw = b64url_decode(token)
        except (binascii.Error, ValueError) as e:
            raise VersionDecodeError(f"version token is not base64url: {e}") from None
        version, used = decode_version(raw)
        if used != len(raw):
            raise VersionDecodeError("version token has trailing bytes")
        if version_token(raw) != token:
            # Base64 leaves spare bits in a token's last character: tags are compared character
            # by character (RFC 9110's strong comparison), so only the token we issued matches.
            raise VersionDecodeError("not a version token this server issued")
        return version


def version_token(encoded: bytes) -> str:
    """``Version.to_token`` of the version ``encoded`` is the encoding of (``encode_version``)."""
    # (base64.urlsafe_b64encode, without its two Python-level calls: made for every read)
    return binascii.b2a_base64(encoded, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: any character outside the alphabet is an error."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def encode_version(version: Version) -> bytes:
    """``hlc:u64 | n:u8 | n × (len:u8 | node-id utf-8 | counter:u64)``."""
    if version._encoded is not None:
        return version._encoded
    if len(version.clock) > MAX_CLOCK_ENTRIES:
        raise ValueError(f"vector clock has more than {MAX_CLOCK_ENTRIES} entries")
    parts = [_HEAD.pack(version.hlc, len(version.clock))]
    for node, count in version.clock:
        prefix = _NODE_PREFIXES.get(node)
        if prefix is None:
            raw = node.encode("utf-8")
            if len(raw) > MAX_NODE_ID_BYTES:
                raise ValueError(f"node id longer than {MAX_NODE_ID_BYTES} bytes: {node!r}")
            prefix = bytes((len(raw),)) + raw
            if len(_NODE_PREFIXES) < _MAX_NODE_NAMES:
                _NODE_PREFIXES[node] = prefix
        parts.append(prefix)
        parts.append(_ENTRY.pack(count))
    encoded = b"".join(parts)
    object.__setattr__(version, "_encoded", encoded)
    return encoded


def decode_version(data: bytes, offset: int = 0) -> tuple[Version, int]:
    """Decode a version at ``offset``; returns it and the offset just past it."""
    try:
        hlc, count = _HEAD.unpack_from(data, offset)
        pos = offset + 9
        entries = []
        previous = None
        for _ in range(count):
            start = pos + 1
            pos = start + data[pos]
            raw = bytes(data[start:pos])
            if len(raw) != pos - start:
                raise VersionDecodeError("truncated node id in version")
            node = _NODE_NAMES.get(raw)
            if node is None:
                node = raw.decode("utf-8")
                if len(_NODE_NAMES) < _MAX_NODE_NAMES:
                    _NODE_NAMES[raw] = node
            if previous is not None and node <= previous:
                raise VersionDecodeError("vector clock entries are not sorted and unique")
            previous = node
            entries.append((node, _ENTRY.unpack_from(data, pos)[0]))
            pos += 8
    except (struct.error, IndexError) as e:
        raise VersionDecodeError(f"truncated version: {e}") from None
    except UnicodeDecodeError:
        raise VersionDecodeError("node id in version is not UTF-8") from None
    return Version(tuple(entries), hlc, bytes(data[offset:pos])), pos


class HybridLogicalClock:
    """Monotonic HLC stamps from an injected clock (never the wall clock directly)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._last = 0

    def physical(self) -> int:
        return int(self._clock.seconds() * 1000) << LOGICAL_BITS

    def now(self) -> int:
        """A stamp greater than every stamp this clock has issued or observed."""
        self._last = max(self._last + 1, self.physical())
        return self._last

    def observe(self, stamp: int) -> None:
        """Fold in a stamp seen from elsewhere (a peer, or the store at start-up).

        A stamp more than ``MAX_CLOCK_DRIFT_MS`` ahead of the physical clock is not followed.
        """
        if stamp > self._last and stamp <= self.physical() + (MAX_CLOCK_DRIFT_MS << LOGICAL_BITS):
            self._last = stamp


def stamp_millis(stamp: int) -> int:
    return stamp >> LOGICAL_BITS


def parse_entity_tags(header: str) -> list[str] | None:
    """Parse an ``If-Match``/``If-None-Match`` value (RFC 9110 §13.1).

    Returns ``None`` for ``*`` and otherwise the opaque tags; weak tags are kept
    with their ``W/`` prefix so a strong comparison never matches them.
    Malformed members are dropped: they can match nothing.
    """
    if header.strip() == "*":
        return None
    tags = []
    for part in header.split(","):
        part = part.strip()
        if len(part) >= 2 and part[0] == '"' and part[-1] == '"':
            tags.append(part[1:-1])
        elif part.startswith('W/"') and part.endswith('"'):
            tags.append("W/" + part[3:-1])
    return tags


def versions_from_tags(tags: Iterable[str], weak: bool = False) -> list[Version]:
    """The versions named by entity tags; undecodable tags match nothing, and so do weak ones
    unless ``weak`` (``If-None-Match`` compares weakly, ``If-Match`` strongly: RFC 9110 13.1)."""
    out = []
    for tag in tags:
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        try:
            out.append(Version.from_token(tag))
        except VersionDecodeError:
            continue
    return out
