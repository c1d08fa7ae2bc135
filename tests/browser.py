"""The web UI in a real headless Chromium (Debian's), driven by Playwright.

:func:`web_fleet` starts a director and one agent (``ws-web``, a fake ``dcv``)
as twistd processes; ``alice`` logs in as an admin and ``bob`` as a user
through an external-command back end. :class:`Browser` opens pages that
record every console error and failed request, which each test must end
without (RECIPES.md §6: Playwright's sync API beside pytest-twisted works as
long as the servers run in their own processes, as here).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_dcv import FakeDcv
from sessions_world import new_agents

from fleet import Agent, Director, Fleet

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Chromium cancels downloads from a page whose certificate it does not
    # trust, whatever the context says (RECIPES.md §6).
    "--ignore-certificate-errors",
]
ADMIN, ADMIN_PASSWORD = "alice", "Alice-pw-1"
USER, USER_PASSWORD = "bob", "Bob-pw-2"
AUTH_SCRIPT = """#!/bin/sh
IFS= read -r user
IFS= read -r password
IFS= read -r otp
case "$user:$password" in
  '{admin}:{admin_password}'|'{user}:{user_password}') exit 0 ;;
esac
exit 1
"""
# Where screenshots go: DCVIX_SCREENSHOTS, else a folder under the test's tmp.
SCREENSHOTS = os.environ.get("DCVIX_SCREENSHOTS", "")


@dataclass
class WebFleet:
    """A director with the web UI, one agent, and the policy that grants it."""

    director: Director
    agent: Agent
    fake: FakeDcv
    folder: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.director.port}"


def start_web_fleet(folder: Path, fleet: Fleet, agent: bool = True) -> WebFleet:
    """Director (admin alice, user bob in pool ``gpu`` = ws-web) and its agent.

    Without ``agent`` only the director starts (the returned agent and fake
    are None then, for tests of the login screen alone).
    """
    script = folder / "check-password"
    script.write_text(
        AUTH_SCRIPT.format(
            admin=ADMIN,
            admin_password=ADMIN_PASSWORD,
            user=USER,
            user_password=USER_PASSWORD,
        )
    )
    script.chmod(0o755)
    policy = folder / "policydb"
    policy.mkdir()
    (policy / "users.json").write_text(
        json.dumps(
            [
                {"id": ADMIN, "admin": True, "pools": ["gpu"]},
                {"id": USER, "workstations": ["ws-web"], "pools": ["gpu"]},
            ]
        )
    )
    (policy / "pools.json").write_text(
        json.dumps([{"id": "gpu", "workstations": ["ws-web"]}])
    )
    director = fleet.director(
        start=False, auth_type="external", policydb_folder=str(policy)
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    director.extra["housekeeper"] = {"max_age": "5s", "housekeeper_frequency": "1s"}
    fleet.start(director)
    if not agent:
        return WebFleet(director, None, None, folder)  # type: ignore[arg-type]
    ((started, fake),) = new_agents(fleet, director, "ws-web")
    return WebFleet(director, started, fake, folder)


@pytest.fixture(scope="module")
def web_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebFleet]:
    """One director and agent for a module's browser tests."""
    folder = tmp_path_factory.mktemp("web")
    fleet = Fleet(folder)
    try:
        yield start_web_fleet(folder, fleet)
    finally:
        fleet.stop_all()


@dataclass
class Trouble:
    """What went wrong in a page: console errors, failed or refused requests."""

    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)

    def watch(self, page: Any) -> None:
        page.on(
            "console",
            lambda message: (
                self.console.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: self.console.append(str(error)))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request: Any) -> None:
        # A request the page itself dropped (it navigated away) is no failure.
        if request.failure != "net::ERR_ABORTED":
            self.requests.append(f"{request.method} {request.url}: {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and response.status not in self.allowed:
            self.requests.append(
                f"{response.request.method} {response.url}: {response.status}"
            )


@dataclass
class Browser:
    """Opens pages in fresh contexts (no cookies shared between them)."""

    chromium: Any
    shots: Path
    troubles: list[Trouble] = field(default_factory=list)

    def page(
        self,
        *,
        dark: bool = False,
        width: int = 1280,
        height: int = 800,
        allowed: tuple[int, ...] = (),
    ) -> Any:
        """A page; 4xx/5xx answers other than ``allowed`` count as trouble.

        A browser logs refused requests on its console ("Failed to load
        resource: ... 401"); those are expected exactly when the status is
        allowed, so they are not counted then.
        """
        context = self.chromium.new_context(
            ignore_https_errors=True,
            accept_downloads=True,
            color_scheme="dark" if dark else "light",
            viewport={"width": width, "height": height},
        )
        page = context.new_page()
        page.set_default_timeout(15_000)
        trouble = Trouble(allowed=set(allowed))
        trouble.watch(page)
        self.troubles.append(trouble)
        return page

    def screenshot(self, page: Any, name: str) -> Path:
        """Save what ``page`` shows as ``<name>.png``."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        """No page had a console error or an unexpected failed request."""
        console = [
            line
            for t in self.troubles
            for line in t.console
            if not (
                t.allowed
                and "Failed to load resource" in line
                and any(f"status of {code}" in line for code in t.allowed)
            )
        ]
        requests = [line for t in self.troubles for line in t.requests]
        assert console == [], console
        assert requests == [], requests


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium (never ``playwright install``), one for the run."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser(chromium: Any, tmp_path: Path) -> Iterator[Browser]:
    """Pages for one test; at its end, none may have had trouble."""
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "screens"
    made = Browser(chromium, shots)
    yield made
    made.assert_clean()
    for trouble in made.troubles:
        del trouble


def log_in(page: Any, url: str, user: str, password: str, admin: bool = False) -> None:
    """Fill the login form and submit it with the keyboard."""
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    if admin:
        page.get_by_label("Administrator").check()
    page.get_by_label("Password", exact=True).press("Enter")


def admin_page(
    browser: Browser,
    fleet: WebFleet,
    screen: str,
    *,
    dark: bool = False,
    width: int = 1280,
    allowed: tuple[int, ...] = (),
) -> Any:
    """A page where the admin is logged in, showing ``screen`` (from the nav)."""
    # The login screen asks /v1/auth-health first: 401 before logging in.
    page = browser.page(dark=dark, width=width, allowed=(401, *allowed))
    log_in(page, fleet.url, ADMIN, ADMIN_PASSWORD, admin=True)
    page.wait_for_url("**/admin/agents")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name=screen.capitalize(), exact=True).click()
    page.wait_for_url(f"**/admin/{screen}")
    return page
