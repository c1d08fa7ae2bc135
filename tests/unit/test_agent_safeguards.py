"""The agent's side of CONTRACT §3 Hardening, and enrolment timing on a fake clock.

- a private key readable by others is tightened to 0600, with a warning;
- a ``hostname`` the director would refuse stops the agent at start (one line);
- virtual sessions run only as uids in [min_session_uid, max_session_uid], never
  as the overflow uid;
- a certificate is renewed before it expires while the director answers, and
  falls back to registration only once it has expired;
- ``ca.pem`` is written before ``agent.crt``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

import dcvix.common.files
from dcvix.agent.config import AgentConfig
from dcvix.agent.dcv import check_local_user
from dcvix.agent.enrolment import AgentEnrolment, EnrolmentSettings
from dcvix.agent.identity import (
    AgentFiles,
    CertificateState,
    SignerKey,
    load_or_create_identity,
)
from dcvix.agent.tap import Options
from dcvix.common.config import ConfigError, parse_config
from dcvix.common.pki import (
    certificate_pem,
    load_certificates,
    public_key_fingerprint,
)
from dcvix.common.validate import InvalidInput
from dcvix.common.webclient import Answer
from dcvix.director.ca import CertificateAuthority, new_authority

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
HOSTNAME = "ws1"


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def logged(
    events: EventLoggingObserver, level: LogLevel | None = None, since: int = 0
) -> list[str]:
    return [
        formatEvent(e)
        for e in list(events)[since:]
        if level is None or e.get("log_level") == level
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------ (1) agent.key


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_tightened_to_0600_with_a_warning(
    tmp_path: Path, events: EventLoggingObserver, loose: int
) -> None:
    files = AgentFiles(tmp_path)
    key, guid = load_or_create_identity(files)
    os.chmod(files.key, loose)
    mark = len(events)

    again, same_guid = load_or_create_identity(files)

    assert mode(files.key) == 0o600
    assert same_guid == guid
    assert public_key_fingerprint(again.public_key()) == public_key_fingerprint(
        key.public_key()
    )
    assert logged(events, LogLevel.warn, mark) == [
        f"{files.key} was readable by other users (mode {loose:04o}): tightened to 0600"
    ]


def test_a_private_key_is_left_alone_and_nothing_is_said(
    tmp_path: Path, events: EventLoggingObserver
) -> None:
    files = AgentFiles(tmp_path)
    load_or_create_identity(files)
    os.chmod(files.key, 0o400)
    mark = len(events)
    load_or_create_identity(files)
    assert mode(files.key) == 0o400
    assert logged(events, LogLevel.warn, mark) == []


# ------------------------------------------------------------ (2) hostname


def agent_config(text: str, path: Path) -> AgentConfig:
    return parse_config(AgentConfig, text, path)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("192.0.2.7", "'192.0.2.7' is an IP address; the director needs a host name"),
        ("10.1.2.3", "'10.1.2.3' is an IP address; the director needs a host name"),
        ("::1", "'::1' is an IP address; the director needs a host name"),
        ("[fe80::1]", "'[fe80::1]' is an IP address; the director needs a host name"),
        ("localhost", "'localhost' is reserved: the director refuses it"),
        ("LocalHost", "'LocalHost' is reserved: the director refuses it"),
        ("dcvix-director", "'dcvix-director' is reserved: the director refuses it"),
        ("*.example.com", "'*.example.com' is a wildcard; the director needs one name"),
        ("ws*", "'ws*' is a wildcard; the director needs one name"),
        ("ws_1", "'ws_1' is not a host name or IP address"),
        ("ws1.", "'ws1.' ends with a dot; the director needs 'ws1'"),
        ("-ws1", "'-ws1' is not a host name or IP address"),
        ("a" * 64, f"'{'a' * 64}' is not a host name or IP address"),
        ("1234", "'1234' is not a host name or IP address"),
    ],
)
def test_a_hostname_the_director_refuses_is_a_config_error(
    tmp_path: Path, value: str, problem: str
) -> None:
    conf = tmp_path / "dcvix-agent.conf"
    with pytest.raises(ConfigError) as raised:
        agent_config(f"[agent]\nhostname = {value}\n", conf)
    assert str(raised.value) == f"{conf}: [agent] hostname: {problem}"


@pytest.mark.parametrize("value", ["ws-1", "WS1.Example.COM", "ip-10-0-0-1", "7eleven"])
def test_a_hostname_the_director_takes_is_kept_as_written(
    tmp_path: Path, value: str
) -> None:
    config = agent_config(f"[agent]\nhostname = {value}\n", tmp_path / "a.conf")
    assert config.agent.hostname == value
    assert config.agent.effective_hostname == value


def run_options(conf: Path) -> Options:
    options = Options()
    options.parseOptions(["--conf", str(conf)])
    return options


@pytest.mark.parametrize(
    ("os_name", "problem"),
    [
        ("localhost", "'localhost' is reserved: the director refuses it"),
        ("10.0.0.5", "'10.0.0.5' is an IP address; the director needs a host name"),
        (
            "my_box",
            "'my_box' is not a host name or IP address",
        ),
        ("", "it is empty"),
    ],
)
def test_an_unusable_os_host_name_stops_the_agent_when_hostname_is_not_set(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    os_name: str,
    problem: str,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: os_name)
    conf = tmp_path / "dcvix-agent.conf"
    conf.write_text(f"[agent]\ndata_dir = {tmp_path / 'data'}\n")
    with pytest.raises(SystemExit) as stopped:
        run_options(conf)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        f"{conf}: [agent] hostname: not set, and the OS host name cannot be used: "
        f"{problem}; set hostname\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [conf.name]


def test_a_usable_os_host_name_or_a_set_hostname_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "ws-os-1")
    conf = tmp_path / "dcvix-agent.conf"
    conf.write_text("[agent]\n")
    assert run_options(conf)["config"].agent.effective_hostname == "ws-os-1"
    # A configured hostname wins: the OS name is not looked at.
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    conf.write_text("[agent]\nhostname = ws-conf-1\n")
    assert run_options(conf)["config"].agent.effective_hostname == "ws-conf-1"


# -------------------------------------------------------- (3) session uids


def fake_accounts(monkeypatch: pytest.MonkeyPatch, uids: dict[str, int]) -> None:
    def getpwnam(name: str) -> pwd.struct_passwd:
        if name not in uids:
            raise KeyError(name)
        uid = uids[name]
        return pwd.struct_passwd((name, "x", uid, uid, "", "/nonexistent", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)


ACCOUNTS = {
    "nobody": 65534,
    "overflow": 65534,
    "root": 0,
    "daemon": 1,
    "first": 1000,
    "alice": 1500,
    "last": 60000,
    "above": 60001,
    "high": 100000,
}


@pytest.mark.parametrize(
    ("owner", "message"),
    [
        (
            "nobody",
            "nobody may not own a virtual session (uid 65534 is the overflow uid)",
        ),
        (
            "overflow",
            "overflow may not own a virtual session (uid 65534 is the overflow uid)",
        ),
        ("root", "root may not own a virtual session (uid below 1000)"),
        ("daemon", "daemon may not own a virtual session (uid below 1000)"),
        ("above", "above may not own a virtual session (uid above 60000)"),
        ("high", "high may not own a virtual session (uid above 60000)"),
    ],
)
def test_virtual_sessions_never_run_outside_the_uid_range(
    monkeypatch: pytest.MonkeyPatch, owner: str, message: str
) -> None:
    fake_accounts(monkeypatch, ACCOUNTS)
    with pytest.raises(InvalidInput) as refused:
        check_local_user(owner, 1000, 60000)
    assert str(refused.value) == message


@pytest.mark.parametrize("owner", ["first", "alice", "last"])
def test_virtual_sessions_run_inside_the_uid_range(
    monkeypatch: pytest.MonkeyPatch, owner: str
) -> None:
    fake_accounts(monkeypatch, ACCOUNTS)
    assert check_local_user(owner, 1000, 60000) == owner


def test_the_overflow_uid_is_refused_even_inside_a_wider_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_accounts(monkeypatch, ACCOUNTS)
    assert check_local_user("high", 1000, 200000) == "high"
    with pytest.raises(InvalidInput, match="uid 65534 is the overflow uid"):
        check_local_user("nobody", 1000, 200000)


def test_the_default_range_is_1000_to_60000(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_accounts(monkeypatch, ACCOUNTS)
    config = agent_config("[agent]\n", Path("a.conf"))
    assert (config.agent.min_session_uid, config.agent.max_session_uid) == (
        1000,
        60000,
    )
    with pytest.raises(InvalidInput, match="uid above 60000"):
        check_local_user("above", 1000)
    with pytest.raises(InvalidInput, match="uid 65534 is the overflow uid"):
        check_local_user("nobody", 1000)


def test_max_session_uid_below_min_session_uid_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "dcvix-agent.conf"
    conf.write_text(
        "[agent]\nhostname = ws1\nmin_session_uid = 2000\nmax_session_uid = 1999\n"
    )
    with pytest.raises(SystemExit) as stopped:
        run_options(conf)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        f"{conf}: [agent] max_session_uid: 1999 is below min_session_uid (2000)\n"
    )


# ------------------------------------------- (4) renewal before expiry


class FakeDirector:
    """What the agent's renewals and registrations meet, on the fake clock."""

    def __init__(
        self, ca: CertificateAuthority, key: SignerKey, guid: str, clock: Clock
    ) -> None:
        self.ca, self.key, self.guid, self.clock = ca, key, guid, clock
        self.up = True
        self.lifetime = dt.timedelta(days=14)
        self.renewals: list[float] = []
        self.registrations: list[float] = []

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC)

    def issue(self, lifetime: dt.timedelta, now: dt.datetime) -> x509.Certificate:
        return self.ca.sign_agent(
            self.key.public_key(), self.guid, HOSTNAME, now, lifetime
        )

    def renew(self) -> Answer:
        self.renewals.append(self.clock.seconds())
        if not self.up:
            raise ConnectionRefusedError("director down")
        pem = certificate_pem(self.issue(self.lifetime, self.now())).decode()
        return Answer(200, json.dumps({"certificate": pem}).encode())

    def register(self) -> Answer:
        self.registrations.append(self.clock.seconds())
        if not self.up:
            raise ConnectionRefusedError("director down")
        return Answer(403, b'{"error": "pending approval"}')


class Enrolment(AgentEnrolment):
    """The agent's enrolment with its two director calls answered by a fake."""

    director: FakeDirector

    async def _post_renew(self, state: CertificateState) -> Answer:
        return self.director.renew()

    async def _post_register(self) -> tuple[Answer, list[x509.Certificate]]:
        return self.director.register(), []


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return clock


World = tuple[Enrolment, FakeDirector, AgentFiles]


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Callable[..., World]:
    """An agent whose certificate on disk expires ``left`` after NOW."""

    def make(left: dt.timedelta, renew_interval: float = 12 * 3600.0) -> World:
        files = AgentFiles(tmp_path)
        key, guid = load_or_create_identity(files)
        ca = new_authority(NOW - dt.timedelta(days=30))
        director = FakeDirector(ca, key, guid, clock)
        # Issued long enough ago that it has only ``left`` to live.
        issued_at = NOW + left - director.lifetime
        held = director.issue(director.lifetime, issued_at)
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        (tmp_path / "agent.crt").write_bytes(certificate_pem(held))
        enrolment = Enrolment(
            files,
            key,
            guid,
            EnrolmentSettings("127.0.0.1", 1, HOSTNAME, renew_interval),
            clock,
        )
        enrolment.director = director
        return enrolment, director, files

    return make


def is_enrolled(enrolment: AgentEnrolment) -> bool:
    return enrolment.enrolled


def on_disk(files: AgentFiles) -> x509.Certificate:
    return load_certificates(files.certificate.read_bytes())[0]


def run_for(clock: Clock, seconds: int, check: Callable[[], None]) -> None:
    """Advance the clock one second at a time, checking after each."""
    for _ in range(seconds):
        clock.advance(1)
        check()


def test_a_certificate_with_minutes_left_at_start_is_renewed_before_it_expires(
    world: Callable[..., World], clock: Clock
) -> None:
    # The renewal check period is 5 minutes; the certificate has 2 left.
    enrolment, director, files = world(dt.timedelta(minutes=2))
    expires = on_disk(files).not_valid_after_utc.timestamp()
    enrolment.startService()
    try:
        assert enrolment.enrolled
        run_for(clock, 600, lambda: None)
        assert director.renewals, "never renewed"
        assert director.renewals[0] < expires
        assert director.registrations == []
        assert enrolment.enrolled
        assert on_disk(files).not_valid_after_utc > NOW + dt.timedelta(days=13)
    finally:
        enrolment.stopService()


def test_certificates_shorter_than_the_check_period_are_renewed_in_time(
    world: Callable[..., World], clock: Clock
) -> None:
    # agent_cert_lifetime may be any positive duration: 60 s here, well under
    # the 5-minute period. Every certificate is renewed before it expires.
    enrolment, director, files = world(dt.timedelta(seconds=60))
    director.lifetime = dt.timedelta(seconds=60)
    enrolment.startService()

    def still_valid() -> None:
        now = dt.datetime.fromtimestamp(clock.seconds(), dt.UTC)
        assert on_disk(files).not_valid_after_utc > now
        assert enrolment.enrolled

    try:
        run_for(clock, 3600, still_valid)
        assert director.registrations == []
        # Not a loop: about one renewal per half lifetime.
        assert 60 <= len(director.renewals) <= 130, len(director.renewals)
    finally:
        enrolment.stopService()


def test_a_long_certificate_is_checked_every_period_and_renewed_when_due(
    world: Callable[..., World], clock: Clock
) -> None:
    # 14-day certificates, renew_interval 12 h: renewed once, at 12 h of age.
    enrolment, director, files = world(dt.timedelta(days=14))
    issued = on_disk(files).not_valid_before_utc + dt.timedelta(hours=1)
    enrolment.startService()
    try:
        clock.pump([300.0] * (12 * 12 - 1))
        assert director.renewals == []
        clock.pump([300.0] * 2)
        assert len(director.renewals) == 1
        assert director.renewals[0] >= (issued + dt.timedelta(hours=12)).timestamp()
        assert (
            director.renewals[0]
            <= (issued + dt.timedelta(hours=12, minutes=5)).timestamp()
        )
    finally:
        enrolment.stopService()


def test_a_director_away_until_expiry_sends_the_agent_back_to_registration(
    world: Callable[..., World], clock: Clock, events: EventLoggingObserver
) -> None:
    enrolment, director, files = world(dt.timedelta(minutes=20))
    director.up = False
    expires = on_disk(files).not_valid_after_utc.timestamp()
    enrolment.startService()
    try:
        run_for(clock, 1199, lambda: None)
        # Retried while it lived (every 5 min at most), never registering.
        assert enrolment.enrolled
        assert director.registrations == []
        assert len(director.renewals) >= 4
        assert all(
            b - a <= 300
            for a, b in zip(director.renewals, director.renewals[1:], strict=False)
        )
        run_for(clock, 300, lambda: None)
        assert not is_enrolled(enrolment)
        assert director.registrations
        assert director.registrations[0] >= expires
        text = "\n".join(logged(events, LogLevel.warn))
        assert "certificate no longer usable (expired): registering again" in text
        assert "an admin must approve this agent again" in text
    finally:
        enrolment.stopService()


# ----------------------------------------------- (5) ca.pem before agent.crt


def test_registration_writes_ca_pem_before_agent_crt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = AgentFiles(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    guid = str(uuid.uuid4())
    ca = new_authority(NOW)
    issued = ca.sign_agent(key.public_key(), guid, HOSTNAME, NOW, dt.timedelta(days=14))
    written: list[tuple[str, bool]] = []
    real_write = dcvix.common.files.atomic_write

    def recording_write(path: Path, data: bytes, file_mode: int = 0o600) -> None:
        # What a reader sees the moment agent.crt appears: its CA already there?
        written.append((path.name, files.ca.exists()))
        real_write(path, data, file_mode)

    monkeypatch.setattr("dcvix.agent.identity.atomic_write", recording_write)
    enrolment = AgentEnrolment(
        files,
        key,
        guid,
        EnrolmentSettings("127.0.0.1", 1, HOSTNAME, 43200.0),
        Clock(),
    )
    answer = Answer(
        200,
        json.dumps(
            {"certificate": certificate_pem(issued).decode(), "ca": ca.pem.decode()}
        ).encode(),
    )
    enrolment._accept_registration(answer, [])
    assert written == [("ca.pem", False), ("agent.crt", True)]
    assert enrolment.enrolled


def test_the_first_certificate_never_appears_without_its_ca(tmp_path: Path) -> None:
    # The same, from the outside: the moment agent.crt exists, ca.pem signs it.
    files = AgentFiles(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    guid = str(uuid.uuid4())
    ca = new_authority(NOW)
    issued = ca.sign_agent(key.public_key(), guid, HOSTNAME, NOW, dt.timedelta(days=14))
    seen: list[Any] = []
    real_replace = os.replace

    def watching_replace(source: Any, target: Any) -> None:
        real_replace(source, target)
        if Path(target) == files.certificate:
            seen.append(
                load_certificates(files.ca.read_bytes()) if files.ca.exists() else None
            )

    enrolment = AgentEnrolment(
        files, key, guid, EnrolmentSettings("127.0.0.1", 1, HOSTNAME, 43200.0), Clock()
    )
    answer = Answer(
        200,
        json.dumps(
            {"certificate": certificate_pem(issued).decode(), "ca": ca.pem.decode()}
        ).encode(),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", watching_replace)
        enrolment._accept_registration(answer, [])
    assert seen == [[ca.certificate]]
