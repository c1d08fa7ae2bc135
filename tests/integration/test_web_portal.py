"""The user portal in a real Chromium: sessions, connecting, refusals.

``bob`` starts a console session in the pool ``gpu``, downloads its ``.dcv``
file (the token in it passes the DCV verifier), opens the web client in a
new tab and closes the session. ``alice``, an admin who is also a user,
takes the only console to show the 409 and 503 messages; a fleet of its own
stops its agent and changes the policy for the offline, unknown-server and
forbidden messages.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import pwd
import re
import signal
import ssl
import urllib.parse
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
    log_in,
    start_web_fleet,
)

from fleet import Director, Fleet, wait_for

# Skips the module as the chromium fixture would, where Playwright is missing.
expect = pytest.importorskip("playwright.sync_api").expect

SLOW = 30_000  # ms: an agent's report, a session made by the fake dcv
WEB_CLIENT = "https://ws-web:8443/**"


# ---------------------------------------------------------------- helpers


def portal(page: Any, fleet: WebFleet, user: str, password: str) -> None:
    """Log ``user`` in and wait for the portal, ws-web online in it."""
    log_in(page, fleet.url, user, password)
    page.wait_for_url("**/portal")
    expect(station(page, "ws-web")).to_contain_text("Online", timeout=SLOW)


def station(page: Any, name: str) -> Any:
    region = page.get_by_role("region", name="Workstations")
    return region.get_by_role("listitem").filter(
        has=page.get_by_role("heading", name=name, exact=True)
    )


def pool(page: Any, name: str) -> Any:
    region = page.get_by_role("region", name="Pools")
    return region.get_by_role("listitem").filter(
        has=page.get_by_role("heading", name=f"Pool {name}", exact=True)
    )


def sessions(page: Any) -> Any:
    return page.get_by_role("region", name="My sessions").get_by_role("listitem")


def start(card: Any, kind: str) -> None:
    card.get_by_label("Session type").select_option(kind)
    card.get_by_role("button", name="Start or resume").click()


def close(page: Any, card: Any, session: str) -> None:
    """Close a session through its button and the confirmation."""
    card.get_by_role("button", name="Close session").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Close session {session} on ws-web?")
    dialog.get_by_role("button", name="Close session").click()
    expect(page.locator(f'li[data-session="{session}"]')).to_have_count(0, timeout=SLOW)


def fake_sessions(fleet: WebFleet) -> list[tuple[str, str, str]]:
    return [(s["id"], s["owner"], s["type"]) for s in fleet.fake.state()["sessions"]]


def verify(director: Director, session: str, token: str) -> bytes:
    """The DCV server's question to the director about a viewer's token."""
    form = urllib.parse.urlencode(
        {
            "sessionId": session,
            "authenticationToken": token,
            "clientAddress": "192.0.2.10",
        }
    ).encode()
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=30
    )
    try:
        connection.request(
            "POST",
            "/v1/user/authtokenverify",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def accepted(director: Director, session: str, token: str) -> None:
    assert verify(director, session, token) == (
        f'<auth result="yes"><username>{USER}</username></auth>'.encode()
    )


def local_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def fits(page: Any) -> bool:
    """Nothing sticks out sideways (a 360 px phone scrolls only down)."""
    root = "document.documentElement"
    return bool(page.evaluate(f"{root}.scrollWidth <= {root}.clientWidth"))


# ---------------------------------------------------------------- tests


def test_a_pool_session_downloaded_opened_in_the_browser_and_closed(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    portal(page, web_fleet, USER, USER_PASSWORD)
    gpu = pool(page, "gpu")
    expect(gpu).to_contain_text("1 of 1 online", timeout=SLOW)
    expect(station(page, "ws-web")).to_contain_text("free of")
    expect(page.get_by_text("You have no sessions.")).to_be_visible()
    browser.screenshot(page, "portal-empty")

    # A console session in the pool, by keyboard: the type, Tab, Enter.
    gpu.get_by_label("Session type").select_option("console")
    gpu.get_by_label("Session type").focus()
    page.keyboard.press("Tab")
    expect(gpu.get_by_role("button", name="Start or resume")).to_be_focused()
    page.keyboard.press("Enter")
    expect(sessions(page)).to_have_count(1, timeout=SLOW)
    card = sessions(page).first
    session = card.get_attribute("data-session")
    assert session is not None and session.startswith("dcvix_")
    expect(card).to_contain_text("Console session on ws-web")
    # The new session's first action has the focus, ready for Enter.
    expect(card.get_by_role("button", name="Open in browser")).to_be_focused()
    assert fake_sessions(web_fleet) == [(session, USER, "console")]
    expect(gpu).to_contain_text("1 on ws-web", timeout=SLOW)
    expect(station(page, "ws-web")).to_contain_text("1 yours", timeout=SLOW)
    browser.screenshot(page, "portal")

    # The .dcv file: its fields, and a token the DCV verifier accepts.
    with page.expect_download() as downloading:
        card.get_by_role("link", name="Download .dcv").click()
    download = downloading.value
    assert download.failure() is None
    assert download.suggested_filename == f"{session}.dcv"
    dcv = configparser.ConfigParser(interpolation=None)
    dcv.read_string(Path(download.path()).read_text())
    connect = dcv["connect"]
    assert dcv["version"]["format"] == "1.0"
    assert (connect["host"], connect["port"]) == ("ws-web", "8443")
    assert (connect["sessionid"], connect["user"]) == (session, USER)
    assert connect["authtoken"].startswith("v4.local.")
    accepted(web_fleet.director, session, connect["authtoken"])

    # The web client: a new tab at the DCV server, token and session in it.
    # ws-web does not resolve here; the tab gets a stand-in page.
    context = page.context
    context.route(
        WEB_CLIENT,
        lambda route: route.fulfill(
            status=200, body="DCV web client", content_type="text/plain"
        ),
    )
    with context.expect_page() as opening:
        card.get_by_role("button", name="Open in browser").click()
    tab = opening.value
    tab.wait_for_url(WEB_CLIENT)
    found = re.fullmatch(
        r"https://ws-web:8443/\?authToken=(v4\.local\.[A-Za-z0-9_.%-]+)#(.+)",
        tab.url,
    )
    assert found, tab.url
    assert found.group(2) == session
    accepted(web_fleet.director, session, urllib.parse.unquote(found.group(1)))
    expect(tab.get_by_text("DCV web client")).to_be_visible()
    # Nothing of the token stays in the portal: not in its page, its address
    # or its history; the new tab cannot reach back into it.
    assert tab.evaluate("window.opener") is None
    tab.close()
    assert "v4.local" not in page.content()
    assert page.url == f"{web_fleet.url}/portal"

    # Closing asks first, naming the session and the server.
    card.get_by_role("button", name="Close session").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(session)
    expect(dialog).to_contain_text("ws-web")
    browser.screenshot(page, "portal-close")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert fake_sessions(web_fleet) == [(session, USER, "console")]
    close(page, card, session)
    expect(page.get_by_text(f"Session {session} on ws-web is closed.")).to_be_visible()
    expect(page.get_by_text("You have no sessions.")).to_be_visible()
    wait_for("the session gone from dcv", lambda: fake_sessions(web_fleet) == [])


def test_a_workstation_session_resumed_in_dark_and_narrow_screens(
    web_fleet: WebFleet, browser: Browser
) -> None:
    page = browser.page(allowed=(401,))
    portal(page, web_fleet, USER, USER_PASSWORD)
    ws_web = station(page, "ws-web")
    start(ws_web, "console")
    expect(sessions(page)).to_have_count(1, timeout=SLOW)
    session = sessions(page).first.get_attribute("data-session")
    assert session is not None
    expect(sessions(page).first).to_contain_text("Console session on ws-web")
    expect(page.get_by_text("is ready")).to_be_visible()
    # Asking again resumes the session rather than making another.
    start(ws_web, "console")
    expect(page.get_by_text("is still running")).to_be_visible(timeout=SLOW)
    expect(sessions(page)).to_have_count(1)
    assert fake_sessions(web_fleet) == [(session, USER, "console")]

    dark = browser.page(dark=True, allowed=(401,))
    portal(dark, web_fleet, USER, USER_PASSWORD)
    expect(sessions(dark)).to_have_count(1)
    browser.screenshot(dark, "portal-dark")

    for dark_mode, name in ((False, "portal-narrow"), (True, "portal-narrow-dark")):
        narrow = browser.page(dark=dark_mode, width=360, height=780, allowed=(401,))
        portal(narrow, web_fleet, USER, USER_PASSWORD)
        expect(sessions(narrow)).to_have_count(1)
        assert fits(narrow)
        # Every action is on screen and reachable at this width.
        card = sessions(narrow).first
        for action in ("Open in browser", "Close session"):
            expect(card.get_by_role("button", name=action)).to_be_visible()
        expect(card.get_by_role("link", name="Download .dcv")).to_be_visible()
        browser.screenshot(narrow, name)

    close(page, sessions(page).first, session)
    wait_for("the session gone from dcv", lambda: fake_sessions(web_fleet) == [])


def test_a_console_in_use_is_explained_and_an_admin_uses_the_portal(
    web_fleet: WebFleet, browser: Browser
) -> None:
    # alice is an admin and, in the policy, a user of pool gpu: her admin
    # login serves the portal too.
    admin = browser.page(allowed=(401,))
    log_in(admin, web_fleet.url, ADMIN, ADMIN_PASSWORD, admin=True)
    admin.wait_for_url("**/admin/agents")
    admin.get_by_role("link", name="My desktops").click()
    admin.wait_for_url("**/portal")
    expect(pool(admin, "gpu")).to_contain_text("1 of 1 online", timeout=SLOW)
    start(pool(admin, "gpu"), "console")
    expect(sessions(admin)).to_have_count(1, timeout=SLOW)
    taken = sessions(admin).first.get_attribute("data-session")
    assert taken is not None
    assert fake_sessions(web_fleet) == [(taken, ADMIN, "console")]

    page = browser.page(allowed=(400, 401, 409, 503))
    portal(page, web_fleet, USER, USER_PASSWORD)
    ws_web = station(page, "ws-web")
    start(ws_web, "console")
    expect(ws_web.get_by_role("alert")).to_have_text(
        "The console of ws-web is in use by someone else. "
        "Start a virtual session, or try another workstation.",
        timeout=SLOW,
    )
    gpu = pool(page, "gpu")
    start(gpu, "console")
    expect(gpu.get_by_role("alert")).to_have_text(
        "Every console in pool gpu is in use. "
        "Start a virtual session, or try again later.",
        timeout=SLOW,
    )
    browser.screenshot(page, "portal-console-in-use")
    # bob sees only his own sessions, alice only hers.
    expect(sessions(page)).to_have_count(0)
    expect(page.get_by_text("You have no sessions.")).to_be_visible()
    # A virtual session runs as a local account, which bob has not here: the
    # agent's refusal is passed on.
    if not local_account(USER):
        start(gpu, "virtual")
        expect(gpu.get_by_role("alert")).to_have_text(
            "The virtual session could not be started: "
            f"the agent refused: {USER} is not a local user.",
            timeout=SLOW,
        )
    close(admin, sessions(admin).first, taken)
    wait_for("the sessions gone from dcv", lambda: fake_sessions(web_fleet) == [])


def write_users(fleet: WebFleet, users: list[dict[str, Any]]) -> None:
    """A new ``users.json``, then SIGHUP, and wait for the reload."""
    path = fleet.folder / "policydb" / "users.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(users))
    temporary.replace(path)
    mark = fleet.director.mark()
    os.kill(fleet.director.pid, signal.SIGHUP)
    fleet.director.wait_log(f"policy: {len(users)} users", since=mark)


def test_unknown_offline_and_forbidden_servers_are_explained(
    browser: Browser, tmp_path: Path
) -> None:
    # A fleet of its own: its agent stops and its policy changes.
    fleet = Fleet(tmp_path)
    try:
        own = start_web_fleet(tmp_path, fleet)
        admin = {"id": ADMIN, "admin": True}
        write_users(
            own,
            [
                admin,
                {
                    "id": USER,
                    "workstations": ["ws-web", "ALLOW_CUSTOM"],
                    "pools": ["gpu"],
                },
            ],
        )
        page = browser.page(allowed=(401, 403, 404, 409, 503))
        portal(page, own, USER, USER_PASSWORD)

        # ALLOW_CUSTOM: a box for any registered server's name.
        other = page.get_by_role("listitem").filter(
            has=page.get_by_role("heading", name="Other server")
        )
        other.get_by_label("Server name").fill("nowhere")
        other.get_by_label("Server name").press("Enter")
        expect(other.get_by_role("alert")).to_have_text(
            "There is no server called nowhere. Check the name.", timeout=SLOW
        )

        # The agent stops: ws-web goes offline, the pool has nobody online.
        page.get_by_label("Auto-refresh").select_option("5")
        own.agent.stop()
        ws_web = station(page, "ws-web")
        expect(ws_web).to_contain_text("Offline", timeout=SLOW)
        gpu = pool(page, "gpu")
        expect(gpu).to_contain_text("0 of 1 online", timeout=SLOW)
        page.get_by_label("Auto-refresh").select_option("0")
        start(gpu, "console")
        expect(gpu.get_by_role("alert")).to_have_text(
            "No workstation of pool gpu is online right now. Try again later.",
            timeout=SLOW,
        )
        start(ws_web, "virtual")
        expect(ws_web.get_by_role("alert")).to_have_text(
            "ws-web is offline. Try again when it is back online.", timeout=SLOW
        )
        browser.screenshot(page, "portal-offline")

        # The policy no longer grants anything: the page, not refreshed yet,
        # still offers ws-web, and the director refuses it.
        write_users(own, [admin, {"id": USER}])
        start(ws_web, "console")
        expect(ws_web.get_by_role("alert")).to_have_text(
            "You are not allowed to use ws-web. Ask your administrator for access.",
            timeout=SLOW,
        )
        page.get_by_role("button", name="Refresh", exact=True).click()
        expect(
            page.get_by_text("No workstation or pool is granted to you yet.")
        ).to_be_visible(timeout=SLOW)
        expect(page.get_by_role("region", name="Workstations")).to_be_hidden()
        expect(page.get_by_role("region", name="Pools")).to_be_hidden()
    finally:
        fleet.stop_all()
