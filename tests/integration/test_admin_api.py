"""Admin login and the admin agent API end to end, against real twistd directors.

Every test starts its own director (free port, own folder) with
``auth_type = external``: a shell script in the test's folder accepts two fixed
users and answers "could not decide" (exit 3) for a third; ``users.json`` makes
``alice`` an admin and ``bob`` not. Requests go over real TLS, checked against
the director's ``ca.pem``, from Python or from curl as the seeds show.

The whole 127.0.0.0/8 block is local on Linux, so a client can connect from
127.0.0.2, 127.0.0.3, ... to the director on 127.0.0.1: that is how the
throttling tests show per-address and per-user locks apart.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as dt
import email.utils
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemons import twistd_argv
from dcvix.agent.identity import make_csr
from dcvix.common.pki import (
    certificate_fingerprint,
    load_certificates,
    new_ec_key,
    public_key_fingerprint,
)
from fleet import Agent, Director, Fleet, private_key_file, wait_for

STOPPED = -signal.SIGTERM
ALICE, ALICE_PASSWORD = "alice", "Wonder-land.42"
BOB, BOB_PASSWORD = "bob", "Builder-7"
# The back end script exits 3 ("could not decide") for this user, and takes
# a second to refuse users whose name starts with "slow-".
CAROL = "carol"
USERS: list[dict[str, Any]] = [
    {"id": ALICE, "admin": True},
    {"UserID": BOB, "Admin": False},
]
FAILED = {"error": "authentication failed"}
LOGIN_REQUIRED = {"error": "login required"}
ADMIN_REQUIRED = {"error": "admin rights required"}
THROTTLED = {"error": "too many failed logins; try again later"}
EVIL = "https://evil.example"
HEALTHY = {"status": "healthy"}
COOKIE_PATTERN = re.compile(
    r"dcvix_session=(v4\.local\.[A-Za-z0-9_-]+); Expires=([^;]+); Path=/; "
    r"Secure; HttpOnly; SameSite=(\w+)"
)

AUTH_SCRIPT = """#!/bin/sh
IFS= read -r user
IFS= read -r password
IFS= read -r otp
printf '%s\\n' "$user" >> {calls}
case "$user" in
  {carol}) exit 3 ;;
  slow-*) sleep 1 ;;
esac
case "$user:$password" in
  '{alice}:{alice_password}'|'{bob}:{bob_password}') exit 0 ;;
esac
exit 1
"""


# ------------------------------------------------------------------ fixtures


def write_users(director: Director, users: Any) -> None:
    """``users.json``, written whole (rename) so a reload never reads half."""
    path = policy_folder(director) / "users.json"
    text = users if isinstance(users, str) else json.dumps(users)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def policy_folder(director: Director) -> Path:
    return director.folder.parent / "policydb"


def calls_file(director: Director) -> Path:
    """Where the back end script notes each user it was asked about."""
    return director.folder.parent / "auth" / "calls.log"


def backend_calls(director: Director) -> list[str]:
    path = calls_file(director)
    return path.read_text().splitlines() if path.exists() else []


def new_director(fleet: Fleet, *, start: bool = True, **keys: str) -> Director:
    """A director logging in through the external script, policy as USERS."""
    auth = fleet.folder / "auth"
    auth.mkdir(exist_ok=True)
    script = auth / "check-password"
    script.write_text(
        AUTH_SCRIPT.format(
            calls=auth / "calls.log",
            carol=CAROL,
            alice=ALICE,
            alice_password=ALICE_PASSWORD,
            bob=BOB,
            bob_password=BOB_PASSWORD,
        )
    )
    script.chmod(0o755)
    (fleet.folder / "policydb").mkdir(exist_ok=True)
    director = fleet.director(
        start=False,
        auth_type="external",
        policydb_folder=str(fleet.folder / "policydb"),
        **keys,
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    write_users(director, USERS)
    if start:
        fleet.start(director)
    return director


# --------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: Any

    @property
    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    @property
    def token(self) -> str:
        """The ``dcvix_session`` token this answer set."""
        (cookie,) = self.cookies
        match = COOKIE_PATTERN.fullmatch(cookie)
        assert match is not None, cookie
        return match.group(1)


def call(
    director: Director,
    method: str,
    path: str,
    *,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    """One request from ``source`` to the director, its CA checked."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        director.port,
        context=context,
        timeout=15,
        source_address=(source, 0),
    )
    sent = dict(headers or {})
    if token is not None:
        sent["Cookie"] = f"dcvix_session={token}"
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type") == "application/json", raw
        return Answer(response.status, response.headers, json.loads(raw))
    finally:
        connection.close()


def login(
    director: Director,
    user: str,
    password: str,
    *,
    admin: bool = True,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> Answer:
    path = "/v1/admin/login" if admin else "/v1/user/login"
    return call(
        director,
        "POST",
        path,
        body={"userID": user, "password": password},
        source=source,
        headers=headers,
    )


def admin_token(director: Director) -> str:
    answer = login(director, ALICE, ALICE_PASSWORD)
    assert (answer.status, answer.body) == (200, {})
    return answer.token


def audit_rows(director: Director) -> list[tuple[str, str, str, str]]:
    """(actor, action, target, detail) of every audit line, oldest first.

    A login has no target: its source address stands in for it here.
    """
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute(
            "SELECT actor, action, CASE target WHEN '' THEN address ELSE target END, "
            "detail FROM audit ORDER BY id"
        ).fetchall()
    return [tuple(row) for row in rows]


def audit_log_lines(director: Director, actor: str) -> list[str]:
    """The audit log lines ``actor``'s rows must have, oldest first."""
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute(
            "SELECT actor, action, target, address, detail FROM audit "
            "WHERE actor = ? ORDER BY id",
            (actor,),
        ).fetchall()
    return [
        f"{who} {action} {target} from {address} {detail}"
        for who, action, target, address, detail in rows
    ]


def register_pending(director: Director, hostname: str) -> str:
    """A pending agent, made by posting a registration as an agent would."""
    guid = str(uuid.uuid4())
    answer = call(
        director,
        "POST",
        "/v1/agent/register",
        body={"csr": make_csr(new_ec_key(), guid), "guid": guid, "hostname": hostname},
    )
    assert (answer.status, answer.body) == (403, {"error": "pending approval"})
    return guid


def state_of(director: Director, guid: str) -> str | None:
    record = director.record(guid)
    return None if record is None else record.state


def curl_env(**values: str) -> dict[str, str]:
    """The environment with no proxy settings (curl would use them)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return env | values


# ------------------------------------------- (1) the seeds' Admin Login curl


SEED_ADMIN_LOGIN = """curl --cacert ca.pem \\
--cookie-jar cookies.txt \\
-X POST https://127.0.0.1:8445/v1/admin/login \\
-d '{"userID": "'$USERNAME'", "password": "'$PASSWORD'"}'"""


def test_seed_admin_login_curl_verbatim(fleet: Fleet, tmp_path: Path) -> None:
    director = new_director(fleet)
    work = tmp_path / "operator"
    work.mkdir()
    shutil.copyfile(director.ca_file, work / "ca.pem")
    command = SEED_ADMIN_LOGIN.replace(":8445/", f":{director.port}/")
    assert command.count(str(director.port)) == 1

    before = time.time()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=work,
        env=curl_env(USERNAME=ALICE, PASSWORD=ALICE_PASSWORD),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "{}\n"), done.stderr

    # The cookie jar, as curl kept it: HttpOnly, Secure, Path=/, 2 h.
    jar = [
        line.split("\t")
        for line in (work / "cookies.txt").read_text().splitlines()
        if line.startswith("#HttpOnly_") or not line.startswith("#")
    ]
    jar = [fields for fields in jar if fields != [""]]
    assert len(jar) == 1, jar
    domain, _sub, path, secure, expires, name, value = jar[0]
    assert (domain, path, secure, name) == (
        "#HttpOnly_127.0.0.1",
        "/",
        "TRUE",
        "dcvix_session",
    )
    assert value.startswith("v4.local.")
    assert abs(int(expires) - (before + 7200)) < 60

    listed = subprocess.run(
        [
            "curl",
            "--cacert",
            "ca.pem",
            "--cookie",
            "cookies.txt",
            f"https://127.0.0.1:{director.port}/v1/admin/agents",
            "--silent",
            "--write-out",
            "\n%{http_code}",
        ],
        cwd=work,
        env=curl_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, status = listed.stdout.rsplit("\n", 1)
    assert (listed.returncode, status, json.loads(body)) == (0, "200", [])

    # A wrong password through the same command: 401, no cookie kept.
    (work / "cookies.txt").unlink()
    refused = subprocess.run(
        ["bash", "-c", command + " --write-out '\n%{http_code}'"],
        cwd=work,
        env=curl_env(USERNAME=ALICE, PASSWORD="not-" + ALICE_PASSWORD),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, status = refused.stdout.rsplit("\n", 1)
    assert (status, json.loads(body)) == ("401", FAILED)
    jar_file = work / "cookies.txt"
    assert not jar_file.exists() or "dcvix_session" not in jar_file.read_text()


def test_login_cookie_attributes(fleet: Fleet) -> None:
    director = new_director(fleet)
    before = dt.datetime.now(dt.UTC)
    answer = login(director, ALICE, ALICE_PASSWORD)
    assert (answer.status, answer.body) == (200, {})
    (cookie,) = answer.cookies
    match = COOKIE_PATTERN.fullmatch(cookie)
    assert match is not None, cookie
    assert match.group(3).lower() == "strict"
    expires = email.utils.parsedate_to_datetime(match.group(2))
    assert match.group(2).endswith(" GMT")
    assert abs((expires - before).total_seconds() - 7200) < 60
    # The token is a PASETO v4.local token and never reaches a log line.
    assert match.group(1) not in director.log_text()
    assert match.group(1) not in (director.log_dir / "dcvix-director.log").read_text()


# ------------------------------------------------------ (2) login failures


def test_every_login_failure_is_the_same_401(fleet: Fleet) -> None:
    director = new_director(fleet)
    attempts = [
        (ALICE, "wrong-password", "rejected"),
        ("nobody", ALICE_PASSWORD, "rejected"),
        (CAROL, "anything", "backend unavailable"),
        (BOB, BOB_PASSWORD, "not an admin"),
    ]
    for user, password, _result in attempts:
        answer = login(director, user, password)
        assert (answer.status, answer.body, answer.cookies) == (401, FAILED, []), user
    assert backend_calls(director) == [ALICE, "nobody", CAROL, BOB]
    # The audit says what happened; the client never learns it.
    assert [row for row in audit_rows(director) if row[1] == "admin login failed"] == [
        (user, "admin login failed", "127.0.0.1", f"backend=external result={result}")
        for user, _password, result in attempts
    ]
    assert "login back end could not decide for carol" in director.log_text()

    # bob is a user: user login works, admin routes do not.
    answer = login(director, BOB, BOB_PASSWORD, admin=False)
    assert (answer.status, answer.body) == (200, {})
    token = answer.token
    health = call(director, "GET", "/v1/auth-health", token=token)
    assert (health.status, health.body) == (
        200,
        {**HEALTHY, "user": BOB, "admin": False},
    )
    refused = call(director, "GET", "/v1/admin/agents", token=token)
    assert (refused.status, refused.body) == (403, ADMIN_REQUIRED)
    refused = call(director, "GET", "/v1/admin/ca", token=token)
    assert (refused.status, refused.body) == (403, ADMIN_REQUIRED)
    assert audit_rows(director)[-1] == (
        BOB,
        "login",
        "127.0.0.1",
        "backend=external result=ok",
    )

    # Even alice's *user* login token is no admin token.
    answer = login(director, ALICE, ALICE_PASSWORD, admin=False)
    assert answer.status == 200
    refused = call(director, "GET", "/v1/admin/agents", token=answer.token)
    assert (refused.status, refused.body) == (403, ADMIN_REQUIRED)


def test_bad_login_bodies(fleet: Fleet) -> None:
    director = new_director(fleet)
    for body, status, error in [
        ({"userID": ALICE, "password": "a\nb"}, 401, FAILED),
        ({"userID": "alice\nroot", "password": "x"}, 400, {"error": "invalid userID"}),
        ({"userID": "-alice", "password": "x"}, 400, {"error": "invalid userID"}),
        ({"userID": "", "password": "x"}, 400, {"error": "invalid userID"}),
        (
            {"userID": 7, "password": "x"},
            400,
            {"error": "field 'userID' must be a string"},
        ),
        (["alice"], 400, {"error": "request body must be a JSON object"}),
    ]:
        answer = call(director, "POST", "/v1/admin/login", body=body)
        assert (answer.status, answer.body, answer.cookies) == (status, error, []), body
    # A password with a newline never reaches the back end.
    assert backend_calls(director) == []
    # Keys in any case, as Go reads them.
    answer = call(
        director,
        "POST",
        "/v1/admin/login",
        body={"USERID": ALICE, "Password": ALICE_PASSWORD},
    )
    assert (answer.status, answer.body) == (200, {})


# -------------------------------------------------------- (3) throttling


def test_sixth_attempt_is_throttled_even_with_the_right_password(
    fleet: Fleet,
) -> None:
    director = new_director(fleet)  # defaults: 5 failures, 5 minutes
    for _ in range(5):
        assert login(director, ALICE, "guess").body == FAILED
    answer = login(director, ALICE, ALICE_PASSWORD)
    assert (answer.status, answer.body, answer.cookies) == (429, THROTTLED, [])
    # Refused before the back end was asked.
    assert backend_calls(director) == [ALICE] * 5
    # The address is locked for everyone, alice is locked from everywhere.
    assert login(director, BOB, BOB_PASSWORD, admin=False).status == 429
    assert login(director, ALICE, ALICE_PASSWORD, source="127.0.0.2").status == 429
    # bob from another address is neither.
    for source in ("127.0.0.2", "127.0.0.3"):
        answer = login(director, BOB, BOB_PASSWORD, admin=False, source=source)
        assert (answer.status, answer.body) == (200, {}), source
    # Locked attempts: the first from each address is in the trail and the
    # log, the rest are counted (hammering must not grow the store); failures
    # are in both.
    assert (
        director.log_text().count(
            "alice admin login refused from 127.0.0.2 backend=external "
            "result=locked count=1"
        )
        == 1
    )
    rows = [row for row in audit_rows(director) if row[0] == ALICE]
    assert rows == [
        (ALICE, "admin login failed", "127.0.0.1", "backend=external result=rejected")
    ] * 5 + [
        (
            ALICE,
            "admin login refused",
            address,
            "backend=external result=locked count=1",
        )
        for address in ("127.0.0.1", "127.0.0.2")
    ]


def test_lock_lifts_after_the_lockout(fleet: Fleet) -> None:
    director = new_director(fleet, login_lockout="3s")
    for _ in range(5):
        assert login(director, ALICE, "guess").status == 401
    assert login(director, ALICE, ALICE_PASSWORD).status == 429
    # Refused while locked (each try logged, not counted), then let in.
    wait_for(
        "the lockout to lift",
        lambda: login(director, ALICE, ALICE_PASSWORD).status == 200,
        timeout=60,
    )
    # The success cleared alice's failures: one more failure does not lock.
    assert login(director, ALICE, "guess").status == 401
    assert login(director, ALICE, ALICE_PASSWORD).status == 200


def test_address_lock_covers_every_user(fleet: Fleet) -> None:
    director = new_director(fleet)
    for user, password in [
        (ALICE, "guess"),
        (BOB, "guess"),
        ("nobody", "guess"),
        (CAROL, "guess"),
        ("dave", "guess"),
    ]:
        assert login(director, user, password, admin=False).status == 401
    # No user has five failures, the address has.
    assert login(director, BOB, BOB_PASSWORD, admin=False).status == 429
    assert login(director, ALICE, ALICE_PASSWORD).status == 429
    # From another address both get in.
    assert (
        login(director, BOB, BOB_PASSWORD, admin=False, source="127.0.0.2").status
        == 200
    )
    assert login(director, ALICE, ALICE_PASSWORD, source="127.0.0.2").status == 200


def test_user_lock_covers_every_address(fleet: Fleet) -> None:
    director = new_director(fleet)
    for n in range(2, 7):
        answer = login(director, ALICE, "guess", source=f"127.0.0.{n}")
        assert answer.status == 401
    assert login(director, ALICE, ALICE_PASSWORD, source="127.0.0.7").status == 429
    # bob, from that fresh address, is not concerned.
    assert (
        login(director, BOB, BOB_PASSWORD, admin=False, source="127.0.0.7").status
        == 200
    )
    rows = [row for row in audit_rows(director) if row[0] == ALICE]
    assert [(action, where) for _, action, where, _ in rows] == [
        ("admin login failed", f"127.0.0.{n}") for n in range(2, 7)
    ] + [("admin login refused", "127.0.0.7")]
    assert "alice admin login refused from 127.0.0.7 " in director.log_text()


def test_simultaneous_guesses_are_throttled_too(fleet: Fleet) -> None:
    director = new_director(fleet)

    def guess(n: int) -> int:
        return login(director, "slow-sam", f"guess-{n}").status

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(guess, range(12)))
    assert sorted(statuses) == [401] * 5 + [429] * 7
    assert backend_calls(director) == ["slow-sam"] * 5


def test_user_lock_ignores_case(fleet: Fleet) -> None:
    director = new_director(fleet)
    for n, user in enumerate(["Alice", "ALICE", "aLice", "alicE", "alice"], start=2):
        assert login(director, user, "guess", source=f"127.0.0.{n}").status == 401
    assert login(director, ALICE, ALICE_PASSWORD, source="127.0.0.9").status == 429


def test_a_success_does_not_reset_the_address_count(fleet: Fleet) -> None:
    director = new_director(fleet)
    for user in ("nobody-1", "nobody-2", "nobody-3", "nobody-4"):
        assert login(director, user, "guess", admin=False).status == 401
    assert login(director, BOB, BOB_PASSWORD, admin=False).status == 200
    # The address's fifth failure in the window: the next attempt is locked.
    assert login(director, "nobody-5", "guess", admin=False).status == 401
    assert login(director, "nobody-6", "guess", admin=False).status == 429


def test_the_lockout_is_counted_from_the_locking_failure(fleet: Fleet) -> None:
    director = new_director(fleet, login_lockout="10s")
    first = time.monotonic()
    assert login(director, ALICE, "guess").status == 401
    # The next failures come 6 s after the first (the test waits on the clock
    # because the behaviour is about the clock).
    time.sleep(max(0.0, first + 6 - time.monotonic()))
    locking = time.monotonic()  # the director locks after this
    for _ in range(4):
        assert login(director, ALICE, "guess").status == 401
    assert login(director, ALICE, ALICE_PASSWORD).status == 429
    # Past 10 s from the first failure, a lock counted from it would be gone;
    # counted from the locking failure, it holds until at least locking + 10.
    time.sleep(max(0.0, first + 10.5 - time.monotonic()))
    answer = login(director, ALICE, ALICE_PASSWORD)
    answered = time.monotonic()
    assert answered < locking + 10, "too slow a machine to tell (5.5 s margin)"
    assert answer.status == 429


# --------------------------------------------- (4) restarts and logout


def test_tokens_survive_restarts_and_logout_ends_them(fleet: Fleet) -> None:
    director = new_director(fleet)
    key_file = director.data_dir / "token.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key_text = key_file.read_text()
    assert len(base64.b64decode(key_text.strip(), validate=True)) == 32

    answer = call(director, "GET", "/v1/admin/agents")
    assert (answer.status, answer.body) == (401, LOGIN_REQUIRED)
    answer = call(director, "GET", "/v1/auth-health")
    assert (answer.status, answer.body) == (401, LOGIN_REQUIRED)
    answer = call(director, "GET", "/v1/admin/agents", token="v4.local.garbage")
    assert (answer.status, answer.body) == (401, LOGIN_REQUIRED)

    token = admin_token(director)
    spare = admin_token(director)
    director.restart()
    assert key_file.read_text() == key_text
    assert key_text.strip() not in director.log_text()
    answer = call(director, "GET", "/v1/admin/agents", token=token)
    assert (answer.status, answer.body) == (200, [])

    answer = call(director, "POST", "/v1/logout", token=token)
    assert (answer.status, answer.body) == (200, {})
    (cleared,) = answer.cookies
    assert cleared.startswith("dcvix_session=; ")
    assert "Max-Age=0" in cleared
    for path in ("/v1/admin/agents", "/v1/auth-health"):
        answer = call(director, "GET", path, token=token)
        assert (answer.status, answer.body) == (401, LOGIN_REQUIRED), path
    # Kept as a hash until it would have expired.
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        hashes = [row[0] for row in db.execute("SELECT hash FROM revoked_tokens")]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    assert audit_rows(director)[-1][:3] == (ALICE, "logout", "127.0.0.1")

    director.restart()
    answer = call(director, "GET", "/v1/admin/agents", token=token)
    assert (answer.status, answer.body) == (401, LOGIN_REQUIRED)
    # Logging out again is harmless; the other login was never touched.
    assert call(director, "POST", "/v1/logout", token=token).status == 200
    assert call(director, "POST", "/v1/logout").status == 200
    assert call(director, "GET", "/v1/admin/agents", token=spare).status == 200


def test_logout_with_curl_and_the_cookie_jar(fleet: Fleet, tmp_path: Path) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    work = tmp_path / "operator"
    work.mkdir()
    shutil.copyfile(director.ca_file, work / "ca.pem")
    jar = work / "cookies.txt"
    jar.write_text(
        f"127.0.0.1\tFALSE\t/\tTRUE\t{int(time.time()) + 3600}\t"
        f"dcvix_session\t{token}\n"
    )

    def curl(*args: str) -> tuple[str, Any]:
        done = subprocess.run(
            [
                "curl",
                "--silent",
                "--cacert",
                "ca.pem",
                "--write-out",
                "\n%{http_code}",
                *args,
            ],
            cwd=work,
            env=curl_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        body, status = done.stdout.rsplit("\n", 1)
        return status, json.loads(body)

    url = f"https://127.0.0.1:{director.port}"
    assert curl("--cookie", "cookies.txt", f"{url}/v1/auth-health") == (
        "200",
        {**HEALTHY, "user": ALICE, "admin": True},
    )
    assert curl(
        "--cookie", "cookies.txt", "--cookie-jar", "cookies.txt", "-X", "POST",
        f"{url}/v1/logout",
    ) == ("200", {})  # fmt: skip
    # curl dropped the cleared cookie from its jar; replay the old token by hand.
    assert token not in jar.read_text()
    replayed = curl("--cookie", f"dcvix_session={token}", f"{url}/v1/admin/agents")
    assert replayed == ("401", LOGIN_REQUIRED)


# -------------------------------------------------------- (5) policy


def test_demoted_admin_loses_rights_at_the_next_request(fleet: Fleet) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    assert call(director, "GET", "/v1/admin/agents", token=token).status == 200

    mark = director.mark()
    write_users(director, [{"id": ALICE, "admin": False}, {"id": BOB}])
    os.kill(director.pid, signal.SIGHUP)
    director.wait_log("policy: 2 users (0 admins), 0 pools", since=mark)
    answer = call(director, "GET", "/v1/admin/agents", token=token)
    assert (answer.status, answer.body) == (403, ADMIN_REQUIRED)
    # Still logged in, just not an admin; and no new admin login either.
    assert call(director, "GET", "/v1/auth-health", token=token).status == 200
    assert login(director, ALICE, ALICE_PASSWORD).body == FAILED

    # Promoted again: the same token works.
    mark = director.mark()
    write_users(director, USERS)
    os.kill(director.pid, signal.SIGHUP)
    director.wait_log("policy: 2 users (1 admins), 0 pools", since=mark)
    assert call(director, "GET", "/v1/admin/agents", token=token).status == 200


def test_broken_users_json_on_sighup_keeps_the_last_good_policy(
    fleet: Fleet,
) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    users = policy_folder(director) / "users.json"
    for broken, problem in [
        ('[{"id": "alice", "admin": false', "not valid JSON"),
        ('[{"id": "alice", "admin": "no"}]', "'admin' must be true or false"),
        ('{"alice": true}', "must be a JSON array of objects"),
    ]:
        mark = director.mark()
        write_users(director, broken)
        os.kill(director.pid, signal.SIGHUP)
        logged = director.wait_log("policy not reloaded", since=mark)
        line = next(x for x in logged.splitlines() if "policy not reloaded" in x)
        assert line.startswith("ERROR"), line
        assert f"keeping the last good one: {users}: " in line, line
        assert problem in line, line
        answer = call(director, "GET", "/v1/admin/agents", token=token)
        assert (answer.status, answer.body) == (200, []), broken
        assert login(director, ALICE, ALICE_PASSWORD).status == 200
    # A good file after the broken ones counts again.
    mark = director.mark()
    write_users(director, [{"id": ALICE}])
    os.kill(director.pid, signal.SIGHUP)
    director.wait_log("policy: 1 users (0 admins)", since=mark)
    assert call(director, "GET", "/v1/admin/agents", token=token).status == 403


def test_broken_users_json_at_start_stops_the_director(fleet: Fleet) -> None:
    director = new_director(fleet, start=False)
    users = policy_folder(director) / "users.json"
    for broken, problem in [
        ("[{", "not valid JSON"),
        ('[{"id": "alice"}, {"id": "alice"}]', "'alice'"),
    ]:
        write_users(director, broken)
        director.write_conf()
        done = subprocess.run(
            twistd_argv(director.plugin, director.conf),
            cwd=director.folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"dcvix-director: {users}: "), lines
        assert problem in lines[0], lines
        assert "Traceback" not in done.stdout


# ------------------------------------------------ (6) the admin agent API


def agents(director: Director, token: str, query: str = "") -> list[dict[str, Any]]:
    answer = call(director, "GET", "/v1/admin/agents" + query, token=token)
    assert answer.status == 200, answer.body
    assert isinstance(answer.body, list)
    return answer.body


def action(
    director: Director, token: str, guid: str, verb: str, query: str = ""
) -> Answer:
    return call(director, "POST", f"/v1/admin/agents/{guid}/{verb}{query}", token=token)


def key_pin(agent: Agent) -> str:
    return public_key_fingerprint(private_key_file(agent.key).public_key())


def sighup_and_wait(agent: Agent, text: str) -> None:
    """SIGHUP makes an agent that is not enrolled register at once."""
    mark = agent.mark()
    os.kill(agent.pid, signal.SIGHUP)
    agent.wait_log(text, since=mark)


def parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text
    return moment


def test_admin_agent_api_with_real_agents(fleet: Fleet) -> None:
    director = new_director(fleet)
    started = dt.datetime.now(dt.UTC)
    token = admin_token(director)
    a = fleet.agent(director, "ws-a", start=False)
    b = fleet.agent(director, "ws-b", hostname="ws-a", start=False)
    c = fleet.agent(director, "ws-c", start=False)
    fleet.start(a, b, c)
    for agent in (a, b, c):
        agent.wait_log("pending approval")

    listed = agents(director, token)
    by_guid = {x["guid"]: x for x in listed}
    assert set(by_guid) == {a.guid, b.guid, c.guid}
    for agent, hostname in ((a, "ws-a"), (b, "ws-a"), (c, "ws-c")):
        entry = by_guid[agent.guid]
        assert entry["hostname"] == hostname
        assert entry["state"] == "pending"
        assert entry["address"] == "127.0.0.1"
        assert entry["key_fingerprint"] == key_pin(agent)
        assert entry["registered_at"] is None
        assert entry["cert_serial"] == ""
        created = parse_time(entry["created_at"])
        assert started - dt.timedelta(seconds=5) < created
        assert created < dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        assert parse_time(entry["state_changed_at"]) >= created
        assert entry["director_host"] is False
        # Two pending agents named ws-a: allowed, and flagged.
        assert entry["duplicate_hostname"] is (hostname == "ws-a")
    assert {x["guid"] for x in agents(director, token, "?state=pending")} == {
        a.guid,
        b.guid,
        c.guid,
    }
    assert agents(director, token, "?state=registered") == []
    assert agents(director, token, "?state=revoked") == []
    bogus = call(director, "GET", "/v1/admin/agents?state=bogus", token=token)
    assert (bogus.status, bogus.body) == (
        400,
        {"error": "state must be one of pending, registered, revoked, denied"},
    )

    # approve a: 200, and the agent enrols at its next poll (SIGHUP: now).
    approved = action(director, token, a.guid, "approve")
    assert approved.status == 200, approved.body
    assert approved.body["replaced"] == []
    assert approved.body["agent"]["guid"] == a.guid
    assert approved.body["agent"]["state"] == "registered"
    assert "warning" not in approved.body
    sighup_and_wait(a, "registered as agent")
    assert a.certificate.exists()
    (entry,) = agents(director, token, "?state=registered")
    assert entry["guid"] == a.guid
    assert parse_time(entry["registered_at"]) >= started
    assert entry["cert_serial"] != ""
    assert parse_time(entry["cert_expires_at"]) > started + dt.timedelta(days=13)
    # b, pending, still has a registered agent's name; a itself is no duplicate.
    assert entry["duplicate_hostname"] is False
    flags = {x["guid"]: x["duplicate_hostname"] for x in agents(director, token)}
    assert flags == {a.guid: False, b.guid: True, c.guid: False}

    # Errors: already registered, unknown, not a UUID.
    again = action(director, token, a.guid, "approve")
    assert (again.status, again.body) == (
        409,
        {"error": f"agent {a.guid} is registered, it cannot be approved"},
    )
    unknown = str(uuid.uuid4())
    for verb in ("approve", "deny", "revoke", "reactivate", "delete"):
        answer = action(director, token, unknown, verb)
        assert (answer.status, answer.body) == (
            404,
            {"error": f"agent {unknown} not found"},
        ), verb
        answer = action(director, token, "not-a-uuid", verb)
        assert (answer.status, answer.body) == (
            400,
            {"error": "guid must be a UUID"},
        ), verb

    # b has a's hostname: 409, then replace=true revokes a.
    clash = action(director, token, b.guid, "approve")
    assert (clash.status, clash.body) == (
        409,
        {
            "error": f"hostname ws-a is already registered to agent {a.guid}; "
            "approve with replace to revoke it"
        },
    )
    assert state_of(director, b.guid) == "pending"
    replaced = action(director, token, b.guid, "approve", "?replace=true")
    assert replaced.status == 200, replaced.body
    assert replaced.body["replaced"] == [a.guid]
    assert replaced.body["agent"]["state"] == "registered"
    assert state_of(director, a.guid) == "revoked"
    assert {x["guid"] for x in agents(director, token, "?state=revoked")} == {a.guid}
    sighup_and_wait(b, "registered as agent")

    # deny c: it stays denied, its next poll is refused.
    denied = action(director, token, c.guid, "deny")
    assert (denied.status, denied.body["agent"]["state"]) == (200, "denied")
    sighup_and_wait(c, "agent denied")
    assert state_of(director, c.guid) == "denied"
    assert action(director, token, c.guid, "revoke").status == 409
    reactivated = action(director, token, c.guid, "reactivate")
    assert (reactivated.status, reactivated.body["agent"]["state"]) == (
        200,
        "pending",
    )

    # revoke b, reactivate b; a cannot come back while b holds ws-a.
    revoked = action(director, token, b.guid, "revoke")
    assert (revoked.status, revoked.body["agent"]["state"]) == (200, "revoked")
    reactivated = action(director, token, b.guid, "reactivate")
    assert (reactivated.status, reactivated.body["agent"]["state"]) == (
        200,
        "registered",
    )
    blocked = action(director, token, a.guid, "reactivate")
    assert (blocked.status, blocked.body) == (
        409,
        {"error": f"hostname ws-a is now registered to agent {b.guid}"},
    )

    # delete c: gone from the list, a second delete is 404.
    deleted = action(director, token, c.guid, "delete")
    assert (deleted.status, deleted.body["agent"]["guid"]) == (200, c.guid)
    assert {x["guid"] for x in agents(director, token)} == {a.guid, b.guid}
    assert action(director, token, c.guid, "delete").status == 404

    # Every successful action is audited as admin:alice, in order.
    assert [
        (row[1], row[2]) for row in audit_rows(director) if row[0] == "admin:alice"
    ] == [
        ("approve", a.guid),
        ("revoke", a.guid),
        ("approve", b.guid),
        ("deny", c.guid),
        ("reactivate", c.guid),
        ("revoke", b.guid),
        ("reactivate", b.guid),
        ("delete", c.guid),
    ]
    assert (
        "admin:alice",
        "revoke",
        a.guid,
        f"replaced by {b.guid} (ws-a)",
    ) in audit_rows(director)
    # ... and logged as audit lines.
    # ... and logged as audit lines, each exactly its row.
    logged = re.findall(r"dcvix\.audit: (admin:alice .*)", director.log_text())
    assert logged == audit_log_lines(director, "admin:alice")
    assert logged[0].startswith(
        f"admin:alice approve {a.guid} from 127.0.0.1 hostname=ws-a key="
    )


def test_admin_ca_matches_the_logged_fingerprint(fleet: Fleet) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    answer = call(director, "GET", "/v1/admin/ca", token=token)
    assert answer.status == 200
    assert set(answer.body) == {"certificate", "fingerprint"}
    assert answer.body["certificate"] == director.ca_file.read_text()
    logged = re.findall(
        r"CA fingerprint \(SHA-256\): ([0-9a-f]{64})", director.log_text()
    )
    assert logged == [answer.body["fingerprint"]]
    (ca,) = load_certificates(director.ca_file.read_bytes())
    assert certificate_fingerprint(ca) == answer.body["fingerprint"]
    assert call(director, "GET", "/v1/admin/ca").status == 401


def test_approving_an_agent_on_the_directors_machine_warns(fleet: Fleet) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    hostname = socket.gethostname()
    guid = register_pending(director, hostname)
    (entry,) = agents(director, token)
    assert (entry["hostname"], entry["director_host"]) == (hostname, True)
    answer = action(director, token, guid, "approve")
    assert answer.status == 200, answer.body
    assert answer.body["warning"] == (
        f"{hostname} is the director's own host name: this agent runs on the "
        "director's machine"
    )


# ------------------------------------------------------------- (7) CSRF


def test_cross_site_requests_are_refused(fleet: Fleet) -> None:
    director = new_director(fleet)
    same_origin = f"https://127.0.0.1:{director.port}"
    token = admin_token(director)  # no Origin, as curl
    pending = register_pending(director, "ws-csrf")
    audited = len(audit_rows(director))
    calls = len(backend_calls(director))

    for headers in (
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Origin": f"http://127.0.0.1:{director.port}"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": same_origin, "Sec-Fetch-Site": "cross-site"},
    ):
        answer = login(director, ALICE, ALICE_PASSWORD, headers=headers)
        assert (answer.status, answer.cookies) == (403, []), headers
        answer = call(director, "POST", "/v1/logout", token=token, headers=headers)
        assert (answer.status, answer.cookies) == (403, []), headers
        answer = call(
            director,
            "POST",
            f"/v1/admin/agents/{pending}/approve",
            token=token,
            headers=headers,
        )
        assert answer.status == 403, headers
    assert call(director, "POST", "/v1/user/login", headers={"Origin": EVIL}).body == {
        "error": "cross-origin request refused"
    }

    # Nothing happened: no back end call, no audit line, token and agent as before.
    assert len(backend_calls(director)) == calls
    assert len(audit_rows(director)) == audited
    assert call(director, "GET", "/v1/auth-health", token=token).status == 200
    assert state_of(director, pending) == "pending"
    # A cross-site GET is harmless and allowed.
    listed = call(
        director, "GET", "/v1/admin/agents", token=token, headers={"Origin": EVIL}
    )
    assert [x["guid"] for x in listed.body] == [pending]

    # The same origin (what the admin UI sends) works for all three.
    headers = {"Origin": same_origin, "Sec-Fetch-Site": "same-origin"}
    answer = login(director, ALICE, ALICE_PASSWORD, headers=headers)
    assert answer.status == 200
    fresh = answer.token
    answer = call(
        director,
        "POST",
        f"/v1/admin/agents/{pending}/approve",
        token=fresh,
        headers=headers,
    )
    assert (answer.status, answer.body["agent"]["state"]) == (200, "registered")
    answer = call(director, "POST", "/v1/logout", token=fresh, headers=headers)
    assert answer.status == 200
    assert call(director, "GET", "/v1/auth-health", token=fresh).status == 401
    # Without Origin (curl) logout works too.
    assert call(director, "POST", "/v1/logout", token=token).status == 200
    assert call(director, "GET", "/v1/auth-health", token=token).status == 401


# --------------------------------------------- (8) methods and unknown paths


def test_wrong_methods_and_unknown_paths_are_json(fleet: Fleet) -> None:
    director = new_director(fleet)
    token = admin_token(director)
    guid = str(uuid.uuid4())
    for method, path, allow in [
        ("GET", "/v1/admin/login", "POST"),
        ("GET", "/v1/user/login", "POST"),
        ("PUT", "/v1/user/login", "POST"),
        ("GET", "/v1/logout", "POST"),
        ("POST", "/v1/auth-health", "GET, HEAD"),
        ("DELETE", "/v1/admin/agents", "GET, HEAD"),
        ("POST", "/v1/admin/agents", "GET, HEAD"),
        ("GET", f"/v1/admin/agents/{guid}/approve", "POST"),
        ("DELETE", f"/v1/admin/agents/{guid}/delete", "POST"),
        ("POST", "/v1/admin/ca", "GET, HEAD"),
    ]:
        answer = call(director, method, path, token=token)
        assert (answer.status, answer.body) == (
            405,
            {"error": "method not allowed"},
        ), (method, path)
        assert answer.headers["Allow"] == allow, (method, path)
    for method, path in [
        ("GET", "/v1/nope"),
        ("POST", "/v1/admin/nope"),
        ("GET", "/v1/admin/agents/x"),
        ("POST", f"/v1/admin/agents/{guid}/frobnicate"),
        ("POST", f"/v1/admin/agents/{guid}/approve/more"),
        ("GET", "/v1/admin"),
        ("GET", "/v1"),
    ]:
        answer = call(director, method, path, token=token)
        assert (answer.status, answer.body) == (404, {"error": "not found"}), (
            method,
            path,
        )
