"""An agent with several directors: it fails over to the next, and goes back.

Real twistd processes; the first ``director_host`` entry is a TCP relay to the
same director (TLS passes through it untouched), so the test can take that
"director" away and bring it back while the agent runs. Directors sharing a
database (PostgreSQL) are the real case; what the agent does is the same.
"""

from __future__ import annotations

import re

from director_calls import admin_director, call
from fake_dcv import FakeDcv
from tcp_relay import Relay

from fleet import Director, Fleet, enrol, wait_for

ADMIN, ADMIN_PASSWORD = "failover-admin", "failover-secret"
FAILBACK = 2.0
UPDATE_FAILED = "update not delivered"


def last_seen(director: Director, token: str, hostname: str) -> str | None:
    """The ``last-seen`` of ``hostname`` while it is listed online."""
    answer = call(director, "GET", "/v1/servers?online=true", token=token)
    assert answer.status == 200, answer.body
    for server in answer.body:
        if server["hostname"] == hostname:
            return str(server["last-seen"])
    return None


def test_agent_fails_over_to_the_next_director_and_back(fleet: Fleet) -> None:
    director = admin_director(fleet, ADMIN, ADMIN_PASSWORD)
    fleet.start(director)
    login = call(
        director,
        "POST",
        "/v1/admin/login",
        {"userID": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert login.status == 200 and login.token, login.body
    token = login.token
    relay = Relay(director.port)  # not listening yet: the first director is down
    first, second = f"127.0.0.1:{relay.port}", f"127.0.0.1:{director.port}"
    fake = FakeDcv(fleet.folder / "dcv").install()
    agent = fleet.agent(
        director,
        "ws-failover",
        director_host=f"{first}, {second}",
        director_failback=f"{FAILBACK:g}s",
        update_interval="1s",
        dcv_path=str(fake.path),
    )

    # Registration finds the second director while the first is down.
    enrol(director, agent)
    assert f"using director {second}" in agent.log_text()
    wait_for(
        "reports through the second",
        lambda: last_seen(director, token, "ws-failover"),
    )

    # The first comes back: after the failback time the agent returns to it.
    back = agent.mark()
    relay.restore()
    agent.wait_log(f"trying the first director, {first}, again", since=back)
    agent.wait_log(f"using director {first}", since=back)

    # The first goes away while the agent uses it: the next update goes to the
    # second at once, with one warning naming both, and none lost.
    gone = agent.mark()
    relay.cut()
    agent.wait_log(f"director {first} failed", since=gone)
    agent.wait_log(f"using director {second}", since=gone)
    seen = last_seen(director, token, "ws-failover")
    wait_for(
        "updates through the second",
        lambda: last_seen(director, token, "ws-failover") not in (None, seen),
    )
    outage = agent.log_since(gone)
    warned = re.findall(
        rf"WARNING .* dcvix.agent.directors: director {first} failed \(.*\); "
        rf"trying {second}",
        outage,
    )
    assert len(warned) == 1, outage
    assert UPDATE_FAILED not in outage, outage
    assert "regist" not in outage, outage
