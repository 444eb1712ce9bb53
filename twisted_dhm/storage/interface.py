"""The storage engine contract and the record it stores."""

from __future__ import annotations

import struct

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

from twisted_dhm.versions import Version, VersionDecodeError, decode_version, encode_version

FORMAT_V1 = 1
FLAG_TOMBSTONE = 0x01
_HEADER = struct.Struct(">BBQ")  # format, flags, expires_at (ms since epoch, 0 = never)
_PEEK = struct.Struct(">BBQQ")  # the header and the version's HLC, which follows it


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

    def is_live(self, now_ms: int) -> bool:
        return not self.tombstone and (self.expires_at == 0 or now_ms < self.expires_at)


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
    flags = FLAG_TOMBSTONE if record.tombstone else 0
    return b"".join(
        (
            _HEADER.pack(FORMAT_V1, flags, record.expires_at),
            encode_version(record.version),
            record.value,
        )
    )


def decode_record(data: bytes) -> Record:
    try:
        fmt, flags, expires_at = _HEADER.unpack_from(data, 0)
    except struct.error:
        raise CorruptRecord(f"record of {len(data)} bytes is shorter than its header") from None
    if fmt != FORMAT_V1:
        raise CorruptRecord(f"unknown record format {fmt}")
    try:
        version, end = decode_version(data, _HEADER.size)
    except VersionDecodeError as e:
        raise CorruptRecord(f"bad version in record: {e}") from None
    return Record(bytes(data[end:]), version, bool(flags & FLAG_TOMBSTONE), expires_at)


def peek_entry(key: bytes, data: bytes) -> ScanEntry:
    """Read only the fixed header (and the HLC after it) of an encoded record."""
    try:
        fmt, flags, expires_at, hlc = _PEEK.unpack_from(data, 0)
    except struct.error:
        raise CorruptRecord(f"record of {len(data)} bytes is shorter than its header") from None
    if fmt != FORMAT_V1:
        raise CorruptRecord(f"unknown record format {fmt}")
    return ScanEntry(key, bool(flags & FLAG_TOMBSTONE), expires_at, hlc)


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

    def latest(key: bytes) -> Record | None:
        """Like ``get``, but also sees writes that are queued and not yet durable.

        The write path builds new versions on top of this, so two writes to one
        key in the same group commit still form a causal chain.
        """

    def write(key: bytes, record: Record | None) -> Deferred:
        """Store ``record`` (``None`` removes the key); fires once it is durable."""

    def scan(prefix: bytes, after: bytes | None, limit: int) -> list[ScanEntry]:
        """Up to ``limit`` durable entries with ``prefix``, in key order, after ``after``."""

    def stats() -> StorageStats:
        """Number of keys (tombstones included) and bytes used."""
