"""The global bound on login back-end calls, against a real director.

A slow external login command: at most ``auth_concurrency`` processes run at
once, ``auth_queue`` logins wait, the rest are answered 503 at once, and the
director keeps serving other routes meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from fleet import Director, Fleet, https, wait_for

STOPPED = -15

# Blocks until the test creates RELEASE; notes how many run at its start.
SLOW_CHECK = """#!/bin/sh
dir={folder}
touch "$dir/running.$$"
ls "$dir" | grep -c '^running\\.' >> "$dir/concurrency"
while [ ! -e "$dir/release" ]; do sleep 0.05; done
rm -f "$dir/running.$$"
echo $$ >> "$dir/done"
exit 1
"""


def login(port: int, user: str) -> tuple[int, Any]:
    return https(
        port,
        "/v1/user/login",
        method="POST",
        body={"userID": user, "password": "guess"},
    )


def script_director(
    fleet: Fleet, folder: Path, script: str, concurrency: int, queue: int
) -> Director:
    """A started director whose login back end is ``script`` (in ``folder``)."""
    folder.mkdir()
    check = folder / "check"
    check.write_text(script.format(folder=folder))
    check.chmod(0o755)
    director = fleet.director(
        start=False,
        auth_type="external",
        auth_concurrency=str(concurrency),
        auth_queue=str(queue),
        login_max_failures="100",
    )
    director.extra["external_auth"] = {"external_command": str(check)}
    fleet.start(director)
    return director


def test_slow_logins_are_bounded_queued_and_refused_beyond(
    fleet: Fleet, tmp_path: Path
) -> None:
    folder = tmp_path / "auth"
    director = script_director(fleet, folder, SLOW_CHECK, concurrency=2, queue=3)

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        logins = [pool.submit(login, director.port, f"user{n}") for n in range(10)]

        def settled() -> bool:
            running = len(list(folder.glob("running.*")))
            return running == 2 and sum(f.done() for f in logins) == 5

        wait_for("two running, five refused at once", settled, timeout=60)
        refused = [f.result() for f in logins if f.done()]
        assert (
            refused
            == [(503, {"error": "too many logins at once; try again shortly"})] * 5
        )
        # Saturated back ends do not stop the director answering.
        assert https(director.port, "/v1/health") == (200, {"status": "healthy"})

        (folder / "release").touch()
        answers = [f.result(timeout=60) for f in logins]
    finished = [a for a in answers if a[0] != 503]
    assert finished == [(401, {"error": "authentication failed"})] * 5
    runs = (folder / "concurrency").read_text().split()
    assert len(runs) == 5
    assert max(int(n) for n in runs) <= 2


# A login not refused (503) within this long is taken as queued: refusals are
# answered at once, so this only needs room for a loaded machine.
QUEUED_AFTER = 5.0

# As SLOW_CHECK, and notes whom it ran for.
NAMED_CHECK = """#!/bin/sh
dir={folder}
IFS= read -r user
touch "$dir/running.$$"
while [ ! -e "$dir/release" ]; do sleep 0.05; done
rm -f "$dir/running.$$"
echo "$user" >> "$dir/ran"
exit 1
"""


def hung_up_login(port: int, ca_file: Path, user: str) -> None:
    """A login sent whole, then the connection closed without reading."""
    context = ssl.create_default_context(cafile=str(ca_file))
    body = json.dumps({"userID": user, "password": "guess"}).encode()
    with (
        socket.create_connection(("127.0.0.1", port), 30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as link,
    ):
        link.sendall(
            b"POST /v1/user/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def test_a_login_whose_client_left_leaves_the_queue(
    fleet: Fleet, tmp_path: Path
) -> None:
    folder = tmp_path / "auth"
    director = script_director(fleet, folder, NAMED_CHECK, concurrency=1, queue=2)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(login, director.port, "first")
        wait_for("the first login running", lambda: list(folder.glob("running.*")))
        for user in ("left-1", "left-2"):
            hung_up_login(director.port, director.ca_file, user)
        # Until the director notices they left, they hold the queue (503 at
        # once); then a login waits for the back end instead of being refused.
        # A refusal is immediate: one not in within QUEUED_AFTER is queued.
        deadline = time.monotonic() + 60
        while True:
            waiting = pool.submit(login, director.port, "waiting")
            try:
                refused = waiting.result(timeout=QUEUED_AFTER)
            except concurrent.futures.TimeoutError:
                break  # queued, not refused
            assert refused[0] == 503, refused
            assert time.monotonic() < deadline, "the queue never emptied"
        (folder / "release").touch()
        assert first.result(timeout=60)[0] == 401
        assert waiting.result(timeout=60)[0] == 401
    # The back end never ran for the logins whose clients had left.
    assert (folder / "ran").read_text().split() == ["first", "waiting"]
