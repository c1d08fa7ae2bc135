"""A live director and agent for schemathesis, and the credentials per operation.

:func:`start_fuzz_world` starts :func:`browser.start_web_fleet`'s director
(admin ``alice``, user ``bob``, external-command logins) and its enrolled agent
``ws-web`` with a fake ``dcv``. That director allows a practically endless
number of failed logins, so that fuzzing the login routes (every example a
failed login) cannot lock the fuzzer out.

:meth:`FuzzWorld.fuzz` runs one operation: a derandomized Hypothesis test of
schemathesis' cases, positive and negative, each sent with what the
operation's ``x-dcvix-role`` asks for and checked by schemathesis' standard
checks (:data:`CHECKS`):

- ``user``, ``admin``: bob's or alice's login cookie;
- ``agent``, ``agent_certificate``: the enrolled agent's ``agent.crt``;
- ``director`` (the agent's API): the director's ``server.crt``;
- ``public``, ``gateway``: nothing (127.0.0.1 is in ``gateways_list`` by
  default), but bob's cookie where the document names it as optional
  (``GET /v1/ui-config``); ``POST /v1/logout`` gets a fresh login per example,
  so that it never revokes the cookies the other operations use.

Half of the values schemathesis draws for a few parameters are ones the
fixture knows (:data:`BINDINGS`: ws-web, bob's console session and a
connection token for it, the allowed DCV setting...), so that examples get
past "not found" into the code behind. What an example may close, revoke or
delete is a spare made for it (:data:`SPARE_SESSIONS`, :data:`SPARE_AGENTS`),
never ws-web nor bob's console session; fuzzed agent updates keep ws-web's
real port and address.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from browser import (
    ADMIN,
    ADMIN_PASSWORD,
    USER,
    USER_PASSWORD,
    WebFleet,
    start_web_fleet,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dcvix.common.openapi import path_template
from dcvix.director.openapi import COOKIE_SCHEME
from fleet import Director, Fleet, wait_for
from go_agent import csr_text, new_go_key, new_guid, register

COOKIE = "dcvix_session"
Call = schemathesis.Case[Any]
# Examples per operation: 37 operations at ~25 ms a call stay near a minute.
EXAMPLES = 50
# schemathesis' standard checks: no 5xx, and each answer as documented.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
# Where schemathesis draws a value the fixture knows, half the time, so that
# examples also get past "no such server" into the code behind it. What the
# fuzzing may close, revoke or delete is a spare: never ws-web, never bob's
# console session.
BINDINGS = {
    "servers": ("path.server", "query.serverId", "body.serverId"),
    "pools": ("query.pool", "body.poolId"),
    "users": ("body.userId", "body.userID"),
    "passwords": ("body.password",),
    "session_ids": ("query.sessionId", "body.sessionId"),
    "tokens": ("query.authenticationToken", "body.authenticationToken"),
    "session_types": ("body.sessionType",),
    "sections": ("body.config[*].section",),
    "keys": ("body.config[*].key",),
    "assets": ("path.name",),
    "spare_guids": ("path.guid", "body.guid"),
    "spare_csrs": ("body.csr",),
    "spare_hostnames": ("body.hostname",),
}
# Bob's sessions each closing operation may close (``path.session_id``), by
# API and operationId: its own, whatever order the operations run in.
SPARE_SESSIONS = {
    ("director", "closeSession"): ("spare-1", "spare-2"),
    ("director", "userCloseSession"): ("spare-3", "spare-4"),
    ("agent", "closeSession"): ("spare-5", "spare-6"),
}
SPARE_AGENTS = ("spare-a", "spare-b", "spare-c")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The same inputs every run, so that a failure reproduces.
    derandomize=True,
    database=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    # Negative cases of a few operations are mostly filtered out (a path
    # parameter a URL cannot carry), and a live call is slow by Hypothesis'
    # standards.
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


class FuzzFleet(Fleet):
    """A fleet whose director allows (nearly) endless failed logins."""

    def director(self, start: bool = True, **keys: str) -> Director:
        """The director of :meth:`Fleet.director`, ``login_max_failures`` huge."""
        return super().director(start, login_max_failures="1000000000", **keys)


def _session(verify: Path, cert: tuple[Path, Path] | None = None) -> requests.Session:
    """A keep-alive HTTPS session trusting ``verify``, with a client certificate."""
    session = requests.Session()
    # Neither REQUESTS_CA_BUNDLE nor a proxy from the environment.
    session.trust_env = False
    session.verify = str(verify)
    if cert is not None:
        session.cert = (str(cert[0]), str(cert[1]))
    return session


def labels(document: dict[str, Any]) -> list[str]:
    """``METHOD /path`` of every operation of an OpenAPI document, sorted."""
    return sorted(
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options")
    )


def table_labels(table: Iterable[tuple[str, str]]) -> list[str]:
    """The labels of a table keyed by method and Klein path, sorted."""
    return sorted(f"{method} {path_template(path)[0]}" for method, path in table)


@dataclass
class FuzzWorld:
    """The running daemons, the logins and one keep-alive session per caller."""

    web: WebFleet
    # Examples sent, by operation label.
    sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        director, agent = self.web.director, self.web.agent
        self.director_url = f"https://127.0.0.1:{director.port}"
        self.agent_url = f"https://127.0.0.1:{agent.port}"
        self.anonymous = _session(director.ca_file)
        self.as_agent = _session(director.ca_file, (agent.certificate, agent.key))
        self.as_director = _session(
            director.ca_file, (director.server_crt, director.server_key)
        )
        self.admin_cookie = self.login(ADMIN, ADMIN_PASSWORD, admin=True)
        self.user_cookie = self.login(USER, USER_PASSWORD, admin=False)
        self.session_id, self.token = self._bobs_session()
        for spares in SPARE_SESSIONS.values():
            for spare in spares:
                self.web.fake.add_session(spare, USER)
        self.spare_agents = self._spare_agents()

    def _spare_agents(self) -> dict[str, tuple[str, str]]:
        """Pending agents (no process) by hostname: their GUID and CSR."""
        spares = {}
        for hostname in SPARE_AGENTS:
            key, guid = new_go_key(), new_guid()
            answer = register(self.web.director.port, key, guid, hostname)
            assert answer.status == 403, answer.body
            spares[hostname] = (guid, csr_text(key, guid))
        return spares

    def _bobs_session(self) -> tuple[str, str]:
        """A console session of bob's on ws-web, and a connection token for it.

        (A virtual one would need bob to be a local user of this machine.)
        """
        cookies = {COOKIE: self.user_cookie}

        def made() -> str | None:
            answer = self.anonymous.post(
                self.director_url + "/v1/user/sessions",
                json={"serverId": "ws-web", "sessionType": "console"},
                cookies=cookies,
                timeout=30,
            )
            return str(answer.json()["sessionID"]) if answer.ok else None

        session_id: str = wait_for("bob's session on ws-web", made)

        def token() -> str | None:
            answer = self.anonymous.get(
                self.director_url + "/v1/user/connectiontoken",
                params={"serverId": "ws-web", "sessionId": session_id},
                cookies=cookies,
                timeout=30,
            )
            return str(answer.json()["token"]) if answer.ok else None

        return session_id, wait_for("a connection token", token)

    def config(self, api: str) -> schemathesis.Config:
        """What schemathesis needs: the values this fixture knows (:data:`BINDINGS`).

        ``api``: ``director`` or ``agent``, whose spare sessions to close.

        The credentials are the right ones, set per call: schemathesis must
        not make up a cookie of its own.
        """
        values = {
            "servers": ["ws-web"],
            "pools": ["gpu"],
            "users": [USER, ADMIN],
            "passwords": [USER_PASSWORD, ADMIN_PASSWORD],
            "session_ids": [self.session_id],
            "tokens": [self.token],
            "session_types": ["virtual", "console"],
            "sections": ["display"],
            "keys": ["quality"],
            "assets": ["css/app.css", "js/app.js", "favicon.svg"],
            "spare_guids": [guid for guid, _ in self.spare_agents.values()],
            "spare_csrs": [csr for _, csr in self.spare_agents.values()],
            "spare_hostnames": list(self.spare_agents),
        }
        closing = {
            operation: spares
            for (where, operation), spares in SPARE_SESSIONS.items()
            if where == api
        }
        values |= {f"spares_{operation}": list(s) for operation, s in closing.items()}
        return schemathesis.Config.from_dict(
            {
                "generation": {"with-security-parameters": False},
                "dictionaries": {
                    name: {"values": known} for name, known in values.items()
                },
                "parameters": {
                    parameter: {"dictionary": name, "probability": 0.5}
                    for name, parameters in BINDINGS.items()
                    for parameter in parameters
                }
                | {
                    # An update may say where its agent listens: fuzzed, the
                    # director would call a port nobody listens on for a second.
                    "body.agent_port": self.web.agent.port,
                    "body.advertise_address": "127.0.0.1",
                },
                "operations": [
                    {
                        "include-operation-id": operation,
                        "parameters": {
                            "path.session_id": {
                                "dictionary": f"spares_{operation}",
                                "probability": 0.5,
                            }
                        },
                    }
                    for operation in closing
                ],
            }
        )

    def close(self) -> None:
        """Close the kept-alive connections."""
        for session in (self.anonymous, self.as_agent, self.as_director):
            session.close()

    def login(self, user: str, password: str, *, admin: bool) -> str:
        """A fresh login's ``dcvix_session`` cookie."""
        path = "/v1/admin/login" if admin else "/v1/user/login"
        answer = self.anonymous.post(
            self.director_url + path,
            json={"userID": user, "password": password},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        cookie = answer.cookies[COOKIE]
        self.anonymous.cookies.clear()
        return str(cookie)

    def served_document(self) -> dict[str, Any]:
        """``GET /v1/openapi.json`` of the director (its CA checked)."""
        context = ssl.create_default_context(cafile=str(self.web.director.ca_file))
        with urllib.request.urlopen(
            self.director_url + "/v1/openapi.json", context=context, timeout=30
        ) as answer:
            document: dict[str, Any] = json.load(answer)
        return document

    def call_director(self, case: Call) -> None:
        """``case`` against the director with its role's credentials, checked."""
        raw = case.operation.definition.raw
        role = raw["x-dcvix-role"]
        session, cookie = self.anonymous, None
        if role == "user":
            cookie = self.user_cookie
        elif role == "admin":
            cookie = self.admin_cookie
        elif role in ("agent", "agent_certificate"):
            session = self.as_agent
        elif case.operation.label == "POST /v1/logout":
            cookie = self.login(USER, USER_PASSWORD, admin=False)
        elif any(COOKIE_SCHEME in needs for needs in raw.get("security", [])):
            # Public, and a cookie changes the answer (ui-config).
            cookie = self.user_cookie
        else:
            assert role in ("public", "gateway"), role
        self._call(case, session, self.director_url, cookie)

    def call_agent(self, case: Call) -> None:
        """``case`` against the agent, as the director (anyone, for health)."""
        role = case.operation.definition.raw["x-dcvix-role"]
        assert role in ("director", "public"), role
        session = self.as_director if role == "director" else self.anonymous
        self._call(case, session, self.agent_url, None)

    def _call(
        self,
        case: Call,
        session: requests.Session,
        base_url: str,
        cookie: str | None,
    ) -> None:
        label = case.operation.label
        self.sent[label] = self.sent.get(label, 0) + 1
        try:
            case.call_and_validate(
                base_url=base_url,
                session=session,
                cookies=None if cookie is None else {COOKIE: cookie},
                checks=CHECKS,
                verify=session.verify,
                cert=session.cert,
                timeout=30,
            )
        finally:
            # A login's Set-Cookie must not ride along on the next call.
            session.cookies.clear()

    def fuzz(
        self,
        schema: schemathesis.BaseSchema,
        label: str,
        call: Callable[[Call], None],
    ) -> None:
        """:data:`EXAMPLES` cases of one operation, positive and negative."""
        operation = schema.find_operation_by_label(label)
        assert operation is not None, f"{label} is not in the document"
        cases = st.one_of(
            [
                operation.as_strategy(generation_mode=mode)
                for mode in schemathesis.GenerationMode
            ]
        )

        @SETTINGS
        @given(case=cases)
        def run(case: Call) -> None:
            call(case)

        run()
        assert self.sent.get(label, 0) > 0, f"no example of {label} was sent"


def start_fuzz_world(fleet: FuzzFleet) -> FuzzWorld:
    """The director, its agent and the logins (``fleet`` stops the daemons)."""
    return FuzzWorld(start_web_fleet(fleet.folder, fleet))
