"""The agent registry: what the director keeps across restarts, behind named methods.

Everything outside an engine sees only these types and protocols: agents
(:class:`AgentRegistry`), the audit trail (:class:`AuditTrail`) and logged-out
tokens (:class:`RevokedTokens`). One implementation (:mod:`.sql`) runs on two
engines: SQLite (:mod:`.sqlite`, the embedded default) and PostgreSQL
(:mod:`.postgres`, for several directors); no caller names a transaction or a
SQL statement, and :func:`.stores.open_registry` picks the engine.

Every mutating method that an admin or the enrolment rules call writes its
audit row in the same transaction as the change, so the trail never misses a
change that happened nor records one that did not.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

PENDING, REGISTERED, REVOKED, DENIED = "pending", "registered", "revoked", "denied"
STATES = (PENDING, REGISTERED, REVOKED, DENIED)


class StoreError(Exception):
    """The store cannot be used; the message names it and the problem."""


class StoreFull(StoreError):
    """The store's disk is full: nothing was written, nothing is corrupt.

    The store works again as soon as space is freed, without a restart; a
    caller answers "try later" rather than "internal error".
    """


class UniqueViolation(StoreError):
    """A write broke a unique constraint; its transaction was rolled back."""


@dataclass(frozen=True)
class AgentRecord:
    """One agent of the registry.

    ``claimed_key`` is the key a registration presented for an adopted Go agent
    that has no pinned key yet (CONTRACT §3, register case 3): recorded, never
    trusted until its certificate pins a key or an admin approves the claim.
    ``duplicate_hostname`` flags a registered agent sharing its hostname with
    another registered one (adopted Go rows), or a pending agent sharing it
    with any pending or registered one (approving it will need ``replace``).
    """

    guid: str
    hostname: str
    state: str
    created_at: dt.datetime | None
    registered_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    cert_serial: str
    cert_expires_at: dt.datetime | None
    key_fingerprint: str
    address: str
    state_changed_at: dt.datetime | None
    claimed_key: str = ""
    claimed_at: dt.datetime | None = None
    duplicate_hostname: bool = False

    @property
    def pinned(self) -> bool:
        """A registered agent whose key is known (adopted Go rows have none yet)."""
        return self.state == REGISTERED and bool(self.key_fingerprint)


@dataclass(frozen=True)
class Seen:
    """What the admin saw when approving; an approval is refused if it changed.

    A pending agent may register again with the same key and another
    hostname while the admin reads the confirmation: without this, the admin
    approves a name they never saw (and, with ``replace``, revokes an agent
    they never saw). Empty fields and ``holders=None`` check nothing (the
    CLI, old clients).
    """

    hostname: str = ""
    key: str = ""
    holders: tuple[str, ...] | None = None


NOTHING_SEEN = Seen()


@dataclass(frozen=True)
class ActionResult:
    """What an admin action did: the agent after it, and the agents it revoked."""

    record: AgentRecord
    replaced: tuple[str, ...] = ()
    # The audit lines its transaction wrote, for the log and the exports.
    entries: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail.

    ``actor`` is who acted (a user id, ``admin:<id>``, ``os:<user>`` for
    ``dcvixctl``, ``auto_approve``, an agent's GUID); ``address`` where the
    request came from (empty for ``dcvixctl`` and the director's own work);
    ``outcome`` ``ok``, or ``failed``/``refused`` for what did not happen.
    ``detail`` never holds a secret (no password, token or OTP).
    """

    time: dt.datetime | None
    actor: str
    action: str
    target: str
    detail: str = ""
    address: str = ""
    outcome: str = "ok"


@dataclass(frozen=True)
class StoredAudit:
    """An audit line as stored: its ``id`` orders the trail and pages it."""

    id: int
    entry: AuditEntry


@dataclass(frozen=True)
class AuditQuery:
    """Which lines ``GET /v1/admin/audit`` asks for, newest first.

    ``since`` (included) and ``until`` (excluded) bound the time; ``actor``
    matches when the actor contains it (any case), so ``alice`` finds
    ``admin:alice``; ``action`` and ``outcome`` match exactly; ``after`` is
    the id of the last line of the previous page.
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str = ""
    action: str = ""
    outcome: str = ""
    limit: int = 100
    after: int | None = None


@dataclass(frozen=True)
class Pinning:
    """What pinning an adopted agent's key did.

    ``record`` is the agent afterwards; ``dropped_claim`` the fingerprint of a
    differing claim that the pin discarded (empty when none); ``pinned`` whether
    this call pinned (not when the agent had a pin already or is not registered).
    """

    record: AgentRecord | None
    dropped_claim: str = ""
    pinned: bool = False


class AuditTrail(Protocol):
    """The audit table: append and read."""

    async def append(self, entry: AuditEntry) -> None:
        """Write one line."""

    async def latest(self, limit: int = 100) -> list[AuditEntry]:
        """The latest lines, newest first."""

    async def audit_query(self, query: AuditQuery) -> list[StoredAudit]:
        """The lines ``query`` selects, newest first, at most ``query.limit``."""

    async def vacuum_audit(self, before: dt.datetime) -> int:
        """Forget lines older than ``before``; how many."""


class RevokedTokens(Protocol):
    """Logged-out login tokens, kept by hash until they would have expired."""

    async def revoke_token(self, token_hash: str, expires: dt.datetime) -> bool:
        """Remember a logged-out (or consumed) token; False if it already was.

        The answer is the one atomic check of a single-use token: with several
        directors on one store, only one of them inserts the row.
        """

    async def token_revoked(self, token_hash: str) -> bool:
        """Whether a token was logged out."""

    async def vacuum_tokens(self, now: dt.datetime) -> int:
        """Forget entries past their expiry; how many."""


LoginKey = tuple[str, str]


class SharedFailures(Protocol):
    """Login failures and locks every director of a store counts (PostgreSQL).

    Keys are the throttle's: ``("user", name)`` and ``("address", address)``;
    times are seconds since the epoch.
    """

    async def login_failures(
        self, keys: tuple[LoginKey, LoginKey], since: float
    ) -> tuple[dict[LoginKey, list[float]], dict[LoginKey, float]]:
        """Failures after ``since``, and the locks, of both keys."""

    async def add_login_failure(
        self,
        keys: tuple[LoginKey, LoginKey],
        at: float,
        locks: Mapping[LoginKey, float],
    ) -> None:
        """Count one failure against both keys; record the locks it set."""

    async def clear_login_failures(self, key: LoginKey) -> None:
        """Forget one key's failures and lock."""

    async def vacuum_login_failures(self, before: float) -> int:
        """Forget failures and locks older than ``before``; how many."""


class AgentRegistry(AuditTrail, RevokedTokens, SharedFailures, Protocol):
    """The agents, with the state changes of CONTRACT §3 as named methods.

    Admin transitions raise :class:`~dcvix.common.errors.NotFound` for an
    unknown GUID and :class:`~dcvix.common.errors.Conflict` for a wrong state
    or a hostname another registered agent holds; a refused call changes
    nothing. Hostnames are unique among registered agents (compared in lower
    case) by a constraint of the store itself, except rows adopted as
    duplicates from a Go ``agents.db``.
    """

    async def get(self, guid: str) -> AgentRecord | None:
        """One agent, or None."""

    async def current(self, guid: str) -> AgentRecord | None:
        """As :meth:`get`, exact, but from memory while the store is unchanged.

        For the check of every mTLS request: any change to the store, by this
        process or by another (``dcvixctl``), is seen by the very next call.
        """

    async def list(self, state: str | None = None) -> builtins.list[AgentRecord]:
        """Every agent (of one state), oldest first."""

    async def states(self) -> Mapping[str, str]:
        """Every agent's state by GUID, from memory while the store is unchanged.

        For listings of the whole fleet (``GET /v1/servers``), where reading
        every record was most of the answer's time at 10,000 agents. As with
        :meth:`current`, any change to the store is seen by the next call.
        """

    async def count(self, state: str) -> int:
        """How many agents are in ``state``."""

    async def hostname_holders(self, hostname: str) -> builtins.list[str]:
        """GUIDs of the registered agents holding ``hostname`` (any case)."""

    async def create_pending(
        self, guid: str, hostname: str, key: str, address: str, now: dt.datetime
    ) -> bool:
        """A new pending agent; False when the GUID exists already (a race)."""

    async def create_registered(
        self,
        guid: str,
        hostname: str,
        key: str,
        address: str,
        now: dt.datetime,
        actor: str,
    ) -> bool:
        """A new agent approved at once (``auto_approve = token``), audited.

        False when the GUID exists or a registered agent holds the hostname.
        """

    async def to_pending(
        self,
        guid: str,
        hostname: str,
        key: str,
        address: str,
        now: dt.datetime,
        seen: AgentRecord | None = None,
    ) -> bool:
        """A registered or pending agent goes (back) to pending with this key.

        The expiry of its last certificate is forgotten: the approval that
        follows stands for it. An agent revoked or denied meanwhile stays so.
        With ``seen`` (the row the caller decided on), nothing changes unless
        the row still has that state and key: an approval that came in between
        is not undone. Whether the row changed.
        """

    async def claim(
        self, guid: str, key: str, address: str, now: dt.datetime
    ) -> str | None:
        """Record ``key`` as claimed for a registered agent without a pin.

        Never changes the agent's state. Returns the claim it replaced ("" when
        there was none), or None when the agent is not an unpinned registered
        one (nothing written).
        """

    async def record_issue(
        self,
        guid: str,
        serial: int,
        expires: dt.datetime,
        address: str,
        now: dt.datetime,
    ) -> bool:
        """Note a certificate just issued to a registered agent.

        False, and nothing written, when the agent is no longer registered (a
        change by another process since the caller read it).
        """

    async def pin(self, guid: str, key: str, now: dt.datetime) -> Pinning:
        """Pin ``key`` for a registered agent that has no pin yet.

        Any claim is dropped; a claim for another key is audited as dropped.
        """

    async def approve(
        self,
        guid: str,
        actor: str,
        now: dt.datetime,
        replace: bool = False,
        claimed_key: str = "",
        seen: Seen = NOTHING_SEEN,
        address: str = "",
    ) -> ActionResult:
        """Pending → registered with the key it registered with; or approve a claim.

        For a registered agent without a pin but with a claim, the claim
        becomes its pin only when ``claimed_key`` is the claimed fingerprint
        (anyone may replace a claim; the admin approves the key they saw), else
        a conflict naming the claim. A registered agent holding the hostname is
        a conflict unless ``replace``, which revokes it (audited). An agent
        that no longer matches ``seen`` is a conflict (nothing changes).
        """

    async def deny(
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        """Pending → denied."""

    async def revoke(
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        """Registered → revoked."""

    async def reactivate(
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        """Revoked → registered (same pinned key); denied → pending."""

    async def delete(
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        """Forget an agent entirely."""

    async def purge_pending(self, older_than: dt.datetime) -> builtins.list[str]:
        """Delete agents pending since before ``older_than``; their GUIDs."""
