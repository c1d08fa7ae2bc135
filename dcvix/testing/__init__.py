"""Fakes and builders for tests of the director's HTTP layer.

Shipped with dcvix so that any test (ours, or a deployment's own) can build
the real director API over real services without a machine's PAM, network or
data folder:

- :mod:`.fakes`: a login back end with a password table, and an agent client
  that records its calls instead of reaching agents;
- :mod:`.director`: :func:`~.director.director_harness`, the real routes of
  every audience over a fresh CA, an ``agents.db`` in a temporary folder, a
  policy with an admin and a user, and a :class:`~twisted.internet.task.Clock`.
"""

from dcvix.testing.director import (
    NOW,
    PASSWORDS,
    USERS,
    DirectorHarness,
    director_harness,
)
from dcvix.testing.fakes import AgentCall, PasswordAuthenticator, RecordingAgentClient

__all__ = [
    "NOW",
    "PASSWORDS",
    "USERS",
    "AgentCall",
    "DirectorHarness",
    "PasswordAuthenticator",
    "RecordingAgentClient",
    "director_harness",
]
