"""Stand-ins for what the director reaches outside its process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dcvix.common.webclient import Answer
from dcvix.director.agent_client import AgentAddress


class PasswordAuthenticator:
    """An :class:`~dcvix.director.auth.Authenticator` with a fixed password table.

    Any OTP is accepted. Every attempt is recorded in :attr:`calls`, so a test
    can tell whether a refusal happened before the back end was asked.

    Args:
        passwords: user id to password.
        name: the back end's name, as audit lines show it.
    """

    def __init__(self, passwords: Mapping[str, str], name: str = "fake") -> None:
        self.name = name
        self.passwords = dict(passwords)
        self.calls: list[tuple[str, str, str]] = []

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """``user`` when ``password`` is theirs in the table, else None."""
        self.calls.append((user, password, otp))
        known = self.passwords.get(user)
        return user if known is not None and known == password else None


@dataclass(frozen=True)
class AgentCall:
    """One request the director made to an agent."""

    target: AgentAddress
    method: str
    path: str
    payload: Any


class RecordingAgentClient:
    """Takes the place of :class:`~dcvix.director.agent_client.AgentClient`.

    Nothing leaves the process: each call is recorded and answered with
    :attr:`answer` (``200 {}`` unless a test sets another).
    """

    def __init__(self) -> None:
        self.answer = Answer(200, b"{}")
        self.calls: list[AgentCall] = []
        self.forgotten: list[str] = []

    def forget(self, guid: str) -> None:
        """Record that the agent's connections would be dropped."""
        self.forgotten.append(guid)

    async def call(
        self,
        target: AgentAddress,
        method: str,
        path: str,
        payload: Any = None,
        timeout: float | None = None,
    ) -> Answer:
        """Record the request and give :attr:`answer`."""
        self.calls.append(AgentCall(target, method, path, payload))
        return self.answer
