"""A throwaway PostgreSQL cluster for the tests (see ../shared/RECIPES.md §7).

One cluster per test session (``initdb`` + ``pg_ctl`` under a folder of its own,
on a free loopback port, about 1.5 s); each test that wants a database gets a
new, empty one from :meth:`Postgres.database`, so tests never see each other's
rows. Import the fixture into a module that needs it::

    from postgres import postgres_fixture  # noqa: F401

It skips with a reason when the machine has no PostgreSQL server or the tests
do not run as root (``initdb`` must run as the ``postgres`` user);
``tests/conftest.py`` turns that skip into a failure in CI.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from daemons import free_port

if TYPE_CHECKING:
    from dcvix.director.registry.postgres import (
        PostgresConnection as PostgresConnectionType,
    )
    from dcvix.director.registry.postgres import PostgresEngine as PostgresEngineType

PG_ROOT = Path("/usr/lib/postgresql")
# The superuser's password: the clusters only listen on loopback and live for
# one test session, but password authentication is what directors use.
SUPERUSER = "postgres"


def _server_binaries() -> Path:
    """The newest installed server's ``bin`` folder, or a skip naming the package."""
    found = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        pytest.skip("no PostgreSQL server installed (Debian package postgresql)")
    return found[-1]


def _as_postgres(*argv: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )


@dataclass(frozen=True)
class Postgres:
    """A running cluster: where it listens and how to log in as its superuser."""

    host: str
    port: int
    password: str
    folder: Path

    def url(self, database: str, user: str = SUPERUSER) -> str:
        """A ``postgresql://`` URL without the password (as the config has it)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit: CREATE DATABASE works)."""
        import psycopg  # imported here: collecting the tests must not need it

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=30,
        ) as connection:
            connection.execute(sql.encode())

    def database(self) -> str:
        """A new, empty database; its ``postgresql://`` URL."""
        name = f"dcvix_{secrets.token_hex(6)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres() -> Iterator[Postgres]:
    """Start a cluster, yield it, stop it and remove its folder."""
    if os.geteuid() != 0:
        pytest.skip("needs root: initdb runs as the postgres user")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (Debian package postgresql)")
    binaries = _server_binaries()
    # Not under pytest's basetemp: postgres cannot traverse /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="dcvix-pg-"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    password = secrets.token_urlsafe(16)
    secret = folder / "password"
    secret.write_text(password + "\n")
    os.chown(secret, owner.pw_uid, owner.pw_gid)
    port = free_port()
    try:
        _as_postgres(
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            f"--pwfile={secret}",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        _as_postgres(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} "
            f"-c unix_socket_directories={folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200",
            "start",
        )
        yield Postgres("127.0.0.1", port, password, folder)
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the whole test session."""
    yield from start_postgres()


class PostgresStore:
    """One migrated database for a module's tests, emptied before each test."""

    def __init__(self, cluster: Postgres) -> None:
        from dcvix.director.registry.postgres import PostgresEngine

        self.cluster = cluster
        self.url = cluster.database()
        PostgresEngine(self.url, cluster.password, 1).close()  # migrates

    def engine(self, connections: int = 2) -> PostgresEngineType:
        """A new engine on the database (as a director's)."""
        from dcvix.director.registry.postgres import PostgresEngine

        return PostgresEngine(self.url, self.cluster.password, connections)

    def connection(self) -> PostgresConnectionType:
        """A connection of its own, as statements see it."""
        import psycopg

        from dcvix.director.registry.postgres import PostgresConnection

        return PostgresConnection(
            psycopg.connect(
                self.url,
                password=self.cluster.password,
                autocommit=True,
                options="-c TimeZone=UTC",
            )
        )

    def empty(self) -> None:
        """Forget every row (identities too), as on a new install."""
        self.cluster.admin(
            "TRUNCATE agents, audit, revoked_tokens RESTART IDENTITY",
            self.url.rsplit("/", 1)[1],
        )
