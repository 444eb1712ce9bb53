"""The sync client against a real node process (see conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dhashmap_client
import pytest
import urllib3
from dhashmap_client import (
    Client,
    ConnectionError,
    DhashmapError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    Page,
    PreconditionFailed,
    Timeout,
    Value,
    ValueTooLarge,
)

from twisted_dhm.testing.process import NodeProcess, free_port

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MAX_VALUE = 8 * 1024 * 1024  # the node's default max_value_size
MAX_KEY = 4096  # and max_key_size


# -- get / put / delete ----------------------------------------------------------------------


def test_put_then_get_returns_the_value_and_the_same_version(client: Client, prefix: bytes) -> None:
    version = client.put(prefix + b"k", b"v1")
    assert isinstance(version, str) and version
    item = client.get(prefix + b"k")
    assert item == Value(b"v1", version)
    assert isinstance(item.value, bytes)


def test_put_over_a_value_replaces_it_with_a_new_version(client: Client, prefix: bytes) -> None:
    first = client.put(prefix + b"k", b"one")
    second = client.put(prefix + b"k", b"two")
    assert second != first
    assert client.get(prefix + b"k") == Value(b"two", second)


def test_str_keys_and_values_are_sent_as_utf8(client: Client, prefix: bytes) -> None:
    key = prefix.decode() + "ключ ✓"
    client.put(key, "значение ✓")
    assert client.get(key.encode("utf-8")).value == "значение ✓".encode()
    assert client.list(prefix).keys == [key.encode("utf-8")]


def test_bytearray_and_memoryview_are_accepted(client: Client, prefix: bytes) -> None:
    client.put(bytearray(prefix + b"k"), memoryview(b"mv"))
    assert client.get(prefix + b"k").value == b"mv"


def test_empty_value_is_stored_as_empty(client: Client, prefix: bytes) -> None:
    client.put(prefix + b"empty", b"")
    assert client.get(prefix + b"empty").value == b""


def test_get_of_a_missing_key_raises_not_found(client: Client, prefix: bytes) -> None:
    with pytest.raises(NotFound) as info:
        client.get(prefix + b"never-written")
    assert info.value.status == 404
    assert info.value.code == "not_found"
    assert info.value.message
    assert isinstance(info.value, DhashmapError)


def test_delete_removes_the_value(client: Client, prefix: bytes) -> None:
    client.put(prefix + b"k", b"v")
    assert client.delete(prefix + b"k") is None
    with pytest.raises(NotFound):
        client.get(prefix + b"k")
    assert client.list(prefix).keys == []


def test_delete_of_an_absent_key_succeeds(client: Client, prefix: bytes) -> None:
    client.delete(prefix + b"never-written")  # no exception: deletes are idempotent


def test_delete_if_match_only_deletes_that_version(client: Client, prefix: bytes) -> None:
    old = client.put(prefix + b"k", b"v1")
    new = client.put(prefix + b"k", b"v2")
    with pytest.raises(PreconditionFailed) as info:
        client.delete(prefix + b"k", if_match=old)
    assert info.value.status == 412 and info.value.code == "precondition_failed"
    assert client.get(prefix + b"k").value == b"v2"
    client.delete(prefix + b"k", if_match=new)
    with pytest.raises(NotFound):
        client.get(prefix + b"k")


# -- conditional writes ----------------------------------------------------------------------


def test_cas_with_the_current_version_writes(client: Client, prefix: bytes) -> None:
    v1 = client.put(prefix + b"k", b"1")
    v2 = client.cas(prefix + b"k", v1, b"2")
    v3 = client.cas(prefix + b"k", v2, b"3")
    assert len({v1, v2, v3}) == 3
    assert client.get(prefix + b"k") == Value(b"3", v3)


def test_cas_with_a_stale_version_fails_and_writes_nothing(client: Client, prefix: bytes) -> None:
    stale = client.put(prefix + b"k", b"1")
    current = client.put(prefix + b"k", b"2")
    with pytest.raises(PreconditionFailed) as info:
        client.cas(prefix + b"k", stale, b"lost update")
    assert info.value.status == 412
    assert client.get(prefix + b"k") == Value(b"2", current)


def test_cas_with_none_creates_only_if_absent(client: Client, prefix: bytes) -> None:
    created = client.cas(prefix + b"k", None, b"first")
    with pytest.raises(PreconditionFailed):
        client.cas(prefix + b"k", None, b"second")
    assert client.get(prefix + b"k") == Value(b"first", created)


def test_cas_on_a_deleted_key_fails_with_its_old_version(client: Client, prefix: bytes) -> None:
    version = client.put(prefix + b"k", b"v")
    client.delete(prefix + b"k")
    with pytest.raises(PreconditionFailed):
        client.cas(prefix + b"k", version, b"resurrected")
    with pytest.raises(NotFound):
        client.get(prefix + b"k")


def test_put_if_none_match_and_if_match_star(client: Client, prefix: bytes) -> None:
    with pytest.raises(PreconditionFailed):
        client.put(prefix + b"k", b"x", if_match="*")  # "*": only if it exists
    client.put(prefix + b"k", b"a", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        client.put(prefix + b"k", b"b", if_none_match=True)
    client.put(prefix + b"k", b"c", if_match="*")
    assert client.get(prefix + b"k").value == b"c"


def test_a_quoted_etag_is_accepted_as_a_version(client: Client, prefix: bytes) -> None:
    version = client.put(prefix + b"k", b"1")
    client.cas(prefix + b"k", f'"{version}"', b"2")
    assert client.get(prefix + b"k").value == b"2"


def test_concurrent_cas_increments_lose_no_update(client: Client, prefix: bytes) -> None:
    """Four threads share one Client (it is thread-safe) and count to 40 with cas."""
    key = prefix + b"counter"
    client.cas(key, None, b"0")

    def work() -> None:
        for _ in range(10):
            while True:
                item = client.get(key)
                try:
                    client.cas(key, item.version, b"%d" % (int(item.value) + 1))
                    break
                except PreconditionFailed:
                    continue  # another thread won this round: read again

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert client.get(key).value == b"40"


# -- binary keys -----------------------------------------------------------------------------


def test_every_byte_value_round_trips_in_keys_and_values(client: Client, prefix: bytes) -> None:
    keys = [prefix + bytes([b]) for b in range(256)]
    for i, key in enumerate(keys):
        client.put(key, bytes([i]) * 3)
    for i, key in enumerate(keys):
        assert client.get(key).value == bytes([i]) * 3, key
    assert list(client.keys(prefix)) == sorted(keys)


AWKWARD_KEYS = [
    b"/", b"a/b", b"a//b/", b"%", b"%2F", b"%zz", b"100%", b"?", b"?q=1&r=2", b"#frag",
    b" ", b"a b", b"+", b"a+b", b".", b"..", b"../../etc/passwd", b"./x", b";,=@:",
    b"\x00", b"\r\n", b"\x80", b"\xff\xfe\xfd", b"caf\xe9", "κλειδί".encode(),
    bytes(range(256)),
]


@pytest.mark.parametrize("suffix", AWKWARD_KEYS, ids=repr)
def test_awkward_keys_are_stored_exactly(client: Client, prefix: bytes, suffix: bytes) -> None:
    key = prefix + suffix
    value = bytes(range(256)) + suffix
    version = client.put(key, value)
    assert client.get(key) == Value(value, version)
    assert client.list(prefix).keys == [key]
    client.delete(key, if_match=version)
    with pytest.raises(NotFound):
        client.get(key)


def test_a_key_of_only_dots_is_not_a_dot_segment(client: Client, prefix: bytes) -> None:
    """``..`` as a whole key must not make the URL library climb a path level."""
    client.put(b"..", b"dots")
    try:
        assert client.get(b"..").value == b"dots"
        assert b".." in client.list(b"..").keys
    finally:
        client.delete(b"..")


def test_a_key_of_the_maximum_size_of_any_bytes_works(client: Client) -> None:
    key = b"\xff" * MAX_KEY  # percent-encoded, the path is three times as long
    client.put(key, b"v")
    try:
        assert client.get(key).value == b"v"
    finally:
        client.delete(key)


# -- ttl -------------------------------------------------------------------------------------


def test_a_value_with_ttl_expires(client: Client, prefix: bytes) -> None:
    client.put(prefix + b"lasting", b"stays")
    client.put(prefix + b"short", b"goes", ttl=1)
    assert client.get(prefix + b"short").value == b"goes"
    deadline = time.monotonic() + 10.0
    while True:
        try:
            client.get(prefix + b"short")
        except NotFound:
            break
        assert time.monotonic() < deadline, "the value with ttl=1 did not expire within 10 s"
        time.sleep(0.05)
    assert client.list(prefix).keys == [prefix + b"lasting"]
    assert client.get(prefix + b"lasting").value == b"stays"


def test_a_whole_float_ttl_is_accepted(client: Client, prefix: bytes) -> None:
    client.put(prefix + b"k", b"v", ttl=60.0)
    assert client.get(prefix + b"k").value == b"v"


@pytest.mark.parametrize("ttl", [0, -1, 10 * 365 * 24 * 3600 + 1])
def test_a_ttl_out_of_range_is_an_invalid_request(client: Client, prefix: bytes, ttl: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.put(prefix + b"k", b"v", ttl=ttl)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    assert "ttl" in info.value.message
    with pytest.raises(NotFound):
        client.get(prefix + b"k")


def test_a_fractional_ttl_is_refused_before_sending(client: Client, prefix: bytes) -> None:
    with pytest.raises(ValueError):
        client.put(prefix + b"k", b"v", ttl=1.5)
    with pytest.raises(NotFound):
        client.get(prefix + b"k")


# -- listing ---------------------------------------------------------------------------------


def test_list_pages_through_every_key_in_order(client: Client, prefix: bytes) -> None:
    keys = [prefix + b"%02d" % i for i in range(25)]
    for key in reversed(keys):
        client.put(key, b"")
    client.put(prefix[:-1] + b"0-sibling", b"")  # shares all but the last byte: not listed

    pages: list[Page] = []
    cursor = None
    while True:
        page = client.list(prefix, limit=7, cursor=cursor)
        pages.append(page)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [len(p.keys) for p in pages] == [7, 7, 7, 4]
    assert [k for p in pages for k in p.keys] == keys
    assert list(client.keys(prefix, page_size=7)) == keys
    client.delete(prefix[:-1] + b"0-sibling")


def test_list_with_a_limit_above_the_count_has_no_cursor(client: Client, prefix: bytes) -> None:
    client.put(prefix + b"a", b"")
    client.put(prefix + b"b", b"")
    assert client.list(prefix, limit=10) == Page([prefix + b"a", prefix + b"b"], None)


def test_keys_follows_empty_pages_until_the_cursor_is_none(client: Client, prefix: bytes) -> None:
    """A run of deleted keys longer than one page's scan budget gives an empty page
    that still has a cursor; keys() must go on past it."""
    keys = [prefix + b"%03d" % i for i in range(110)]
    for key in keys:
        client.put(key, b"")
    for key in keys[:108]:
        client.delete(key)
    first = client.list(prefix, limit=1)
    assert first.keys == [] and first.cursor is not None
    assert list(client.keys(prefix, page_size=1)) == keys[108:]


def test_keys_is_lazy(client: Client, prefix: bytes) -> None:
    for i in range(5):
        client.put(prefix + b"%d" % i, b"")
    it = client.keys(prefix, page_size=2)
    assert isinstance(it, Iterator)
    assert next(it) == prefix + b"0"
    client.put(prefix + b"9", b"")  # written after the first page: still reached
    assert list(it) == [prefix + b"%d" % i for i in (1, 2, 3, 4, 9)]


@pytest.mark.parametrize("limit", [0, 10001])
def test_a_limit_out_of_range_is_an_invalid_request(client: Client, limit: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.list(b"", limit=limit)
    assert info.value.status == 400 and "limit" in info.value.message


# -- size limits -----------------------------------------------------------------------------


def test_a_key_over_the_limit_raises_key_too_long(client: Client) -> None:
    for call in (lambda k: client.get(k), lambda k: client.put(k, b"v"), lambda k: client.delete(k)):
        with pytest.raises(KeyTooLong) as info:
            call(b"k" * (MAX_KEY + 1))
        assert info.value.status == 414 and info.value.code == "key_too_long"


def test_a_value_over_the_limit_raises_value_too_large(client: Client, prefix: bytes) -> None:
    with pytest.raises(ValueTooLarge) as info:
        client.put(prefix + b"big", b"x" * (MAX_VALUE + 1))
    assert info.value.status == 413 and info.value.code == "value_too_large"
    # The node closed that connection; the pool must not hand it out again.
    with pytest.raises(NotFound):
        client.get(prefix + b"big")
    client.put(prefix + b"big", b"x" * MAX_VALUE)
    assert len(client.get(prefix + b"big").value) == MAX_VALUE


# -- health, transport errors ----------------------------------------------------------------


def test_health_and_ready_of_a_running_node(client: Client) -> None:
    assert client.health() is True
    assert client.ready() is True


def test_a_refused_connection_raises_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2.0) as c:
        with pytest.raises(ConnectionError) as info:
            c.get(b"k")
        assert info.value.status is None and info.value.code == "connection_error"
        assert not isinstance(info.value, urllib3.exceptions.HTTPError)
        assert isinstance(info.value.__cause__, urllib3.exceptions.HTTPError)
        with pytest.raises(ConnectionError):
            c.put(b"k", b"v")
        assert c.health() is False
        assert c.ready() is False


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_no_answer_within_the_timeout_raises_timeout(silent_server: str) -> None:
    with Client(silent_server, timeout=0.3) as c:
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            c.put(b"k", b"v")
        assert time.monotonic() - started < 5.0
        assert info.value.status is None and info.value.code == "timeout"
        assert c.ready() is False


def test_a_url_with_a_trailing_slash_works(node: NodeProcess, prefix: bytes) -> None:
    with Client(node.url + "/") as c:
        c.put(prefix + b"k", b"v")
        assert c.get(prefix + b"k").value == b"v"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "127.0.0.1:8080", "http://127.0.0.1/?x=1"])
def test_a_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Client(url)


def test_keys_and_values_of_other_types_are_refused(client: Client) -> None:
    with pytest.raises(TypeError):
        client.put(42, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.put(b"k", None)  # type: ignore[arg-type]


def test_the_package_exports_the_api() -> None:
    for name in dhashmap_client.__all__:
        assert getattr(dhashmap_client, name) is not None
    assert issubclass(dhashmap_client.Timeout, DhashmapError)
    assert dhashmap_client.Entry is Value


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["quickstart.py", "twisted_quickstart.py"])
def test_the_examples_run_against_a_node(node: NodeProcess, script: str) -> None:
    """Also the one test of TwistedClient on a real reactor, Agent and socket."""
    result = subprocess.run([sys.executable, str(EXAMPLES / script), node.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "after delete: not_found" in result.stdout
    assert "get: b'hello" in result.stdout
