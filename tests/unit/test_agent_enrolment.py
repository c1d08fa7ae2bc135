"""The agent's side of enrolment: what it keeps from the director's answers."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.task import Clock

from dcvix.agent.enrolment import AgentEnrolment, EnrolmentSettings
from dcvix.agent.identity import AgentFiles, load_cas
from dcvix.common.pki import certificate_fingerprint, certificate_pem
from dcvix.common.webclient import Answer
from dcvix.director.ca import new_authority

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_the_agent_stores_only_the_ca_that_signed_its_certificate(
    tmp_path: Path,
) -> None:
    files = AgentFiles(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    guid = str(uuid.uuid4())
    real, attacker = new_authority(NOW), new_authority(NOW)
    issued = real.sign_agent(key.public_key(), guid, "ws1", NOW, dt.timedelta(days=14))
    enrolment = AgentEnrolment(
        files,
        key,
        guid,
        EnrolmentSettings(
            "127.0.0.1", 1, "ws1", 43200.0, ca_fingerprint=real.fingerprint
        ),
        Clock(),
    )
    answer = Answer(
        200,
        json.dumps(
            {
                "certificate": certificate_pem(issued).decode(),
                "ca": (real.pem + attacker.pem).decode(),
            }
        ).encode(),
    )
    enrolment._accept_registration(answer, [])
    assert [certificate_fingerprint(c) for c in load_cas(files)] == [real.fingerprint]
