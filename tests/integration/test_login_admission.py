"""The global bound on login back-end calls, against a real director.

A slow external login command: at most ``auth_concurrency`` processes run at
once, ``auth_queue`` logins wait, the rest are answered 503 at once, and the
director keeps serving other routes meanwhile.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from fleet import Fleet, https, wait_for

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


def test_slow_logins_are_bounded_queued_and_refused_beyond(
    fleet: Fleet, tmp_path: Path
) -> None:
    folder = tmp_path / "auth"
    folder.mkdir()
    script = folder / "slow-check"
    script.write_text(SLOW_CHECK.format(folder=folder))
    script.chmod(0o755)
    director = fleet.director(
        start=False,
        auth_type="external",
        auth_concurrency="2",
        auth_queue="3",
        login_max_failures="100",
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    fleet.start(director)

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
