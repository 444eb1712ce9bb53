"""Requests that arrive over the native protocol, for the replica or the coordinator."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from twisted_dhm.cluster.coordinator import (
    ANY,
    LATER,
    MAX_SCAN,
    NO_CONDITION,
    Coordinator,
    Precondition,
)
from twisted_dhm.cluster.rebalance import SyncError
from twisted_dhm.cluster.replica import LocalReplica
from twisted_dhm.errors import Forbidden, InvalidRequest, KeyTooLong, KVError, ValueTooLarge
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.codec import FrameError, key_records_from_pb, key_records_to_pb
from twisted_dhm.storage import Record, RecordView
from twisted_dhm.versions import NODE_ID, Version, VersionDecodeError

MAX_BATCH = 10000
_LEVELS = {pb.Consistency.LEVEL_ONE: "one", pb.Consistency.LEVEL_QUORUM: "quorum", pb.Consistency.LEVEL_ALL: "all"}


def _level(msg: pb.Consistency) -> str | int | None:
    if msg.count:
        return msg.count
    if msg.level and msg.level not in _LEVELS:  # (enums are open: a number this build does not know)
        raise InvalidRequest(f"unknown consistency level {msg.level}")
    return _LEVELS.get(msg.level)


def _version_token(token: str) -> tuple[Version, ...]:
    try:
        return (Version.from_token(token),)
    except VersionDecodeError:
        return ()


_MEMBERS_ONLY = ("replica_", "tree_", "leave")


def _as_is(owners: tuple[str, ...]) -> Any:
    return owners


class NotMine:
    """Smart routing's "not mine" signal: the key's owners when this node is not one of them.

    ``owners(key)`` is ``None`` when this node is in the key's preference list (its own partition
    table), else ``render(preference list)``: the form each API answers with (a header value, gRPC
    metadata, the list itself), made once per partition and kept until the table is rebuilt.  A
    client that routes by a stale table learns from it that it should fetch the table again.
    Safe to call from gRPC's threads: a cache is only ever filled from the table it belongs to.
    """

    def __init__(self, coordinator: Any, render: Callable[[tuple[str, ...]], Any] = _as_is) -> None:
        self.node_id: str = getattr(coordinator, "node_id", "")
        self.routing = getattr(coordinator, "routing", None)  # None: a stand-in coordinator; never says it
        self.render = render
        self._cache: tuple[Any, dict[int, Any]] = (None, {})

    def owners(self, key: bytes) -> Any:
        if self.routing is None:
            return None
        table = self.routing.table
        cache = self._cache
        if cache[0] is not table:
            cache = self._cache = (table, {})
        partition = table.partition(key)
        try:
            return cache[1][partition]
        except KeyError:
            preference = table.preference_list(partition)
            answer = cache[1][partition] = (
                None if not preference or self.node_id in preference else self.render(preference))
            return answer


def _is_peer(session: object) -> bool:
    remote = getattr(session, "remote", None)
    return remote is not None and remote.role == pb.ROLE_PEER


class PeerHandler:
    """``handler(session, frame)`` for PeerProtocol: one method per request body."""

    def __init__(self, replica: LocalReplica, coordinator: Coordinator, max_key_size: int,
                 max_value_size: int) -> None:
        self.replica = replica
        self.coordinator = coordinator
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.sync: Any = None  # the Rebalancer: answers hash-tree requests
        self.on_leave: Callable[[str], None] | None = None  # a member said it is leaving
        self.status: Callable[[], dict] | None = None  # this node's data-movement status
        self.not_mine = NotMine(coordinator)
        # Frame body -> (the method that serves it, whether only members may ask)
        self._methods = {
            field.name: (getattr(self, "_" + field.name), field.name.startswith(_MEMBERS_ONLY))
            for field in pb.Frame.DESCRIPTOR.oneofs_by_name["body"].fields
            if callable(getattr(self, "_" + field.name, None))
        }

    def __call__(self, session: object, frame: pb.Frame) -> pb.Frame | Deferred:
        """The answer, or a Deferred of it; a bad request is a failed Deferred, answered with
        an Error frame."""
        body = frame.WhichOneof("body")
        try:
            method, members_only = self._methods[body]  # type: ignore[index]
        except KeyError:
            return fail(InvalidRequest(f"{body} is not a request this node serves"))
        if members_only and not _is_peer(session):
            # Replica operations skip the coordinator (versions, preconditions): members only.
            return fail(Forbidden(f"{body} is for cluster members; clients use get, put and delete"))
        try:
            return method(getattr(frame, body))
        except (FrameError, VersionDecodeError, SyncError) as e:
            return fail(InvalidRequest(str(e)))
        except KVError:
            return fail()

    def _check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidRequest("the key is empty")
        if len(key) > self.max_key_size:
            raise KeyTooLong(f"the key is {len(key)} bytes; the limit is {self.max_key_size}")

    # -- replica operations ------------------------------------------------------------------

    def _replica_get(self, msg: pb.ReplicaGet) -> Deferred:
        if len(msg.keys) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} keys per request")
        records = self.replica.read(msg.keys, msg.include_pending, msg.local_only)
        if isinstance(records, Deferred):
            return records.addCallback(self._replica_get_answer, msg.keys)
        return succeed(self._replica_get_answer(records, msg.keys))

    def _replica_get_answer(self, records: list, keys: Sequence[bytes]) -> pb.Frame:
        # An answer must fit in one frame: the first record always goes, then as many as fit.
        budget = self.max_value_size + self.max_key_size
        items, size = [], 0
        for key, record in zip(keys, records, strict=True):
            grows = len(key) + (len(record.value) if record is not None else 0)
            if items and size + grows > budget:
                break
            items.append((key, record))
            size += grows
        answer = pb.Frame()
        key_records_to_pb(items, answer.replica_get_result.records)
        answer.replica_get_result.partial = len(items) < len(keys)
        return answer

    def _replica_put(self, msg: pb.ReplicaPut) -> Deferred:
        if len(msg.records) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} records per request")
        if msg.hint_for and not NODE_ID.match(msg.hint_for):
            raise InvalidRequest("hint_for must be a node id")
        items = []
        for key, record in key_records_from_pb(msg.records):
            self._check_key(key)
            if record is None:
                raise InvalidRequest("a replica write needs a record for every key")
            items.append((key, record))

        def answer(stored: int) -> pb.Frame:
            return pb.Frame(replica_put_result=pb.ReplicaPutResult(stored=stored))

        return self.replica.apply(items, msg.hint_for, background=msg.background).addCallback(answer)

    def _replica_scan(self, msg: pb.ReplicaScan) -> Deferred:
        limit = min(max(msg.limit, 1), MAX_SCAN)
        entries = self.replica.scan(msg.prefix, msg.after if msg.has_after else None, limit)
        answer = pb.Frame()
        for entry in entries:
            e = answer.replica_scan_result.entries.add()
            e.key, e.tombstone, e.expires_at, e.hlc = entry.key, entry.tombstone, entry.expires_at, entry.hlc
        return succeed(answer)

    # -- data movement -----------------------------------------------------------------------

    def _sync(self) -> Any:
        if self.sync is None:
            raise InvalidRequest("this node does not move data")
        return self.sync

    def _tree_roots(self, msg: pb.TreeRoots) -> Deferred:
        if len(msg.partitions) > 1 << 16:
            raise InvalidRequest("too many partitions in one request")
        return succeed(self._sync().tree_roots(msg))

    def _tree_buckets(self, msg: pb.TreeBuckets) -> Deferred:
        return succeed(self._sync().tree_buckets(msg))

    def _tree_keys(self, msg: pb.TreeKeys) -> Deferred:
        return succeed(self._sync().tree_keys(msg))

    def _leave(self, msg: pb.Leave) -> Deferred:
        if not NODE_ID.match(msg.node_id):
            raise InvalidRequest("leave: node_id must be a node id")
        if self.on_leave is not None:
            self.on_leave(msg.node_id)
        return succeed(pb.Frame(leave_result=pb.LeaveResult()))

    def _node_status(self, msg: pb.NodeStatus) -> Deferred:
        if self.status is None:
            raise InvalidRequest("this node reports no status")
        return succeed(pb.Frame(node_status_result=pb.NodeStatusResult(json=json.dumps(self.status()).encode())))

    # -- client operations (fast clients) ----------------------------------------------------

    def _get(self, msg: pb.Get) -> pb.Frame | Deferred:
        key = msg.key
        self._check_key(key)
        level = _level(msg.r)
        record = self.coordinator.get_now(key, level)
        if record is LATER:
            return self.coordinator.get(key, level).addCallback(self._get_answer, self.not_mine.owners(key))
        # This node alone answered (no Deferred): it is the key's only replica up, so an owner.
        return self._get_answer(record, None)

    def _get_answer(self, record: Record | RecordView | None, owners: Any) -> pb.Frame:
        frame = pb.Frame()
        result = frame.get_result
        result.SetInParent()  # an empty GetResult (not found) is still the answer
        if record is not None:
            result.found = True
            result.value = record.value
            result.version = record.token
        if owners is not None:
            result.owners.extend(owners)
        return frame

    def _precondition(self, if_match: str, if_none_match: bool) -> Precondition:
        if not if_match and not if_none_match:
            return NO_CONDITION
        return Precondition(
            if_match=(ANY if if_match == "*" else _version_token(if_match)) if if_match else None,
            if_none_match=ANY if if_none_match else None,
        )

    def _put(self, msg: pb.Put) -> Deferred:
        self._check_key(msg.key)
        if len(msg.value) > self.max_value_size:
            raise ValueTooLarge(f"the value is {len(msg.value)} bytes; the limit is {self.max_value_size}")
        ttl = float(msg.ttl_seconds) if msg.ttl_seconds else None
        d = self.coordinator.put(msg.key, msg.value, ttl, self._precondition(msg.if_match, msg.if_none_match),
                                 _level(msg.w))

        owners = self.not_mine.owners(msg.key)

        def answer(result) -> pb.Frame:  # type: ignore[no-untyped-def]
            return pb.Frame(put_result=pb.PutResult(version=result.version.to_token(), created=result.created,
                                                    owners=owners))

        return d.addCallback(answer)

    def _delete(self, msg: pb.Delete) -> Deferred:
        self._check_key(msg.key)
        owners = self.not_mine.owners(msg.key)
        d = self.coordinator.delete(msg.key, self._precondition(msg.if_match, False), _level(msg.w))
        return d.addCallback(lambda r: pb.Frame(delete_result=pb.DeleteResult(
            version="" if r.created else r.version.to_token(), owners=owners)))

