"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import cast

import pytest
from browser import browser, chromium, web_fleet
from hypothesis import settings
from pluggy import Result
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from daemons import DaemonProcess
from fleet import Fleet

# The browser fixtures, defined once: a session-scoped Chromium imported into
# several modules would start one Playwright per module, which it refuses.
__all__ = ["browser", "chromium", "web_fleet"]

REQUIRE_SERVICES = os.environ.get("DCVIX_REQUIRE_SERVICES") == "1"

# No per-example deadline: on a loaded machine (browsers, daemons beside the
# suite) a slow example is not a failing one. Each test still has its timeout.
settings.register_profile("dcvix", deadline=None)
settings.load_profile("dcvix")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    """In CI (DCVIX_REQUIRE_SERVICES=1) a skipped test is a failed test."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under DCVIX_REQUIRE_SERVICES=1: {report.longrepr}"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Collects started daemons and stops every one of them after the test."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def audit_lines() -> Iterator[list[str]]:
    """The lines logged in the ``dcvix.audit`` namespace during the test."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "dcvix.audit":
            lines.append(formatEvent(event))

    # A function cannot declare that it provides an interface: cast, as Twisted does.
    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def loose_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Daemons of one test, all stopped at its end, however they end."""
    group = Fleet(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def fleet(loose_fleet: Fleet) -> Iterator[Fleet]:
    """As :func:`loose_fleet`, and every daemon must stop cleanly (SIGTERM).

    twistd re-raises SIGTERM after an orderly stop, so a clean stop is
    "killed by SIGTERM"; anything else (a crash, exit 1) fails the test.
    """
    yield loose_fleet
    loose_fleet.stop_all()
    codes = {
        f"{d.plugin} {d.folder.name}": d.process.returncode
        for d in loose_fleet.started
        if d.process is not None
    }
    assert set(codes.values()) <= {-signal.SIGTERM}, f"not a clean stop: {codes}"
