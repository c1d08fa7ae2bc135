"""The ``/metrics`` page's token: read from its file, checked as bytes."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from dcvix.common.config import MetricsSection
from dcvix.common.metrics import MetricsPage, metrics_token, new_registry

TOKEN = "0123456789abcdef0123"


def _token_file(tmp_path: Path, text: str) -> MetricsSection:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(0o600)
    return MetricsSection(token_file=str(path))


def test_the_token_is_the_files_first_line(tmp_path: Path) -> None:
    assert metrics_token(_token_file(tmp_path, TOKEN + "\nignored\n")) == TOKEN
    assert metrics_token(MetricsSection()) == ""


@pytest.mark.parametrize("text", ["", "short-token", "   \n"])
def test_a_short_token_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="shorter than 16 characters"):
        metrics_token(_token_file(tmp_path, text))


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (b"Bearer " + TOKEN.encode(), True),
        (b"bearer  " + TOKEN.encode() + b" ", True),
        (b"Bearer " + TOKEN.encode() + b"x", False),
        (b"Basic " + TOKEN.encode(), False),
        (b"Bearer \xff\xfe", False),  # not UTF-8: refused, not a 500
        (None, False),
    ],
)
def test_the_header_is_compared_as_bytes(header: bytes | None, allowed: bool) -> None:
    page = MetricsPage(new_registry("director"), TOKEN)
    request = DummyRequest([b""])
    if header is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [header])
    assert page.allowed(cast(IRequest, request)) is allowed


def test_the_gauges_are_refreshed_at_most_once_a_second() -> None:
    clock = Clock()
    refreshed: list[float] = []

    async def refresh() -> None:
        refreshed.append(clock.seconds())

    page = MetricsPage(new_registry("agent"), "", refresh, clock)
    for _ in range(3):
        ensureDeferred(page.scrape())
    clock.advance(0.99)
    ensureDeferred(page.scrape())
    clock.advance(0.01)
    ensureDeferred(page.scrape())
    assert refreshed == [0.0, 1.0]
    # Without a clock (tests of one scrape): every scrape refreshes.
    every = MetricsPage(new_registry("agent"), "", refresh)
    ensureDeferred(every.scrape())
    ensureDeferred(every.scrape())
    assert refreshed == [0.0, 1.0, 1.0, 1.0]
