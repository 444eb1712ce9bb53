"""Records on the wire between nodes: the storage encoding, checked as untrusted input."""

from __future__ import annotations

from twisted_dhm.storage import Record
from twisted_dhm.storage.interface import CorruptRecord, decode_record, encode_record
from twisted_dhm.versions import MAX_CLOCK_ENTRIES, MAX_STAMP, NODE_ID, Version


class FrameError(ValueError):
    """A frame that decodes but does not make sense."""


# Node ids already checked against NODE_ID: a cluster has few, and every record names them.
_valid_node_ids: set[str] = set()


def check_version(version: Version) -> Version:
    """Refuse a version from the wire that no node could have made."""
    if len(version.clock) > MAX_CLOCK_ENTRIES:
        raise FrameError(f"vector clock has {len(version.clock)} entries; at most {MAX_CLOCK_ENTRIES}")
    if version.hlc > MAX_STAMP:
        raise FrameError("version stamps and counters must be below 2**63")
    for node, counter in version.clock:
        if counter > MAX_STAMP:
            raise FrameError("version stamps and counters must be below 2**63")
        if node not in _valid_node_ids:
            if not NODE_ID.fullmatch(node):
                raise FrameError(f"vector clock entry {node!r} is not a node id")
            if len(_valid_node_ids) < 10_000:
                _valid_node_ids.add(node)
    return version


def record_from_wire(data: bytes) -> Record:
    """Decode (and check) a record a peer sent in the storage encoding."""
    try:
        record = decode_record(data)
    except CorruptRecord as e:
        raise FrameError(str(e)) from None
    check_version(record.version)
    return record


def key_records_to_pb(items: list[tuple[bytes, Record | None]], out) -> None:  # type: ignore[no-untyped-def]
    for key, record in items:
        if record is None:
            out.add(key=key)
        else:
            out.add(key=key, found=True, record=encode_record(record))


def key_records_from_pb(items) -> list[tuple[bytes, Record | None]]:  # type: ignore[no-untyped-def]
    return [(kr.key, record_from_wire(kr.record) if kr.found else None) for kr in items]
