"""The web UI's files: ``index.html`` for the UI's own paths, assets by name.

Files come from ``web/`` (beside the package in a checkout, inside it in a
wheel), read once at start: the UI changes with the director, never while it
runs. Every answer carries an ``ETag`` and ``Cache-Control: no-cache``, so a
browser keeps its copy and asks only whether it changed (304), and an upgrade
is seen at the next load. Only the UI's client routes answer ``index.html``:
an unknown asset, ``/v1/*`` or ``/resolveSession`` is a JSON 404, never the
page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger
from twisted.web.iweb import IRequest

import dcvix
from dcvix.common.errors import NotFound
from dcvix.director.api.authz import Role, authorized

log = Logger()

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
    ".webmanifest": b"application/manifest+json",
}


def web_root() -> Path:
    """Where the UI's files are: in the installed package, else the checkout."""
    package = Path(dcvix.__file__).parent
    installed = package / "web"
    if (installed / "index.html").is_file():
        return installed
    return package.parent / "web"


@dataclass(frozen=True)
class Asset:
    """One file, ready to send."""

    body: bytes
    content_type: bytes
    etag: bytes


def load_assets(root: Path) -> dict[str, Asset]:
    """Every file under ``root`` of a known type, by its path below it."""
    assets: dict[str, Asset] = {}
    if not root.is_dir():
        log.warn("no web UI files in {root}: the UI is not served", root=str(root))
        return assets
    for path in sorted(root.rglob("*")):
        kind = TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        name = path.relative_to(root).as_posix()
        assets[name] = Asset(body, kind, f'"{digest}"'.encode())
    return assets


def _send(request: IRequest, asset: Asset) -> bytes:
    request.setHeader(b"Content-Type", asset.content_type)
    request.setHeader(b"ETag", asset.etag)
    request.setHeader(b"Cache-Control", b"no-cache")
    asked = request.getHeader(b"If-None-Match") or b""
    if asset.etag in (tag.strip() for tag in asked.split(b",")):
        request.setResponseCode(304)
        return b""
    request.setResponseCode(200)
    return asset.body


class WebRoutes:
    """``GET /`` and the UI's paths, ``GET /assets/<name>``.

    Args:
        root: the folder of ``index.html`` and the assets.
    """

    def __init__(self, root: Path) -> None:
        self._assets = load_assets(root)

    def _page(self, request: IRequest) -> bytes:
        page = self._assets.get("index.html")
        if page is None:
            raise NotFound("the web UI is not installed")
        return _send(request, page)

    @authorized("GET", "/", role=Role.PUBLIC)
    def home(self, request: IRequest) -> bytes:
        """The UI (it decides which screen from the login cookie)."""
        return self._page(request)

    @authorized("GET", "/<any(login,portal,admin):area>", role=Role.PUBLIC)
    def area(self, request: IRequest, area: str) -> bytes:
        """The UI at one of its screens (a reload, a bookmark)."""
        return self._page(request)

    @authorized(
        "GET", "/admin/<any(agents,sessions,servers,audit):screen>", role=Role.PUBLIC
    )
    def admin_screen(self, request: IRequest, screen: str) -> bytes:
        """The UI at an admin screen; the data behind it needs an admin login."""
        return self._page(request)

    @authorized("GET", "/assets/<path:name>", role=Role.PUBLIC)
    def asset(self, request: IRequest, name: str) -> bytes:
        """A file of the UI; 404 for anything else."""
        found = self._assets.get(name)
        if found is None or name == "index.html":
            raise NotFound("not found")
        return _send(request, found)
