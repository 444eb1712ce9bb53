"""The wire format both clients share: paths, query strings, headers, parsing.

Kept free of any HTTP library so the sync and the Twisted client cannot drift
apart in how they encode keys or read answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from urllib.parse import quote

from dhashmap_client.errors import DhashmapError

KV_PATH = "/v1/kv"
OCTET_STREAM = "application/octet-stream"
DEFAULT_LIST_LIMIT = 1000

BytesLike = bytes | bytearray | memoryview | str


@dataclass(frozen=True, slots=True)
class Value:
    """A value read from the store and the version token it has.

    ``version`` is opaque: pass it back to ``cas``/``put(if_match=...)``/
    ``delete(if_match=...)`` to write only if nobody else has written since.
    """

    value: bytes
    version: str


Entry = Value
"""Another name for ``Value``."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: keys in byte order and the cursor to the next page.

    ``cursor`` is ``None`` on the last page.  A page may be short, even empty,
    and still have a cursor (the server bounds the work one page may do when it
    skips deleted or expired keys), so only ``cursor is None`` means "done".
    """

    keys: list[bytes]
    cursor: str | None


def to_bytes(data: BytesLike, what: str) -> bytes:
    """Keys and values as bytes: ``str`` is encoded as UTF-8, bytes-likes copied."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def quote_bytes(data: bytes) -> str:
    """Percent-encode every byte that is not unreserved, ``/`` included.

    ``.`` is encoded too: a key of ``.`` or ``..`` would otherwise be a dot
    segment, which URL normalisers remove (``urllib3.util.parse_url`` turns
    ``/v1/kv/..`` into ``/v1/``), sending the request to another path.  The
    pool call we make does not normalise today, but a proxy or a later
    urllib3 could, and ``%2E`` decodes to the same key on the node.
    """
    return quote(data, safe="").replace(".", "%2E")


def key_path(key: BytesLike) -> str:
    """The path of a key: ``/v1/kv/`` and the key's bytes, every one encodable."""
    return f"{KV_PATH}/{quote_bytes(to_bytes(key, 'key'))}"


def ttl_query(ttl: float | None) -> str:
    """``?ttl=N`` for a put, or ``""``.

    The server takes whole seconds only; a fractional ttl is refused here
    rather than silently rounded, since rounding either way changes when the
    value disappears.  Its range (1 s to 10 years) is the server's to check.
    """
    if ttl is None:
        return ""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a whole number of seconds, not {type(ttl).__name__}")
    if isinstance(ttl, float):
        if not (math.isfinite(ttl) and ttl.is_integer()):
            raise ValueError(f"ttl must be a whole number of seconds, not {ttl!r}")
        ttl = int(ttl)
    return f"?ttl={ttl:d}"


def list_path(prefix: BytesLike, limit: int, cursor: str | None) -> str:
    """The listing URL; always ``encoding=base64`` so that binary keys survive JSON."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    query = f"prefix={quote_bytes(to_bytes(prefix, 'prefix'))}&limit={limit:d}&encoding=base64"
    if cursor is not None:
        if not isinstance(cursor, str):
            raise TypeError(f"cursor must be a str from a previous Page, not {type(cursor).__name__}")
        query += f"&cursor={quote(cursor, safe='')}"
    return f"{KV_PATH}?{query}"


def quote_version(version: str) -> str:
    """A version token as the quoted entity tag HTTP wants (``"token"``).

    Accepts the token bare (as ``Value.version`` holds it) or already quoted
    (as copied from an ``ETag`` header).  ``*`` passes through unquoted: in
    ``If-Match`` it means "any existing value".
    """
    if not isinstance(version, str):
        raise TypeError(f"a version must be a str token, not {type(version).__name__}")
    if version == "*":
        return version
    token = version[1:-1] if len(version) >= 2 and version[0] == version[-1] == '"' else version
    if not token or not token.isascii() or not token.isprintable() or any(c in token for c in '", '):
        raise ValueError(f"not a version token: {version!r}")
    return f'"{token}"'


def condition_headers(if_match: str | None, if_none_match: bool) -> dict[str, str]:
    """``If-Match``/``If-None-Match`` for a conditional write."""
    headers: dict[str, str] = {}
    if if_match is not None:
        headers["If-Match"] = quote_version(if_match)
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


def version_from_etag(etag: str | None) -> str:
    """The version token in an ``ETag`` header: its value without the quotes."""
    if not etag:
        raise DhashmapError("the server sent no ETag", code="bad_response")
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    return etag


def parse_page(body: bytes) -> Page:
    """A listing response: ``{"keys": [base64...], "cursor": str | null}``."""
    try:
        document = json.loads(body)
        keys = [base64.b64decode(k, validate=True) for k in document["keys"]]
        cursor = document.get("cursor")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise DhashmapError(f"the server sent a listing that is not valid: {e}", code="bad_response") from e
    if cursor is not None and not isinstance(cursor, str):
        raise DhashmapError("the server sent a listing cursor that is not a string", code="bad_response")
    return Page(keys, cursor or None)
