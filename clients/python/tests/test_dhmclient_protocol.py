"""The wire helpers and the error mapping, without a node.

Statuses the tests cannot provoke from a healthy node (503, 507, other 5xx, a
proxy's non-JSON error page) are checked here on ``error_from_response``, the
one function both clients turn every error response into an exception with.
"""

from __future__ import annotations

import json

import pytest
from dhashmap_client import (
    DhashmapError,
    InvalidRequest,
    KeyTooLong,
    NotFound,
    Page,
    PreconditionFailed,
    ServerError,
    StorageFull,
    Unavailable,
    ValueTooLarge,
)
from dhashmap_client._protocol import (
    condition_headers,
    key_path,
    list_path,
    parse_page,
    quote_version,
    ttl_query,
    version_from_etag,
)
from dhashmap_client.errors import error_from_response


def body(code: str, message: str = "why") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", InvalidRequest),
        (404, "not_found", NotFound),
        (412, "precondition_failed", PreconditionFailed),
        (413, "value_too_large", ValueTooLarge),
        (414, "key_too_long", KeyTooLong),
        (503, "storage_error", Unavailable),
        (503, "unavailable", Unavailable),
        (507, "storage_full", StorageFull),
        (500, "internal", ServerError),
    ],
)
def test_each_status_maps_to_its_error(status: int, code: str, cls: type[DhashmapError]) -> None:
    error = error_from_response(status, body(code, "the reason"))
    assert type(error) is cls
    assert (error.status, error.code, error.message) == (status, code, "the reason")
    assert "the reason" in str(error) and str(status) in str(error)


def test_a_non_json_error_page_still_gives_a_typed_error() -> None:
    error = error_from_response(502, b"<html>Bad Gateway</html>")
    assert type(error) is ServerError
    assert error.status == 502 and error.code == "internal"
    assert "Bad Gateway" in error.message


def test_an_unexpected_4xx_is_a_plain_dhashmap_error() -> None:
    error = error_from_response(405, body("method_not_allowed"))
    assert type(error) is DhashmapError
    assert error.code == "method_not_allowed"


def test_a_404_that_is_not_about_a_key_is_not_not_found() -> None:
    error = error_from_response(404, body("no_route", "no such endpoint: GET /v2/kv/k"))
    assert type(error) is DhashmapError and error.code == "no_route"
    assert type(error_from_response(404, b"")) is NotFound  # a bare 404 keeps its meaning


def test_an_empty_error_body_names_the_status() -> None:
    error = error_from_response(503, b"")
    assert type(error) is Unavailable and error.message == "HTTP 503"


def test_key_path_encodes_every_reserved_byte() -> None:
    assert key_path(b"a/b c%?#+") == "/v1/kv/a%2Fb%20c%25%3F%23%2B"
    assert key_path(b"..") == "/v1/kv/%2E%2E"
    assert key_path(b"\x00\xff") == "/v1/kv/%00%FF"
    assert key_path("é") == "/v1/kv/%C3%A9"


def test_list_path_always_asks_for_base64_and_quotes_the_cursor() -> None:
    path = list_path(b"p/\xff", 5, "ab-_")
    assert path == "/v1/kv?prefix=p%2F%FF&limit=5&encoding=base64&cursor=ab-_"
    with pytest.raises(TypeError):
        list_path(b"", "5", None)  # type: ignore[arg-type]


def test_ttl_query() -> None:
    assert ttl_query(None) == ""
    assert ttl_query(30) == "?ttl=30"
    assert ttl_query(30.0) == "?ttl=30"
    with pytest.raises(ValueError):
        ttl_query(0.5)
    with pytest.raises(ValueError):
        ttl_query(float("inf"))
    with pytest.raises(TypeError):
        ttl_query("30")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ttl_query(True)


def test_versions_are_quoted_once_and_checked() -> None:
    assert quote_version("abc_-") == '"abc_-"'
    assert quote_version('"abc"') == '"abc"'
    assert quote_version("*") == "*"
    for bad in ["", '"', 'a"b', "a,b", "a b", "a\r\nX-Evil: 1", "é"]:
        with pytest.raises(ValueError):
            quote_version(bad)
    assert condition_headers("v", True) == {"If-Match": '"v"', "If-None-Match": "*"}
    assert condition_headers(None, False) == {}


def test_version_from_etag() -> None:
    assert version_from_etag('"abc"') == "abc"
    assert version_from_etag('W/"abc"') == "abc"
    with pytest.raises(DhashmapError):
        version_from_etag(None)


def test_parse_page() -> None:
    assert parse_page(b'{"keys": ["AP8=", "YQ=="], "cursor": "YQ"}') == Page([b"\x00\xff", b"a"], "YQ")
    assert parse_page(b'{"keys": [], "cursor": null}') == Page([], None)
    for bad in [b"not json", b'{"cursor": null}', b'{"keys": ["!!"], "cursor": null}',
                b'{"keys": [], "cursor": 5}']:
        with pytest.raises(DhashmapError):
            parse_page(bad)
