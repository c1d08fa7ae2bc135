"""How the agent gets, keeps and renews its certificate from the director.

States: *enrolling* (no usable certificate: register every 30 s until the
director answers 200) and *enrolled* (a usable certificate: check regularly and
renew when it is older than ``renew_interval`` or within 24 h of expiry,
retrying every 5 minutes, and always before it expires: see :func:`next_check`).
A certificate that expired all the same (the director did not answer in time),
a refused renewal or a hostname that no longer matches the certificate sends
the agent back to registration, with the same key and GUID; after an expiry
the director wants an admin's approval again.

Files: ``ca.pem`` is written before ``agent.crt``, so a certificate on disk
always has its CA beside it.

Trust in the director: with ``ca.pem`` on disk, only a director certificate
chaining to it and naming ``dcvix-director`` is accepted. Without it (first
use), the director's CA is taken from its TLS chain; with ``ca_fingerprint`` set,
only a CA with that fingerprint. The registration token is sent only when the
channel is verified (``ca.pem`` was there, or the fingerprint matched).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dcvix.agent.directors import Director, Directors, Refused, parse_directors
from dcvix.agent.identity import (
    AgentFiles,
    CertificateState,
    SignerKey,
    certificate_state,
    issued_by_any,
    load_cas,
    make_csr,
    store_enrolment,
)
from dcvix.common.jobs import PeriodicJob
from dcvix.common.pki import (
    certificate_fingerprint,
    load_certificates,
    public_key_fingerprint,
)
from dcvix.common.pki import (
    certificate_pem as pem_of,
)
from dcvix.common.tls import (
    director_client_tls,
    fetch_peer_chain,
    unverified_client_tls,
)
from dcvix.common.webclient import Answer, JsonClient

log = Logger()

REGISTER_RETRY = 30.0
RENEW_RETRY = 300.0
RENEW_BEFORE_EXPIRY = dt.timedelta(hours=24)
# The director back-dates certificates by an hour (clock skew): issued = +1 h.
BACKDATE = dt.timedelta(hours=1)
MIN_CHECK = 1.0
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class EnrolmentSettings:
    """What enrolment needs from the agent's configuration.

    ``director_host`` may list several directors (see :mod:`.directors`).
    """

    director_host: str
    director_port: int
    hostname: str
    renew_interval: float
    ca_fingerprint: str = ""
    registration_token: str = ""


def renewal_due_at(certificate: x509.Certificate, renew_interval: float) -> dt.datetime:
    """When ``renew_interval`` has passed since issue, or 24 h before expiry."""
    issued = certificate.not_valid_before_utc + BACKDATE
    return min(
        issued + dt.timedelta(seconds=renew_interval),
        certificate.not_valid_after_utc - RENEW_BEFORE_EXPIRY,
    )


def renewal_due(
    certificate: x509.Certificate, now: dt.datetime, renew_interval: float
) -> bool:
    """Older than ``renew_interval``, or less than 24 h from expiry."""
    return now >= renewal_due_at(certificate, renew_interval)


def check_period(renew_interval: float) -> float:
    """How often a certificate is looked at: ``min(5 min, renew_interval / 4)``."""
    return min(RENEW_RETRY, max(MIN_CHECK, renew_interval / 4))


def next_check(
    certificate: x509.Certificate, now: dt.datetime, renew_interval: float
) -> float:
    """Seconds until the renewal job looks at ``certificate`` again.

    Every :func:`check_period` at most; at the moment renewal falls due when that
    comes first; and, once due (a renewal failed, or the certificate lives less
    than 24 h), within half the time the certificate has left. So a certificate
    found near its end at start, or one shorter than the period
    (``agent_cert_lifetime`` may be any duration), is renewed before it expires
    while the director answers: only a certificate that could not be renewed in
    time expires, and sends the agent back to registration.
    """
    period = check_period(renew_interval)
    until_due = (renewal_due_at(certificate, renew_interval) - now).total_seconds()
    if until_due > 0:
        return min(period, until_due)
    left = (certificate.not_valid_after_utc - now).total_seconds()
    return min(period, max(MIN_CHECK, left / 2))


class AgentEnrolment(MultiService):
    """Registers and renews; tells the listener when the certificate changed.

    Args:
        files: the identity files.
        key, guid: the agent's identity (see :mod:`dcvix.agent.identity`).
        settings: director address, hostname, intervals, trust settings.
        reactor: network and clock.
        on_certificate: called after a new certificate is on disk.
        directors: the directors to call, shared with the updater (by default
            those of ``settings``).
    """

    def __init__(
        self,
        files: AgentFiles,
        key: SignerKey,
        guid: str,
        settings: EnrolmentSettings,
        reactor: Any,
        on_certificate: Callable[[], object] = lambda: None,
        directors: Directors | None = None,
    ) -> None:
        super().__init__()
        self.setName("enrolment")
        self._files = files
        self._key = key
        self._guid = guid
        self._settings = settings
        self._reactor = reactor
        self._on_certificate = on_certificate
        self._directors = directors or Directors(
            parse_directors(settings.director_host, settings.director_port), reactor
        )
        self._job: PeriodicJob | None = None
        self._waiting: list[Deferred[None]] = []
        # The director's certificate seen on first use, when its chain had no CA.
        self._first_use_leaf: x509.Certificate | None = None
        self.enrolled = False

    # --------------------------------------------------------------- states

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._reactor.seconds(), dt.UTC)

    def _state(self) -> CertificateState:
        return certificate_state(
            self._files, self._key, self._guid, self._settings.hostname, self._now()
        )

    def _next_check(self) -> float:
        """Seconds until the renewal job runs again (0: now, it is unusable)."""
        state = self._state()
        if not state.usable or state.certificate is None:
            return 0.0
        return next_check(state.certificate, self._now(), self._settings.renew_interval)

    def startService(self) -> None:
        """Serve with the certificate on disk if usable, else register."""
        super().startService()
        state = self._state()
        if state.usable:
            log.info(
                "certificate on disk is valid: serving as agent {guid}", guid=self._guid
            )
            self._enter(True)
        else:
            log.info(
                "registering as agent {guid}: {problem}",
                guid=self._guid,
                problem=state.problem,
            )
            _explain_expiry(state)
            self._enter(False)

    def _enter(self, enrolled: bool) -> None:
        if self._job is not None:
            old, self._job = self._job, None
            old.disownServiceParent()
        self.enrolled = enrolled
        if enrolled:
            # The period is the longest wait; each run sets the next one from
            # the certificate (see next_check).
            job = PeriodicJob(
                "renew",
                check_period(self._settings.renew_interval),
                self._renew_run,
                self._reactor,
                self._next_check(),
            )
            waiting, self._waiting = self._waiting, []
            for deferred in waiting:
                deferred.callback(None)
        else:
            job = PeriodicJob(
                "register", REGISTER_RETRY, self.register_once, self._reactor
            )
        self._job = job
        job.setServiceParent(self)

    def poke(self) -> None:
        """Register now rather than at the next 30 s tick (on SIGHUP).

        Saves the wait after an admin approved the agent; does nothing once
        enrolled.
        """
        if not self.enrolled and self._job is not None:
            self._job.trigger()

    def when_enrolled(self) -> Deferred[None]:
        """Fires once the agent holds a certificate from the director."""
        if self.enrolled:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        return deferred

    # -------------------------------------------------------------- register

    async def register_once(self) -> None:
        """One registration attempt; a 200 switches to *enrolled*."""
        try:
            answer, trusted = await self._post_register()
        except Refused as error:
            log.warn("registration refused: {error}", error=str(error))
            return
        except Exception as error:
            log.warn(
                "cannot reach the director to register: {error}", error=_describe(error)
            )
            return
        if answer.status == 200:
            self._accept_registration(answer, trusted)
            return
        if answer.status == 403 and answer.error == "pending approval":
            log.info(
                "pending approval (agent {guid}, hostname {hostname})",
                guid=self._guid,
                hostname=self._settings.hostname,
            )
            return
        log.warn(
            "registration answered {status}: {error}",
            status=answer.status,
            error=answer.error,
        )

    async def _post_register(self) -> tuple[Answer, list[x509.Certificate]]:
        return await self._directors.call(self._register_at, lambda found: found[0])

    async def _register_at(
        self, director: Director
    ) -> tuple[Answer, list[x509.Certificate]]:
        """Register with ``director``: its trust first, then the request."""
        settings = self._settings
        cas = load_cas(self._files)
        if cas and settings.ca_fingerprint:
            # ca_fingerprint names the only CA to trust, ca.pem or not.
            cas = [
                c for c in cas if certificate_fingerprint(c) == settings.ca_fingerprint
            ]
            if not cas:
                raise Refused(
                    f"ca.pem holds no CA with fingerprint {settings.ca_fingerprint}"
                )
        verified = bool(cas)
        if not cas:
            cas, verified = await self._first_use_trust(director)
        creator = director_client_tls(cas) if cas else unverified_client_tls()
        payload: dict[str, str] = {
            "csr": make_csr(self._key, self._guid),
            "guid": self._guid,
            "hostname": settings.hostname,
        }
        if settings.registration_token:
            if verified:
                payload["registrationToken"] = settings.registration_token
            else:
                log.warn(
                    "registration_token withheld: the director is not verified "
                    "(deploy ca.pem or set ca_fingerprint)"
                )
        client = JsonClient(self._reactor, creator, persistent=False)
        try:
            answer = await client.call(
                "POST", director.url("/v1/agent/register"), payload, REQUEST_TIMEOUT
            )
        finally:
            await client.close()
        return answer, cas

    async def _first_use_trust(
        self, director: Director
    ) -> tuple[list[x509.Certificate], bool]:
        """The CA ``director`` shows in its TLS chain, checked against the pin."""
        chain = await fetch_peer_chain(
            self._reactor, director.host, director.port, REQUEST_TIMEOUT
        )
        expected = self._settings.ca_fingerprint
        candidates = [ca for ca in chain[1:] if issued_by_any(chain[0], [ca])]
        if expected:
            matching = [c for c in candidates if certificate_fingerprint(c) == expected]
            if matching:
                return matching, True
            if candidates:
                raise Refused(
                    "the director's CA has fingerprint "
                    f"{certificate_fingerprint(candidates[0])}, not {expected}"
                )
            self._first_use_leaf = chain[0] if chain else None
            return [], False
        if candidates:
            log.warn(
                "trusting the director's CA on first use, fingerprint {fingerprint} "
                "(set ca_fingerprint to pin it)",
                fingerprint=certificate_fingerprint(candidates[0]),
            )
            return candidates[:1], False
        return [], False

    def _accept_registration(
        self, answer: Answer, trusted: list[x509.Certificate]
    ) -> None:
        body = answer.json if isinstance(answer.json, dict) else {}
        try:
            certificate_pem = str(body["certificate"]).encode()
            ca_pem = str(body["ca"]).encode()
            certificate = load_certificates(certificate_pem)[0]
            cas = load_certificates(ca_pem)
        except (KeyError, ValueError) as error:
            log.warn("registration answer unusable: {error}", error=str(error))
            return
        problem = self._answer_problem(certificate, cas, trusted)
        if problem is not None:
            log.error("registration answer refused: {problem}", problem=problem)
            return
        # Only the CA that signed our certificate, the one just checked: an
        # extra CA slipped into the answer must never become trusted.
        issuer = issued_by_any(certificate, cas)
        assert issuer is not None
        if not self._stored(certificate_pem, pem_of(issuer)):
            return
        log.info(
            "registered as agent {guid}; certificate valid until {until}",
            guid=self._guid,
            until=certificate.not_valid_after_utc.isoformat(),
        )
        self._on_certificate()
        self._enter(True)

    def _answer_problem(
        self,
        certificate: x509.Certificate,
        cas: list[x509.Certificate],
        trusted: list[x509.Certificate],
    ) -> str | None:
        issuer = issued_by_any(certificate, cas)
        if issuer is None:
            return "the certificate is not signed by the CA sent with it"
        if public_key_fingerprint(certificate.public_key()) != public_key_fingerprint(
            self._key.public_key()
        ):
            return "the certificate is not for this agent's key"
        expected = self._settings.ca_fingerprint
        if expected and certificate_fingerprint(issuer) != expected:
            return f"the CA is {certificate_fingerprint(issuer)}, not {expected}"
        if trusted and issuer not in trusted:
            return "the CA sent is not the one the director's TLS chain showed"
        leaf = self._first_use_leaf
        if expected and not trusted and leaf and not issued_by_any(leaf, [issuer]):
            return "the director's TLS certificate does not chain to that CA"
        return None

    # ----------------------------------------------------------------- renew

    async def _renew_run(self) -> None:
        """One run of the renewal job, which then waits as the certificate says."""
        started = self._reactor.seconds()
        try:
            await self.renew_once()
        finally:
            job = self._job
            if self.enrolled and job is not None and job.name == "renew":
                # PeriodicJob counts its interval from the start of a run.
                elapsed = self._reactor.seconds() - started
                job.interval = elapsed + self._next_check()

    async def renew_once(self) -> None:
        """Renew when due; an unusable certificate or a refusal → registration."""
        state = self._state()
        if not state.usable or state.certificate is None:
            log.warn(
                "certificate no longer usable ({problem}): registering again",
                problem=state.problem,
            )
            _explain_expiry(state)
            self._enter(False)
            return
        if not renewal_due(
            state.certificate, self._now(), self._settings.renew_interval
        ):
            return
        try:
            answer = await self._post_renew(state)
        except Exception as error:
            log.warn("renewal failed, retrying later: {error}", error=_describe(error))
            return
        if answer.status in (401, 403):
            log.warn(
                "renewal refused ({status}: {error}): registering again",
                status=answer.status,
                error=answer.error,
            )
            self._enter(False)
            return
        body = answer.json if isinstance(answer.json, dict) else {}
        try:
            certificate_pem = str(body["certificate"]).encode()
            certificate = load_certificates(certificate_pem)[0]
        except (KeyError, ValueError):
            log.warn(
                "renewal answered {status}: {error}",
                status=answer.status,
                error=answer.error,
            )
            return
        if answer.status != 200 or self._answer_problem(certificate, state.cas, []):
            log.warn("renewal answer refused ({status})", status=answer.status)
            return
        if not self._stored(certificate_pem):
            return
        log.info(
            "certificate renewed, valid until {until}",
            until=certificate.not_valid_after_utc.isoformat(),
        )
        self._on_certificate()

    def _stored(self, certificate_pem: bytes, ca_pem: bytes | None = None) -> bool:
        """Write what the director issued; False (and said why) when it cannot.

        A full or read-only ``data_dir`` is the operator's to fix, not a crash:
        the files on disk stay whole (atomic writes), the agent keeps what it
        holds and asks again at the next attempt.
        """
        try:
            store_enrolment(self._files, certificate_pem, ca_pem)
        except OSError as error:
            log.error(
                "cannot store the certificate in {data_dir}: {error}; keeping "
                "what is on disk and asking again at the next attempt",
                data_dir=str(self._files.data_dir),
                error=error.strerror or str(error),
            )
            return False
        return True

    async def _post_renew(self, state: CertificateState) -> Answer:
        """``POST /v1/agent/renew`` with the certificate held (mTLS)."""
        creator = director_client_tls(state.cas, state.certificate, self._key)
        csr = {"csr": make_csr(self._key, self._guid)}

        async def renew_at(director: Director) -> Answer:
            client = JsonClient(self._reactor, creator, persistent=False)
            try:
                return await client.call(
                    "POST", director.url("/v1/agent/renew"), csr, REQUEST_TIMEOUT
                )
            finally:
                await client.close()

        return await self._directors.call(renew_at)


def _explain_expiry(state: CertificateState) -> None:
    """Say what an expired certificate means for the admin."""
    if state.problem != "expired" or state.certificate is None:
        return
    log.warn(
        "the certificate expired at {until} before it was renewed (the agent was "
        "stopped, or the director did not answer in time): the director puts this "
        "agent back to pending, and an admin must approve this agent again",
        until=state.certificate.not_valid_after_utc.isoformat(),
    )


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.replace("\n", " ")[:300]
