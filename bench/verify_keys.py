#!/usr/bin/env python3
"""Check that a dhashmap cluster holds the preloaded keys bench00000000.. .

    python3 bench/verify_keys.py --keys 100000 --sample 1000 URL [URL ...]

1. Lists ``GET /v1/kv?prefix=bench&limit=10000`` on the first node, following the cursor
   until it is null, and checks the listing is exactly bench00000000..bench{keys-1}.
2. GETs ``--sample`` random keys on every node (same keys on each): all must be 200 with
   the 100-byte value.

Standard library only.  Exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
from urllib.parse import quote, urlsplit

VALUE = b"v" * 100


def connect(url: str) -> http.client.HTTPConnection:
    u = urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)


def list_all(url: str) -> list[str]:
    conn = connect(url)
    keys: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = "/v1/kv?prefix=bench&limit=10000" + (f"&cursor={quote(cursor)}" if cursor else "")
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"verify: {url}{path} answered {resp.status}: {body[:200]!r}")
        page = json.loads(body)
        keys.extend(page["keys"])
        cursor = page["cursor"]
        pages += 1
        if cursor is None:
            break
        if pages > 10_000:
            raise SystemExit("verify: listing did not end after 10,000 pages")
    conn.close()
    return keys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=1000)
    args = ap.parse_args()
    want = [f"bench{i:08d}" for i in range(args.keys)]
    ok = True

    listed = list_all(args.urls[0])
    if listed != want:
        extra = len(set(listed) - set(want))
        gone = len(set(want) - set(listed))
        print(f"verify: listing on {args.urls[0]} has {len(listed)} keys, {gone} missing, "
              f"{extra} unexpected (or out of order)", file=sys.stderr)
        ok = False
    else:
        print(f"verify: listing on {args.urls[0]}: {len(listed)} keys, as expected", file=sys.stderr)

    sample = random.sample(range(args.keys), min(args.sample, args.keys))
    for url in args.urls:
        conn = connect(url)
        bad = []
        for i in sample:
            conn.request("GET", f"/v1/kv/bench{i:08d}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != VALUE:
                bad.append((i, resp.status))
        conn.close()
        print(f"verify: {url}: {len(sample) - len(bad)} of {len(sample)} sampled keys read back",
              file=sys.stderr)
        if bad:
            print(f"verify: first failures (key, status): {bad[:5]}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
