"""The admin's Audit screen in a real Chromium, on a director of its own.

The module's fleet starts with two audit lines (its agent ``ws-web``
registered, pending, and was approved by ``dcvixctl``); the first test adds a
failed admin login, a failed user login and the admin's own login, and the
screen must show exactly those five lines, newest first, with actor, action,
target, address and outcome. Filters (actor by any part in any case, action
exactly) change the table and the address bar; Back brings a filtered view
back; Export CSV carries the filters and downloads CSV with the page's own
cookie; a bad filter is explained; "Load more" pages through more than one
page (50 lines); no password shows anywhere. Screenshots in light, dark and
360 px wide (``admin-audit.png`` is the README's).
"""

from __future__ import annotations

import csv
import getpass
import io
import re
from pathlib import Path
from typing import Any

import pytest
from browser import (
    ADMIN,
    ADMIN_PASSWORD,
    USER,
    USER_PASSWORD,
    Browser,
    WebFleet,
    admin_page,
)
from director_calls import call
from playwright.sync_api import Locator, Page, expect

WRONG = "Wrong-secret-17"
INTRUDER = "mallory"
CSV_HEADER = ["id", "time", "actor", "action", "target", "address", "outcome", "detail"]
PAGE_SIZE = 50  # the screen's page, without ?limit= in the address


def audit_page(
    browser: Browser,
    fleet: WebFleet,
    *,
    dark: bool = False,
    width: int = 1280,
    allowed: tuple[int, ...] = (),
) -> Page:
    """A page where alice is logged in as an admin, on the Audit screen."""
    page: Page = admin_page(
        browser, fleet, "audit", dark=dark, width=width, allowed=allowed
    )
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Audit", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    return page


def rows(page: Page) -> Locator:
    """Every row with data (not the empty-state line)."""
    return page.locator("table.data tbody tr[data-key]")


def column(page: Page, label: str) -> Locator:
    """The cells of one column, top to bottom."""
    return page.locator(f'table.data tbody td[data-label="{label}"]')


def row_keys(page: Page) -> list[int]:
    """The audit line ids of the rows shown, top to bottom."""
    keys: list[str] = rows(page).evaluate_all("rows => rows.map(r => r.dataset.key)")
    return [int(key) for key in keys]


def trail(page: Page, fleet: WebFleet, **params: str) -> list[dict[str, Any]]:
    """The director's own answer, with the page's cookie."""
    query: dict[str, str | float | bool] = dict(params)
    answer = page.request.get(f"{fleet.url}/v1/admin/audit", params=query)
    assert answer.ok, answer.text()
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def show(page: Page, *, actor: str | None = None, action: str | None = None) -> None:
    """Type filters and submit them with the keyboard."""
    if actor is not None:
        page.get_by_label("Actor contains").fill(actor)
    if action is not None:
        page.get_by_label("Action", exact=True).fill(action)
    page.get_by_label("Actor contains").press("Enter")


def fits(page: Page) -> bool:
    """Nothing wider than the viewport (no sideways scrolling of the page)."""
    fitting: bool = page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    return fitting


def no_secret(text: str) -> None:
    for secret in (ADMIN_PASSWORD, USER_PASSWORD, WRONG):
        assert secret not in text


@pytest.fixture(scope="module")
def failed_logins(web_fleet: WebFleet) -> WebFleet:
    """Alice's admin login with a wrong password, then mallory's user login.

    Once for the module: five failures from one address lock it out.
    """
    failed = {"userID": ADMIN, "password": WRONG}
    assert call(web_fleet.director, "POST", "/v1/admin/login", failed).status == 401
    intruder = {"userID": INTRUDER, "password": WRONG}
    assert call(web_fleet.director, "POST", "/v1/user/login", intruder).status == 401
    return web_fleet


def test_the_trail_shows_each_action_and_filters_it(
    failed_logins: WebFleet, browser: Browser, tmp_path: Path
) -> None:
    web_fleet = failed_logins
    guid = web_fleet.agent.guid
    page = audit_page(browser, web_fleet)

    # Exactly the module's five lines, newest first.
    me = f"os:{getpass.getuser()}"
    expect(rows(page)).to_have_count(5)
    expect(column(page, "Action")).to_have_text(
        ["admin login", "login failed", "admin login failed", "approve", "register"]
    )
    expect(column(page, "Actor")).to_have_text(
        [ADMIN, INTRUDER, ADMIN, me, "address 127.0.0.1"]
    )
    expect(column(page, "Target")).to_have_text(["—", "—", "—", guid, guid])
    expect(column(page, "From")).to_have_text(
        ["127.0.0.1", "127.0.0.1", "127.0.0.1", "—", "127.0.0.1"]
    )
    outcomes = column(page, "Outcome").locator(".badge")
    expect(outcomes).to_have_text(["ok", "failed", "failed", "ok", "ok"])
    expect(outcomes).to_have_class(
        ["badge ok", "badge bad", "badge bad", "badge ok", "badge ok"]
    )
    expect(column(page, "Detail").nth(1)).to_have_text(
        "backend=external result=rejected"
    )
    # The same lines as the API's, each time in UTC in its title.
    entries = trail(page, web_fleet)
    assert row_keys(page) == [entry["id"] for entry in entries]
    times = column(page, "Time").locator("time")
    expect(times).to_have_count(5)
    for index, entry in enumerate(entries):
        expect(times.nth(index)).to_have_attribute("datetime", entry["time"])
        expect(times.nth(index)).to_have_attribute("title", f"{entry['time']} (UTC)")
        expect(times.nth(index)).not_to_have_text(entry["time"])
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    expect(page.get_by_role("status").filter(has_text="lines shown")).to_contain_text(
        "5 lines shown"
    )

    # Actor: any part, any case; the address bar and the export follow.
    show(page, actor="ALI")
    expect(column(page, "Action")).to_have_text(["admin login", "admin login failed"])
    expect(page).to_have_url(re.compile(r"/admin/audit\?actor=ALI$"))
    export = page.get_by_role("link", name="Export CSV")
    expect(export).to_have_attribute("href", "/v1/admin/audit?actor=ALI&format=csv")

    # Action: exactly.
    show(page, action="admin login failed")
    expect(rows(page)).to_have_count(1)
    expect(column(page, "Actor")).to_have_text([ADMIN])
    expect(page).to_have_url(
        re.compile(r"/admin/audit\?actor=ALI&action=admin\+login\+failed$")
    )
    href = "/v1/admin/audit?actor=ALI&action=admin+login+failed&format=csv"
    expect(export).to_have_attribute("href", href)
    expect(export).to_have_attribute("download", "dcvix-audit.csv")

    # The link downloads the filtered lines as CSV, with the browser's cookie.
    with page.expect_download() as started:
        export.click()
    download = started.value
    assert download.suggested_filename == "dcvix-audit.csv"
    saved = tmp_path / "audit.csv"
    download.save_as(saved)
    lines = list(csv.reader(io.StringIO(saved.read_text(), newline="")))
    assert lines[0] == CSV_HEADER
    assert [line[2:7] for line in lines[1:]] == [
        [ADMIN, "admin login failed", "", "127.0.0.1", "failed"]
    ]
    fetched = page.request.get(f"{web_fleet.url}{href}")
    assert fetched.status == 200
    assert fetched.headers["content-type"] == "text/csv; charset=utf-8"
    assert fetched.headers["content-disposition"].startswith("attachment")
    assert fetched.body() == saved.read_bytes()  # RFC 4180: CRLF
    no_secret(fetched.text())

    # An empty action with another actor; then Back to the screen restores it.
    show(page, actor="mallory", action="")
    expect(column(page, "Action")).to_have_text(["login failed"])
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Agents", exact=True).click()
    page.wait_for_url("**/admin/agents")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/admin/audit\?actor=mallory$"))
    expect(page.get_by_label("Actor contains")).to_have_value("mallory")
    expect(column(page, "Action")).to_have_text(["login failed"])

    # The nav link opens the screen unfiltered; so does Clear filters.
    nav.get_by_role("link", name="Audit", exact=True).click()
    expect(page).to_have_url(re.compile(r"/admin/audit$"))
    expect(page.get_by_label("Actor contains")).to_have_value("")
    expect(rows(page)).to_have_count(5)
    show(page, actor="alice")
    expect(rows(page)).to_have_count(2)
    page.get_by_role("button", name="Clear filters").click()
    expect(rows(page)).to_have_count(5)
    expect(page).to_have_url(re.compile(r"/admin/audit$"))
    expect(export).to_have_attribute("href", "/v1/admin/audit?format=csv")
    no_secret(page.content())


def test_a_bad_filter_is_explained_and_nothing_found_is_said(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = audit_page(browser, web_fleet, allowed=(400,))
    expect(rows(page).first).to_be_visible()
    since = page.get_by_label("Since", exact=True)
    expect(since).to_have_value("")  # All
    custom = page.get_by_label("Since (time or duration)")
    expect(custom).to_be_hidden()
    since.select_option(label="Other…")
    expect(custom).to_be_focused()
    custom.fill("yesterday")
    custom.press("Enter")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(
        "These filters cannot be used: since must be an RFC 3339 time"
    )
    expect(custom).to_have_attribute("aria-invalid", "true")
    expect(page.locator("table.data")).to_be_hidden()
    expect(page).to_have_url(re.compile(r"/admin/audit\?since=yesterday$"))

    # A good one clears the error; nothing found says so.
    since.select_option(label="Last hour")
    expect(custom).to_be_hidden()
    show(page, actor="nobody-at-all")
    expect(page.get_by_text("No audit lines match these filters.")).to_be_visible()
    expect(alert).to_have_count(0)
    expect(custom).not_to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(re.compile(r"/admin/audit\?actor=nobody-at-all&since=1h$"))
    expect(page.get_by_role("link", name="Export CSV")).to_have_attribute(
        "href", "/v1/admin/audit?actor=nobody-at-all&since=1h&format=csv"
    )
    # Until: lines of the last hour up to an hour ago are none either.
    page.get_by_label("Actor contains").fill("")
    page.get_by_label("Until (optional)").fill("1h")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("No audit lines match these filters.")).to_be_visible()
    page.get_by_label("Until (optional)").fill("")
    page.get_by_role("button", name="Show").click()
    expect(rows(page).first).to_be_visible()


@pytest.mark.parametrize(
    ("suffix", "dark", "width"),
    [("", False, 1280), ("-dark", True, 1280), ("-360", False, 360)],
)
def test_screenshots(
    failed_logins: WebFleet, browser: Browser, suffix: str, dark: bool, width: int
) -> None:
    page = audit_page(browser, failed_logins, dark=dark, width=width)
    expect(column(page, "Outcome").locator(".badge.bad").first).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="lines shown")).to_be_visible()
    assert fits(page)
    browser.screenshot(page, f"admin-audit{suffix}")


def test_a_shared_link_opens_the_filtered_trail(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = audit_page(browser, web_fleet)
    assert page.request.get(f"{web_fleet.url}/admin/audit").status == 200
    # A second admin login, so that there are two pages of one line.
    good = {"userID": ADMIN, "password": ADMIN_PASSWORD}
    assert call(web_fleet.director, "POST", "/v1/admin/login", good).status == 200
    page.goto(f"{web_fleet.url}/admin/audit?actor=alice&action=admin+login&limit=1")
    expect(page.get_by_label("Actor contains")).to_have_value("alice")
    expect(page.get_by_label("Action", exact=True)).to_have_value("admin login")
    expect(rows(page)).to_have_count(1)
    more = page.get_by_role("button", name="Load more")
    more.click()
    expect(rows(page)).to_have_count(2)
    expect(column(page, "Action")).to_have_text(["admin login"] * 2)
    # The page size stays in the address bar, never in the export.
    expect(page).to_have_url(
        re.compile(r"/admin/audit\?actor=alice&action=admin\+login&limit=1$")
    )
    expect(page.get_by_role("link", name="Export CSV")).to_have_attribute(
        "href", "/v1/admin/audit?actor=alice&action=admin+login&format=csv"
    )


def test_load_more_pages_through_the_trail(
    web_fleet: WebFleet, browser: Browser
) -> None:
    # More than a page: bob logs in (a line each) through the API.
    for _ in range(PAGE_SIZE + 10):
        good = {"userID": USER, "password": USER_PASSWORD}
        assert call(web_fleet.director, "POST", "/v1/user/login", good).status == 200
    page = audit_page(browser, web_fleet)
    total = len(trail(page, web_fleet, limit="1000"))
    assert PAGE_SIZE < total <= 2 * PAGE_SIZE
    expect(rows(page)).to_have_count(PAGE_SIZE)
    status = page.get_by_role("status").filter(has_text="lines shown")
    expect(status).to_contain_text(f"{PAGE_SIZE} lines shown, more to load")
    first = row_keys(page)

    # By keyboard: the button goes with the last page, the focus to the table.
    more = page.get_by_role("button", name="Load more")
    more.focus()
    more.press("Enter")
    expect(rows(page)).to_have_count(total)
    expect(more).to_be_hidden()
    expect(page.get_by_role("region", name="Audit trail, newest first")).to_be_focused()
    expect(status).to_contain_text(f"{total} lines shown ·")
    keys = row_keys(page)
    assert keys[:PAGE_SIZE] == first
    assert keys == sorted(set(keys), reverse=True)
    assert keys == [entry["id"] for entry in trail(page, web_fleet, limit="1000")]
    expect(column(page, "Action").first).to_have_text("admin login")
    expect(column(page, "Actor").nth(1)).to_have_text(USER)

    # The action filter pages the same way.
    show(page, action="login")
    expect(rows(page)).to_have_count(PAGE_SIZE)
    more.click()
    expect(rows(page)).to_have_count(PAGE_SIZE + 10)
    expect(column(page, "Actor")).to_have_text([USER] * (PAGE_SIZE + 10))
    no_secret(page.content())
