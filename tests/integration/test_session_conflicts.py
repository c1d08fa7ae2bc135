"""A session create that dcv would refuse is the caller's conflict (409), not a 502.

Found by the fuzzing (test_fuzz.py): a ``sessionId`` already taken, or a
console session while someone else's console runs, made ``dcv create-session``
fail, which the agent answered 502 and the director relayed as 502 ("the agent
answered 502: ..."). The agent now sees both in the listing it makes anyway,
refuses with 409 without running ``dcv create-session``, and the director
refuses both itself from the agent's reports (409) without calling it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import ADMIN
from fuzz_world import COOKIE, FuzzFleet, FuzzWorld, start_fuzz_world

from fleet import wait_for


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    """ws-web, where bob's console session runs."""
    fleet = FuzzFleet(tmp_path_factory.mktemp("conflicts"))
    try:
        world = start_fuzz_world(fleet)
        yield world
        world.close()
    finally:
        fleet.stop_all()


def creates(world: FuzzWorld) -> list[list[str]]:
    """The ``dcv create-session`` calls so far."""
    return [c for c in world.web.fake.calls() if c[:1] == ["create-session"]]


def agent_create(world: FuzzWorld, body: dict[str, str]) -> tuple[int, Any]:
    """``POST /v1/sessions`` to the agent, as the director."""
    answer = world.as_director.post(
        world.agent_url + "/v1/sessions", json=body, timeout=30
    )
    return answer.status_code, answer.json()


def director_create(world: FuzzWorld, body: dict[str, str]) -> tuple[int, Any]:
    """``POST /v1/sessions`` to the director, as alice (an admin)."""
    answer = world.anonymous.post(
        world.director_url + "/v1/sessions",
        json=body,
        cookies={COOKIE: world.admin_cookie},
        timeout=60,
    )
    return answer.status_code, answer.json()


def test_the_agent_refuses_a_taken_id_or_console_with_409(world: FuzzWorld) -> None:
    before = creates(world)
    taken = {"userId": ADMIN, "sessionType": "console", "sessionId": world.session_id}
    assert agent_create(world, taken) == (
        409,
        {"error": f"session id {world.session_id} is taken"},
    )
    console = {**taken, "sessionId": "alices-console"}
    assert agent_create(world, console) == (
        409,
        {"error": "the console session is someone else's"},
    )
    assert creates(world) == before


def test_the_director_refuses_what_it_knows_the_agent_would(
    world: FuzzWorld,
) -> None:
    """From the agent's reports, the director answers 409 itself.

    (An agent refusal it could not foresee, a race with the agent's
    listing, stays a 502: CONTRACT §4's "other agent refusal".)
    """
    body = {"serverId": "ws-web", "userId": ADMIN, "sessionType": "console"}
    expected = (409, {"error": "the console of ws-web is someone else's"})
    assert wait_for(
        "409 from the director", lambda: director_create(world, body) == expected
    )
    taken = {**body, "sessionType": "virtual", "sessionId": world.session_id}
    assert director_create(world, taken) == (
        409,
        {"error": f"session {world.session_id} is already on ws-web"},
    )
