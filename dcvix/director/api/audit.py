"""``GET /v1/admin/audit``: the audit trail for admins, as JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from dcvix.common.clock import now_utc
from dcvix.common.config import parse_duration
from dcvix.common.errors import BadRequest, ServiceUnavailable
from dcvix.common.gotime import parse_time
from dcvix.common.http import json_response
from dcvix.director.api.authz import Role, authorized
from dcvix.director.audit import entry_json
from dcvix.director.registry import AuditQuery, AuditTrail, StoredAudit, StoreError
from dcvix.director.tokens import Claims

log = Logger()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CSV_LIMIT = 100_000  # lines of one export, written a page at a time
EXPORT_PAGE = 1000
MAX_FILTER = 256
_DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII digits; ids fit SQLite's integers
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
OUTCOMES = ("ok", "failed", "refused")
CSV_COLUMNS = (
    "id",
    "time",
    "actor",
    "action",
    "target",
    "address",
    "outcome",
    "detail",
)


def parse_audit_query(
    args: Mapping[bytes, Sequence[bytes]], now: dt.datetime, csv_export: bool
) -> AuditQuery:
    """The query of a request's arguments.

    ``since`` and ``until`` are RFC 3339 times, or durations back from now
    (``since=24h``). ``limit`` is 1-1000 (an export takes up to 100,000).

    Raises:
        BadRequest: a value that is not one, naming the argument.
    """

    def one(name: str) -> str:
        values = args.get(name.encode())
        text = values[0].decode("utf-8", "replace") if values else ""
        if len(text) > MAX_FILTER:
            raise BadRequest(f"{name} is longer than {MAX_FILTER} characters")
        return text

    most = MAX_CSV_LIMIT if csv_export else MAX_LIMIT
    limit_text = one("limit")
    limit = DEFAULT_LIMIT if not csv_export else most
    if limit_text:
        if not _DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= most:
            raise BadRequest(f"limit must be a number from 1 to {most}")
        limit = int(limit_text)
    outcome = one("outcome")
    if outcome not in ("", *OUTCOMES):
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
    after_text = one("after")
    if after_text and not _DIGITS.fullmatch(after_text):
        raise BadRequest("after must be the id of an audit line (a number)")
    return AuditQuery(
        since=_moment(one("since"), "since", now),
        until=_moment(one("until"), "until", now),
        actor=one("actor"),
        action=one("action"),
        outcome=outcome,
        limit=limit,
        after=int(after_text) if after_text else None,
    )


def _moment(text: str, name: str, now: dt.datetime) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = parse_time(text)
    except ValueError:
        try:
            moment = now - dt.timedelta(seconds=parse_duration(text))
        except (ValueError, OverflowError):
            raise BadRequest(
                f"{name} must be an RFC 3339 time (2026-12-08T09:00:00Z) or a "
                "duration back from now (24h)"
            ) from None
    # The trail holds nothing older, and stored times compare as text.
    if moment is None or moment < EPOCH:
        raise BadRequest(f"{name} must be after 1970")
    return moment


def line_json(line: StoredAudit) -> dict[str, Any]:
    """One line with its id, which ``after`` takes to page on."""
    return {"id": line.id, **entry_json(line.entry)}


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows as CSV (RFC 4180, CRLF), each cell safe for a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows([_cell(cell) for cell in row] for row in rows)
    return out.getvalue().encode("utf-8")


def audit_csv(lines: Sequence[StoredAudit]) -> bytes:
    """The lines as CSV rows, without the header."""
    shown = [line_json(line) for line in lines]
    return csv_rows([[line[column] for column in CSV_COLUMNS] for line in shown])


class AuditRoutes:
    """``/v1/admin/audit``.

    Args:
        trail: the store's audit table.
        clock: ``now`` for durations in ``since`` and ``until``.
    """

    def __init__(self, trail: AuditTrail, clock: IReactorTime) -> None:
        self._trail = trail
        self._clock = clock
        self._exporting = False

    async def _export(self, request: IRequest, query: AuditQuery) -> bytes:
        """The CSV, written page by page: memory and reactor time stay small.

        One export runs at a time (a second one is 503): each may read
        100,000 lines from the store.
        """
        if self._exporting:
            raise ServiceUnavailable("an audit export is running; try again shortly")
        self._exporting = True
        try:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"text/csv; charset=utf-8")
            request.setHeader(
                b"Content-Disposition", b'attachment; filename="dcvix-audit.csv"'
            )
            request.write(csv_rows([CSV_COLUMNS]))
            left, after = query.limit, query.after
            while left > 0 and not getattr(request, "_disconnected", False):
                page = replace(query, limit=min(EXPORT_PAGE, left), after=after)
                try:
                    lines = await self._trail.audit_query(page)
                except StoreError as error:
                    # Headers are gone: the file ends short, and the log says so.
                    log.error("audit export cut short: {error}", error=str(error))
                    break
                if not lines:
                    break
                request.write(audit_csv(lines))
                left, after = left - len(lines), lines[-1].id
        finally:
            self._exporting = False
        return b""

    @authorized("GET", "/v1/admin/audit", role=Role.ADMIN)
    async def audit(self, request: IRequest, caller: Claims) -> bytes:
        """The trail, newest first, filtered (since, until, actor, action, outcome).

        200 ``{"entries": [...], "next": id or null}``; pass ``next`` as
        ``after`` for the following page. ``format=csv``: the same lines as
        a CSV file (up to 100,000). 400 for a filter that is not one.
        """
        wanted = request.args.get(b"format", [b"json"])[0]
        if wanted not in (b"json", b"csv"):
            raise BadRequest("format must be json or csv")
        csv_export = wanted == b"csv"
        query = parse_audit_query(request.args, now_utc(self._clock), csv_export)
        if csv_export:
            return await self._export(request, query)
        # One more than asked: whether a next page exists, without a second query.
        lines = await self._trail.audit_query(replace(query, limit=query.limit + 1))
        page = lines[: query.limit]
        more = len(lines) > query.limit
        return json_response(
            request,
            200,
            {
                "entries": [line_json(line) for line in page],
                "next": page[-1].id if more else None,
            },
        )
