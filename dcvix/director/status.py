"""``dcvixctl status``: one screen on a director, and whether it needs attention.

What the store says (agents by state, pending approvals, recent refusals),
what the files say (the CA's fingerprint and expiry, the HTTPS certificate's),
what the running director says through its metrics listener (version,
uptime, servers online, sessions), and the last errors of its log. Anything
an operator must act on is listed under ``attention``, and the command then
exits 1, for monitoring scripts.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from dcvix.common.metrics import metrics_token
from dcvix.common.pki import certificate_fingerprint, load_certificates
from dcvix.common.validate import split_host_port
from dcvix.director.config import DirectorConfig
from dcvix.director.registry import STATES, AuditQuery

SCRAPE_TIMEOUT = 5.0
EXPIRY_WARNING = dt.timedelta(days=30)
ERROR_WINDOW = dt.timedelta(hours=1)
LOG_TAIL_BYTES = 256 * 1024
LAST_ERRORS = 5
ERROR_LEVELS = ("ERROR", "CRITICAL")
REFUSALS_SHOWN = 1000


@dataclass
class Report:
    """The screen's lines, and what needs attention (exit 1 when any)."""

    lines: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The whole screen."""
        shown = list(self.lines)
        if self.attention:
            shown.append("attention:")
            shown += [f"  - {item}" for item in self.attention]
        else:
            shown.append("attention: nothing")
        return "\n".join(shown)


@dataclass(frozen=True)
class Running:
    """What the running director's metrics say."""

    version: str
    started: float
    online: int
    offline: int
    sessions: int
    clients: int


def scrape(listen: str, token: str) -> Running:
    """Read the director's ``/metrics`` on its ``[metrics] listen``.

    Raises:
        OSError: nothing answers there, or not with metrics.
    """
    host, port = split_host_port(listen)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # Never through a proxy of the environment: the token goes to the director.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(request, timeout=SCRAPE_TIMEOUT) as answer:
            text = answer.read(8 * 1024 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        raise OSError(f"{url} answered {error.code}") from None
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    version = ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            values[sample.name, labels] = sample.value
            if sample.name == "dcvix_build_info":
                version = sample.labels.get("version", "")
    if not version:
        raise OSError(f"{url} is not a dcvix director's metrics")

    def summed(name: str) -> int:
        return int(sum(v for (n, _), v in values.items() if n == name))

    return Running(
        version=version,
        started=values.get(("process_start_time_seconds", ()), 0.0),
        online=int(values.get(("dcvix_servers", (("status", "online"),)), 0)),
        offline=int(values.get(("dcvix_servers", (("status", "offline"),)), 0)),
        sessions=summed("dcvix_sessions"),
        clients=summed("dcvix_session_clients"),
    )


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def running_lines(config: DirectorConfig, now: dt.datetime, report: Report) -> None:
    """The director process, through its metrics listener."""
    listen = config.metrics.listen
    if not listen:
        report.lines.append("director   not checked: [metrics] listen is off")
        return
    try:
        running = scrape(listen, metrics_token(config.metrics))
    except (OSError, ValueError) as error:
        report.lines.append(f"director   not answering on {listen}: {error}")
        report.attention.append(f"the director does not answer on {listen}")
        return
    uptime = now.timestamp() - running.started if running.started else 0.0
    report.lines += [
        f"director   dcvix {running.version}, up {_duration(uptime)} "
        f"(metrics on {listen})",
        f"servers    {running.online} online, {running.offline} offline",
        f"sessions   {running.sessions} ({running.clients} clients connected)",
    ]


def _expiry(certificate: x509.Certificate, now: dt.datetime) -> str:
    left = certificate.not_valid_after_utc - now
    return f"expires {certificate.not_valid_after_utc:%Y-%m-%d} ({left.days} days)"


def certificate_lines(
    ca_pem: Path, server_crt: Path, now: dt.datetime, report: Report
) -> None:
    """The CA's fingerprint and both certificates' expiry."""
    for name, path in (("CA", ca_pem), ("HTTPS cert", server_crt)):
        try:
            certificate = load_certificates(path.read_bytes())[0]
        except (OSError, ValueError, IndexError) as error:
            report.lines.append(f"{name:<10} {path}: unreadable ({error})")
            report.attention.append(f"{path} cannot be read")
            continue
        fingerprint = (
            f"SHA-256 {certificate_fingerprint(certificate)}  " if name == "CA" else ""
        )
        report.lines.append(f"{name:<10} {fingerprint}{_expiry(certificate, now)}")
        if certificate.not_valid_after_utc - now < EXPIRY_WARNING:
            report.attention.append(
                f"the {name} {_expiry(certificate, now)}: renew it ({path})"
            )


def agent_lines(states: Mapping[str, str], report: Report) -> None:
    """Agents by state; pending approvals need an admin."""
    counted = dict.fromkeys(STATES, 0)
    for state in states.values():
        counted[state] = counted.get(state, 0) + 1
    report.lines.append(
        "agents     " + ", ".join(f"{counted[s]} {s}" for s in STATES if s in counted)
    )
    pending = counted.get("pending", 0)
    if pending:
        report.attention.append(
            f"{pending} agent(s) pending approval: dcvixctl agents list --state pending"
        )


def refusal_lines(failed: int, refused: int, report: Report) -> None:
    """Failed logins and refusals of the last day, from the audit trail."""

    def shown(count: int) -> str:
        return f"{REFUSALS_SHOWN}+" if count > REFUSALS_SHOWN else str(count)

    report.lines.append(
        f"trail      {shown(failed)} failed logins, {shown(refused)} refusal lines "
        "in the last 24 h"
    )


def last_errors(log_file: Path) -> list[tuple[dt.datetime | None, str]]:
    """The last error lines of the director's log (text or JSON lines)."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - LOG_TAIL_BYTES))
            tail = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    found = []
    for line in tail:
        error = _error_line(line)
        if error is not None:
            found.append(error)
    return found[-LAST_ERRORS:]


def _error_line(line: str) -> tuple[dt.datetime | None, str] | None:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("level") not in ERROR_LEVELS:
            return None
        return _moment(str(record.get("time", ""))), str(record.get("message", ""))
    level, _, rest = line.partition(" ")
    if level not in ERROR_LEVELS or not rest.lstrip().startswith("["):
        return None
    stamp, _, message = rest.lstrip()[1:].partition("] ")
    return _moment(stamp), message


def _moment(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def error_lines(
    errors: Iterable[tuple[dt.datetime | None, str]], now: dt.datetime, report: Report
) -> None:
    """The last errors logged; one in the last hour needs attention."""
    errors = list(errors)
    if not errors:
        report.lines.append("last errors: none in the log's tail")
        return
    report.lines.append("last errors:")
    recent = 0
    for moment, message in errors:
        report.lines.append(
            f"  {moment.isoformat() if moment else '?'}  {message[:200]}"
        )
        if moment is not None and now - moment < ERROR_WINDOW:
            recent += 1
    if recent:
        report.attention.append(f"{recent} error(s) logged in the last hour")


def outcome_query(outcome: str, now: dt.datetime) -> AuditQuery:
    """The trail's lines of ``outcome`` in the last day, one more than shown."""
    return AuditQuery(
        since=now - dt.timedelta(days=1), outcome=outcome, limit=REFUSALS_SHOWN + 1
    )


def log_file(config: DirectorConfig) -> Path:
    """The director's log file."""
    return Path(config.log.directory) / "dcvix-director.log"
