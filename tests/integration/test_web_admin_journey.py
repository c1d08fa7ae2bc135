"""An admin's whole day in Chromium: approve an agent, watch it come online, use it.

A fleet of its own: the director, and one agent that starts pending. The
admin approves it on the Agents screen; the agent (restarted, as an operator
would after approving, instead of waiting for its 30 s poll) registers; the
Servers screen shows it online; a session is made for a user and closed on
the Sessions screen. Every screen ends without a console error or a failed
request.
"""

from __future__ import annotations

from pathlib import Path

from browser import ADMIN, ADMIN_PASSWORD, Browser, log_in, start_web_fleet
from fake_dcv import FakeDcv
from playwright.sync_api import Expect

from fleet import Fleet

TIMEOUT = 30_000
expect = Expect()
expect.set_options(timeout=TIMEOUT)


def test_approve_see_online_create_and_close(browser: Browser, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        web = start_web_fleet(tmp_path, fleet, agent=False)
        fake = FakeDcv(tmp_path / "ws-new-dcv").install()
        agent = fleet.agent(
            web.director,
            "ws-new",
            start=False,
            dcv_path=str(fake.path),
            update_interval="1s",
        )
        fleet.start(agent)
        agent.wait_log("pending approval")

        page = browser.page(allowed=(401,))
        page.set_default_timeout(TIMEOUT)
        log_in(page, web.url, ADMIN, ADMIN_PASSWORD, admin=True)
        page.wait_for_url("**/admin/agents")
        row = page.locator(f'table.data tr[data-key="{agent.guid}"]')
        row.get_by_role("button", name=f"Approve ws-new {agent.guid}").click()
        page.get_by_role("dialog").get_by_role("button", name="Approve").click()
        expect(row.locator('td[data-label="State"]')).to_have_text("registered")

        mark = agent.mark()
        agent.stop()
        agent.start()
        agent.wait_log("registered as agent", since=mark)

        page.get_by_role("link", name="Servers").click()
        page.wait_for_url("**/admin/servers")
        server = page.locator("table.data tbody tr", has_text="ws-new")
        # The page refreshes itself; the first report makes it online.
        page.get_by_role("button", name="Refresh").click()
        expect(server).to_contain_text("online")
        browser.screenshot(page, "journey-servers")

        page.get_by_role("link", name="Sessions").click()
        page.wait_for_url("**/admin/sessions")
        page.get_by_role("button", name="Create session").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("User ID").fill("bob")
        dialog.get_by_label("Server").select_option("ws-new")
        dialog.get_by_role("button", name="Create").click()
        session = page.locator("table.data tbody tr", has_text="bob")
        expect(session).to_contain_text("ws-new")
        assert [s["owner"] for s in fake.state()["sessions"]] == ["bob"]

        session.get_by_role("button", name="Close").click()
        page.get_by_role("dialog").get_by_role("button", name="Close session").click()
        expect(session).to_have_count(0)
        assert fake.state()["sessions"] == []
    finally:
        fleet.stop_all()
