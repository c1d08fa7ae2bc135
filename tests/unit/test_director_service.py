"""build_director in process, on a memory reactor: the tree, the jobs, the routes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from dcvix.common.config import load_config, parse_config
from dcvix.common.daemon import StartupError
from dcvix.common.pki import load_certificates, subject_alt_names
from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import Authenticator
from dcvix.director.config import DirectorConfig
from dcvix.director.registry import PENDING
from dcvix.director.registry.engine import Runner, inline_runner, to_db_time
from dcvix.director.registry.sql import get_txn
from dcvix.director.registry.sqlite_schema import connect
from dcvix.director.service import Dependencies, build_director, login_otp_field
from dcvix.testing import PasswordAuthenticator

START = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
GUID = "11111111-1111-4111-8111-111111111111"


def _config(tmp_path: Path) -> DirectorConfig:
    path = tmp_path / "dcvix-director.conf"
    path.write_text(
        "[director]\n"
        "director_host = 127.0.0.1\n"
        "director_port = 18445\n"
        f"data_dir = {tmp_path / 'data'}\n"
        f"policydb_folder = {tmp_path / 'policydb'}\n"
        "[housekeeper]\n"
        "housekeeper_frequency = 40s\n"
        "pending_max_age = 1h\n"
        "[log]\n"
        f"directory = {tmp_path / 'log'}\n"
    )
    path.chmod(0o600)
    return load_config(DirectorConfig, path)


def _fake_backend(config: DirectorConfig, reactor: Any, pool: Any) -> Authenticator:
    return PasswordAuthenticator({"alice": "secret"})


def _inline(pool: ThreadPoolService) -> Runner:
    return inline_runner


@pytest.fixture
def reactor() -> MemoryReactorClock:
    clock = MemoryReactorClock()
    clock.advance(START.timestamp())
    return clock


@pytest.fixture
def deps() -> Dependencies:
    return Dependencies(
        host_names=lambda: ["director1"],
        authenticator=_fake_backend,
        db_runner=_inline,
    )


def test_the_tree_a_fresh_install_and_the_listener(
    tmp_path: Path, reactor: MemoryReactorClock, deps: Dependencies
) -> None:
    root = build_director(_config(tmp_path), reactor, None, deps)
    assert [type(s).__name__ for s in root] == [
        "_Store",
        "ThreadPoolService",
        "_Closing",  # the audit exports
        "PeriodicJob",  # refusals counted for the audit trail
        "ThreadPoolService",
        "AgentClient",
        "PeriodicJob",
        "PeriodicJob",
        "SighupService",
        "PeriodicJob",
        "PeriodicJob",  # the access log's summary of agent updates
        "PeriodicJob",  # fleet listings rendered ahead
        "StreamServerEndpointService",
        "StreamServerEndpointService",  # metrics, on loopback by default
    ]
    data = tmp_path / "data"
    assert {p.name for p in data.iterdir()} >= {
        "agents.db",
        "ca.key",
        "ca.pem",
        "server.crt",
        "server.key",
        "token.key",
    }
    certificate = load_certificates((data / "server.crt").read_bytes())[0]
    assert subject_alt_names(certificate) == (
        ["dcvix-director", "localhost", "director1"],
        ["127.0.0.1"],
    )
    root.privilegedStartService()
    root.startService()
    try:
        assert [(port, host) for port, _f, _b, host in reactor.tcpServers] == [
            (18445, "127.0.0.1"),
            (9445, "127.0.0.1"),
        ]
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory, TLSMemoryBIOFactory)
        site = factory.wrappedFactory
        assert isinstance(site, Site)
        answers: list[Any] = []
        stub = StubTreq(site.resource)
        # StubTreq sets its treq methods in __init__, out of the type checker's view.
        stub.get("https://director/v1/health").addBoth(  # type: ignore[attr-defined]
            answers.append
        )
        assert [a.code for a in answers] == [200]
        metrics = reactor.tcpServers[1][1]
        assert isinstance(metrics, Site)
        scraped: list[Any] = []
        StubTreq(metrics.resource).get(  # type: ignore[attr-defined]
            "http://127.0.0.1:9445/metrics"
        ).addCallback(lambda answer: answer.text()).addBoth(scraped.append)
        assert "dcvix_build_info{" in scraped[0]
        for name in ("ca", "director"):
            sample = (
                f'dcvix_certificate_expiry_timestamp_seconds{{certificate="{name}"}}'
            )
            assert sample in scraped[0]
    finally:
        root.stopService()


def test_the_housekeeper_purges_agents_pending_too_long(
    tmp_path: Path, reactor: MemoryReactorClock, deps: Dependencies
) -> None:
    config = _config(tmp_path)
    root = build_director(config, reactor, None, deps)
    database = connect(tmp_path / "data" / "agents.db")
    created = to_db_time(START - dt.timedelta(minutes=30))
    database.execute(
        "INSERT INTO agents (guid, hostname, state, created_at, cert_serial, tags) "
        "VALUES (?, 'ws1', ?, ?, '', '')",
        (GUID, PENDING, created),
    )
    root.privilegedStartService()
    root.startService()
    try:
        reactor.advance(40)  # the first sweep: 30 min 40 s old, kept
        assert get_txn(database, GUID) is not None
        for _ in range(45):  # 30 more minutes of sweeps
            reactor.advance(40)
        assert get_txn(database, GUID) is None
    finally:
        root.stopService()
        database.close()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[director]\nauth_type = pam\n", "none"),
        ("[director]\nauth_type = ldap\n", "none"),
        (
            "[director]\nauth_type = ldap\n[ldap_auth]\notp_type = privacyidea\n",
            "required",
        ),
        (
            "[director]\nauth_type = ldap\n[ldap_auth]\notp_type = external\n",
            "required",
        ),
        ("[director]\nauth_type = radius\n", "optional"),
        ("[director]\nauth_type = external\n", "none"),
    ],
)
def test_the_login_form_asks_for_an_otp_when_a_back_end_takes_one(
    text: str, field: str
) -> None:
    """``GET /v1/ui-config`` tells the web UI whether to show the OTP field."""
    assert login_otp_field(parse_config(DirectorConfig, text, None)) == field


def test_metrics_on_the_https_port_need_a_token(
    tmp_path: Path, reactor: MemoryReactorClock, deps: Dependencies
) -> None:
    config = _config(tmp_path)
    config = dataclasses.replace(
        config, metrics=dataclasses.replace(config.metrics, https=True)
    )
    with pytest.raises(StartupError) as raised:
        build_director(config, reactor, None, deps)
    assert str(raised.value) == (
        "[metrics] https needs [metrics] token_file: the director's port is open "
        "to its whole network"
    )
    assert not (tmp_path / "data").exists()  # stopped before it made anything


def test_audit_file_in_a_missing_folder_stops_the_start(
    tmp_path: Path, reactor: MemoryReactorClock, deps: Dependencies
) -> None:
    config = _config(tmp_path)
    trail = tmp_path / "nowhere" / "audit.jsonl"
    config = dataclasses.replace(
        config, audit=dataclasses.replace(config.audit, file=str(trail))
    )
    with pytest.raises(StartupError) as raised:
        build_director(config, reactor, None, deps)
    assert str(raised.value) == (
        f"[audit] file {trail}: its folder {trail.parent} does not exist"
    )
