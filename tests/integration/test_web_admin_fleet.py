"""The admin's Servers and Sessions screens in a real Chromium.

One director and agent (``ws-web``, pool ``gpu``, a fake ``dcv``) for the
module: the admin sees the server online with its pool and memory, pushes a
DCV setting (and sees a refused one explained), creates a console session
for bob, filters, sorts and closes it; the auto-refresh choice survives a
reload. Screenshots in light, dark and 360 px wide.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from browser import (
    USER,
    Browser,
    WebFleet,
    admin_page,
)
from playwright.sync_api import Locator, Page, expect

WAIT = 20_000  # ms: the agent reports every second
BOB_SESSION = "web-bob"
BOB_UID = f"{BOB_SESSION}-ws-web"
# Sessions someone else made (virtual, so they leave room for bob's console).
SEEDED = {"dcvix_carol": ("carol", 2), "dcvix_dave": ("dave", 0)}
CAROL, DAVE = "dcvix_carol-ws-web", "dcvix_dave-ws-web"


@pytest.fixture
def seeded(web_fleet: WebFleet) -> Iterator[WebFleet]:
    """The fleet with carol's and dave's sessions on ws-web."""
    for session_id, (owner, connections) in SEEDED.items():
        if session_id not in web_fleet.fake.session_ids():
            web_fleet.fake.add_session(
                session_id, owner, "virtual", connections=connections
            )
    yield web_fleet


def row(page: Page, key: str) -> Locator:
    """The table row of a server (its hostname) or a session (its uid)."""
    return page.locator(f'table.data tbody tr[data-key="{key}"]')


def rows(page: Page) -> Locator:
    """Every row with data (not the "No sessions." line)."""
    return page.locator("table.data tbody tr[data-key]")


def row_keys(page: Page) -> list[str]:
    """The keys of the rows shown, top to bottom."""
    keys: list[str] = rows(page).evaluate_all("rows => rows.map(r => r.dataset.key)")
    return keys


def cell(server: Locator, column: str) -> Locator:
    """A row's cell, by its column's label."""
    return server.locator(f'td[data-label="{column}"]')


def fits(page: Page) -> bool:
    """Nothing wider than the viewport (no sideways scrolling of the page)."""
    fitting: bool = page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    return fitting


# ------------------------------------------------------------ servers


def test_servers_show_ws_web_online_with_its_pool_and_memory(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = admin_page(browser, web_fleet, "servers")
    server = row(page, "ws-web")
    state = cell(server, "State").locator(".badge")
    expect(state).to_have_text("online", timeout=WAIT)
    expect(state).to_have_class("badge ok")
    expect(cell(server, "Pools").locator(".chip")).to_have_text(["gpu"])
    expect(cell(server, "Agent")).to_have_text("registered")
    # Memory: used (total - free) over total, as a bar rounded to 10 % and text.
    memory = cell(server, "Memory used")
    expect(memory.locator(".bar")).to_have_class(re.compile(r"^bar w(\d0|0|100)$"))
    expect(memory).to_have_text(re.compile(r"\d.* [KMGT]iB / .* [KMGT]iB \(\d+ %\)"))
    expect(cell(server, "CPU")).to_have_text(re.compile(r"^\d+\.\d\d %$"))
    expect(cell(server, "Load (1/5/15)")).to_have_text(
        re.compile(r"^\d+\.\d\d / \d+\.\d\d / \d+\.\d\d$")
    )
    expect(cell(server, "Tags").locator(".chip").first).to_be_visible()
    expect(cell(server, "Last report")).not_to_have_text("—")
    push = server.get_by_role("button", name="Push a DCV setting to ws-web")
    expect(push).to_be_enabled()
    browser.screenshot(page, "admin-servers")


def test_a_dcv_error_shows_as_a_warning_until_dcv_works_again(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = admin_page(browser, web_fleet, "servers")
    server = row(page, "ws-web")
    expect(cell(server, "State").locator(".badge")).to_have_text("online", timeout=WAIT)
    # Refresh every 5 s (this page only: the choice is in its own storage).
    page.get_by_label("Auto-refresh").select_option("5")
    web_fleet.fake.hook("list-sessions", exit=1, stderr="no DCV server is running")
    try:
        warning = cell(server, "State").locator(".dcv-error")
        expect(warning).to_contain_text("DCV error: ", timeout=WAIT)
        expect(warning).to_contain_text("no DCV server is running")
        expect(page.locator(".notice.warning")).to_contain_text("DCV fails on ws-web")
        browser.screenshot(page, "admin-servers-dcv-error")
    finally:
        web_fleet.fake.control()
    expect(cell(server, "State").locator(".dcv-error")).to_have_count(0, timeout=WAIT)
    expect(page.locator(".notice.warning")).to_have_count(0, timeout=WAIT)


def test_push_a_setting_and_see_a_refused_one_explained(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = admin_page(browser, web_fleet, "servers", allowed=(403,))
    server = row(page, "ws-web")
    push = server.get_by_role("button", name="Push a DCV setting to ws-web")
    expect(push).to_be_enabled(timeout=WAIT)

    push.click()
    dialog = page.get_by_role("dialog", name="Push a DCV setting to ws-web")
    expect(dialog.get_by_label("Section")).to_have_value("display")
    expect(dialog.get_by_label("Key")).to_have_value("quality")
    dialog.get_by_label("Value").fill("80")
    dialog.get_by_role("button", name="Push").click()
    page.get_by_text("display/quality = 80 is set on ws-web.").wait_for(timeout=WAIT)
    assert web_fleet.fake.state()["config"] == {"display": {"quality": "80"}}

    push.click()
    dialog = page.get_by_role("dialog", name="Push a DCV setting to ws-web")
    dialog.get_by_label("Key").fill("framerate")
    dialog.get_by_label("Value").fill("60")
    dialog.get_by_role("button", name="Push").click()
    refused = page.get_by_role("alert").filter(has_text="display/framerate")
    expect(refused).to_contain_text(
        "display/framerate was not set on ws-web. Refused: "
        "display/framerate is not an allowed setting.",
        timeout=WAIT,
    )
    expect(refused).to_contain_text("config_allow")
    assert web_fleet.fake.state()["config"] == {"display": {"quality": "80"}}

    # Cancel sends nothing.
    push.click()
    dialog = page.get_by_role("dialog", name="Push a DCV setting to ws-web")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)


# ------------------------------------------------------------ sessions


def test_create_filter_sort_and_close_a_session(
    seeded: WebFleet, browser: Browser
) -> None:
    fake = seeded.fake
    page = admin_page(browser, seeded, "sessions")
    expect(row(page, CAROL)).to_contain_text("carol", timeout=WAIT)
    expect(row(page, DAVE)).to_contain_text("dave", timeout=WAIT)

    # Create: user, an online server, console, a chosen id.
    page.get_by_role("button", name="Create session").click()
    dialog = page.get_by_role("dialog", name="Create a session")
    dialog.get_by_label("User ID").fill(USER)
    server = dialog.get_by_label("Server")
    expect(server.locator("option")).to_have_text(["ws-web"])
    server.select_option("ws-web")
    dialog.get_by_label("Session type").select_option("console")
    dialog.get_by_label("Session ID (optional)").fill(BOB_SESSION)
    dialog.get_by_role("button", name="Create").click()
    page.get_by_text(
        f"Session {BOB_SESSION} for {USER} is starting on ws-web."
    ).wait_for()
    bob = row(page, BOB_UID)
    # Shown at once (the director lists it "creating" before the agent reports).
    expect(cell(bob, "Owner")).to_have_text(USER, timeout=WAIT)
    expect(cell(bob, "Server")).to_have_text("ws-web")
    expect(cell(bob, "Type")).to_have_text("console")
    assert BOB_SESSION in fake.session_ids()
    expect(rows(page)).to_have_count(3)

    # Default sort: owner ascending.
    assert row_keys(page) == [BOB_UID, CAROL, DAVE]

    # Filters: owner, server, minimum connections, clear.
    page.get_by_label("Owner contains").fill("BO")
    expect(rows(page)).to_have_count(1)
    assert row_keys(page) == [BOB_UID]
    page.get_by_label("Owner contains").fill("")
    page.get_by_label("Server contains").fill("nosuch")
    expect(page.get_by_text("No sessions.")).to_be_visible()
    page.get_by_label("Server contains").fill("WS-")
    expect(rows(page)).to_have_count(3)
    page.get_by_label("Min. connections").fill("1")
    expect(rows(page)).to_have_count(1)
    assert row_keys(page) == [CAROL]
    page.get_by_role("button", name="Clear filters").click()
    expect(rows(page)).to_have_count(3)
    expect(page.get_by_label("Min. connections")).to_have_value("")

    # Sort by any column: owner descending, then connections.
    owner = page.get_by_role("columnheader", name="Owner", exact=True)
    owner.get_by_role("button").click()
    expect(owner).to_have_attribute("aria-sort", "descending")
    assert row_keys(page) == [DAVE, CAROL, BOB_UID]
    connections = page.get_by_role("columnheader", name="Connections", exact=True)
    connections.get_by_role("button").click()
    connections.get_by_role("button").click()
    expect(connections).to_have_attribute("aria-sort", "descending")
    assert row_keys(page)[0] == CAROL
    page.get_by_role("columnheader", name="ID", exact=True).get_by_role(
        "button"
    ).click()
    assert row_keys(page) == [CAROL, DAVE, BOB_UID]
    # A refresh keeps the sort.
    page.get_by_role("button", name="Refresh", exact=True).click()
    expect(page.get_by_role("columnheader", name="ID", exact=True)).to_have_attribute(
        "aria-sort", "ascending"
    )
    assert row_keys(page) == [CAROL, DAVE, BOB_UID]

    # Close, after a confirmation naming the session, server and owner.
    bob.get_by_role("button", name=f"Close session {BOB_SESSION} on ws-web").click()
    confirm = page.get_by_role("dialog", name="Close this session?")
    details = confirm.locator("dl.details")
    expect(details).to_contain_text(BOB_SESSION)
    expect(details).to_contain_text("ws-web")
    expect(details).to_contain_text(USER)
    # Cancel keeps it.
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_have_count(0)
    assert BOB_SESSION in fake.session_ids()
    bob.get_by_role("button", name=f"Close session {BOB_SESSION} on ws-web").click()
    confirm.get_by_role("button", name="Close session").click()
    page.get_by_text(f"Session {BOB_SESSION} of {USER} on ws-web is closed.").wait_for()
    expect(bob).to_have_count(0, timeout=WAIT)
    assert BOB_SESSION not in fake.session_ids()
    expect(rows(page)).to_have_count(2)


def test_creating_on_a_busy_console_shows_the_reason(
    seeded: WebFleet, browser: Browser
) -> None:
    # Erin holds the console (made outside dcvix): the director, which sees it
    # in the agent's report, refuses bob's (409), the UI says why; then the
    # admin closes erin's session from the table.
    seeded.fake.add_session("dcvix_console", "erin", "console")
    erin = "dcvix_console-ws-web"
    page = admin_page(browser, seeded, "sessions", allowed=(409,))
    expect(row(page, erin)).to_be_visible(timeout=WAIT)
    page.get_by_role("button", name="Create session").click()
    dialog = page.get_by_role("dialog", name="Create a session")
    dialog.get_by_label("User ID").fill(USER)
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("alert")).to_contain_text(
        f"No session was created for {USER} on ws-web: ", timeout=WAIT
    )
    expect(page.get_by_role("alert")).to_contain_text(
        "the console of ws-web is someone else's"
    )
    assert seeded.fake.session_ids().count("dcvix_console") == 1
    assert len(seeded.fake.session_ids()) == 1 + len(SEEDED)

    row(page, erin).get_by_role("button", name="Close").click()
    page.get_by_role("dialog", name="Close this session?").get_by_role(
        "button", name="Close session"
    ).click()
    expect(row(page, erin)).to_have_count(0, timeout=WAIT)
    assert "dcvix_console" not in seeded.fake.session_ids()


def test_the_auto_refresh_choice_survives_a_reload(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = admin_page(browser, web_fleet, "sessions")
    choice = page.get_by_label("Auto-refresh")
    expect(choice).to_have_value("10")
    choice.select_option("30")
    page.reload()
    expect(page.get_by_label("Auto-refresh")).to_have_value("30")
    # The same choice holds on the Servers screen.
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Servers", exact=True).click()
    page.wait_for_url("**/admin/servers")
    expect(page.get_by_label("Auto-refresh")).to_have_value("30")
    page.get_by_label("Auto-refresh").select_option("0")
    page.reload()
    expect(page.get_by_label("Auto-refresh")).to_have_value("0")


# ------------------------------------------------------------ screenshots


@pytest.mark.parametrize(
    ("suffix", "dark", "width"),
    [("", False, 1280), ("-dark", True, 1280), ("-360", False, 360)],
)
def test_screenshots(
    seeded: WebFleet, browser: Browser, suffix: str, dark: bool, width: int
) -> None:
    page = admin_page(browser, seeded, "sessions", dark=dark, width=width)
    expect(rows(page)).to_have_count(2, timeout=WAIT)
    assert fits(page)
    browser.screenshot(page, f"admin-sessions{suffix}")
    page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Servers", exact=True
    ).click()
    expect(cell(row(page, "ws-web"), "State").locator(".badge")).to_have_text(
        "online", timeout=WAIT
    )
    assert fits(page)
    browser.screenshot(page, f"admin-servers{suffix}")
