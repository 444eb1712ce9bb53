"""Replica operations on any node: this one directly, others over the native protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed

from twisted_dhm.cluster.replica import LocalReplica
from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.peer.codec import key_records_from_pb, key_records_to_pb
from twisted_dhm.storage import Record, ScanEntry


class PeerRequester(Protocol):
    def request(self, node_id: str, frame: pb.Frame) -> Deferred: ...


class ReplicaClient(Protocol):
    def read(self, node: str, keys: Sequence[bytes], include_pending: bool = False) -> Deferred: ...
    def write(self, node: str, items: Sequence[tuple[bytes, Record]], hint_for: str = "") -> Deferred: ...
    def scan(self, node: str, prefix: bytes, after: bytes | None, limit: int) -> Deferred: ...


class Replicas:
    """Routes replica operations: to the local replica or through the peer pool."""

    def __init__(self, local_id: str, local: LocalReplica, peers: PeerRequester | None) -> None:
        self.local_id = local_id
        self.local = local
        self.peers = peers

    def _remote(self, node: str, frame: pb.Frame) -> Deferred:
        if self.peers is None:
            return fail(ConnectionError(f"no peer connections to reach {node}"))
        return self.peers.request(node, frame)

    def read(self, node: str, keys: Sequence[bytes], include_pending: bool = False) -> Deferred:
        if node == self.local_id:
            return maybeDeferred(self.local.read, keys, include_pending)
        frame = pb.Frame()
        frame.replica_get.keys.extend(keys)
        frame.replica_get.include_pending = include_pending
        return self._remote(node, frame).addCallback(
            lambda answer: [record for _, record in key_records_from_pb(answer.replica_get_result.records)]
        )

    def write(self, node: str, items: Sequence[tuple[bytes, Record]], hint_for: str = "") -> Deferred:
        if node == self.local_id:
            return self.local.apply(items, hint_for)
        frame = pb.Frame()
        key_records_to_pb(list(items), frame.replica_put.records)
        frame.replica_put.hint_for = hint_for
        return self._remote(node, frame).addCallback(lambda answer: answer.replica_put_result.stored)

    def scan(self, node: str, prefix: bytes, after: bytes | None, limit: int) -> Deferred:
        if node == self.local_id:
            return succeed(self.local.scan(prefix, after, limit))
        frame = pb.Frame()
        frame.replica_scan.prefix = prefix
        if after is not None:
            frame.replica_scan.after = after
            frame.replica_scan.has_after = True
        frame.replica_scan.limit = limit
        return self._remote(node, frame).addCallback(
            lambda answer: [ScanEntry(e.key, e.tombstone, e.expires_at, e.hlc)
                            for e in answer.replica_scan_result.entries]
        )
