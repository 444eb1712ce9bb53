"""Conversions between storage records and their protobuf form."""

from __future__ import annotations

from twisted_dhm.peer import peer_pb2 as pb
from twisted_dhm.storage import Record
from twisted_dhm.versions import MAX_CLOCK_ENTRIES, MAX_STAMP, NODE_ID, Version


class FrameError(ValueError):
    """A frame that decodes but does not make sense."""


def version_to_pb(version: Version, out: pb.Version) -> None:
    out.hlc = version.hlc
    for node, counter in version.clock:
        entry = out.clock.add()
        entry.node = node
        entry.counter = counter


def version_from_pb(msg: pb.Version) -> Version:
    if len(msg.clock) > MAX_CLOCK_ENTRIES:
        raise FrameError(f"vector clock has {len(msg.clock)} entries; at most {MAX_CLOCK_ENTRIES}")
    entries = tuple((e.node, e.counter) for e in msg.clock)
    nodes = [node for node, _ in entries]
    if nodes != sorted(set(nodes)) or not all(NODE_ID.match(node) for node in nodes):
        raise FrameError("vector clock entries must be node ids, sorted and unique")
    if msg.hlc > MAX_STAMP or any(counter > MAX_STAMP for _, counter in entries):
        raise FrameError("version stamps and counters must be below 2**63")
    return Version(entries, msg.hlc)


def record_to_pb(record: Record, out: pb.Record) -> None:
    out.value = record.value
    version_to_pb(record.version, out.version)
    out.tombstone = record.tombstone
    out.expires_at = record.expires_at


def record_from_pb(msg: pb.Record) -> Record:
    return Record(msg.value, version_from_pb(msg.version), msg.tombstone, msg.expires_at)


def key_records_to_pb(items: list[tuple[bytes, Record | None]], out) -> None:  # type: ignore[no-untyped-def]
    for key, record in items:
        kr = out.add()
        kr.key = key
        if record is not None:
            kr.found = True
            record_to_pb(record, kr.record)


def key_records_from_pb(items) -> list[tuple[bytes, Record | None]]:  # type: ignore[no-untyped-def]
    return [(kr.key, record_from_pb(kr.record) if kr.found else None) for kr in items]
