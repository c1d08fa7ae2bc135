"""The login screen in a real Chromium: messages, keyboard, lockout, expiry."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest
from browser import (
    ADMIN,
    ADMIN_PASSWORD,
    USER,
    USER_PASSWORD,
    Browser,
    WebFleet,
    log_in,
    start_web_fleet,
)

from fleet import Fleet

WRONG = "Wrong user name, password or one-time password."


def test_wrong_password_then_lockout_with_the_time_to_wait(
    browser: Browser, tmp_path: Path
) -> None:
    # A fleet of its own: the lockout holds for the whole address.
    fleet = Fleet(tmp_path)
    try:
        own = start_web_fleet(tmp_path, fleet, agent=False)
        page = browser.page(allowed=(401, 429))
        for attempt in range(5):
            log_in(page, own.url, "mallory", f"wrong-{attempt}")
            page.get_by_text(WRONG).wait_for()
            page.get_by_label("Password", exact=True).fill("")
        log_in(page, own.url, "mallory", "wrong")
        page.get_by_text("Too many failed logins. Try again in 5 minutes.").wait_for()
        browser.screenshot(page, "login-locked")
    finally:
        fleet.stop_all()


def test_keyboard_only_login_lands_a_user_in_the_portal(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    page.goto(f"{web_fleet.url}/")
    page.wait_for_url("**/login")
    browser.screenshot(page, "login")
    # The user field has the focus; type, tab, type, Enter.
    page.keyboard.type(USER)
    page.keyboard.press("Tab")
    page.keyboard.type(USER_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal")
    assert page.locator("#who").inner_text() == USER


def test_an_admin_login_opens_the_admin_area_and_logs_out(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    log_in(page, web_fleet.url, ADMIN, ADMIN_PASSWORD, admin=True)
    page.wait_for_url("**/admin/agents")
    assert page.locator("#who").inner_text() == f"{ADMIN} (admin)"
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    page.get_by_text("You are logged out.").wait_for()


def test_a_user_never_reaches_an_admin_screen(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    log_in(page, web_fleet.url, USER, USER_PASSWORD)
    page.wait_for_url("**/portal")
    page.goto(f"{web_fleet.url}/admin/agents")
    page.wait_for_url("**/portal")
    page.get_by_text("That page is for administrators").wait_for()
    assert page.get_by_role("link", name="Agents").count() == 0


def test_an_expired_login_returns_to_the_login_screen_once(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    log_in(page, web_fleet.url, USER, USER_PASSWORD)
    page.wait_for_url("**/portal")
    page.context.clear_cookies()
    page.reload()
    page.wait_for_url("**/login")
    # No loop: the login screen stays.
    page.get_by_label("User name").wait_for()
    assert page.url.endswith("/login")


@pytest.mark.parametrize(
    "path",
    ["/", "/admin/agents", "/assets/js/app.js", "/v1/health", "/v1/nope"],
)
def test_every_answer_carries_a_strict_policy(web_fleet: WebFleet, path: str) -> None:
    """The page, an asset, the API and an error: the same security headers."""
    context = ssl.create_default_context(cafile=str(web_fleet.director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", web_fleet.director.port, context=context, timeout=30
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        headers = response.headers
    finally:
        connection.close()
    policy = dict(
        (*part.split(" ", 1), "")[:2]
        for part in headers["Content-Security-Policy"].split("; ")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Strict-Transport-Security"]
