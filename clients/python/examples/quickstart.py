"""A tour of the sync client: python examples/quickstart.py [http://127.0.0.1:8080]

Start a node first, e.g. ``twistd -n --pidfile= dhashmap --node-id n1 --storage memory``.
It may be run any number of times against the same node.
"""

from __future__ import annotations

import sys

from dhashmap_client import Client, NotFound, PreconditionFailed


def main(url: str) -> int:
    with Client(url, timeout=5.0) as client:
        if not client.ready():
            print(f"the node at {url} is not ready", file=sys.stderr)
            return 1

        # Keys and values are bytes (str is encoded as UTF-8); any byte may appear in a key.
        version = client.put(b"quickstart/greeting", "hello, dhashmap")
        item = client.get("quickstart/greeting")
        print(f"get: {item.value!r} at version {item.version}")
        assert item.version == version

        # Compare-and-set: an optimistic counter that survives concurrent writers.
        client.delete(b"quickstart/counter")
        client.cas(b"quickstart/counter", None, b"0")  # None: create only if absent
        for _ in range(3):
            while True:
                current = client.get(b"quickstart/counter")
                try:
                    client.cas(b"quickstart/counter", current.version, b"%d" % (int(current.value) + 1))
                    break
                except PreconditionFailed:
                    continue  # someone else wrote in between: read again and retry
        print(f"counter: {client.get(b'quickstart/counter').value.decode()}")

        # A value that expires on its own.
        client.put(b"quickstart/session", b"token", ttl=60)

        # Listing follows cursors for you; binary keys come back as bytes.
        client.put(b"quickstart/\x00binary/key", b"")
        print("keys:", sorted(client.keys(prefix=b"quickstart/")))

        client.delete(b"quickstart/greeting")
        try:
            client.get(b"quickstart/greeting")
        except NotFound as e:
            print(f"after delete: {e.code}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
