#!/usr/bin/env python3
"""Preload keys bench00000000.. with 100-byte values into dhashmap or etcd.

    python3 bench/preload.py dhm  http://127.0.0.1:18080 [--keys 100000] [--conns 32]
    python3 bench/preload.py etcd http://127.0.0.1:23790
    python3 bench/preload.py dhm  http://127.0.0.1:18082 --first 33334 --keys 66667

``--first``/``--keys`` load keys first..keys-1 only, so several loaders (one per node)
can share the key space.

Standard library only: asyncio streams, many keep-alive HTTP/1.1 connections,
keys handed out in order from one counter.  Exits non-zero if any write is not
answered 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from urllib.parse import urlsplit

VALUE = b"v" * 100


def dhm_request(host: bytes, i: int) -> bytes:
    return (b"PUT /v1/kv/bench%08d HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (i, host, len(VALUE), VALUE))


def etcd_request(host: bytes, i: int) -> bytes:
    body = json.dumps({"key": base64.b64encode(b"bench%08d" % i).decode(),
                       "value": base64.b64encode(VALUE).decode()}).encode()
    return (b"POST /v3/kv/put HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (host, len(body), body))


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=("dhm", "etcd"))
    ap.add_argument("url")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--first", type=int, default=0, help="first key number (default 0)")
    ap.add_argument("--conns", type=int, default=32)
    args = ap.parse_args()
    u = urlsplit(args.url)
    host, port = u.hostname, u.port or 80
    make = dhm_request if args.system == "dhm" else etcd_request
    hostb = f"{host}:{port}".encode()
    next_key = args.first
    failures: list[tuple[int, int]] = []

    async def worker() -> None:
        nonlocal next_key
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_key < args.keys:
                i = next_key
                next_key += 1
                writer.write(make(hostb, i))
                status = await read_response(reader)
                if not 200 <= status < 300:
                    failures.append((i, status))
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.conns)))
    took = time.monotonic() - started
    n = args.keys - args.first
    print(f"preloaded {n} keys ({args.first}..{args.keys - 1}) into {args.system} at {args.url} "
          f"in {took:.1f}s ({n / took:.0f} writes/s), {len(failures)} failed", file=sys.stderr)
    if failures:
        print(f"first failures (key, status): {failures[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
