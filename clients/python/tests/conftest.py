"""Fixtures for the client tests: one real node for the whole session.

The node is a ``twistd`` child process on a loopback port the OS chose, with
the memory engine, so it starts in well under a second and leaves nothing on
disk.  Tests share it, so each one writes under a prefix of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dhashmap_client import Client

from twisted_dhm.testing.process import NodeProcess


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    process = NodeProcess(
        tmp_path_factory.mktemp("client-node") / "data",
        node_id="client-tests",
        # (Memory storage takes keys longer than LMDB's 446 bytes: the tests' longest is 4096.)
        extra_args=("--storage", "memory", "--max-key-size", "4096"),
    )
    try:
        # Started inside the try: if it never gets ready, it must still be stopped.
        process.start(wait=False)
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(node: NodeProcess) -> Iterator[Client]:
    with Client(node.url, timeout=5.0) as c:
        yield c


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test uses, so tests can share the node."""
    return f"t-{uuid.uuid4().hex}/".encode()
