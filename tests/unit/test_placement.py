"""Placement in a pool: reuse first, free consoles only, then the least loaded."""

from __future__ import annotations

import datetime as dt
from random import Random

from hypothesis import given
from hypothesis import strategies as st

from dcvix.director.placement import Placement, choose_server, rank
from dcvix.director.runtime import ServerState
from dcvix.testing.reports import server, session

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
GiB = 1024**3


def test_nothing_to_choose_from() -> None:
    assert choose_server([], "alice", "virtual") is None


def test_the_users_session_of_that_type_is_reused_anywhere_in_the_pool() -> None:
    mine = session("s-alice", "alice", "virtual")
    busy = server("ws-busy", mine, session("s-bob", "bob"), free_gib=1, cpu=99)
    idle = server("ws-idle")
    assert choose_server([idle, busy], "alice", "virtual") == Placement(busy, mine)
    # Another type is not reused: the least loaded member is chosen.
    assert choose_server([idle, busy], "alice", "console") == Placement(idle)
    assert choose_server([idle, busy], "alice", "VIRTUAL") == Placement(busy, mine)


def test_fewest_sessions_then_most_free_memory_then_cpu_then_name() -> None:
    one = server("ws-a", session("s1", "bob"))
    roomy = server("ws-b", free_gib=32)
    tight = server("ws-c", free_gib=8)
    cool = server("ws-d", free_gib=8, cpu=1.0)
    twin = server("ws-e", free_gib=8, cpu=1.0)
    assert choose_server([one, tight, roomy], "alice", "virtual") == Placement(roomy)
    assert choose_server([one, tight], "alice", "virtual") == Placement(tight)
    assert choose_server([tight, cool], "alice", "virtual") == Placement(cool)
    assert choose_server([twin, cool], "alice", "virtual") == Placement(cool)


def test_a_console_taken_by_someone_else_is_not_a_candidate() -> None:
    taken = server("ws-a", session("console", "bob", "console"), free_gib=64)
    loaded = server("ws-b", session("v1", "carol"), session("v2", "dave"))
    assert choose_server([taken, loaded], "alice", "console") == Placement(loaded)
    assert choose_server([taken], "alice", "console") is None
    # A virtual session may still go there.
    assert choose_server([taken, loaded], "alice", "virtual") == Placement(taken)


def test_the_users_own_console_is_reused() -> None:
    mine = session("console", "alice", "console")
    own = server("ws-a", mine)
    assert choose_server([server("ws-b"), own], "alice", "console") == Placement(
        own, mine
    )


# ------------------------------------------------------------------ properties

OWNERS = st.sampled_from(["alice", "bob", "carol"])
KINDS = st.sampled_from(["console", "virtual"])


@st.composite
def fleets(draw: st.DrawFn) -> list[ServerState]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6))
    fleet = []
    for name in names:
        owners = draw(st.lists(st.tuples(OWNERS, KINDS), max_size=4))
        sessions = [session(f"{name}-{n}", o, k) for n, (o, k) in enumerate(owners)]
        fleet.append(
            server(
                f"ws-{name}",
                *sessions,
                free_gib=draw(st.integers(0, 4)),
                cpu=draw(st.sampled_from([0.0, 50.0])),
            )
        )
    return fleet


@given(fleets(), OWNERS, KINDS, st.randoms())
def test_placement_rules_hold_for_any_fleet(
    fleet: list[ServerState], user: str, kind: str, random: Random
) -> None:
    chosen = choose_server(fleet, user, kind)
    shuffled = list(fleet)
    random.shuffle(shuffled)
    assert choose_server(shuffled, user, kind) == chosen  # order does not matter
    owned = [
        (s, x) for s in fleet for x in s.sessions if x.owner == user and x.type == kind
    ]
    if owned:
        assert chosen is not None and (chosen.server, chosen.existing) in owned
        return
    free = [
        s
        for s in fleet
        if kind != "console"
        or all(x.owner == user for x in s.sessions if x.type == "console")
    ]
    if not free:
        assert chosen is None
        return
    assert chosen is not None and chosen.existing is None
    assert chosen.server in free
    assert rank(chosen.server) == min(rank(s) for s in free)
