"""schemathesis against a live director and agent, over every documented operation.

One director (external-command logins: admin ``alice``, user ``bob``) and one
enrolled agent (``ws-web``, a fake ``dcv``) run as twistd processes with their
real TLS; the director's document is the one it serves, the agent's the file
the package ships. Each operation is one test: cases schemathesis makes from
the document, valid and invalid, sent with the credentials the operation's
``x-dcvix-role`` names (see :mod:`fuzz_world`); every answer must be no 5xx
and match the document (a documented status, its content type, its schema and
headers).

Bounded for CI (2 cores, the whole suite under 20 minutes): 50 examples per
operation, no deadline, derandomized so that a failure reproduces with the
same inputs; the module takes about a minute.

No operation is left out, and none can destroy the fixture: ``POST
/v1/logout`` logs out a fresh login of its own; agent actions (revoke, delete)
name random GUIDs or spare pending agents', never ws-web's; session closes
name random ids or spare sessions; fuzzed agent updates keep ws-web's real
port and address; the logins fail without locking anyone out
(``login_max_failures`` is huge here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from fuzz_world import FuzzFleet, FuzzWorld, labels, start_fuzz_world, table_labels

from dcvix.agent.openapi import DOCUMENT_FILE
from dcvix.director.openapi import OPERATIONS

# Long: `make test-quick` leaves it out; `make test` (and CI) runs it.
pytestmark = pytest.mark.long

DIRECTOR_OPERATIONS = table_labels(OPERATIONS)
AGENT_DOCUMENT = json.loads(DOCUMENT_FILE.read_text())
AGENT_OPERATIONS = labels(AGENT_DOCUMENT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    """The director and its enrolled agent, with a login of alice and of bob."""
    fleet = FuzzFleet(tmp_path_factory.mktemp("fuzz"))
    try:
        world = start_fuzz_world(fleet)
        yield world
        world.close()
    finally:
        fleet.stop_all()


@pytest.fixture(scope="module")
def director_schema(world: FuzzWorld) -> schemathesis.BaseSchema:
    """The document the director serves: the operations of its table, no other."""
    document = world.served_document()
    assert labels(document) == DIRECTOR_OPERATIONS
    return schemathesis.openapi.from_dict(document, config=world.config("director"))


@pytest.fixture(scope="module")
def agent_schema(world: FuzzWorld) -> schemathesis.BaseSchema:
    """The agent's document as the package ships it."""
    return schemathesis.openapi.from_dict(AGENT_DOCUMENT, config=world.config("agent"))


@pytest.mark.parametrize("label", DIRECTOR_OPERATIONS)
def test_director_answers_as_documented(
    label: str, world: FuzzWorld, director_schema: schemathesis.BaseSchema
) -> None:
    """No 5xx, and every answer as the director's document says."""
    world.fuzz(director_schema, label, world.call_director)


@pytest.mark.parametrize("label", AGENT_OPERATIONS)
def test_agent_answers_as_documented(
    label: str, world: FuzzWorld, agent_schema: schemathesis.BaseSchema
) -> None:
    """No 5xx, and every answer as the agent's document says."""
    world.fuzz(agent_schema, label, world.call_agent)
