"""The housekeeper does the store's share only while this director leads; the
fleet follows agents changed through another director."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred

from dcvix.director.housekeeper import Housekeeper
from dcvix.director.runtime import parse_report
from dcvix.director.throttle import LoginThrottle
from dcvix.testing import director_harness
from dcvix.testing.director import NOW

GUID = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
GONE = "33333333-3333-4333-8333-333333333333"


class Leadership:
    def __init__(self, leading: bool) -> None:
        self.leading = leading

    def leads(self) -> bool:
        return self.leading


@pytest.mark.parametrize("leading", [True, False])
def test_purge_and_vacuum_run_only_on_the_leader(tmp_path: Path, leading: bool) -> None:
    with director_harness(tmp_path) as director:
        registry = director.registry
        old = NOW - dt.timedelta(hours=2)
        assert ensureDeferred(
            registry.create_pending(GUID, "ws1", "ab" * 32, "", old)
        ).result
        ensureDeferred(registry.revoke_token("h1", NOW - dt.timedelta(seconds=1)))
        keeper = Housekeeper(
            registry,
            director.sessions,
            LoginThrottle(5, 60.0, director.clock),
            director.connections,
            3600.0,
            director.clock,
            Leadership(leading),
        )

        ensureDeferred(keeper.sweep())
        ensureDeferred(keeper.vacuum())

        pending = ensureDeferred(registry.get(GUID)).result
        revoked = ensureDeferred(registry.token_revoked("h1")).result
        assert (pending is None, revoked) == (
            (True, False) if leading else (False, True)
        )


def test_servers_of_agents_no_longer_registered_are_forgotten(tmp_path: Path) -> None:
    """What a director of a shared store does when another changed an agent."""
    with director_harness(tmp_path) as director:
        registry = director.registry
        for guid, hostname in ((GUID, "ws1"), (OTHER, "ws2"), (GONE, "ws3")):
            assert ensureDeferred(
                registry.create_registered(guid, hostname, "ab" * 32, "", NOW, "t")
            ).result
            report = {"sessions": [], "stats": {"cores": 1}, "tags": []}
            state = parse_report(guid, hostname, report, "10.0.0.1", NOW, 8446, None)
            ensureDeferred(director.runtime.put(state))
        # Changed through "another director": the store only.
        ensureDeferred(registry.revoke(OTHER, "os:admin", NOW))
        ensureDeferred(registry.delete(GONE, "os:admin", NOW))

        ensureDeferred(director.sessions.forget_unregistered())

        listed: list[str] = []
        ensureDeferred(director.runtime.servers()).addCallback(
            lambda servers: listed.extend(s.hostname for s in servers)
        )
        assert listed == ["ws1"]
