"""The asynchronous client for Twisted programs, on treq.

Every operation returns a ``Deferred`` that fires with the same result the
sync ``Client`` returns, or fails with the same ``DhashmapError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import error as internet_error
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.python.failure import Failure
from twisted.web import client as web_client

from dhashmap_client import _protocol as proto
from dhashmap_client._protocol import BytesLike, Page, Value
from dhashmap_client.errors import ConnectionError, DhashmapError, Timeout, error_from_response

__all__ = ["TwistedClient"]

_CONNECTION_FAILURES = (
    internet_error.ConnectError,  # refused, unreachable, DNS lookup failed, ...
    internet_error.ConnectionLost,
    internet_error.ConnectionClosed,
    web_client.ResponseFailed,
    web_client.ResponseNeverReceived,
    web_client.RequestTransmissionFailed,
    web_client.RequestNotSent,
    web_client.PartialDownloadError,
    OSError,
)


class TwistedClient:
    """A non-blocking client for one dhashmap node, returning Deferreds.

    ``TwistedClient("http://127.0.0.1:8080")`` makes its own treq
    ``HTTPClient`` with a persistent connection pool on ``reactor`` (the global
    reactor when ``None``, looked up only when first needed).  Pass
    ``treq_client`` to bring your own: a configured ``treq.client.HTTPClient``,
    or a ``treq.testing.StubTreq`` for tests.  ``timeout`` (seconds, ``None``
    for none) bounds each whole operation, response body included; it is
    counted on ``reactor``, so a ``task.Clock`` makes it deterministic.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", treq_client: Any = None,
                 reactor: Any = None, timeout: float | None = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the node URL must be http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._reactor = reactor
        self._pool: Any = None
        self._treq = treq_client

    def __repr__(self) -> str:
        return f"TwistedClient({self.url!r}, timeout={self.timeout!r})"

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _client(self) -> Any:
        if self._treq is None:
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._treq = HTTPClient(Agent(self.reactor, pool=self._pool))
        return self._treq

    def close(self) -> Deferred[None]:
        """Close the pooled connections this client opened itself (call before stopping)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    # -- the operations ---------------------------------------------------------------------

    def get(self, key: BytesLike) -> Deferred[Value]:
        """Fires with the live ``Value`` of ``key``; fails with ``NotFound`` if there is none."""
        path = proto.key_path(key)

        def answer(status: int, headers: Any, body: bytes) -> Value:
            if status != 200:
                raise error_from_response(status, body)
            return Value(body, proto.version_from_etag(_header(headers, b"etag")))

        return self._request("GET", path, answer)

    def put(self, key: BytesLike, value: BytesLike, ttl: float | None = None,
            if_match: str | None = None, if_none_match: bool = False) -> Deferred[str]:
        """Store ``value``; fires with the new version token.  See ``Client.put``."""
        body = proto.to_bytes(value, "value")
        headers = {"Content-Type": proto.OCTET_STREAM,
                   **proto.condition_headers(if_match, if_none_match)}
        path = proto.key_path(key) + proto.ttl_query(ttl)

        def answer(status: int, headers: Any, body: bytes) -> str:
            if status not in (200, 201, 204):
                raise error_from_response(status, body)
            return proto.version_from_etag(_header(headers, b"etag"))

        return self._request("PUT", path, answer, body=body, headers=headers)

    def delete(self, key: BytesLike, if_match: str | None = None) -> Deferred[None]:
        """Delete ``key`` (succeeds if absent); with ``if_match`` only at that version."""
        headers = proto.condition_headers(if_match, False)

        def answer(status: int, headers: Any, body: bytes) -> None:
            if status not in (200, 204):
                raise error_from_response(status, body)

        return self._request("DELETE", proto.key_path(key), answer, headers=headers)

    def cas(self, key: BytesLike, expected_version: str | None, value: BytesLike,
            ttl: float | None = None) -> Deferred[str]:
        """Write only if the current version is ``expected_version`` (``None``: only if absent)."""
        if expected_version is None:
            return self.put(key, value, ttl=ttl, if_none_match=True)
        return self.put(key, value, ttl=ttl, if_match=expected_version)

    def list(self, prefix: BytesLike = b"", limit: int = proto.DEFAULT_LIST_LIMIT,
             cursor: str | None = None) -> Deferred[Page]:
        """Fires with one ``Page`` of live keys starting with ``prefix``."""
        path = proto.list_path(prefix, limit, cursor)

        def answer(status: int, headers: Any, body: bytes) -> Page:
            if status != 200:
                raise error_from_response(status, body)
            return proto.parse_page(body)

        return self._request("GET", path, answer)

    def keys(self, prefix: BytesLike = b"", page_size: int = proto.DEFAULT_LIST_LIMIT
             ) -> Deferred[list[bytes]]:
        """Fires with every live key starting with ``prefix``, following cursors to the end.

        Unlike the sync ``keys()`` this gathers the whole listing in memory; for
        very large listings, loop over ``list()`` yourself.
        """
        # inlineCallbacks rather than chained callbacks: pages that arrive synchronously
        # (a cache, StubTreq) then loop instead of recursing once per page.
        @inlineCallbacks
        def gather() -> Generator[Deferred[Any], Any, list[bytes]]:
            found: list[bytes] = []
            cursor: str | None = None
            while True:
                page = yield self.list(prefix, page_size, cursor)
                found.extend(page.keys)
                if page.cursor is None:
                    return found
                if page.cursor == cursor:
                    raise DhashmapError("the server returned the same cursor twice", code="bad_response")
                cursor = page.cursor

        return gather()

    def health(self) -> Deferred[bool]:
        """Fires with whether the node answers ``/health`` with 200 (``False`` if unreachable)."""
        return self._probe("/health")

    def ready(self) -> Deferred[bool]:
        """Fires with whether the node is ready to serve (``False`` if unreachable)."""
        return self._probe("/ready")

    # -- plumbing ---------------------------------------------------------------------------

    def _probe(self, path: str) -> Deferred[bool]:
        d = self._request("GET", path, lambda status, headers, body: status == 200)

        def unreachable(failure: Failure) -> bool:
            failure.trap(ConnectionError, Timeout)
            return False

        return d.addErrback(unreachable)

    def _request(self, method: str, path: str, answer: Any, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Deferred[Any]:
        """Send one request, read the whole body, and hand both to ``answer``.

        The timeout covers the body too (treq's own ``timeout`` stops counting
        at the headers), and a transport failure becomes our ``ConnectionError``
        or ``Timeout``, with Twisted's failure kept as ``__cause__``.
        """
        url = self.url + path
        timed_out = []
        try:
            d = self._client().request(
                method, url.encode("ascii"), data=body, headers=headers, allow_redirects=False,
            )
        except Exception as e:  # an agent that fails synchronously
            d = Deferred()
            d.errback(Failure(e))
        d.addCallback(lambda response: treq.content(response).addCallback(
            lambda content: answer(response.code, response.headers, content)))

        delayed = None
        if self.timeout is not None:
            def expire() -> None:
                timed_out.append(True)
                d.cancel()

            delayed = self.reactor.callLater(self.timeout, expire)

        def settle(result: Any) -> Any:
            if delayed is not None and delayed.active():
                delayed.cancel()
            if not isinstance(result, Failure) or result.check(DhashmapError):
                return result
            if timed_out:
                error: DhashmapError = Timeout(f"{method} {path}: no answer within {self.timeout}s")
            elif _is_cancellation(result):
                # The caller cancelled: they get the CancelledError they expect, not the
                # ResponseNeverReceived([CancelledError]) that Twisted's Agent wraps it in.
                return result if result.check(CancelledError) else Failure(CancelledError())
            elif result.check(*_CONNECTION_FAILURES):
                error = ConnectionError(f"{method} {path}: {_describe(result)}")
            else:
                return result  # a bug (ours or the caller's): do not disguise it
            error.__cause__ = result.value
            return Failure(error)

        return d.addBoth(settle)


def _header(headers: Any, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _is_cancellation(failure: Failure) -> bool:
    if failure.check(CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons)


def _describe(failure: Failure) -> str:
    """Twisted's wrapper failures hide the real reason in ``.reasons``; show it."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
    return failure.getErrorMessage() or failure.type.__name__
