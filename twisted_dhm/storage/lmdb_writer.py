"""The LMDB commit process: ``python -m twisted_dhm.storage.lmdb_writer PATH MAP_SIZE``.

The node's LMDB engine hands it batches of writes over its standard input and gets one answer
per batch once the batch is committed and synced.  Running the write transaction in a process
of its own gives it its own GIL: in a thread of the node, every LMDB call released and then
waited to retake the GIL from the busy reactor thread, which more than doubled each commit.
LMDB is made for this (one writer process, readers in others, coordinated by its lock file).

Wire format (all integers big-endian):

    batch  = "B" count:u32 count × (key_len:u32 key value_len:i32 value)   value_len -1: delete
    answer = "K"                      committed and synced
           | "E" kind:u8 len:u32 message   kind 1: the map is full, 0: any other failure
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

import lmdb

RECORDS_DB = b"records"
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
FULL, OTHER = 1, 0


def encode_batch(batch: dict[bytes, bytes | None]) -> bytes:
    parts = [b"B", _U32.pack(len(batch))]
    for key, value in batch.items():
        parts.append(_U32.pack(len(key)))
        parts.append(key)
        if value is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError
    return data


def read_batch(stream: BinaryIO) -> list[tuple[bytes, bytes | None]]:
    if _read_exactly(stream, 1) != b"B":
        raise ValueError("not a batch")
    (count,) = _U32.unpack(_read_exactly(stream, 4))
    items = []
    for _ in range(count):
        (key_len,) = _U32.unpack(_read_exactly(stream, 4))
        key = _read_exactly(stream, key_len)
        (value_len,) = _I32.unpack(_read_exactly(stream, 4))
        items.append((key, None if value_len < 0 else _read_exactly(stream, value_len)))
    return items


def error_answer(kind: int, message: str) -> bytes:
    raw = message.encode("utf-8", "replace")
    return b"E" + bytes((kind,)) + _U32.pack(len(raw)) + raw


def serve(path: str, map_size: int, stdin: BinaryIO, stdout: BinaryIO) -> None:
    env = lmdb.open(path, map_size=map_size, max_dbs=8, sync=True, metasync=True, readahead=False)
    db = env.open_db(RECORDS_DB)
    try:
        while True:
            try:
                items = read_batch(stdin)
            except EOFError:
                return  # the node closed the pipe (it stopped, or died): nothing is pending here
            try:
                with env.begin(write=True, db=db) as txn:
                    for key, value in items:
                        if value is None:
                            txn.delete(key)
                        else:
                            txn.put(key, value)
                answer = b"K"
            except lmdb.MapFullError:
                answer = error_answer(FULL, f"the store at {path} is full (map size {map_size} bytes)")
            except lmdb.Error as e:
                answer = error_answer(OTHER, f"LMDB commit failed: {e}")
            stdout.write(answer)
            stdout.flush()
    finally:
        env.close()


def main() -> None:
    path, map_size = sys.argv[1], int(sys.argv[2])
    serve(path, map_size, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
