"""Fixtures for real system services (see ../shared/RECIPES.md §2).

Import the fixtures into a test module that needs them::

    from services import pam_service_fixture, pam_user_fixture  # noqa: F401

(the functions have other names than the fixtures, so that a test's
``pam_user`` argument does not shadow an imported name).

Each fixture skips with a clear reason when the machine cannot provide the
service (not root, tools missing); ``tests/conftest.py`` turns those skips into
failures under ``DCVIX_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PAM_DIR = Path("/etc/pam.d")
# Root's tools live in sbin, which a test runner's PATH may lack.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACCOUNT_TOOLS = ("useradd", "chpasswd", "usermod", "chage", "userdel")


@dataclass(frozen=True)
class PamUser:
    """A throwaway local account that pam_unix checks."""

    name: str
    password: str


def system_tool(name: str) -> str:
    """The absolute path of a system tool, or a skip saying it is missing."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package passwd)")
    return found


def need_root(why: str) -> None:
    """Skip unless the tests run as root."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def run_tool(*argv: str, stdin: str | None = None) -> None:
    """Run a system tool; fail with its output if it fails."""
    result = subprocess.run(
        [system_tool(argv[0]), *argv[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )


@pytest.fixture(scope="session", name="pam_user")
def pam_user_fixture() -> Iterator[PamUser]:
    """A random ``dcvixt<hex>`` user, no home, nologin shell; deleted afterwards."""
    need_root("useradd, and pam_unix checks other users' passwords only as root")
    for tool in ACCOUNT_TOOLS:
        system_tool(tool)
    name = "dcvixt" + secrets.token_hex(4)
    password = "Pw-" + secrets.token_urlsafe(12)
    run_tool(
        "useradd",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "dcvix throwaway test user",
        name,
    )
    try:
        run_tool("chpasswd", stdin=f"{name}:{password}\n")
        yield PamUser(name, password)
    finally:
        run_tool("userdel", name)


@pytest.fixture(scope="session", name="pam_service")
def pam_service_fixture() -> Iterator[str]:
    """A private ``/etc/pam.d/dcvix-t<hex>``: pam_unix with ``nodelay``.

    ``nodelay`` makes a wrong password fail in milliseconds instead of
    pam_unix's ~2 s; the account line checks locked and expired accounts.
    """
    need_root("writes /etc/pam.d")
    if not PAM_DIR.is_dir():
        pytest.skip(f"{PAM_DIR} does not exist (Linux-PAM not installed)")
    name = "dcvix-t" + secrets.token_hex(4)
    path = PAM_DIR / name
    path.write_text(
        "auth     required   pam_unix.so nodelay\naccount  required   pam_unix.so\n"
    )
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)
