"""The dashboard's static page (``/ui``): HTML, CSS and JavaScript shipped in the package.

The page polls the JSON API (``/v1/cluster/members``, ``/v1/cluster/ring``, ``/v1/node/stats``)
and draws everything itself; nothing is loaded from other sites.  Only the files named in
``ASSETS`` are served, so no request path reaches the file system.
"""

from __future__ import annotations

from importlib import resources

from twisted.web import server
from twisted.web.resource import Resource

UI_PREFIX = b"/ui"

ASSETS: dict[bytes, tuple[str, bytes]] = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"index.html": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def is_ui_path(path: bytes) -> bool:
    return path == UI_PREFIX or path.startswith(UI_PREFIX + b"/")


class UIResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[str, bytes] = {}

    def _read(self, name: str) -> bytes:
        body = self._files.get(name)
        if body is None:
            body = self._files[name] = resources.files("twisted_dhm.api").joinpath("ui", name).read_bytes()
        return body

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 (twisted.web's name)
        if request.path == UI_PREFIX:
            request.redirect(b"/ui/")
            return b""
        asset = ASSETS.get(request.path[len(UI_PREFIX) + 1:])
        if asset is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": {"code": "no_route", "message": "no such dashboard file"}}'
        name, content_type = asset
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # Scripts and styles from this node only; fetch() may reach the other members' stats.
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; connect-src *; img-src 'self' data:; frame-ancestors 'none'")
        return self._read(name)

    render_HEAD = render_GET  # noqa: N815

    def render(self, request: server.Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": {"code": "method_not_allowed", "message": "the dashboard is read with GET"}}'
        return super().render(request)
