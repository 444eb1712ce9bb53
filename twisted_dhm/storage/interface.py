"""The storage engine contract and the record it stores."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList
from zope.interface import Interface

from twisted_dhm.versions import Version, VersionDecodeError, decode_version, encode_version, version_token

FORMAT_V1 = 1  # no checksum: still read
FORMAT_V2 = 2  # the same, then a CRC-32 of everything before it
FLAG_TOMBSTONE = 0x01
_HEADER = struct.Struct(">BBQ")  # format, flags, expires_at (ms since epoch, 0 = never)
_PEEK = struct.Struct(">BBQQ")  # the header and the version's HLC, which follows it
_CRC = struct.Struct(">I")


class StorageError(Exception):
    """The engine could not do what was asked; the message says why."""


class StorageFull(StorageError):
    """The engine has no room left (LMDB map full, disk full)."""


class CorruptRecord(StorageError):
    """Bytes on disk that do not decode as a record."""


@attrs.frozen
class Record:
    """One stored version of a key.

    ``expires_at`` is in milliseconds since the epoch by the node's injected clock
    (0: never).  A tombstone keeps the version of a delete so it can win against
    older copies elsewhere.
    """

    value: bytes
    version: Version
    tombstone: bool = False
    expires_at: int = 0
    # The storage encoding, made once: a write is encoded for the local disk and for every
    # peer's frame, and a record read or received keeps the bytes it came as.
    # (Not an __init__ argument, so attrs.evolve cannot carry stale bytes into a changed record.)
    _encoded: bytes | None = attrs.field(default=None, init=False, eq=False, hash=False, repr=False)

    def is_live(self, now_ms: int) -> bool:
        return not self.tombstone and (self.expires_at == 0 or now_ms < self.expires_at)

    @property
    def token(self) -> str:
        """The version's ETag token."""
        return self.version.to_token()


class RecordView:
    """A stored record as read to answer a client: like a Record, but its version stays
    encoded until it is asked for.

    Decoding a version builds a tuple per vector-clock entry, which was most of what a read
    cost, and an answer needs only the version's token: the stored bytes, in base64url.
    The bytes are checked as ``decode_record`` checks them (checksum, the version's extent)
    before a view is made.  Read-only; ``version`` is decoded when first asked for (a
    conditional GET compares it).
    """

    __slots__ = ("value", "tombstone", "expires_at", "_data", "_end", "_version")

    def __init__(self, data: bytes, value: bytes, tombstone: bool, expires_at: int, version_end: int) -> None:
        self.value = value
        self.tombstone = tombstone
        self.expires_at = expires_at
        self._data = data  # the whole stored encoding; the version is at [_HEADER.size:_end]
        self._end = version_end
        self._version: Version | None = None

    @property
    def version(self) -> Version:
        if self._version is None:
            try:
                self._version = decode_version(self._data, _HEADER.size)[0]
            except VersionDecodeError as e:  # the checksum held: written so by a faulty writer
                raise CorruptRecord(f"bad version in record: {e}") from None
        return self._version

    @property
    def token(self) -> str:
        return version_token(self._data[_HEADER.size : self._end])

    def is_live(self, now_ms: int) -> bool:
        return not self.tombstone and (self.expires_at == 0 or now_ms < self.expires_at)

    def __repr__(self) -> str:
        return f"RecordView(value={self.value!r}, token={self.token!r}, tombstone={self.tombstone!r})"


@attrs.frozen
class ScanEntry:
    """What a key scan needs to know of a record without copying its value."""

    key: bytes
    tombstone: bool
    expires_at: int
    hlc: int = 0  # of the record's version: enough to pick between replicas' answers

    def is_live(self, now_ms: int) -> bool:
        return not self.tombstone and (self.expires_at == 0 or now_ms < self.expires_at)


@attrs.frozen
class StorageStats:
    keys: int
    bytes: int


def encode_record(record: Record) -> bytes:
    """``format:u8 | flags:u8 | expires_at:u64 | version | value | crc32:u32`` (big-endian; docs/protocol.md)."""
    if record._encoded is not None:
        return record._encoded
    flags = FLAG_TOMBSTONE if record.tombstone else 0
    body = b"".join(
        (
            _HEADER.pack(FORMAT_V2, flags, record.expires_at),
            encode_version(record.version),
            record.value,
        )
    )
    encoded = body + _CRC.pack(zlib.crc32(body))
    object.__setattr__(record, "_encoded", encoded)
    return encoded


def decode_record(data: bytes) -> Record:
    size = len(data)
    try:
        fmt, flags, expires_at = _HEADER.unpack_from(data, 0)
    except struct.error:
        raise CorruptRecord(f"record of {size} bytes is shorter than its header") from None
    if fmt == FORMAT_V2:
        limit = size - _CRC.size
        if limit < _HEADER.size:
            raise CorruptRecord(f"record of {size} bytes is shorter than its header and checksum")
        if zlib.crc32(data[:limit]) != _CRC.unpack_from(data, limit)[0]:
            raise CorruptRecord("record checksum mismatch (damaged on disk or on the way)")
    elif fmt == FORMAT_V1:
        limit = size  # written before records carried a checksum
    else:
        raise CorruptRecord(f"unknown record format {fmt}")
    try:
        version, end = decode_version(data, _HEADER.size)
    except VersionDecodeError as e:
        raise CorruptRecord(f"bad version in record: {e}") from None
    if end > limit:
        raise CorruptRecord("record version runs into its checksum")
    if type(data) is not bytes:
        data = bytes(data)
    record = Record(data[end:limit], version, bool(flags & FLAG_TOMBSTONE), expires_at)
    if fmt == FORMAT_V2:
        object.__setattr__(record, "_encoded", data)  # a V1 record is re-encoded (with a checksum) when sent
    return record


def view_record(data: bytes) -> RecordView | Record:
    """``decode_record`` for answering a read: the same checks, without decoding the version
    (a RecordView); a record in the old format, without a checksum, is decoded in full."""
    size = len(data)
    try:
        fmt, flags, expires_at = _HEADER.unpack_from(data, 0)
    except struct.error:
        raise CorruptRecord(f"record of {size} bytes is shorter than its header") from None
    if fmt != FORMAT_V2:
        return decode_record(data)
    limit = size - _CRC.size
    if limit < _HEADER.size or zlib.crc32(data[:limit]) != _CRC.unpack_from(data, limit)[0]:
        return decode_record(data)  # which says what is wrong
    # The version's extent: hlc:u64 | n:u8 | n x (len:u8 | node id | counter:u64)
    pos = _HEADER.size + 9
    try:
        for _ in range(data[pos - 1]):
            pos += data[pos] + 9
    except IndexError:
        pos = size
    if pos > limit:
        raise CorruptRecord("record version runs into its checksum")
    if type(data) is not bytes:
        data = bytes(data)
    return RecordView(data, data[pos:limit], bool(flags & FLAG_TOMBSTONE), expires_at, pos)


def peek_entry(key: bytes, data: bytes) -> ScanEntry:
    """Read only the fixed header (and the HLC after it) of an encoded record."""
    try:
        fmt, flags, expires_at, hlc = _PEEK.unpack_from(data, 0)
    except struct.error:
        raise CorruptRecord(f"record of {len(data)} bytes is shorter than its header") from None
    if fmt not in (FORMAT_V1, FORMAT_V2):
        raise CorruptRecord(f"unknown record format {fmt}")
    return ScanEntry(key, bool(flags & FLAG_TOMBSTONE), expires_at, hlc)


def all_durable(writes: Sequence[Deferred]) -> Deferred:
    """One Deferred for several writes' Deferreds: fires (with ``None``) once all have, or
    fails with the first failure."""
    return DeferredList(list(writes), fireOnOneErrback=True, consumeErrors=True).addCallbacks(
        lambda _: None, lambda failure: failure.value.subFailure)


class IStorageEngine(Interface):
    """A node's local store of records.

    Reads are synchronous: both engines answer from memory or a memory map in
    microseconds, and a Deferred per read would cost more than the read.  Writes
    return a Deferred that fires only when the write is durable, so callers can
    acknowledge it.
    """

    def open() -> None:
        """Open (and create if needed) the store."""

    def close() -> Deferred:
        """Finish pending writes, then release the store."""

    def get(key: bytes) -> Record | None:
        """The durable record for ``key``, tombstones and expired records included."""

    def get_view(key: bytes) -> Record | RecordView | None:
        """``get`` for answering a client: the record's version may stay encoded (RecordView)."""

    def latest(key: bytes) -> Record | None:
        """Like ``get``, but also sees writes that are queued and not yet durable.

        The write path builds new versions on top of this, so two writes to one
        key in the same group commit still form a causal chain.
        """

    def latest_encoded(keys: Sequence[bytes]) -> list[bytes | None]:
        """The stored encoding (``encode_record``'s bytes, unchecked) of each key, pending
        writes included; ``None`` where there is nothing.  For work that needs a record's bytes
        but not the record: hashing them (the index scrub), sizing them (handoff removals)."""

    def write(key: bytes, record: Record | None, background: bool = False) -> Deferred:
        """Store ``record`` (``None`` removes the key); fires once it is durable.

        ``background``: bulk work (data movement, hint delivery, reaping) that client
        writes go ahead of; an engine may commit it in smaller steps, later.
        """

    def write_many(items: Sequence[tuple[bytes, Record | None]], background: bool = False) -> Deferred:
        """``write`` of each item, with one Deferred for them all: it fires once every one is
        durable and fails if any write does."""

    def flushed() -> Deferred:
        """Fires once every write queued so far is durable (a barrier; at once when none is)."""

    def durable(key: bytes) -> Deferred:
        """Fires once the newest write of ``key`` queued so far is durable (at once when none
        is waiting); like ``flushed``, it fires whether or not that write's commit succeeded."""

    def scan(prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        """Up to ``limit`` durable entries with ``prefix``, in key order, after ``after``."""

    def stats() -> StorageStats:
        """Number of keys (tombstones included) and bytes used."""
