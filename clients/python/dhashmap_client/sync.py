"""The synchronous client, on urllib3's connection pool."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from dhashmap_client import _protocol as proto
from dhashmap_client._protocol import BytesLike, Page, Value
from dhashmap_client.errors import ConnectionError, DhashmapError, Timeout, error_from_response

__all__ = ["Client"]


def _retry_policy() -> urllib3.Retry:
    """Retry only where a retry cannot apply a write twice.

    A connection that could not be opened never carried the request, so one
    more try is safe for every method.  A connection that broke after the
    request went out is retried for GET/HEAD only: a PUT with ``If-Match``
    replayed after it had succeeded would fail with a misleading 412, and a
    plain PUT would make a second version.  Statuses and redirects are never
    retried or followed: they are answers, and are turned into errors.
    """
    return urllib3.Retry(
        total=2, connect=1, read=1, status=0, other=0, redirect=0,
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_redirect=False, raise_on_status=False, respect_retry_after_header=False,
    )


class Client:
    """A blocking client for one dhashmap node.

    ``Client("http://127.0.0.1:8080", timeout=10.0)``.  Connections are pooled
    and kept alive (up to ``maxsize`` of them), so one ``Client`` should be
    shared, across threads too: it is thread-safe.  ``timeout`` bounds both
    connecting and each wait for data, in seconds.  Use it as a context
    manager, or call ``close()``, to close the pooled connections.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0, *,
                 maxsize: int = 10) -> None:
        parsed = urllib3.util.parse_url(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the node URL must be http:// or https:// with a host, not {url!r}")
        if parsed.query or parsed.fragment:
            raise ValueError(f"the node URL must not have a query or fragment: {url!r}")
        self.url = url
        self.timeout = timeout
        # A path in the URL (a node behind a reverse proxy at /dhm/) prefixes every request.
        self._base_path = (parsed.path or "").rstrip("/")
        self._manager = urllib3.PoolManager(
            num_pools=1, maxsize=maxsize, block=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=_retry_policy(),
        )
        self._pool = self._manager.connection_from_host(parsed.host, parsed.port, parsed.scheme)

    def __repr__(self) -> str:
        return f"Client({self.url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the client can still be used afterwards."""
        self._manager.clear()

    # -- the operations ---------------------------------------------------------------------

    def get(self, key: BytesLike) -> Value:
        """The live value of ``key`` and its version; ``NotFound`` if there is none."""
        response = self._request("GET", proto.key_path(key))
        if response.status != 200:
            raise error_from_response(response.status, response.data)
        return Value(response.data, proto.version_from_etag(response.headers.get("ETag")))

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None,
            if_match: str | None = None, if_none_match: bool = False) -> str:
        """Store ``value`` under ``key``; returns the new version token.

        ``ttl``: whole seconds after which the value expires.  ``if_match``: a
        version token (or ``"*"``, "any existing value") the current value must
        have, and ``if_none_match=True``: the key must have no live value; either
        failing raises ``PreconditionFailed`` and writes nothing.
        """
        body = proto.to_bytes(value, "value")
        headers = {"Content-Type": proto.OCTET_STREAM,
                   **proto.condition_headers(if_match, if_none_match)}
        path = proto.key_path(key) + proto.ttl_query(ttl)
        response = self._request("PUT", path, body=body, headers=headers)
        if response.status not in (200, 201, 204):
            raise error_from_response(response.status, response.data)
        return proto.version_from_etag(response.headers.get("ETag"))

    def delete(self, key: BytesLike, if_match: str | None = None) -> None:
        """Delete ``key``.  Deleting an absent key succeeds (deletes are idempotent).

        With ``if_match`` the delete happens only if the value still has that
        version, else ``PreconditionFailed``.
        """
        headers = proto.condition_headers(if_match, False)
        response = self._request("DELETE", proto.key_path(key), headers=headers)
        if response.status not in (200, 204):
            raise error_from_response(response.status, response.data)

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike,
            ttl: float | None = None) -> str:
        """Compare-and-set: write only if the current version is ``expected_version``.

        ``expected_version=None`` means "create only if absent".  Returns the new
        version; raises ``PreconditionFailed`` when someone else got there first,
        which is the cue to ``get`` again and retry.
        """
        if expected_version is None:
            return self.put(key, value, ttl=ttl, if_none_match=True)
        return self.put(key, value, ttl=ttl, if_match=expected_version)

    def list(self, prefix: BytesLike = b"", limit: int = proto.DEFAULT_LIST_LIMIT,
             cursor: str | None = None) -> Page:
        """One page of live keys starting with ``prefix``, in byte order.

        Pass the returned ``Page.cursor`` back to get the next page; it is
        ``None`` after the last one.  ``keys()`` does that loop for you.
        """
        response = self._request("GET", proto.list_path(prefix, limit, cursor))
        if response.status != 200:
            raise error_from_response(response.status, response.data)
        return proto.parse_page(response.data)

    def keys(self, prefix: BytesLike = b"", page_size: int = proto.DEFAULT_LIST_LIMIT) -> Iterator[bytes]:
        """Every live key starting with ``prefix``, fetching pages lazily as it goes.

        Not a snapshot: keys written or deleted while iterating may or may not
        appear, but each key is yielded at most once and in byte order.
        """
        cursor: str | None = None
        while True:
            page = self.list(prefix, page_size, cursor)
            yield from page.keys
            if page.cursor is None:
                return
            if page.cursor == cursor:
                raise DhashmapError("the server returned the same cursor twice", code="bad_response")
            cursor = page.cursor

    def health(self) -> bool:
        """Is the node's process up and answering HTTP?  ``False`` also when unreachable."""
        return self._probe("/health")

    def ready(self) -> bool:
        """Is the node ready to serve requests (storage open)?  ``False`` also when unreachable."""
        return self._probe("/ready")

    # -- plumbing ---------------------------------------------------------------------------

    def _probe(self, path: str) -> bool:
        try:
            response = self._request("GET", path)
        except (ConnectionError, Timeout):
            return False
        return response.status == 200

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        """One request, with urllib3's errors turned into ours.

        The exception raised is always a ``DhashmapError``; urllib3's is kept
        only as ``__cause__``, for debugging.
        """
        try:
            return self._pool.urlopen(
                method, self._base_path + path, body=body, headers=headers,
                redirect=False, preload_content=True, assert_same_host=False,
            )
        except MaxRetryError as e:
            raise _transport_error(e.reason or e, method, path) from e
        except HTTPError as e:
            raise _transport_error(e, method, path) from e


def _transport_error(error: BaseException, method: str, path: str) -> DhashmapError:
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, so it goes first.
    if isinstance(error, NewConnectionError):
        return ConnectionError(f"{method} {path}: cannot connect: {error}")
    if isinstance(error, ConnectTimeoutError | ReadTimeoutError | Urllib3Timeout):
        return Timeout(f"{method} {path}: no answer in time: {error}")
    return ConnectionError(f"{method} {path}: {error}")
