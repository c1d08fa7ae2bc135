"""``dcvixctl status``'s pieces: the log's errors, certificates, agents."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dcvix.common.pki import self_signed_certificate
from dcvix.director import status

NOW = dt.datetime(2026, 12, 8, 12, 0, tzinfo=dt.UTC)


def test_the_last_errors_of_a_text_or_json_log(tmp_path: Path) -> None:
    log = tmp_path / "dcvix-director.log"
    log.write_text(
        "INFO     [2026-12-08T11:00:00+00:00] dcvix.director.service: started\n"
        "ERROR    [2026-12-08T08:00:00+00:00] dcvix.x: old trouble\n"
        "ERROR    [2026-12-08T11:30:00+01:00] dcvix.x: an hour and a half ago\n"
        + json.dumps(
            {"time": "2026-12-08T11:45:00+00:00", "level": "CRITICAL", "message": "new"}
        )
        + "\n"
        + '  File "x.py", line 1, in <module>\nERROR without a time\n'
    )
    errors = status.last_errors(log)
    assert [message for _, message in errors] == [
        "dcvix.x: old trouble",
        "dcvix.x: an hour and a half ago",
        "new",
    ]
    report = status.Report()
    status.error_lines(errors, NOW, report)
    # Only the one of the last hour needs attention.
    assert report.attention == ["1 error(s) logged in the last hour"]
    assert status.last_errors(tmp_path / "missing.log") == []


def _certificate(path: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed_certificate(
        key, "dcvix CA", [], [], NOW - dt.timedelta(days=1), dt.timedelta(days=days)
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_a_certificate_expiring_within_30_days_needs_attention(tmp_path: Path) -> None:
    _certificate(tmp_path / "ca.pem", 3650)
    _certificate(tmp_path / "server.crt", 20)
    report = status.Report()
    status.certificate_lines(tmp_path / "ca.pem", tmp_path / "server.crt", NOW, report)
    assert report.lines[0].startswith("CA         SHA-256 ")
    assert report.lines[1] == "HTTPS cert expires 2026-12-27 (19 days)"
    assert report.attention == [
        f"the HTTPS cert expires 2026-12-27 (19 days): renew it "
        f"({tmp_path / 'server.crt'})"
    ]
    report = status.Report()
    status.certificate_lines(tmp_path / "none.pem", tmp_path / "ca.pem", NOW, report)
    assert report.attention == [f"{tmp_path / 'none.pem'} cannot be read"]


def test_agents_by_state_and_pending_ones() -> None:
    report = status.Report()
    status.agent_lines({"a": "registered", "b": "pending", "c": "registered"}, report)
    assert report.lines == ["agents     1 pending, 2 registered, 0 revoked, 0 denied"]
    assert report.render().endswith(
        "attention:\n  - 1 agent(s) pending approval: dcvixctl agents list "
        "--state pending"
    )
    quiet = status.Report()
    status.refusal_lines(3, 1001, quiet)
    assert quiet.render() == (
        "trail      3 failed logins, 1000+ refusal lines in the last 24 h\n"
        "attention: nothing"
    )
