"""The user routes over the whole director in memory: policy, placement, tokens.

The fleet: ``ws-1`` is bob's workstation; pool ``gpu`` holds ``ws-2`` and
``ws-3`` (bob's too); ``ws-4`` is nobody's; ``carol`` has ``ALLOW_CUSTOM``;
``alice`` is an admin with no workstation. Each server is a registered agent
with a fresh report; the agent client records calls and answers what a test
sets, so every refusal can show that no agent was called.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from stub_api import Answer, call, login_cookie, result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from dcvix.common.webclient import Answer as AgentAnswer
from dcvix.director.runtime import HostStats, ServerState, Session
from dcvix.director.tokens import CONNECTION, InvalidToken
from dcvix.testing import DirectorHarness, director_harness
from dcvix.testing.director import NOW
from dcvix.testing.reports import session

T = TypeVar("T")
GiB = 1024**3
USERS = (
    {"id": "alice", "admin": True},
    {"id": "bob", "workstations": ["ws-1", "ws-2"], "pools": ["gpu"]},
    {"id": "carol", "workstations": ["ALLOW_CUSTOM"]},
    {"id": "dave", "pools": ["empty", "gpu"]},
)
POOLS = ({"id": "gpu", "workstations": ["ws-2", "ws-3"]}, {"id": "empty"})
PASSWORDS = {"alice": "a-pw", "bob": "b-pw", "carol": "c-pw", "dave": "d-pw"}
HOSTS = ("ws-1", "ws-2", "ws-3", "ws-4")


def done(work: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that runs to its end at once (inline registry)."""
    value: T = result_of(Deferred.fromCoroutine(work))
    return value


def counted(world: World, name: str, **labels: str) -> float:
    """A sample of the director's metrics (0 when absent)."""
    found = world.director.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def guid(hostname: str) -> str:
    return f"00000000-0000-4000-8000-00000000000{hostname[-1]}"


@dataclasses.dataclass
class World:
    director: DirectorHarness
    stub: StubTreq
    cookies: dict[str, str]

    def report(
        self, hostname: str, *sessions: Session, free_gib: int = 16, **more: Any
    ) -> None:
        """A fresh report of ``hostname``."""
        now = dt.datetime.fromtimestamp(self.director.clock.seconds(), dt.UTC)
        more.setdefault("address", "10.0.0.1")
        state = ServerState(
            guid=guid(hostname),
            hostname=hostname,
            agent_port=8446,
            update_interval=30.0,
            last_seen=now,
            stats=HostStats(free_gib * GiB, 64 * GiB, 8, 5.0, 0.1, 0.1, 0.1),
            sessions=sessions,
            **more,
        )
        done(self.director.runtime.put(state))

    def as_user(self, user: str, method: str, path: str, body: Any = None) -> Answer:
        data = b"" if body is None else json.dumps(body).encode()
        return call(self.stub, method, path, data, cookie=self.cookies[user])

    def agent_answers(self, status: int, body: Any) -> None:
        self.director.agent_client.answer = AgentAnswer(
            status, json.dumps(body).encode()
        )

    @property
    def agent_calls(self) -> list[tuple[str, str, str, Any]]:
        return [
            (c.target.guid, c.method, c.path, c.payload)
            for c in self.director.agent_client.calls
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with director_harness(
        tmp_path, users=USERS, pools=POOLS, passwords=PASSWORDS
    ) as director:
        for hostname in HOSTS:
            assert done(
                director.registry.create_registered(
                    guid(hostname), hostname, f"key-{hostname}", "", NOW, "setup"
                )
            )
        stub = StubTreq(director.resource())
        cookies = {
            user: login_cookie(stub, user, password, admin=False)
            for user, password in PASSWORDS.items()
        }
        made = World(director, stub, cookies)
        for hostname in HOSTS:
            made.report(hostname)
        yield made


# ----------------------------------------------------------------- servers


def test_servers_go_list_then_details(world: World) -> None:
    world.report("ws-3", session("s-bob", "bob"), session("s-x", "xavier"))
    answer = world.as_user("bob", "GET", "/v1/user/servers")
    assert answer.code == 200
    body = answer.json()
    # Workstations, then pool members; ws-2 (in both) once.
    assert body["servers"] == ["ws-1", "ws-2", "ws-3"]
    details = {w["hostname"]: w for w in body["details"]["workstations"]}
    assert details["ws-3"] == {
        "hostname": "ws-3",
        "pools": ["gpu"],
        "online": True,
        "sessions": ["s-bob"],
        "sessionCount": 2,
        "freeMemory": 16 * GiB,
        "totalMemory": 64 * GiB,
    }
    assert details["ws-1"]["pools"] == []
    assert body["details"]["pools"] == [{"id": "gpu", "members": 2, "online": 2}]


def test_servers_for_custom_unknown_and_admin_users(world: World) -> None:
    carol = world.as_user("carol", "GET", "/v1/user/servers").json()
    assert carol["servers"] == ["ALLOW_CUSTOM"]
    assert carol["details"]["workstations"] == []
    alice = world.as_user("alice", "GET", "/v1/user/servers").json()
    assert alice["servers"] == []


def test_offline_servers_are_shown_offline(world: World) -> None:
    world.director.clock.advance(600)
    world.report("ws-2")
    body = world.as_user("bob", "GET", "/v1/user/servers").json()
    online = {w["hostname"]: w["online"] for w in body["details"]["workstations"]}
    assert online == {"ws-1": False, "ws-2": True, "ws-3": False}
    assert body["details"]["pools"] == [{"id": "gpu", "members": 2, "online": 1}]


# ---------------------------------------------------------------- sessions


def test_a_session_on_a_workstation_shows_at_once_as_creating(world: World) -> None:
    world.agent_answers(201, {"sessionID": "dcvix_new"})
    answer = world.as_user(
        "bob",
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-1", "sessionType": "Virtual", "userId": "ignored"},
    )
    assert answer.outcome == (200, {"sessionID": "dcvix_new", "serverId": "ws-1"})
    ((target, method, path, payload),) = world.agent_calls
    assert (target, method, path) == (guid("ws-1"), "POST", "/v1/sessions")
    assert payload["userId"] == "bob"
    assert payload["sessionType"] == "virtual"
    mine = world.as_user("bob", "GET", "/v1/user/sessions").json()
    assert [(s["id"], s["server_id"], s["status"]) for s in mine] == [
        ("dcvix_new", "ws-1", "creating")
    ]
    assert world.as_user("carol", "GET", "/v1/user/sessions").json() == []
    # The next report that lists it replaces what the director made up.
    world.report("ws-1", session("dcvix_new", "bob"))
    mine = world.as_user("bob", "GET", "/v1/user/sessions").json()
    assert [(s["id"], s["status"]) for s in mine] == [("dcvix_new", "")]


def test_a_report_made_before_the_creation_does_not_hide_it(world: World) -> None:
    world.agent_answers(201, {"sessionID": "dcvix_new"})
    world.as_user(
        "bob",
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-1", "sessionType": "virtual"},
    )
    world.report("ws-1")
    assert [
        s["id"] for s in world.as_user("bob", "GET", "/v1/user/sessions").json()
    ] == ["dcvix_new"]
    # Until reports without it have gone on long enough.
    world.director.clock.advance(61)
    world.report("ws-1")
    assert world.as_user("bob", "GET", "/v1/user/sessions").json() == []


def test_the_users_session_of_that_type_is_reused(world: World) -> None:
    world.report("ws-1", session("s-old", "bob", "console"))
    answer = world.as_user(
        "bob",
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-1", "sessionType": "Console"},
    )
    assert answer.outcome == (200, {"sessionID": "s-old", "serverId": "ws-1"})
    assert world.agent_calls == []


def test_someone_elses_console_is_not_taken(world: World) -> None:
    world.report("ws-1", session("console", "xavier", "console"))
    answer = world.as_user(
        "bob",
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-1", "sessionType": "console"},
    )
    assert answer.code == 409
    assert world.agent_calls == []


@pytest.mark.parametrize(
    ("user", "body", "status"),
    [
        ("bob", {"serverId": "ws-4", "sessionType": "virtual"}, 403),
        ("alice", {"serverId": "ws-1", "sessionType": "virtual"}, 403),
        ("carol", {"serverId": "ws-9", "sessionType": "virtual"}, 404),
        ("bob", {"poolId": "other", "sessionType": "virtual"}, 403),
        ("bob", {"serverId": "ws-1", "sessionType": "gnome"}, 400),
        ("bob", {"serverId": "ws-1", "poolId": "gpu", "sessionType": "virtual"}, 400),
        ("bob", {"sessionType": "virtual"}, 400),
        ("bob", {"serverId": "https://evil/", "sessionType": "virtual"}, 403),
        ("carol", {"serverId": "ws-1:8446/x#", "sessionType": "virtual"}, 404),
    ],
)
def test_refused_session_requests_call_no_agent(
    world: World, user: str, body: dict[str, str], status: int
) -> None:
    answer = world.as_user(user, "POST", "/v1/user/sessions", body)
    assert answer.code == status, answer.body
    assert "error" in answer.json()
    assert world.agent_calls == []
    assert world.as_user(user, "GET", "/v1/user/sessions").json() == []


def test_allow_custom_reaches_any_registered_agent(world: World) -> None:
    world.agent_answers(201, {"sessionID": "dcvix_c"})
    answer = world.as_user(
        "carol",
        "POST",
        "/v1/user/sessions",
        {"serverId": "WS-4", "sessionType": "virtual"},
    )
    assert answer.outcome == (200, {"sessionID": "dcvix_c", "serverId": "ws-4"})
    assert [c[0] for c in world.agent_calls] == [guid("ws-4")]


def test_a_pool_session_goes_to_the_least_loaded_member(world: World) -> None:
    world.report("ws-2", session("s-x", "xavier"))
    world.agent_answers(201, {"sessionID": "dcvix_p"})
    answer = world.as_user(
        "dave", "POST", "/v1/user/sessions", {"poolId": "gpu", "sessionType": "virtual"}
    )
    assert answer.outcome == (200, {"sessionID": "dcvix_p", "serverId": "ws-3"})
    # Asked again, the new session is reused wherever it is.
    answer = world.as_user(
        "dave", "POST", "/v1/user/sessions", {"poolId": "gpu", "sessionType": "virtual"}
    )
    assert answer.outcome == (200, {"sessionID": "dcvix_p", "serverId": "ws-3"})
    assert len(world.agent_calls) == 1
    # Placed twice (the second placement found the session there), one call.
    assert counted(world, "dcvix_placements_total", outcome="placed") == 2
    assert counted(world, "dcvix_placement_seconds_count") == 2
    call = {"route": "POST /v1/sessions", "outcome": "ok"}
    assert counted(world, "dcvix_calls_to_agents_total", **call) == 1
    assert counted(world, "dcvix_call_to_agent_seconds_count", route=call["route"]) == 1


def test_a_pool_with_no_member_online_is_503(world: World) -> None:
    world.director.clock.advance(600)
    world.report("ws-1")
    answer = world.as_user(
        "dave", "POST", "/v1/user/sessions", {"poolId": "gpu", "sessionType": "virtual"}
    )
    assert answer.outcome == (503, {"error": "no server of pool gpu is online"})
    answer = world.as_user(
        "dave",
        "POST",
        "/v1/user/sessions",
        {"poolId": "empty", "sessionType": "virtual"},
    )
    assert answer.code == 503
    assert world.agent_calls == []
    assert counted(world, "dcvix_placements_total", outcome="none_online") == 2


def test_an_offline_workstation_is_409(world: World) -> None:
    world.director.clock.advance(600)
    answer = world.as_user(
        "bob",
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-1", "sessionType": "virtual"},
    )
    assert answer.code == 409
    assert world.agent_calls == []


def test_close_only_ones_own_session(world: World) -> None:
    world.report("ws-1", session("s-bob", "bob"), session("s-x", "xavier"))
    answer = world.as_user("bob", "DELETE", "/v1/user/sessions/s-x")
    assert answer.outcome == (404, {"error": "session not found"})
    assert world.agent_calls == []
    world.agent_answers(200, {})
    answer = world.as_user("bob", "DELETE", "/v1/user/sessions/s-bob")
    assert answer.code == 200
    assert world.agent_calls == [(guid("ws-1"), "DELETE", "/v1/sessions/s-bob", None)]
    assert world.as_user("bob", "GET", "/v1/user/sessions").json() == []
    # A report made before the close does not bring it back.
    world.report("ws-1", session("s-bob", "bob"), session("s-x", "xavier"))
    assert world.as_user("bob", "GET", "/v1/user/sessions").json() == []


def test_an_id_on_two_of_ones_servers_needs_server_id(world: World) -> None:
    world.report("ws-1", session("same", "bob"))
    world.report("ws-2", session("same", "bob"))
    answer = world.as_user("bob", "DELETE", "/v1/user/sessions/same")
    assert answer.code == 409
    world.agent_answers(200, {})
    answer = world.as_user("bob", "DELETE", "/v1/user/sessions/same?serverId=ws-2")
    assert answer.code == 200
    assert [c[0] for c in world.agent_calls] == [guid("ws-2")]


# ------------------------------------------------------- connection tokens


def test_a_connection_token_for_ones_own_session(world: World) -> None:
    world.report("ws-1", session("s-bob", "bob"))
    answer = world.as_user(
        "bob",
        "GET",
        "/v1/user/connectiontoken?serverId=ws-1&sessionId=s-bob&userId=whoever",
    )
    assert answer.code == 200
    body = answer.json()
    claims = world.director.tokens.check(body["token"], CONNECTION)
    assert (claims.user, claims.server, claims.session) == ("bob", "ws-1", "s-bob")
    ttl = dt.datetime.fromisoformat(body["expiresAt"]) - NOW
    assert ttl == dt.timedelta(minutes=10)
    assert body["webUrl"] == f"https://ws-1:8443/?authToken={body['token']}#s-bob"
    # It is no login: refused by the API.
    answer = call(world.stub, "GET", "/v1/auth-health", cookie=body["token"])
    assert answer.code == 401
    # And the DCV server's check lets bob in.
    verified = world.director.connections.verify(body["token"], "s-bob", "10.0.0.1")
    assert done(verified) == "bob"
    assert (
        done(world.director.connections.verify(body["token"], "s-other", "10.0.0.1"))
        is None
    )


def test_a_login_token_is_no_connection_token(world: World) -> None:
    world.report("ws-1", session("s-bob", "bob"))
    with pytest.raises(InvalidToken):
        world.director.tokens.check(world.cookies["bob"], CONNECTION)
    verified = world.director.connections.verify(world.cookies["bob"], "s-bob", "x")
    assert done(verified) is None


def test_advertised_addresses_go_into_the_web_url(world: World) -> None:
    world.report(
        "ws-1", session("s-bob", "bob"), address="2001:db8::7", advertised=True
    )
    body = world.as_user(
        "bob", "GET", "/v1/user/connectiontoken?serverId=ws-1&sessionId=s-bob"
    ).json()
    assert body["webUrl"].startswith("https://[2001:db8::7]:8443/?authToken=")


@pytest.mark.parametrize(
    ("user", "query", "status"),
    [
        ("bob", "serverId=ws-1&sessionId=s-x", 404),  # xavier's session
        ("bob", "serverId=ws-4&sessionId=s-4", 403),  # not bob's server
        ("alice", "serverId=ws-1&sessionId=s-bob", 403),  # admins are users here
        ("bob", "serverId=ws-1", 400),
        ("bob", "sessionId=s-bob", 400),
        ("bob", "serverId=ws-1&sessionId=..", 400),
        ("carol", "serverId=ws-1&sessionId=s-bob", 404),  # custom, not hers
    ],
)
def test_refused_connection_tokens(
    world: World, user: str, query: str, status: int
) -> None:
    world.report("ws-1", session("s-bob", "bob"), session("s-x", "xavier"))
    world.report("ws-4", session("s-4", "bob"))
    answer = world.as_user(user, "GET", f"/v1/user/connectiontoken?{query}")
    assert answer.code == status, answer.body
    assert "token" not in answer.json()
    assert world.director.connections.server_for("s-bob") is None


def test_the_dcv_file(world: World) -> None:
    world.report("ws-1", session("s-bob", "bob"))
    answer = world.as_user(
        "bob", "GET", "/v1/user/connectionfile?serverId=ws-1&sessionId=s-bob"
    )
    assert answer.code == 200
    headers = answer.headers
    assert headers.getRawHeaders("Content-Type") == ["application/x-dcv"]
    assert headers.getRawHeaders("Content-Disposition") == [
        'attachment; filename="s-bob.dcv"'
    ]
    lines = answer.body.decode().split("\r\n")
    token = next(line for line in lines if line.startswith("authtoken="))
    assert world.director.tokens.check(token.split("=", 1)[1], CONNECTION).user == "bob"
    for line in (
        "[version]",
        "format=1.0",
        "[connect]",
        "host=ws-1",
        "port=8443",
        "sessionid=s-bob",
        "user=bob",
        "weburlpath=",
        "[options]",
    ):
        assert line in lines


# ------------------------------------------------------------------ config


def test_config_only_on_granted_servers(world: World) -> None:
    entry = {"config": [{"section": "display", "key": "quality", "value": "(30,80)"}]}
    answer = world.as_user("bob", "POST", "/v1/user/servers/ws-4/config", entry)
    assert answer.code == 403
    assert world.agent_calls == []
    bad = {
        "config": [{"section": "security", "key": "authentication", "value": "none"}]
    }
    answer = world.as_user("bob", "POST", "/v1/user/servers/ws-3/config", bad)
    assert answer.code == 403
    assert world.agent_calls == []
    world.agent_answers(200, {})
    answer = world.as_user("bob", "POST", "/v1/user/servers/ws-3/config", entry)
    assert answer.outcome == (200, {})
    assert [(c[0], c[2]) for c in world.agent_calls] == [(guid("ws-3"), "/v1/config")]


def test_a_double_click_makes_one_session(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second request waits for the first, then reuses what it made."""
    gate: Deferred[None] = Deferred()
    calls: list[str] = []

    async def slow_call(
        target: Any, method: str, path: str, payload: Any = None
    ) -> Any:
        calls.append(path)
        await gate
        return AgentAnswer(201, json.dumps({"sessionID": "dcvix_once"}).encode())

    monkeypatch.setattr(world.director.agent_client, "call", slow_call)
    body = json.dumps({"poolId": "gpu", "sessionType": "virtual"}).encode()
    headers = {"Cookie": f"dcvix_session={world.cookies['dave']}"}
    pending = [
        world.stub.request(  # type: ignore[attr-defined]
            "POST", "http://director.test/v1/user/sessions", data=body, headers=headers
        )
        for _ in range(2)
    ]
    world.stub.flush()
    assert calls == ["/v1/sessions"]
    gate.callback(None)
    world.stub.flush()
    answers = [result_of(d) for d in pending]
    contents = [result_of(a.json()) for a in answers]
    world.stub.flush()
    assert contents == [{"sessionID": "dcvix_once", "serverId": "ws-2"}] * 2
    assert calls == ["/v1/sessions"]


def test_admins_see_which_pools_hold_each_server(world: World) -> None:
    world.cookies["admin"] = login_cookie(world.stub, "alice", "a-pw", admin=True)
    answer = world.as_user("admin", "GET", "/v1/servers")
    pools = {s["hostname"]: s["pools"] for s in answer.json()}
    assert pools == {"ws-1": [], "ws-2": ["gpu"], "ws-3": ["gpu"], "ws-4": []}
    health = world.as_user("admin", "GET", "/v1/auth-health")
    assert health.outcome == (
        200,
        {"status": "healthy", "user": "alice", "admin": True},
    )
    # The same admin through the user login is a user; so is bob.
    for user in ("alice", "bob"):
        health = world.as_user(user, "GET", "/v1/auth-health")
        assert health.outcome == (
            200,
            {"status": "healthy", "user": user, "admin": False},
        )


def test_a_locked_login_says_when_to_try_again(world: World) -> None:
    body = json.dumps({"userID": "bob", "password": "wrong"}).encode()
    for _ in range(5):
        assert call(world.stub, "POST", "/v1/user/login", body).code == 401
    world.director.clock.advance(60)
    answer = call(world.stub, "POST", "/v1/user/login", body)
    assert answer.code == 429
    assert answer.headers.getRawHeaders("Retry-After") == ["240"]


def test_a_revoked_server_leaves_every_users_view_at_once(world: World) -> None:
    world.report("ws-1", session("s-bob", "bob"))
    token = world.as_user(
        "bob", "GET", "/v1/user/connectiontoken?serverId=ws-1&sessionId=s-bob"
    ).json()["token"]
    admin = login_cookie(world.stub, "alice", "a-pw", admin=True)
    answer = call(
        world.stub, "POST", f"/v1/admin/agents/{guid('ws-1')}/revoke", b"{}", admin
    )
    assert answer.code == 200
    assert done(world.director.connections.verify(token, "s-bob", "10.0.0.1")) is None
    answer = world.as_user(
        "bob", "GET", "/v1/user/connectiontoken?serverId=ws-1&sessionId=s-bob"
    )
    assert answer.code == 404
    assert world.as_user("bob", "GET", "/v1/user/sessions").json() == []
    details = world.as_user("bob", "GET", "/v1/user/servers").json()["details"]
    assert [
        w["online"] for w in details["workstations"] if w["hostname"] == "ws-1"
    ] == [False]


def test_sessions_on_servers_the_policy_does_not_grant_are_not_the_users(
    world: World,
) -> None:
    """An admin made bob a session on ws-4, which bob's policy does not grant."""
    world.report("ws-4", session("s-4", "bob"))
    assert world.as_user("bob", "GET", "/v1/user/sessions").json() == []
    for path in ("/v1/user/sessions/s-4", "/v1/user/sessions/s-4?serverId=ws-4"):
        assert world.as_user("bob", "DELETE", path).code == 404
    assert world.agent_calls == []


def test_ui_config_says_who_the_cookie_is_without_refusing_anyone(
    world: World,
) -> None:
    anonymous = call(world.stub, "GET", "/v1/ui-config")
    assert anonymous.outcome == (200, {"otp": "none", "user": None, "admin": False})
    bob = world.as_user("bob", "GET", "/v1/ui-config")
    assert bob.outcome == (200, {"otp": "none", "user": "bob", "admin": False})
    admin = login_cookie(world.stub, "alice", "a-pw", admin=True)
    answer = call(world.stub, "GET", "/v1/ui-config", cookie=admin)
    assert answer.outcome == (200, {"otp": "none", "user": "alice", "admin": True})
    # A connection token is no login, here either.
    world.report("ws-1", session("s-bob", "bob"))
    token = world.as_user(
        "bob", "GET", "/v1/user/connectiontoken?serverId=ws-1&sessionId=s-bob"
    ).json()["token"]
    answer = call(world.stub, "GET", "/v1/ui-config", cookie=token)
    assert answer.outcome == (200, {"otp": "none", "user": None, "admin": False})


def test_two_login_cookies_log_nobody_in(world: World) -> None:
    """A sibling host may toss a second dcvix_session: neither is trusted."""
    stub = world.stub
    both = (
        f"dcvix_session={world.cookies['bob']}; dcvix_session={world.cookies['carol']}"
    )
    d = stub.request(  # type: ignore[attr-defined]
        "GET", "http://director.test/v1/auth-health", headers={"Cookie": both}
    )
    stub.flush()
    assert result_of(d).code == 401


@pytest.mark.parametrize(
    ("site", "status"),
    [
        (None, 200),
        ("same-origin", 200),
        ("none", 200),
        ("same-site", 403),
        ("cross-site", 403),
    ],
)
def test_connection_tokens_only_for_this_sites_pages(
    world: World, site: str | None, status: int
) -> None:
    world.report("ws-1", session("s-bob", "bob"))
    headers = {"Cookie": f"dcvix_session={world.cookies['bob']}"}
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    for path in ("connectiontoken", "connectionfile"):
        d = world.stub.request(  # type: ignore[attr-defined]
            "GET",
            f"http://director.test/v1/user/{path}?serverId=ws-1&sessionId=s-bob",
            headers=headers,
        )
        world.stub.flush()
        assert result_of(d).code == status


def test_servers_filtered_and_paged(world: World) -> None:
    world.cookies["admin"] = login_cookie(world.stub, "alice", "a-pw", admin=True)

    def names(query: str) -> Any:
        answer = world.as_user("admin", "GET", f"/v1/servers{query}")
        assert answer.code == 200, answer.body
        body = answer.json()
        if isinstance(body, dict):
            return [s["hostname"] for s in body["servers"]], body["next"]
        return [s["hostname"] for s in body]

    assert names("") == ["ws-4", "ws-3", "ws-2", "ws-1"]  # Go's full array
    assert names("?pool=gpu") == ["ws-3", "ws-2"]
    assert names("?q=WS-1") == ["ws-1"]
    assert names("?online=false") == []
    assert names("?limit=3") == (["ws-4", "ws-3", "ws-2"], "ws-2")
    assert names("?limit=3&after=ws-2") == (["ws-1"], None)
    assert names("?limit=2&pool=gpu") == (["ws-3", "ws-2"], None)
    world.director.clock.advance(600)
    world.report("ws-3")
    assert names("?online=true") == ["ws-3"]
    assert names("?online=0&pool=gpu") == ["ws-2"]
    for bad in ("?online=maybe", "?limit=0", "?limit=1001", "?limit=x", "?after=ws-2"):
        answer = world.as_user("admin", "GET", f"/v1/servers{bad}")
        assert answer.code == 400, bad
        assert "error" in answer.json()
