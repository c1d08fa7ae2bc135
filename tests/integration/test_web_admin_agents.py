"""The admin's Agents screen in a real Chromium, against a real director and agents.

The module starts one director (no agent of ``tests/browser.py``'s own) and
its own agents, which stay pending until a test acts on them; each test uses
agents no other test touches, so the tests do not depend on their order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from browser import (
    ADMIN,
    ADMIN_PASSWORD,
    Browser,
    WebFleet,
    log_in,
    start_web_fleet,
)
from playwright.sync_api import Expect

from dcvix.common.pki import certificate_fingerprint, public_key_fingerprint
from dcvix.director.registry.engine import to_db_time
from fleet import Agent, Fleet, private_key_file

TIMEOUT = 20_000  # ms, for every wait on the page
# Assertions of this module wait as long (without changing the shared `expect`).
expect = Expect()
expect.set_options(timeout=TIMEOUT)


@dataclass
class World:
    """The director with the web UI and the agents, by role."""

    web: WebFleet
    agents: dict[str, Agent]

    @property
    def url(self) -> str:
        return self.web.url

    def guid(self, role: str) -> str:
        return self.agents[role].guid


# role → (folder, hostname); every agent starts and stays pending.
AGENTS = {
    "approve": ("ws-approve", "ws-approve"),
    "lifecycle": ("ws-cycle", "ws-cycle"),
    "deny": ("ws-deny", "ws-deny"),
    "dup-first": ("ws-dup-1", "ws-dup"),
    "dup-second": ("ws-dup-2", "ws-dup"),
    "own-host": ("ws-own", socket.gethostname()),
    "claim": ("ws-claim", "ws-claim"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("web-agents")
    fleet = Fleet(folder)
    try:
        web = start_web_fleet(folder, fleet, agent=False)
        agents = {
            role: fleet.agent(web.director, name, hostname=hostname, start=False)
            for role, (name, hostname) in AGENTS.items()
        }
        fleet.start(*agents.values())
        for agent in agents.values():
            agent.wait_log("pending approval")
        yield World(web, agents)
    finally:
        fleet.stop_all()


def admin_page(
    browser: Browser, world: World, allowed: tuple[int, ...] = (), **options: Any
) -> Any:
    """A page where the admin is logged in and the agents are listed.

    401 is expected: the login screen asks ``/v1/auth-health`` first.
    """
    page = browser.page(allowed=(401, *allowed), **options)
    page.set_default_timeout(TIMEOUT)
    log_in(page, world.url, ADMIN, ADMIN_PASSWORD, admin=True)
    page.wait_for_url("**/admin/agents")
    page.locator("table.data tbody tr[data-key]").first.wait_for()
    return page


def row(page: Any, guid: str) -> Any:
    return page.locator(f'table.data tr[data-key="{guid}"]')


def cell(page: Any, guid: str, label: str) -> Any:
    return row(page, guid).locator(f'td[data-label="{label}"]')


def expect_state(page: Any, guid: str, state: str) -> None:
    expect(cell(page, guid, "State")).to_have_text(state)


def act(page: Any, world: World, role: str, action: str, confirm: str = "") -> Any:
    """Click ``action`` in the agent's row; the confirmation names it; confirm."""
    agent = world.agents[role]
    hostname = AGENTS[role][1]
    row(page, agent.guid).get_by_role(
        "button", name=f"{action} {hostname} {agent.guid}", exact=True
    ).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"{hostname} ({agent.guid})")
    dialog.get_by_role("button", name=confirm or action, exact=True).click()
    expect(dialog).to_have_count(0)
    return dialog


def state_in_director(world: World, guid: str) -> str | None:
    record = world.web.director.record(guid)
    return None if record is None else record.state


def count(page: Any, label: str) -> Any:
    return page.locator("fieldset.states label", has_text=label).locator(".count")


def test_approve_a_pending_agent_after_the_confirmation(
    world: World, browser: Browser
) -> None:
    page = admin_page(browser, world)
    agent = world.agents["approve"]
    guid = agent.guid
    expect_state(page, guid, "pending")
    expect(cell(page, guid, "Hostname")).to_have_text("ws-approve")
    expect(cell(page, guid, "GUID")).to_contain_text(guid)
    expect(cell(page, guid, "Address")).to_have_text("127.0.0.1")
    key = public_key_fingerprint(private_key_file(agent.key).public_key())
    shown = cell(page, guid, "Key").locator(".mono")
    expect(shown).to_have_attribute("title", key)
    expect(shown).to_have_text(f"{key[:16]}…")
    expect(cell(page, guid, "Registered")).to_have_text("—")

    # A cancelled confirmation changes nothing.
    row(page, guid).get_by_role("button", name=f"Approve ws-approve {guid}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(guid)
    expect(dialog).to_contain_text(key)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert state_in_director(world, guid) == "pending"

    act(page, world, "approve", "Approve")
    expect_state(page, guid, "registered")
    assert state_in_director(world, guid) == "registered"
    expect(page.locator("#toasts")).to_contain_text(f"ws-approve ({guid}) approved.")
    expect(cell(page, guid, "Registered")).not_to_have_text("—")
    # The focus came back to the row's first action.
    expect(
        row(page, guid).get_by_role("button", name=f"Revoke ws-approve {guid}")
    ).to_be_focused()


def test_counts_per_state_and_the_filter(world: World, browser: Browser) -> None:
    page = admin_page(browser, world)
    director = world.web.director
    listed = {state: len(director.listing(state)) for state in ("pending",)}
    total = len(director.listing())
    expect(count(page, "All")).to_have_text(str(total))
    expect(count(page, "Pending")).to_have_text(str(listed["pending"]))
    for state in ("registered", "revoked", "denied"):
        expect(count(page, state.title())).to_have_text(
            str(len(director.listing(state)))
        )

    # The filter works from the keyboard: arrows move within the radio group.
    page.get_by_label("All").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_label("Pending")).to_be_checked()
    rows = page.locator("table.data tbody tr[data-key]")
    expect(rows).to_have_count(listed["pending"])
    for index in range(rows.count()):
        expect(rows.nth(index).locator('td[data-label="State"]')).to_have_text(
            "pending"
        )
    expect(page.locator("table.data caption")).to_have_text(
        "Agents waiting for approval"
    )
    page.locator("fieldset.states label", has_text="All").click()
    expect(page.get_by_label("All")).to_be_checked()
    expect(rows).to_have_count(total)


def test_revoke_reactivate_revoke_delete(world: World, browser: Browser) -> None:
    director = world.web.director
    guid = world.guid("lifecycle")
    director.ctl("agents", "approve", guid)
    # Stopped: a deleted agent that runs registers again, as a new pending one.
    world.agents["lifecycle"].stop()
    page = admin_page(browser, world)
    expect_state(page, guid, "registered")

    act(page, world, "lifecycle", "Revoke")
    expect_state(page, guid, "revoked")
    assert state_in_director(world, guid) == "revoked"

    act(page, world, "lifecycle", "Reactivate")
    expect_state(page, guid, "registered")
    assert state_in_director(world, guid) == "registered"

    act(page, world, "lifecycle", "Revoke")
    expect_state(page, guid, "revoked")
    act(page, world, "lifecycle", "Delete")
    expect(row(page, guid)).to_have_count(0)
    assert guid not in director.listed()
    expect(page.locator("#toasts")).to_contain_text(f"ws-cycle ({guid}) deleted.")


def test_deny_and_reactivate_with_the_keyboard(world: World, browser: Browser) -> None:
    page = admin_page(browser, world)
    guid = world.guid("deny")
    expect_state(page, guid, "pending")
    deny = row(page, guid).get_by_role("button", name=f"Deny ws-deny {guid}")
    deny.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"ws-deny ({guid})")
    # The dialog opens on Cancel: Tab to the confirmation, Enter.
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Deny", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect_state(page, guid, "denied")
    assert state_in_director(world, guid) == "denied"

    act(page, world, "deny", "Reactivate")
    expect_state(page, guid, "pending")
    assert state_in_director(world, guid) == "pending"


def test_approve_a_duplicate_hostname_explains_and_replaces(
    world: World, browser: Browser
) -> None:
    # Tall enough for the whole screen: the screenshot shows the dialog over it.
    page = admin_page(browser, world, allowed=(409,), height=1100)
    first, second = world.guid("dup-first"), world.guid("dup-second")
    for guid in (first, second):
        expect(cell(page, guid, "Warnings")).to_contain_text("Duplicate hostname")
    act(page, world, "dup-first", "Approve")
    expect_state(page, first, "registered")

    # The second one: 409, explained; cancelling leaves it pending.
    row(page, second).get_by_role("button", name=f"Approve ws-dup {second}").click()
    page.get_by_role("dialog").get_by_role("button", name="Approve", exact=True).click()
    dialog = page.get_by_role("dialog", name="Replace the registered agent?")
    expect(dialog).to_contain_text(f"ws-dup is already registered to ws-dup ({first})")
    expect(dialog).to_contain_text("Replace revokes that agent")
    browser.screenshot(page, "admin-agents-replace")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator(".agent-messages .notice.warning")).to_contain_text(
        f"ws-dup ({second}) is still pending"
    )
    assert state_in_director(world, second) == "pending"

    row(page, second).get_by_role("button", name=f"Approve ws-dup {second}").click()
    page.get_by_role("dialog").get_by_role("button", name="Approve", exact=True).click()
    dialog = page.get_by_role("dialog", name="Replace the registered agent?")
    dialog.get_by_role("button", name="Replace").click()
    expect_state(page, second, "registered")
    expect_state(page, first, "revoked")
    expect(page.locator(".agent-messages")).to_contain_text(
        f"Revoked in its place: ws-dup ({first})."
    )
    assert state_in_director(world, second) == "registered"
    assert state_in_director(world, first) == "revoked"


def test_an_agent_on_the_directors_host_is_flagged_and_warned_about(
    world: World, browser: Browser
) -> None:
    page = admin_page(browser, world)
    guid = world.guid("own-host")
    hostname = AGENTS["own-host"][1]
    expect(cell(page, guid, "Warnings")).to_contain_text("Director's host")
    act(page, world, "own-host", "Approve")
    expect_state(page, guid, "registered")
    expect(page.locator(".agent-messages .notice.warning")).to_contain_text(
        f"{hostname} is the director's own host name"
    )


def test_approve_a_claimed_key(world: World, browser: Browser) -> None:
    # An adopted Go agent: registered without a pinned key, claiming one. Set
    # up by hand in agents.db (the agent stopped, so it cannot interfere).
    director = world.web.director
    agent = world.agents["claim"]
    guid = agent.guid
    director.ctl("agents", "approve", guid)
    agent.stop()
    key = public_key_fingerprint(private_key_file(agent.key).public_key())
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        db.execute(
            "UPDATE agents SET key_fingerprint = NULL, claimed_key = ?, claimed_at = ? "
            "WHERE guid = ?",
            (key, to_db_time(dt.datetime.now(dt.UTC)), guid),
        )
        db.commit()

    page = admin_page(browser, world)
    expect(cell(page, guid, "Key")).to_have_text("not pinned")
    warnings = cell(page, guid, "Warnings")
    expect(warnings).to_contain_text("Key claimed")
    expect(warnings.locator(".mono")).to_have_attribute("title", key)
    row(page, guid).get_by_role("button", name=f"Approve claim ws-claim {guid}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"ws-claim ({guid})")
    expect(dialog).to_contain_text(key)
    dialog.get_by_role("button", name="Approve claim").click()
    shown = cell(page, guid, "Key").locator(".mono")
    expect(shown).to_have_attribute("title", key)
    expect(cell(page, guid, "Warnings")).not_to_contain_text("Key claimed")
    record = director.record(guid)
    assert record is not None
    assert (record.key_fingerprint, record.claimed_key) == (key, "")


def test_the_ca_fingerprint_is_the_directors_and_copies(
    world: World, browser: Browser
) -> None:
    page = admin_page(browser, world)
    expected = certificate_fingerprint(world.web.director.ca_certificate())
    shown = page.locator(".agents-ca .mono")
    expect(shown).to_have_text(expected)
    page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=world.url
    )
    page.get_by_role("button", name="Copy the CA fingerprint").click()
    expect(page.locator("#toasts")).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == expected


def test_screenshots_light_dark_and_narrow(world: World, browser: Browser) -> None:
    page = admin_page(browser, world)
    browser.screenshot(page, "admin-agents")
    dark = admin_page(browser, world, dark=True)
    browser.screenshot(dark, "admin-agents-dark")
    narrow = admin_page(browser, world, width=360, height=740)
    # Usable at 360 px: nothing sticks out sideways, the controls are there.
    assert narrow.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"
    ), "the page scrolls sideways at 360 px"
    refresh = narrow.get_by_role("button", name="Refresh")
    expect(refresh).to_be_visible()
    refresh.focus()
    narrow.keyboard.press("Enter")
    expect(narrow.locator(".updated")).to_have_text(re.compile(r"^Updated "))
    expect(refresh).to_be_focused()
    browser.screenshot(narrow, "admin-agents-narrow")
