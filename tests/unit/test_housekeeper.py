"""The housekeeper does the store's share only while this director leads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred

from dcvix.director.housekeeper import Housekeeper
from dcvix.director.throttle import LoginThrottle
from dcvix.testing import director_harness
from dcvix.testing.director import NOW

GUID = "11111111-1111-4111-8111-111111111111"


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
