"""Agent administration: the one place the admin lifecycle is written.

Used by the admin API and by ``dcvixctl`` alike: validate the GUID, run the
registry's transition (which writes its audit row in the same transaction),
tell the runtime side to forget an agent that may no longer be called, write
the audit log line, and say when an agent runs on the director's own machine.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from dcvix.common.clock import now_utc
from dcvix.common.errors import BadRequest
from dcvix.common.validate import canonical_guid
from dcvix.director.audit import Audit
from dcvix.director.registry import (
    NOTHING_SEEN,
    STATES,
    AgentRecord,
    AgentRegistry,
    Seen,
)

ACTIONS = ("approve", "deny", "revoke", "reactivate", "delete")

# Called with (guid, deleted) when an agent may no longer be called: revoked,
# deleted, or replaced by another agent with its hostname.
Forget = Callable[[str, bool], Awaitable[None]]


async def forget_nothing(guid: str, deleted: bool) -> None:
    """For ``dcvixctl``: another process, whose director checks every call anyway."""


@dataclass(frozen=True)
class Outcome:
    """What an admin action did, for the caller to report."""

    action: str
    record: AgentRecord
    replaced: tuple[str, ...] = ()
    warning: str = ""


class AgentAdmin:
    """Lists agents and applies admin actions to them.

    Args:
        registry: the agent registry.
        audit: the audit trail.
        clock: the time of each action.
        own_names: the director's host names, lower case (approving one warns).
        forget: drops the runtime state of an agent that may no longer be called.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        audit: Audit,
        clock: IReactorTime,
        own_names: frozenset[str],
        forget: Forget,
    ) -> None:
        self._registry = registry
        self._audit = audit
        self._clock = clock
        self.own_names = own_names
        self._forget = forget

    def runs_on_director(self, record: AgentRecord) -> bool:
        """Whether the agent's hostname is one of the director's own."""
        return record.hostname.lower() in self.own_names

    async def list(self, state: str | None = None) -> builtins.list[AgentRecord]:
        """Every agent (of one state), oldest first.

        Raises:
            BadRequest: an unknown state.
        """
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        return await self._registry.list(state)

    async def act(
        self,
        action: str,
        guid: str,
        actor: str,
        replace: bool = False,
        claimed_key: str = "",
        seen: Seen = NOTHING_SEEN,
        address: str = "",
    ) -> Outcome:
        """Apply ``action`` (one of :data:`ACTIONS`) to one agent, as ``actor``.

        ``replace`` (approve only) revokes a registered agent that holds the
        hostname instead of refusing. ``claimed_key`` (approve only) is the
        fingerprint of the claim being approved, for an adopted agent.
        ``seen`` (approve only): what the admin saw; refused if it changed.
        ``address``: where the admin's request came from (the audit trail's).

        Raises:
            BadRequest: the GUID is not a UUID, or the action is unknown.
            NotFound, Conflict: an unknown agent, a wrong state, a hostname
                another registered agent holds.
        """
        canonical = canonical_guid(guid)
        if canonical is None:
            raise BadRequest("guid must be a UUID")
        now = now_utc(self._clock)
        if action == "approve":
            result = await self._registry.approve(
                canonical, actor, now, replace, claimed_key.lower(), seen, address
            )
        elif action == "deny":
            result = await self._registry.deny(canonical, actor, now, address)
        elif action == "revoke":
            result = await self._registry.revoke(canonical, actor, now, address)
        elif action == "reactivate":
            result = await self._registry.reactivate(canonical, actor, now, address)
        elif action == "delete":
            result = await self._registry.delete(canonical, actor, now, address)
        else:
            raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
        for old in result.replaced:
            await self._forget(old, False)
        if action in ("revoke", "delete"):
            # Never call it again on a pooled connection; forget its reports.
            await self._forget(canonical, action == "delete")
        record = result.record
        self._audit.exported(result.entries)
        warning = ""
        if action == "approve" and self.runs_on_director(record):
            warning = (
                f"{record.hostname} is the director's own host name: this agent "
                "runs on the director's machine"
            )
        return Outcome(action, record, result.replaced, warning)
