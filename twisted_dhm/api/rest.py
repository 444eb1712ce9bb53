"""The REST API: a plain twisted.web resource for ``/v1/kv/{key}``, Klein for the rest.

Keys may hold any bytes, ``/`` included, so the key is cut from the raw request
URI and percent-decoded strictly here.  Klein cannot do that (it rebuilds the
path from decoded segments, and refuses non-UTF-8 escapes), and its routing
costs about half of a GET; see docs/benchmarks.md.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from werkzeug.exceptions import Conflict, HTTPException, InternalServerError

from twisted_dhm import logs
from twisted_dhm.api.dashboard import UIResource, is_ui_path
from twisted_dhm.api.metrics import NodeMetrics
from twisted_dhm.cluster.coordinator import (
    ANY,
    LATER,
    MAX_TTL_SECONDS,
    NO_CONDITION,
    Coordinator,
    Page,
    Precondition,
    parse_level,
)
from twisted_dhm.cluster.handler import NotMine
from twisted_dhm.errors import (
    Forbidden,
    InvalidRequest,
    KeyTooLong,
    KVError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from twisted_dhm.network import coalesce_writes, no_delay
from twisted_dhm.storage import Record, StorageError, StorageFull
from twisted_dhm.versions import parse_entity_tags, versions_from_tags

log = logs.logger("dhashmap.rest")
access_log = logs.logger("dhashmap.access")

KV_PREFIX = b"/v1/kv/"
OCTET_STREAM = b"application/octet-stream"
JSON_TYPE = b"application/json"
MAX_LIST_LIMIT = 10000
DEFAULT_LIST_LIMIT = 1000

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# A client's X-Request-Id is passed through (and logged) only if it looks like an id.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")

_STATUS_OF_ERROR: dict[type, int] = {
    InvalidRequest: 400,
    KeyTooLong: 414,
    ValueTooLarge: 413,
    PreconditionFailed: 412,
    Unavailable: 503,
    Forbidden: 403,
}


@attrs.frozen
class Limits:
    max_key_size: int = 4096
    max_value_size: int = 8 * 1024 * 1024


def strict_unquote(raw: bytes, what: str) -> bytes:
    """Percent-decode, refusing ``%`` not followed by two hex digits."""
    if _BAD_ESCAPE.search(raw):
        raise InvalidRequest(f"{what} has a '%' that is not followed by two hex digits")
    return unquote_to_bytes(raw)


def key_from_uri(uri: bytes, max_key_size: int) -> bytes:
    path = uri.split(b"?", 1)[0]
    if not path.startswith(KV_PREFIX):
        raise InvalidRequest("not a key path")
    key = strict_unquote(path[len(KV_PREFIX) :], "the key")
    if not key:
        raise InvalidRequest("the key is empty: use /v1/kv/{key}")
    if len(key) > max_key_size:
        raise KeyTooLong(f"the key is {len(key)} bytes; the limit is {max_key_size}")
    return key


def error_body(code: str, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, **extra}}).encode()


def etag(record_version) -> bytes:  # type: ignore[no-untyped-def]
    return etag_of(record_version.to_token())


def etag_of(token: str) -> bytes:
    return b'"' + token.encode("ascii") + b'"'


def _header(request: server.Request, name: bytes) -> str | None:
    raw = request.requestHeaders.getRawHeaders(name)
    if not raw:
        return None
    try:
        return ",".join(v.decode("latin-1") for v in raw)
    except UnicodeDecodeError:
        return None


def _match(value: str | None, weak: bool = False) -> Any:
    if value is None:
        return None
    tags = parse_entity_tags(value)
    return ANY if tags is None else tuple(versions_from_tags(tags, weak))


def precondition_from(request: server.Request) -> Precondition:
    if_match = _match(_header(request, b"if-match"))
    if_none_match = _match(_header(request, b"if-none-match"), weak=True)
    if if_match is None and if_none_match is None:
        return NO_CONDITION
    return Precondition(if_match=if_match, if_none_match=if_none_match)


def _single_arg(request: server.Request, name: bytes) -> bytes | None:
    values = request.args.get(name) if request.args else None
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"query parameter {name.decode()!r} is given more than once")
    return values[0]


def ttl_from(request: server.Request) -> float | None:
    raw = _single_arg(request, b"ttl")
    if raw is None:
        return None
    try:
        ttl = int(raw)
    except ValueError:
        raise InvalidRequest("ttl must be a whole number of seconds") from None
    if not 1 <= ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"ttl must be from 1 to {MAX_TTL_SECONDS} seconds")
    return float(ttl)


def level_from(request: server.Request, name: bytes) -> str | int | None:
    raw = _single_arg(request, name)
    return None if raw is None else parse_level(raw.decode("latin-1"), name.decode())


def sloppy_from(request: server.Request) -> bool | None:
    raw = _single_arg(request, b"sloppy")
    if raw is None:
        return None
    if raw in (b"true", b"1"):
        return True
    if raw in (b"false", b"0"):
        return False
    raise InvalidRequest("sloppy must be true or false")


def _status_for(failure: Failure) -> tuple[int, str, str]:
    error = failure.value
    if isinstance(error, KVError):
        return _STATUS_OF_ERROR.get(type(error), 400), error.code, error.message
    if isinstance(error, StorageFull):
        return 507, "storage_full", str(error)
    if isinstance(error, StorageError):
        return 503, "storage_error", str(error)
    return 500, "internal", "the server failed to handle this request; see its log"


def finish(request: server.Request, code: int, body: bytes = b"",
           content_type: bytes | None = None, etag_value: bytes | None = None) -> None:
    """Answer with an explicit Content-Length (no chunking), unless the client has gone."""
    if request._disconnected:  # the client hung up while we waited for the disk
        return
    request.setResponseCode(code)
    if etag_value is not None:
        request.setHeader(b"etag", etag_value)
    if code not in (204, 304):
        request.setHeader(b"content-length", b"%d" % len(body))
        if content_type is not None:
            request.setHeader(b"content-type", content_type)
        if body:
            request.write(body)
    request.finish()


class KVResource(Resource):
    """``GET``/``HEAD``/``PUT``/``DELETE`` of ``/v1/kv/{key}``: the hot path."""

    isLeaf = True

    def __init__(self, coordinator: Coordinator, metrics: NodeMetrics, clock: IReactorTime,
                 limits: Limits) -> None:
        super().__init__()
        self._coordinator = coordinator
        self._metrics = metrics
        self._clock = clock
        self._limits = limits
        # Smart routing: a keyed answer from a node that does not own the key names the owners.
        self._not_mine = NotMine(coordinator, lambda owners: ",".join(owners).encode())

    def render(self, request: server.Request) -> Any:
        started = self._clock.seconds()
        method = request.method
        if method == b"GET" or method == b"HEAD":
            op, handler = "get", self._get
        elif method == b"PUT":
            op, handler = "put", self._put
        elif method == b"DELETE":
            op, handler = "delete", self._delete
        else:
            request.setHeader(b"allow", b"GET, HEAD, PUT, DELETE")
            finish(request, 405, error_body("method_not_allowed", "use GET, HEAD, PUT or DELETE"),
                   JSON_TYPE)
            return server.NOT_DONE_YET
        try:
            key = key_from_uri(request.uri, self._limits.max_key_size)
            owners = self._not_mine.owners(key)
            if owners is not None:
                request.setHeader(b"dhashmap-owners", owners)
            d = handler(request, key)
        except Exception:
            self._failed(Failure(), request)
            self._metrics.observe(op, request.code, self._clock.seconds() - started)
            return server.NOT_DONE_YET
        if d is None:  # answered in this call
            self._metrics.observe(op, request.code, self._clock.seconds() - started)
            return server.NOT_DONE_YET
        d.addErrback(self._failed, request)
        d.addBoth(lambda _: self._metrics.observe(op, request.code, self._clock.seconds() - started))
        return server.NOT_DONE_YET

    def _failed(self, failure: Failure, request: server.Request) -> None:
        code, name, message = _status_for(failure)
        extra = {}
        if isinstance(failure.value, Unavailable):
            extra = {"acks": failure.value.acks, "required": failure.value.required}
        elif code >= 500:
            log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri,
                        request_id=getattr(request, "request_id", None))
        finish(request, code, error_body(name, message, **extra), JSON_TYPE)

    def _get(self, request: server.Request, key: bytes) -> Deferred | None:
        """A Deferred, or None when answered in this call (this node's replica alone answers)."""
        condition = _match(_header(request, b"if-none-match"), weak=True)
        required = _match(_header(request, b"if-match"))
        level = level_from(request, b"r")

        def answer(record: Record | None) -> None:
            if record is None:  # (preconditions do not apply to what would be a 404: RFC 9110 13.2.1)
                finish(request, 404, error_body("not_found", "no value for this key"), JSON_TYPE)
                return
            tag = etag_of(record.token)
            if required is not None:
                Precondition(if_match=required).check(record)  # PreconditionFailed: 412, by _failed
            if condition is not None and (condition == ANY or record.version in condition):
                finish(request, 304, etag_value=tag)
                return
            finish(request, 200, record.value, OCTET_STREAM, tag)

        record = self._coordinator.get_now(key, level)
        if record is LATER:
            return self._coordinator.get(key, level).addCallback(answer)
        answer(record)  # type: ignore[arg-type]
        return None

    def _put(self, request: server.Request, key: bytes) -> Deferred:
        ttl = ttl_from(request)
        value = request.content.read()
        if len(value) > self._limits.max_value_size:
            raise ValueTooLarge(
                f"the value is {len(value)} bytes; the limit is {self._limits.max_value_size}")
        d = self._coordinator.put(key, value, ttl, precondition_from(request), level_from(request, b"w"),
                                  sloppy_from(request))
        return d.addCallback(
            lambda r: finish(request, 201 if r.created else 204, etag_value=etag(r.version)))

    def _delete(self, request: server.Request, key: bytes) -> Deferred:
        d = self._coordinator.delete(key, precondition_from(request), level_from(request, b"w"),
                                     sloppy_from(request))
        # The tombstone's version, so a client can tell which delete it made.
        return d.addCallback(
            lambda r: finish(request, 204, etag_value=None if r.created else etag(r.version)))


def _openapi_document() -> bytes:
    return resources.files("twisted_dhm.api").joinpath("openapi.json").read_bytes()


@attrs.define
class RestAPI:
    """Everything but the hot path: listing, health, readiness, metrics, OpenAPI."""

    node_id: str
    coordinator: Coordinator
    metrics: NodeMetrics
    clock: IReactorTime
    is_ready: Callable[[], bool]
    cluster: Any = None  # the node: its membership service serves the gossip key ring
    app = Klein()

    @app.handle_errors(HTTPException)
    def _http_error(self, request: server.Request, failure: Failure) -> bytes:
        error = failure.value
        request.setResponseCode(error.code)
        request.setHeader(b"content-type", JSON_TYPE)
        if error.code == 405:
            allowed = getattr(error, "valid_methods", None) or []
            request.setHeader(b"allow", ", ".join(allowed).encode())
        if error.code == 404:
            # Not "not_found": that means "no value for this key", and a client with a wrong
            # base URL must not mistake its mistake for a missing key.
            where = f"{request.method.decode('latin-1')} {request.path.decode('latin-1')}"
            return error_body("no_route", f"no such endpoint: {where}")
        name = (error.name or "error").lower().replace(" ", "_")
        return error_body(name, error.description or error.name)

    @app.handle_errors(KVError)
    def _kv_error(self, request: server.Request, failure: Failure) -> bytes:
        code, name, message = _status_for(failure)
        request.setResponseCode(code)
        request.setHeader(b"content-type", JSON_TYPE)
        return error_body(name, message)

    @app.handle_errors(Exception)
    def _unexpected(self, request: server.Request, failure: Failure) -> bytes:
        log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri,
                    request_id=getattr(request, "request_id", None))
        request.setResponseCode(500)
        request.setHeader(b"content-type", JSON_TYPE)
        return error_body("internal", "the server failed to handle this request; see its log")

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps({"status": "ok", "node": self.node_id}).encode()

    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        if self.is_ready():
            # Degraded (the registry is unreachable) still serves from the last known members.
            problems = getattr(getattr(self.cluster, "membership", None), "problems", lambda: [])()
            if problems:
                return json.dumps({"status": "degraded", "node": self.node_id, "problems": problems}).encode()
            return json.dumps({"status": "ready", "node": self.node_id}).encode()
        request.setResponseCode(503)
        if getattr(getattr(self.cluster, "rebalance", None), "draining", False):
            return json.dumps({"status": "draining", "node": self.node_id}).encode()
        return json.dumps({"status": "not_ready", "node": self.node_id}).encode()

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.exposition()

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        return _openapi_document()

    @app.route("/v1/cluster/members", methods=["GET"])
    def members(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        view = self.coordinator.routing.view
        return json.dumps({"node": self.node_id, "members": [m.to_json() for m in view.members()]}).encode()

    def _gossip(self) -> Any:
        membership = getattr(self.cluster, "membership", None)
        if membership is None or not hasattr(membership, "change_keys"):
            raise Conflict("this node does not use SWIM gossip (--discovery swim)")
        return membership

    @app.route("/v1/cluster/gossip/keys", methods=["GET"])
    def gossip_keys(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps(self._gossip().keys()).encode()

    @app.route("/v1/cluster/gossip/keys", methods=["POST"])
    def change_gossip_keys(self, request: server.Request) -> bytes:
        """``{"install"|"use"|"remove": "<base64 key>"}``: one step of a key rotation, on this node."""
        from twisted_dhm.membership.swim.service import GossipError, KeyringNotSaved

        membership = self._gossip()
        try:
            body = json.loads(request.content.read())
        except ValueError:
            raise InvalidRequest("the body must be JSON, like {\"install\": \"<base64 key>\"}") from None
        if not isinstance(body, dict) or len(body) != 1:
            raise InvalidRequest("the body must name one action: install, use or remove")
        ((action, raw),) = body.items()
        if action not in ("install", "use", "remove"):
            raise InvalidRequest(f"unknown action {action!r}: install, use or remove")
        try:
            key = base64.b64decode(str(raw), validate=True)
        except ValueError:
            raise InvalidRequest("the key must be base64") from None
        if len(key) not in (16, 24, 32):
            raise InvalidRequest(f"the key must be 16, 24 or 32 bytes, not {len(key)}")
        try:
            keys = membership.change_keys(action, key)
        except KeyringNotSaved as e:
            raise InternalServerError(str(e)) from None
        except GossipError as e:
            raise Conflict(str(e)) from None
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps(keys).encode()

    @app.route("/v1/cluster/ring", methods=["GET"])
    def ring(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        routing = self.coordinator.routing
        table = routing.table
        return json.dumps({
            "partitions": table.partitions,
            "replicas": table.replicas,
            "hash": "xxh64",
            "nodes": sorted(table.nodes),
            "table": [{"partition": p, "owners": list(owners)} for p, owners in table.as_dict().items()],
        }).encode()

    def _node(self) -> Any:
        if self.cluster is None or not hasattr(self.cluster, "node_status"):
            raise Conflict("this server is not a cluster node")
        return self.cluster

    @app.route("/v1/node/status", methods=["GET"])
    def node_status(self, request: server.Request) -> bytes:
        """This node's partitions, transfers in flight, hints and anti-entropy rounds."""
        status = self._node().node_status()
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps(status).encode()

    @app.route("/v1/cluster/status", methods=["GET"])
    def cluster_status(self, request: server.Request) -> Deferred:
        """``node_status`` of every member, asked by this node (down members: their state only)."""
        node = self._node()

        def answer(status: dict) -> bytes:
            request.setHeader(b"content-type", JSON_TYPE)
            return json.dumps(status).encode()

        return node.cluster_status().addCallback(answer)

    @app.route("/v1/cluster/leave", methods=["POST"])
    def leave(self, request: server.Request) -> bytes:
        """Drain this node: hand its partitions to their next owners, leave the ring, then exit.

        Answers 202 at once; ``/ready`` says ``draining`` until the node exits.
        """
        node = self._node()
        if not node.rebalance.draining:
            node.leave().addErrback(lambda f: log.failure("drain failed", f))
        request.setResponseCode(202)
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps({"status": "draining", "node": self.node_id}).encode()

    @app.route("/v1/node/stats", methods=["GET"])
    def node_stats(self, request: server.Request) -> bytes:
        """This node's requests, storage, hints and transfers, for the dashboard (``/ui``)."""
        from twisted_dhm.api.introspect import node_stats

        request.setHeader(b"content-type", JSON_TYPE)
        # The dashboard served by one member reads every member's numbers; they are not secret.
        request.setHeader(b"access-control-allow-origin", b"*")
        if self.cluster is None:
            raise Conflict("no node to describe")
        return json.dumps(node_stats(self.cluster, self.clock)).encode()

    @app.route("/v1/kv", methods=["GET"])
    def list_keys(self, request: server.Request) -> Deferred:
        started = self.clock.seconds()
        raw_prefix = _single_arg(request, b"prefix") or b""
        limit_raw = _single_arg(request, b"limit")
        cursor_raw = _single_arg(request, b"cursor")
        encoding = (_single_arg(request, b"encoding") or b"utf-8").decode("latin-1").lower()
        if encoding not in ("utf-8", "base64"):
            raise InvalidRequest("encoding must be utf-8 or base64")
        try:
            limit = DEFAULT_LIST_LIMIT if limit_raw is None else int(limit_raw)
        except ValueError:
            raise InvalidRequest("limit must be a whole number") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be from 1 to {MAX_LIST_LIMIT}")
        cursor = cursor_raw.decode("latin-1") if cursor_raw else None

        def render(page: Page) -> bytes:
            if encoding == "base64":
                keys = [base64.b64encode(k).decode("ascii") for k in page.keys]
            else:
                try:
                    keys = [k.decode("utf-8") for k in page.keys]
                except UnicodeDecodeError:
                    raise InvalidRequest(
                        "some keys on this page are not UTF-8; list them with encoding=base64"
                    ) from None
            request.setHeader(b"content-type", JSON_TYPE)
            return json.dumps({"keys": keys, "cursor": page.cursor}).encode()

        def observe(result: Any) -> Any:
            code = request.code if not isinstance(result, Failure) else _status_for(result)[0]
            self.metrics.observe("list", code, self.clock.seconds() - started)
            return result

        d = self.coordinator.list(raw_prefix, cursor, limit).addCallback(render)
        return d.addBoth(observe)


class RootResource(Resource):
    """Sends ``/v1/kv/...`` to the hot-path resource, ``/ui`` to the dashboard, the rest to Klein."""

    isLeaf = True

    def __init__(self, kv: Resource, rest: Resource, ui: Resource | None = None) -> None:
        super().__init__()
        self._kv = kv
        self._rest = rest
        self._ui = ui if ui is not None else UIResource()

    def render(self, request: server.Request) -> Any:
        if request.path.startswith(KV_PREFIX):
            return self._kv.render(request)
        if is_ui_path(request.path):
            return self._ui.render(request)
        return self._rest.render(request)


class _Discard(io.RawIOBase):
    """Where the body of a refused request goes."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class DhashmapRequest(server.Request):
    """A request that refuses bodies over the site's limit before reading them."""

    _refused = False
    _received = 0
    request_id: str | None = None
    started = 0.0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.channel.site.max_body_size:
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_size:
            self._refuse(self._received)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        if version == b"HTTP/1.1":
            hosts = self.requestHeaders.getRawHeaders(b"host")
            if hosts is None or len(hosts) != 1:  # RFC 9112 3.2: exactly one
                self.channel.answer_and_close(b"400 Bad Request", error_body(
                    "bad_request", "an HTTP/1.1 request needs exactly one Host header"))
                return
        if path[:1] != b"/" and path[:7].lower() in (b"http://", b"https:/"):
            # The absolute form (RFC 9112 3.2.2): what matters here is the path after the authority.
            rest = path.split(b"/", 3)
            path = b"/" + (rest[3] if len(rest) > 3 else b"")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """``server.Request.process``, with a short cut for the key-value hot path.

        ``/v1/kv/{key}`` skips resource traversal and the per-segment unquoting of
        the path (the key resource reads the raw URI anyway), and the ``Date``
        header is formatted once per second rather than per request.
        """
        site = self.site = self.channel.site
        if site.access_log or self.requestHeaders.hasHeader(b"x-request-id"):
            self._identify(site)
        if not self.path.startswith(KV_PREFIX) or site.kv_resource is None:
            super().process()
            return
        self.setHeader(b"server", server.version)
        self.setHeader(b"date", site.http_date())
        self.prepath = []
        self.postpath = []
        try:
            self.render(site.kv_resource)
        except BaseException:
            self.processingFailed(Failure())

    def _identify(self, site: DhashmapSite) -> None:
        """The request's id: the client's ``X-Request-Id`` if it is one, else (access log on) a new one."""
        given = self.requestHeaders.getRawHeaders(b"x-request-id")
        if given and _REQUEST_ID.fullmatch(given[0]):
            rid = given[0]
        elif site.access_log:
            rid = site.next_request_id()
        else:
            return
        self.request_id = rid.decode("ascii")
        self.started = site.reactor.seconds()
        self.setHeader(b"x-request-id", rid)

    def _refuse(self, size: int) -> None:
        """Answer 413 at once and close, so the client does not upload the rest."""
        self._refused = True
        self.content = _Discard()
        # Keep the channel from inviting the body with "100 Continue".
        self.requestHeaders.removeHeader(b"expect")
        limit = self.channel.site.max_body_size
        self.channel.answer_and_close(b"413 Payload Too Large", error_body(
            "value_too_large", f"the body is at least {size} bytes; the limit is {limit}"))


#: How long a connection refused mid-upload is kept reading (and discarding) after the answer.
LINGER_SECONDS = 5.0


class DhashmapChannel(http.HTTPChannel):
    """HTTP/1.1 channel that answers an over-long request line with 414, not silence.

    Idle connections are found by the site's periodic sweep (``last_data``), not by Twisted's
    per-connection timer, which is cancelled and re-created for every request.
    """

    _host = None
    last_data = 0.0
    _lingering: Any = None  # the delayed abort, once answered and closing

    def connectionMade(self) -> None:
        no_delay(self.transport)
        coalesce_writes(self.transport, self.site.reactor)
        self.last_data = self.site.reactor.seconds()
        self.site.channels.add(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # the rest of a refused upload: read and dropped
        self.last_data = self.site.reactor.seconds()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        self.site.channels.discard(self)
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def answer_and_close(self, status: bytes, body: bytes) -> None:
        """Answer outside the request machinery, then close without losing the answer.

        Closing a socket with unread data makes the kernel send a reset, which can destroy
        the answer before the client reads it (a client still uploading a refused body sees
        EPIPE instead of the 413).  So, as web servers do, shut down our sending side after
        the answer, keep reading and dropping what still arrives, and close for good when
        the client does or after ``LINGER_SECONDS``.
        """
        if self._lingering is not None:
            return
        self.transport.write(b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
        self.site.channels.discard(self)  # the idle sweep must not time this out as a request
        self._lingering = self.site.reactor.callLater(LINGER_SECONDS, self.transport.abortConnection)
        try:
            self.transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):  # a transport that cannot half-close
            self.transport.loseConnection()

    @property
    def idle(self) -> bool:
        """Not working on a request (a stalled upload counts as idle: it is the client's)."""
        return not self._handlingRequest

    def time_out(self) -> None:
        """Twisted's timeout (log, close, abort later if need be), once per connection."""
        self.site.channels.discard(self)
        self.timeoutConnection()

    def getHost(self) -> Any:
        # Every request asks; the answer is a getsockname() system call that cannot change.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._HTTPChannel__first_line:  # (Twisted's: no request line yet)
            self.answer_and_close(b"414 URI Too Long", error_body(
                "key_too_long", f"the request line is over {self.MAX_LENGTH} bytes"))
        else:
            self.answer_and_close(b"431 Request Header Fields Too Large", error_body(
                "header_too_large", f"a header line is over {self.MAX_LENGTH} bytes"))


class DhashmapSite(server.Site):
    protocol = DhashmapChannel
    requestFactory = DhashmapRequest
    displayTracebacks = False

    def __init__(self, resource: Resource, reactor: IReactorTime, limits: Limits,
                 idle_timeout: float, kv_resource: Resource | None = None, access_log: bool = False,
                 node_id: str = "") -> None:
        super().__init__(resource, timeout=None, reactor=reactor)
        self.access_log = access_log
        # Request ids: node, start second, sequence; unique across restarts a second apart.
        self._id_prefix = f"{node_id or 'node'}-{int(reactor.seconds()):x}-"
        self._id_seq = 0
        self.max_body_size = limits.max_value_size
        self.kv_resource = kv_resource
        self.idle_timeout = idle_timeout
        self.channels: set[DhashmapChannel] = set()
        self._sweeper = LoopingCall(self.close_idle)
        self._sweeper.clock = reactor
        self._date_second = -1
        self._date = b""

    def startFactory(self) -> None:
        super().startFactory()
        if not self._sweeper.running:
            self._sweeper.start(max(self.idle_timeout / 4, 0.25), now=False)

    def stopFactory(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        super().stopFactory()

    def close_idle(self) -> None:
        """Close connections idle, or stalled mid-request by the client, for the idle timeout."""
        cutoff = self.reactor.seconds() - self.idle_timeout
        for channel in [c for c in self.channels if c.idle and c.last_data <= cutoff]:
            channel.time_out()

    def http_date(self) -> bytes:
        """The ``Date`` header value, formatted at most once per second of the injected clock."""
        now = int(self.reactor.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date = http.datetimeToString(now)
        return self._date

    def next_request_id(self) -> bytes:
        self._id_seq += 1
        return f"{self._id_prefix}{self._id_seq:x}".encode("ascii")

    def log(self, request: server.Request) -> None:
        """One line per request with ``--access-log`` (it costs more than a GET, so off by default)."""
        if not self.access_log:
            return
        started = getattr(request, "started", 0.0)
        access_log.info(
            "{client} {method} {uri} {code} {size}B {ms:.2f}ms",
            client=getattr(request.getClientAddress(), "host", "-"),
            method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"), code=request.code,
            size=request.sentLength, ms=(self.reactor.seconds() - started) * 1000 if started else 0.0,
            request_id=getattr(request, "request_id", None),
        )


def build_site(coordinator: Coordinator, metrics: NodeMetrics, clock: IReactorTime,
               limits: Limits, idle_timeout: float, node_id: str,
               is_ready: Callable[[], bool], cluster: Any = None, access_log: bool = False) -> DhashmapSite:
    kv = KVResource(coordinator, metrics, clock, limits)
    api = RestAPI(node_id, coordinator, metrics, clock, is_ready, cluster)
    return DhashmapSite(RootResource(kv, api.app.resource()), clock, limits, idle_timeout, kv_resource=kv,
                        access_log=access_log, node_id=node_id)
