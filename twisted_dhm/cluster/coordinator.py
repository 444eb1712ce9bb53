"""The coordinator: every client operation on a key goes through here.

It reads the newest local version, checks the caller's preconditions, makes the
next version (vector clock entry for this node + a fresh HLC stamp) and writes
it durably before answering.  Later the same interface fans out to replicas.

Check-and-write is atomic without locks: the check and the enqueue of the new
version run in one reactor turn, and ``engine.latest`` already sees writes that
are queued but not yet durable.  Two racing ``If-Match`` writes with the same
tag therefore see each other, and the second one fails.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from twisted_dhm.errors import InvalidRequest, KVError, PreconditionFailed
from twisted_dhm.storage import IStorageEngine, Record
from twisted_dhm.versions import HybridLogicalClock, Version, b64url_decode

ANY = "*"
"""A precondition that matches any existing value (``If-Match: *``)."""

Match = None | str | Sequence[Version]


@attrs.frozen
class Precondition:
    """HTTP-style conditions on the current value of a key.

    ``if_match``: ``None`` (no condition), ``ANY`` (the key must exist) or the
    versions of which the current one must be one.  ``if_none_match``: ``ANY``
    (the key must not exist) or versions the current one must not be.
    """

    if_match: Match = None
    if_none_match: Match = None

    def check(self, current: Record | None) -> None:
        if self.if_match is not None:
            if current is None:
                raise PreconditionFailed("If-Match: the key does not exist")
            if self.if_match != ANY and current.version not in self.if_match:
                raise PreconditionFailed("If-Match: the current version is a different one")
        if self.if_none_match is not None and current is not None:
            if self.if_none_match == ANY:
                raise PreconditionFailed("If-None-Match: the key already exists")
            if current.version in self.if_none_match:
                raise PreconditionFailed("If-None-Match: the current version matches")


NO_CONDITION = Precondition()


@attrs.frozen
class WriteResult:
    version: Version
    created: bool  # for a put: no live value existed before; for a delete: nothing was there


@attrs.frozen
class Page:
    keys: list[bytes]
    cursor: str | None


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> bytes:
    try:
        return b64url_decode(cursor)
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not one this server handed out") from None


class Coordinator:
    """Get, put, delete and list for one node's store."""

    def __init__(self, node_id: str, engine: IStorageEngine, clock: IReactorTime) -> None:
        self.node_id = node_id
        self._engine = engine
        self._clock = clock
        self._hlc = HybridLogicalClock(clock)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _live(self, record: Record | None) -> Record | None:
        if record is None or not record.is_live(self._now_ms()):
            return None
        return record

    def get(self, key: bytes) -> Deferred:
        """Fires with the live record for ``key``, or ``None``."""
        return succeed(self._live(self._engine.get(key)))

    def put(
        self,
        key: bytes,
        value: bytes,
        ttl: float | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Deferred:
        """Fires with a WriteResult once the new version is durable."""
        previous = self._engine.latest(key)
        live = self._live(previous)
        try:
            precondition.check(live)
        except KVError:
            return fail()
        version = self._next_version(previous)
        expires_at = 0 if ttl is None else self._now_ms() + max(1, int(ttl * 1000))
        record = Record(value, version, tombstone=False, expires_at=expires_at)
        result = WriteResult(version, created=live is None)
        return self._engine.write(key, record).addCallback(lambda _: result)

    def delete(self, key: bytes, precondition: Precondition = NO_CONDITION) -> Deferred:
        """Writes a tombstone over a live value; fires with a WriteResult.

        Deleting a key that is not there succeeds and writes nothing (``created``
        is then True, meaning "was already absent").
        """
        previous = self._engine.latest(key)
        live = self._live(previous)
        try:
            precondition.check(live)
        except KVError:
            return fail()
        if live is None:
            version = previous.version if previous is not None else Version()
            return succeed(WriteResult(version, created=True))
        version = self._next_version(previous)
        result = WriteResult(version, created=False)
        tombstone = Record(b"", version, tombstone=True)
        return self._engine.write(key, tombstone).addCallback(lambda _: result)

    def list(self, prefix: bytes, cursor: str | None, limit: int) -> Deferred:
        """One page of live keys with ``prefix`` in byte order.

        At most ``4 * limit + 100`` stored entries are examined per page, so a long
        run of deleted or expired keys cannot make one request scan the whole
        store; such a page may be short, or empty, with a cursor to go on.
        """
        try:
            after = decode_cursor(cursor) if cursor else None
        except InvalidRequest:
            return fail()
        budget = 4 * limit + 100
        entries = self._engine.scan(prefix, after, budget)
        now = self._now_ms()
        keys: list[bytes] = []
        for entry in entries:
            if not entry.is_live(now):
                continue
            if len(keys) == limit:
                return succeed(Page(keys, encode_cursor(keys[-1])))
            keys.append(entry.key)
        if len(entries) < budget:
            return succeed(Page(keys, None))
        return succeed(Page(keys, encode_cursor(entries[-1].key)))

    def _next_version(self, previous: Record | None) -> Version:
        if previous is None:
            return Version().increment(self.node_id, self._hlc.now())
        self._hlc.observe(previous.version.hlc)
        return previous.version.increment(self.node_id, self._hlc.now())
