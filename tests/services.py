"""Fixtures for real system services (see ../shared/RECIPES.md §2, §3 and §4).

Import the fixtures into a test module that needs them::

    from services import pam_service_fixture, pam_user_fixture  # noqa: F401

(the functions have other names than the fixtures, so that a test's
``pam_user`` argument does not shadow an imported name).

Each fixture skips with a clear reason when the machine cannot provide the
service (not root, tools missing); ``tests/conftest.py`` turns those skips into
failures under ``DCVIX_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

import certs
from daemons import free_port
from dcvix.common.threads import ThreadPoolService

PAM_DIR = Path("/etc/pam.d")
# Root's tools live in sbin, which a test runner's PATH may lack.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACCOUNT_TOOLS = ("useradd", "chpasswd", "usermod", "chage", "userdel")


@dataclass(frozen=True)
class PamUser:
    """A throwaway local account that pam_unix checks."""

    name: str
    password: str


def system_tool(name: str, package: str = "passwd") -> str:
    """The absolute path of a system tool, or a skip naming its Debian package."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
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


# ------------------------------------------------------------- OpenLDAP slapd

LDAP_BASE_DN = "dc=dcvix,dc=test"
LDAP_SERVICE_DN = "cn=svc-dcvix,dc=dcvix,dc=test"
LDAP_PEOPLE = "ou=people," + LDAP_BASE_DN
LDAP_REFERRAL = "ou=partner," + LDAP_BASE_DN
SCHEMA_FILE = Path(__file__).parent / "dcvix-ad.schema"
SLAPD_PACKAGES = "slapd, ldap-utils"


@dataclass(frozen=True)
class LdapUser:
    """An entry of the test directory that can bind with ``password``."""

    dn: str
    password: str


# sAMAccountName "alice", uid "asmith": typed "ALICE" finds her; her id is "alice".
LDAP_ALICE = LdapUser("uid=asmith," + LDAP_PEOPLE, "Wonder-land.42")
# sAMAccountName "Bob.Jones" (mixed case); a password that needs UTF-8.
LDAP_BOB = LdapUser("cn=Bob Jones," + LDAP_PEOPLE, "Bøb ß;#pass\\wörd ")
# No AD attributes at all: only uid "carol".
LDAP_CAROL = LdapUser("uid=carol," + LDAP_PEOPLE, "Carol-pw-3")
# Two uid values, "dave" and "david"; sAMAccountName "dave".
LDAP_DAVE = LdapUser("uid=dave," + LDAP_PEOPLE, "Dave-pw-4")
# Two entries with the same sAMAccountName "twin".
LDAP_TWINS = (
    LdapUser("uid=twin1," + LDAP_PEOPLE, "Twin-pw-5"),
    LdapUser("uid=twin2,ou=contractors," + LDAP_BASE_DN, "Twin-pw-5"),
)

SLAPD_CONF = """\
include   /etc/ldap/schema/core.schema
include   /etc/ldap/schema/cosine.schema
include   /etc/ldap/schema/inetorgperson.schema
include   /etc/ldap/schema/nis.schema
include   {schema}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile   {folder}/slapd.pid
argsfile  {folder}/slapd.args
TLSCertificateFile    {folder}/server.crt
TLSCertificateKeyFile {folder}/server.key

database  mdb
maxsize   33554432
suffix    "{base}"
rootdn    "cn=admin,{base}"
rootpw    {root_password}
directory {folder}/data
index     objectClass,uid,sAMAccountName eq
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
"""


def _ldif_line(attribute: str, value: str) -> str:
    """``attribute: value``, base64 (``::``) when LDIF requires it."""
    plain = value.isascii() and value.isprintable() and value == value.strip()
    if plain and not value.startswith((":", "<")):
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"


def _ldif_entry(dn: str, *attributes: tuple[str, str]) -> str:
    return "\n".join([_ldif_line("dn", dn)] + [_ldif_line(*a) for a in attributes])


def _ldap_entries(service_password: str) -> str:
    ad = ("objectClass", "dcvixTestADUser")
    person = ("objectClass", "inetOrgPerson")
    entries = [
        _ldif_entry(
            LDAP_BASE_DN,
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("o", "dcvix test"),
            ("dc", "dcvix"),
        ),
        _ldif_entry(
            LDAP_PEOPLE, ("objectClass", "organizationalUnit"), ("ou", "people")
        ),
        _ldif_entry(
            "ou=contractors," + LDAP_BASE_DN,
            ("objectClass", "organizationalUnit"),
            ("ou", "contractors"),
        ),
        # AD answers a search from the domain root with references to other
        # partitions as well: they are not entries, and are not followed.
        _ldif_entry(
            LDAP_REFERRAL,
            ("objectClass", "referral"),
            ("objectClass", "extensibleObject"),
            ("ou", "partner"),
            ("ref", "ldap://partner.invalid/ou=people,dc=partner,dc=test"),
        ),
        _ldif_entry(
            LDAP_SERVICE_DN,
            ("objectClass", "person"),
            ("cn", "svc-dcvix"),
            ("sn", "service"),
            ("userPassword", service_password),
        ),
        _ldif_entry(
            LDAP_ALICE.dn,
            person,
            ad,
            ("uid", "asmith"),
            ("cn", "Alice Smith"),
            ("sn", "Smith"),
            ("sAMAccountName", "alice"),
            ("userPrincipalName", "alice@dcvix.test"),
            ("userPassword", LDAP_ALICE.password),
        ),
        _ldif_entry(
            LDAP_BOB.dn,
            person,
            ad,
            ("uid", "bjones"),
            ("cn", "Bob Jones"),
            ("sn", "Jones"),
            ("sAMAccountName", "Bob.Jones"),
            ("userPassword", LDAP_BOB.password),
        ),
        _ldif_entry(
            LDAP_CAROL.dn,
            person,
            ("uid", "carol"),
            ("cn", "Carol"),
            ("sn", "Carol"),
            ("userPassword", LDAP_CAROL.password),
        ),
        _ldif_entry(
            LDAP_DAVE.dn,
            person,
            ad,
            ("uid", "dave"),
            ("uid", "david"),
            ("cn", "Dave"),
            ("sn", "Dave"),
            ("sAMAccountName", "dave"),
            ("userPassword", LDAP_DAVE.password),
        ),
    ]
    for number, twin in enumerate(LDAP_TWINS, 1):
        entries.append(
            _ldif_entry(
                twin.dn,
                person,
                ad,
                ("uid", f"twin{number}"),
                ("cn", f"Twin {number}"),
                ("sn", "Twin"),
                ("sAMAccountName", "twin"),
                ("userPassword", twin.password),
            )
        )
    return "\n\n".join(entries) + "\n"


@dataclass
class Slapd:
    """A throwaway slapd: ldap:// and ldaps:// on 127.0.0.1, ldapi:// in ``folder``.

    Its ldaps:// port also listens on 127.0.0.2, a name its certificate
    (``localhost``, ``127.0.0.1``) does not carry. ``-d 256`` writes every
    operation (the filter of each search included) to ``log``.
    """

    folder: Path
    port: int
    tls_port: int
    ca_file: Path
    bind_password: str
    process: subprocess.Popen[bytes] | None = None
    base_dn: str = LDAP_BASE_DN
    bind_dn: str = LDAP_SERVICE_DN

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def socket(self) -> Path:
        return self.folder / "ldapi"

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + quote(str(self.socket), safe="")

    @property
    def log(self) -> Path:
        return self.folder / "slapd.log"

    def log_text(self) -> str:
        """Everything slapd logged, all starts together."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        slapd = system_tool("slapd", SLAPD_PACKAGES)
        listeners = " ".join(
            [
                f"{self.ldap_url}/",
                f"{self.ldaps_url}/",
                f"ldaps://127.0.0.2:{self.tls_port}/",
                f"{self.ldapi_url}/",
            ]
        )
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    slapd,
                    "-d",
                    "256",
                    "-f",
                    str(self.folder / "slapd.conf"),
                    "-h",
                    listeners,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Until the service account can bind over TCP and over the socket."""
        whoami = system_tool("ldapwhoami", SLAPD_PACKAGES)
        deadline = time.monotonic() + timeout
        pending = [self.ldap_url, self.ldapi_url]
        password = self.bind_password
        while pending:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"slapd exited {self.process.returncode}: {self.log_text()}"
                )
            done = subprocess.run(
                [whoami, "-x", "-H", pending[0], "-D", self.bind_dn, "-w", password],
                capture_output=True,
                text=True,
                env={"LDAPNOINIT": "1", "PATH": SYSTEM_PATH},
                check=False,
            )
            if done.returncode == 0:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"slapd not ready: {done.stderr.strip()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again: same ports, same data; every client is cut off."""
        self.stop()
        self.start()


def prepare_slapd(folder: Path) -> Slapd:
    """A loaded, not yet started slapd in ``folder``, with its own CA."""
    for tool in ("slapd", "slapadd", "ldapwhoami"):
        system_tool(tool, SLAPD_PACKAGES)
    schemas = Path("/etc/ldap/schema")
    if not (schemas / "inetorgperson.schema").exists():
        pytest.skip(f"{schemas} has no inetorgperson.schema (Debian package slapd)")
    (folder / "data").mkdir(parents=True)
    ca = certs.CA.create("dcvix test LDAP CA")
    ca.issue("localhost", ["localhost"], ["127.0.0.1"]).write(folder, "server")
    ca_file = ca.write(folder, "ca.pem")
    service_password = "svc-" + secrets.token_urlsafe(12)
    conf = folder / "slapd.conf"
    conf.write_text(
        SLAPD_CONF.format(
            schema=SCHEMA_FILE,
            folder=folder,
            base=LDAP_BASE_DN,
            root_password="root-" + secrets.token_urlsafe(12),
        )
    )
    ldif = folder / "entries.ldif"
    ldif.write_text(_ldap_entries(service_password))
    loaded = subprocess.run(
        [
            system_tool("slapadd", SLAPD_PACKAGES),
            "-q",
            "-f",
            str(conf),
            "-l",
            str(ldif),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if loaded.returncode != 0:
        raise RuntimeError(f"slapadd exited {loaded.returncode}: {loaded.stderr}")
    return Slapd(folder, free_port(), free_port(), ca_file, service_password)


@pytest.fixture(scope="session", name="slapd")
def slapd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One slapd for the whole session; tests must not stop or change it."""
    server = prepare_slapd(tmp_path_factory.mktemp("slapd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(name="own_slapd")
def own_slapd_fixture(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of the test's own, which it may stop and restart."""
    server = prepare_slapd(tmp_path / "slapd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def idle_pool_after(name: str, idle_within: float) -> Iterator[ThreadPoolService]:
    """A running auth-like thread pool, stopped once its threads are idle again.

    A back end that hangs on purpose keeps a thread busy until its own
    timeout; stopping the pool before that would wait on it (or leak it).
    """
    service = ThreadPoolService(name, 4, IReactorFromThreads(reactor))
    service.startService()
    yield service
    deadline = time.monotonic() + idle_within
    while service.pool.working and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stopService()
    assert [thread for thread in service.pool.threads if thread.is_alive()] == []


# ---------------------------------------------------------------- FreeRADIUS

FREERADIUS_PACKAGES = "freeradius, freeradius-utils"


@dataclass(frozen=True)
class RadiusUser:
    """A user of the test server's ``users`` file."""

    name: str
    password: str


# Accepted; dave only with his OTP appended to the password (as dcvix sends it).
RADIUS_ALICE = RadiusUser("alice", "alice-rad-pw")
RADIUS_DAVE = RadiusUser("dave", "dave-pw")
RADIUS_DAVE_OTP = "123456"
# Refused whatever the password.
RADIUS_BOB = RadiusUser("bob", "bob-rad-pw")
# Answered with an Access-Challenge that asks for an OTP.
RADIUS_CAROL = RadiusUser("carol", "carol-rad-pw")
# The right password, but the Accept is not signed (no Message-Authenticator),
# as Debian 12's FreeRADIUS answers everyone unless told otherwise.
RADIUS_ERIN = RadiusUser("erin", "erin-rad-pw")

RADIUS_USERS = f"""\
{RADIUS_ALICE.name}\tCleartext-Password := "{RADIUS_ALICE.password}"
\tReply-Message := "Hello, %{{User-Name}}"
{RADIUS_DAVE.name}\tCleartext-Password := "{RADIUS_DAVE.password}{RADIUS_DAVE_OTP}"
{RADIUS_BOB.name}\tCleartext-Password := "{RADIUS_BOB.password}", Auth-Type := Reject
\tReply-Message := "bob is disabled"
{RADIUS_CAROL.name}\tCleartext-Password := "{RADIUS_CAROL.password}"
{RADIUS_ERIN.name}\tCleartext-Password := "{RADIUS_ERIN.password}"
"""

# One self-contained file: nothing of /etc/freeradius is read. Debian 12's
# FreeRADIUS 3.2.1 predates the BlastRADIUS changes and signs no reply by
# itself: "Message-Authenticator := 0x00" makes it sign (erin excepted).
RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = {d}
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 5
cleanup_delay = 0
max_requests = 256
hostname_lookups = no
log {{
\tdestination = stdout
\tcolourise = no
\tauth = yes
}}
security {{
\tallow_core_dumps = no
\tmax_attributes = 200
\treject_delay = 0
\tstatus_server = yes
}}
thread pool {{
\tstart_servers = 2
\tmax_servers = 4
\tmin_spare_servers = 1
\tmax_spare_servers = 4
}}
client localhost {{
\tipaddr = 127.0.0.1
\tsecret = {secret}
\trequire_message_authenticator = yes
}}
{ipv6_client}
modules {{
\tfiles {{
\t\tfilename = {d}/users
\t\tacctusersfile = {d}/empty
\t\tpreproxy_usersfile = {d}/empty
\t}}
\tpap {{
\t}}
\talways reject {{
\t\trcode = reject
\t}}
\talways handled {{
\t\trcode = handled
\t}}
}}
server default {{
\tlisten {{
\t\ttype = auth
\t\tipaddr = 127.0.0.1
\t\tport = {port}
\t}}
{ipv6_listen}
\tauthorize {{
\t\tif (&User-Name == "carol") {{
\t\t\tupdate reply {{
\t\t\t\tReply-Message := "Enter OTP"
\t\t\t\tState := 0x6463766978
\t\t\t\tMessage-Authenticator := 0x00
\t\t\t}}
\t\t\tupdate control {{
\t\t\t\tResponse-Packet-Type := Access-Challenge
\t\t\t}}
\t\t\thandled
\t\t}}
\t\tfiles
\t\tpap
\t}}
\tauthenticate {{
\t\tAuth-Type PAP {{
\t\t\tpap
\t\t}}
\t}}
\tpost-auth {{
\t\tif (&User-Name != "erin") {{
\t\t\tupdate reply {{
\t\t\t\tMessage-Authenticator := 0x00
\t\t\t}}
\t\t}}
\t\tPost-Auth-Type REJECT {{
\t\t\tupdate reply {{
\t\t\t\tMessage-Authenticator := 0x00
\t\t\t}}
\t\t}}
\t}}
}}
"""

RADIUSD_IPV6_CLIENT = """\
client localhost6 {{
\tipv6addr = ::1
\tsecret = {secret}
\trequire_message_authenticator = yes
}}
"""

RADIUSD_IPV6_LISTEN = """\
\tlisten {{
\t\ttype = auth
\t\tipv6addr = ::1
\t\tport = {port}
\t}}
"""


def free_udp_port() -> int:
    """A UDP port nobody uses right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_on_ipv6_loopback(port: int) -> bool:
    """Whether UDP ``port`` can be bound on ``::1`` (IPv6 may be turned off)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("::1", port))
        except OSError:
            return False
    return True


@dataclass
class Radiusd:
    """A throwaway FreeRADIUS on 127.0.0.1 (and ``::1`` if ``ipv6``)."""

    folder: Path
    port: int
    secret: str
    ipv6: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "radiusd.out"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, timeout: float = 15.0) -> None:
        """Start in the foreground, logging to a file; wait until it is ready."""
        freeradius = system_tool("freeradius", FREERADIUS_PACKAGES)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [freeradius, "-f", "-l", "stdout", "-n", "radiusd", "-d", self.folder],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while "Ready to process requests" not in self.log_text():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"freeradius exited {self.process.returncode}: {self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"freeradius not ready: {self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def prepare_radiusd(folder: Path) -> Radiusd:
    """A configured, not yet started FreeRADIUS in ``folder``."""
    system_tool("freeradius", FREERADIUS_PACKAGES)
    folder.mkdir(parents=True, exist_ok=True)
    port, secret = free_udp_port(), "rad-" + secrets.token_urlsafe(12)
    ipv6 = free_on_ipv6_loopback(port)
    conf = RADIUSD_CONF.format(
        d=folder,
        port=port,
        secret=secret,
        ipv6_client=RADIUSD_IPV6_CLIENT.format(secret=secret) if ipv6 else "",
        ipv6_listen=RADIUSD_IPV6_LISTEN.format(port=port) if ipv6 else "",
    )
    (folder / "radiusd.conf").write_text(conf)
    (folder / "users").write_text(RADIUS_USERS)
    (folder / "empty").write_text("")
    return Radiusd(folder, port, secret, ipv6)


@pytest.fixture(scope="session", name="radiusd")
def radiusd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radiusd]:
    """One FreeRADIUS for the whole session; tests must not stop or change it."""
    server = prepare_radiusd(tmp_path_factory.mktemp("radiusd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
