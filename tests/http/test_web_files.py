"""The web UI's files as the director serves them, and rules the files keep.

Assets cached and revalidated by ETag; the page only at the UI's own paths;
and, read from the files themselves, no inline script or style, no
innerHTML, every module and asset the page names present. (The security
headers are the site's: tests/integration/test_web_login.py checks them on
a real director.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from stub_api import call, result_of
from treq.testing import StubTreq

from dcvix.director.api.web import load_assets, web_root
from dcvix.testing import director_harness

WEB = web_root()
PAGES = [
    "/",
    "/login",
    "/portal",
    "/admin",
    "/admin/agents",
    "/admin/sessions",
    "/admin/servers",
    "/admin/audit",
]


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubTreq]:
    with director_harness(tmp_path) as harness:
        yield StubTreq(harness.resource())


@pytest.mark.parametrize("path", PAGES)
def test_the_page_at_each_screen(stub: StubTreq, path: str) -> None:
    answer = call(stub, "GET", path)
    assert answer.code == 200
    assert answer.headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    assert answer.body == (WEB / "index.html").read_bytes()
    assert answer.headers.getRawHeaders("Cache-Control") == ["no-cache"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nothing",
        "/v1/user/nothing",
        "/resolveSession",
        "/admin/other",
        "/assets/js/missing.js",
        "/assets/../index.html",
        "/nope",
    ],
)
def test_never_the_page_elsewhere(stub: StubTreq, path: str) -> None:
    answer = call(stub, "GET", path)
    assert answer.code in (404, 405)
    assert answer.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert b"<html" not in answer.body


def test_assets_are_cached_and_revalidated(stub: StubTreq) -> None:
    first = call(stub, "GET", "/assets/js/app.js")
    assert first.code == 200
    assert first.headers.getRawHeaders("Content-Type") == [
        "text/javascript; charset=utf-8"
    ]
    assert first.headers.getRawHeaders("Cache-Control") == ["no-cache"]
    (etag,) = first.headers.getRawHeaders("ETag")
    d = stub.request(  # type: ignore[attr-defined]
        "GET",
        "http://director.test/assets/js/app.js",
        headers={"If-None-Match": etag},
    )
    stub.flush()
    again = result_of(d)
    body = result_of(again.content())
    assert (again.code, body) == (304, b"")


def test_every_file_the_ui_names_is_served() -> None:
    assets = load_assets(WEB)
    index = assets["index.html"].body.decode()
    named = re.findall(r'(?:href|src)="/assets/([^"]+)"', index)
    assert named and all(name in assets for name in named)
    for name, asset in assets.items():
        if not name.endswith(".js"):
            continue
        text = asset.body.decode()
        imports = re.findall(r'(?:from|import\()\s*"\./([^"]+)"', text)
        folder = name.rsplit("/", 1)[0]
        for module in imports:
            assert f"{folder}/{module}" in assets, (name, module)


def test_no_inline_script_style_or_markup_from_strings() -> None:
    index = (WEB / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", index) == []
    assert "<style" not in index
    assert " style=" not in index
    assert not re.search(r"\son[a-z]+=", index)
    for path in WEB.rglob("*.js"):
        text = path.read_text()
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval("):
            assert forbidden not in text, (path.name, forbidden)
        assert ".style." not in text, path.name
