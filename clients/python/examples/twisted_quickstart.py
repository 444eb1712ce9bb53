"""The Twisted client in a program: python examples/twisted_quickstart.py [http://127.0.0.1:8080]

Needs the ``twisted`` extra: ``pip install -e 'clients/python[twisted]'``.
"""

from __future__ import annotations

import sys
from typing import Any

from dhashmap_client import NotFound, PreconditionFailed, TwistedClient
from twisted.internet import defer, task


@defer.inlineCallbacks
def main(reactor: Any, url: str) -> Any:
    client = TwistedClient(url, reactor=reactor, timeout=5.0)
    try:
        if not (yield client.ready()):
            raise SystemExit(f"the node at {url} is not ready")
        version = yield client.put(b"twisted-quickstart/greeting", b"hello from Twisted")
        item = yield client.get(b"twisted-quickstart/greeting")
        print(f"get: {item.value!r} at version {item.version}")
        assert item.version == version

        try:
            yield client.cas(b"twisted-quickstart/greeting", None, b"only if absent")
        except PreconditionFailed as e:
            print(f"cas create-only on an existing key: {e.code}")

        print("keys:", (yield client.keys(b"twisted-quickstart/")))
        yield client.delete(b"twisted-quickstart/greeting")
        try:
            yield client.get(b"twisted-quickstart/greeting")
        except NotFound as e:
            print(f"after delete: {e.code}")
    finally:
        yield client.close()


if __name__ == "__main__":
    task.react(main, [sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"])
