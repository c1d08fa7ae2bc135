"""Agent registration and renewal: the decisions of CONTRACT §3, in its order.

The HTTP layer hands over the decoded body, the peer address and, for mTLS
routes, the verified client certificate; this module answers with a JSON-ready
dict or raises the :mod:`dcvix.common.errors` exception whose status the agent
must see. A refused request changes nothing in the registry.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.common.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from dcvix.common.pki import AGENT_CN_PREFIX, certificate_pem, public_key_fingerprint
from dcvix.common.ratelimit import RateLimiter
from dcvix.common.validate import canonical_guid, is_hostname
from dcvix.director.audit import Audit
from dcvix.director.ca import (
    CertificateAuthority,
    CertificateRequestError,
    parse_csr,
)
from dcvix.director.registry import (
    DENIED,
    PENDING,
    REGISTERED,
    REVOKED,
    AgentRecord,
    AgentRegistry,
)
from dcvix.director.requests import RegisterRequest, RenewRequest

log = Logger()

RENEWAL_INTERVAL_SECONDS = 43200  # what Go directors announce; agents ignore it
KEY_MISMATCH_AUDIT_SECONDS = 60.0
CLAIM_CHANGE_SECONDS = 60.0  # one new claim per adopted agent per minute
AUTO_APPROVE = "auto_approve"  # the audit actor of approvals by token
VERIFIED_LIMIT = 100_000  # certificates identify() remembers (then starts again)


@dataclass(frozen=True)
class PeerIdentity:
    """An agent's client certificate, checked: its GUID and key fingerprint."""

    guid: str
    key: str


class PendingApproval(Forbidden):
    """403 ``{"error": "pending approval"}``: the Go agent polls again on it."""

    def __init__(self) -> None:
        super().__init__("pending approval")


@dataclass(frozen=True)
class EnrolmentPolicy:
    """The director's enrolment settings.

    ``reserved_names`` may never be an agent's hostname (the director's
    certificate names); ``own_names`` (the director's host name and FQDN) may,
    but are never auto-approved.
    """

    lifetime: dt.timedelta
    registration_token: str = ""
    auto_approve: bool = False
    register_rate: int = 30
    max_pending: int = 1000
    reserved_names: frozenset[str] = frozenset({"dcvix-director", "localhost"})
    own_names: frozenset[str] = frozenset()


def _decode_csr(text: str) -> x509.CertificateSigningRequest:
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid csr encoding") from None
    try:
        return parse_csr(der)
    except CertificateRequestError as error:
        raise BadRequest(str(error)) from None


def _expected_subject(guid: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AGENT_CN_PREFIX + guid)])


def guid_of(certificate: x509.Certificate) -> str | None:
    """The GUID in an agent certificate's only CN, or None."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or len(certificate.subject.rdns) != 1:
        return None
    common_name = str(names[0].value)
    if not common_name.startswith(AGENT_CN_PREFIX):
        return None
    return canonical_guid(common_name[len(AGENT_CN_PREFIX) :])


class Enrolment:
    """Registers, renews and authenticates agents against the registry."""

    def __init__(
        self,
        registry: AgentRegistry,
        authority: CertificateAuthority,
        policy: EnrolmentPolicy,
        audit: Audit,
        clock: IReactorTime,
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._policy = policy
        self._audit = audit
        self._clock = clock
        self._new_pending = RateLimiter(policy.register_rate, 60.0, clock)
        self._mismatch_audits = RateLimiter(1, KEY_MISMATCH_AUDIT_SECONDS, clock)
        self._claim_changes = RateLimiter(1, CLAIM_CHANGE_SECONDS, clock)
        # Certificates found ours (signature, GUID), with their identity.
        # DER -> (identity, not valid before, not valid after)
        self._verified: dict[bytes, tuple[PeerIdentity, dt.datetime, dt.datetime]] = {}

    def _now(self) -> dt.datetime:
        return now_utc(self._clock)

    def _token_ok(self, token: str) -> bool:
        expected = self._policy.registration_token
        return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())

    def _require_token(self, token: str, guid: str, address: str) -> bool:
        """Whether the token is valid; refuses when one is set and this is not it."""
        token_ok = self._token_ok(token)
        if self._policy.registration_token and not token_ok:
            log.warn(
                "refused agent {guid} from {address}: wrong registration token",
                guid=guid,
                address=address,
            )
            raise Unauthorized("invalid registration token")
        return token_ok

    # ------------------------------------------------------------ register

    async def register(self, body: RegisterRequest, address: str) -> dict[str, Any]:
        """``POST /v1/agent/register``: the decision table of CONTRACT §3.

        Raises:
            ApiError: the refusal the agent must see (403 while pending).
        """
        csr = _decode_csr(body.csr)
        guid = canonical_guid(body.guid)
        if guid is None:
            raise BadRequest("guid must be a UUID")
        hostname = self._check_hostname(body.hostname)
        if csr.subject != _expected_subject(guid):
            raise Unauthorized("csr guid mismatch")
        key = public_key_fingerprint(csr.public_key())
        record = await self._registry.get(guid)
        if record is None:
            return await self._register_new(
                csr, guid, hostname, key, address, body.registration_token
            )
        if record.state == REVOKED:
            raise Unauthorized("agent revoked")
        if record.state == DENIED:
            raise Forbidden("agent denied")
        if record.state == PENDING:
            await self._still_pending(record, hostname, key, address)
        if not record.key_fingerprint:
            await self._claim(record, key, address, body.registration_token)
        return await self._register_known(record, csr, hostname, key, address)

    def _check_hostname(self, hostname: str) -> str:
        if not is_hostname(hostname):
            raise BadRequest("invalid hostname")
        if hostname.lower() in self._policy.reserved_names:
            raise BadRequest(f"hostname {hostname} is reserved for the director")
        return hostname

    async def _still_pending(
        self, record: AgentRecord, hostname: str, key: str, address: str
    ) -> NoReturn:
        if record.key_fingerprint and record.key_fingerprint != key:
            await self._key_mismatch(record, address)
        if not record.key_fingerprint or record.hostname != hostname:
            await self._registry.to_pending(
                record.guid, hostname, key, address, self._now(), seen=record
            )
        raise PendingApproval()

    async def _claim(
        self, record: AgentRecord, key: str, address: str, token: str
    ) -> NoReturn:
        """A registered agent adopted from Go without a key: record a claim only.

        Its state never changes, so someone who read its GUID from its
        certificate cannot lock it out; its first mTLS call pins its real key,
        or an admin approves the claim.
        """
        self._require_token(token, record.guid, address)
        if record.claimed_key == key or not self._claim_changes.take(record.guid):
            # Nothing new, or a claim changed within the minute: a stranger
            # alternating keys must not grow the audit table.
            raise PendingApproval()
        before = await self._registry.claim(record.guid, key, address, self._now())
        if before is not None and before != key:
            self._audit.logged(
                f"address {address}",
                "claim key",
                record.guid,
                f"key={key}" + (f" replacing {before}" if before else ""),
                address=address,
            )
            log.warn(
                "adopted agent {guid} ({hostname}) has no pinned key: recorded the "
                "key claimed from {address} ({fingerprint}); its first mTLS call "
                "pins its certificate's key, or an admin approves the claim",
                guid=record.guid,
                hostname=record.hostname,
                address=address,
                fingerprint=key,
            )
        raise PendingApproval()

    async def _register_known(
        self,
        record: AgentRecord,
        csr: x509.CertificateSigningRequest,
        hostname: str,
        key: str,
        address: str,
    ) -> dict[str, Any]:
        now = self._now()
        if record.key_fingerprint != key:
            await self._key_mismatch(record, address)
        elif record.hostname != hostname:
            reason = f"hostname changed from {record.hostname} to {hostname}"
        elif record.cert_expires_at is not None and record.cert_expires_at <= now:
            reason = "its last certificate expired"
        else:
            return await self._issue(record.guid, csr, record.hostname, address, True)
        if not await self._registry.to_pending(
            record.guid, hostname, key, address, now, seen=record
        ):
            raise PendingApproval()  # changed meanwhile: the agent asks again
        log.warn(
            "agent {guid} ({hostname}) is back to pending: {reason}",
            guid=record.guid,
            hostname=hostname,
            reason=reason,
        )
        # Only the agent's own key gets here (the CSR proves it holds it).
        await self._audit.record(
            f"address {address}",
            "back to pending",
            record.guid,
            reason,
            address=address,
        )
        raise PendingApproval()

    async def _register_new(
        self,
        csr: x509.CertificateSigningRequest,
        guid: str,
        hostname: str,
        key: str,
        address: str,
        token: str,
    ) -> dict[str, Any]:
        token_ok = self._require_token(token, guid, address)
        if not self._new_pending.allowed(address):
            raise TooManyRequests("too many new agents from this address")
        pending = await self._registry.count(PENDING)
        if pending >= self._policy.max_pending:
            raise TooManyRequests("too many pending agents")
        now = self._now()
        # The store refuses a hostname a registered agent holds: an agent that
        # loses a race for it falls through to pending.
        if (
            token_ok
            and self._policy.auto_approve
            and hostname.lower() not in self._policy.own_names
            and await self._registry.create_registered(
                guid, hostname, key, address, now, AUTO_APPROVE
            )
        ):
            self._audit.logged(
                AUTO_APPROVE,
                "approve",
                guid,
                f"hostname={hostname} key={key} from {address}",
                address=address,
            )
            log.info(
                "agent {guid} ({hostname}) approved by token",
                guid=guid,
                hostname=hostname,
            )
            return await self._issue(guid, csr, hostname, address, True)

        if await self._registry.create_pending(guid, hostname, key, address, now):
            self._new_pending.record(address)
            # Bounded like the rows themselves (register_rate, max_pending).
            await self._audit.record(
                f"address {address}",
                "register",
                guid,
                f"hostname={hostname} key={key} now=pending",
                address=address,
            )
            log.info(
                "new pending agent {guid} ({hostname}) from {address}, "
                "key fingerprint {fingerprint}",
                guid=guid,
                hostname=hostname,
                address=address,
                fingerprint=key,
            )
        raise PendingApproval()

    async def _key_mismatch(self, record: AgentRecord, address: str) -> NoReturn:
        if self._mismatch_audits.take(record.guid):
            log.warn(
                "agent {guid} presented another key from {address}: refused",
                guid=record.guid,
                address=address,
            )
            await self._audit.record(
                f"address {address}",
                "key mismatch",
                record.guid,
                f"state={record.state}",
                address=address,
                outcome="refused",
            )
        raise Conflict("key mismatch")

    async def _issue(
        self,
        guid: str,
        csr: x509.CertificateSigningRequest,
        hostname: str,
        address: str,
        with_ca: bool,
    ) -> dict[str, Any]:
        now = self._now()
        certificate = self._authority.sign_agent(
            csr.public_key(), guid, hostname, now, self._policy.lifetime
        )
        recorded = await self._registry.record_issue(
            guid,
            certificate.serial_number,
            certificate.not_valid_after_utc,
            address,
            now,
        )
        if not recorded:
            # Revoked (or deleted) meanwhile, by another director or dcvixctl:
            # the certificate is never handed out; the next try sees why.
            raise ServiceUnavailable(
                f"agent {guid} changed while its certificate was made; try again"
            )
        log.info(
            "issued a certificate to agent {guid} ({hostname}), serial {serial:x}, "
            "until {until}",
            guid=guid,
            hostname=hostname,
            serial=certificate.serial_number,
            until=certificate.not_valid_after_utc.isoformat(),
        )
        answer: dict[str, Any] = {
            "certificate": certificate_pem(certificate).decode(),
        }
        if with_ca:
            answer["ca"] = self._authority.pem.decode()
            answer["agentId"] = guid
        answer["renewalIntervalSeconds"] = RENEWAL_INTERVAL_SECONDS
        return answer

    # --------------------------------------------------------------- renew

    async def renew(
        self, peer: PeerIdentity, body: RenewRequest, address: str
    ) -> dict[str, Any]:
        """``POST /v1/agent/renew`` (mTLS): a new certificate for the same key.

        A pending agent stays pending (403); revoked, denied or unknown: 401.
        """
        csr = _decode_csr(body.csr)
        if csr.subject != _expected_subject(peer.guid):
            raise Unauthorized("csr guid mismatch")
        record = await self._registry.get(peer.guid)
        if record is None:
            raise Unauthorized("unknown agent")
        if record.state == PENDING:
            raise PendingApproval()
        if record.state != REGISTERED:
            raise Unauthorized(f"agent {record.state}")
        record = await self._pinned(record, peer.key)
        if public_key_fingerprint(csr.public_key()) != record.key_fingerprint:
            await self._key_mismatch(record, address)
        return await self._issue(peer.guid, csr, record.hostname, address, False)

    def identify(self, peer: x509.Certificate | None) -> PeerIdentity:
        """The GUID and key of a client certificate our CA issued, valid now.

        Raises:
            Unauthorized: no certificate, not ours, not an agent's, or expired.

        The TLS handshake verified the chain against our CA on every
        connection; here the signature, the GUID and the key of each distinct
        certificate (equal DER) are checked once and remembered, while the
        validity period is checked on every call. Remembered by DER, not as
        the certificate object: that one keeps its parsed names, some ten
        objects the garbage collector walks in every full pass (per agent).
        """
        if peer is None:
            raise Unauthorized("client certificate required")
        der = peer.public_bytes(Encoding.DER)
        found = self._verified.get(der)
        if found is None:
            guid = guid_of(peer)
            if guid is None or not self._authority.issued(peer):
                raise Unauthorized("invalid client certificate")
            identity = PeerIdentity(guid, public_key_fingerprint(peer.public_key()))
            found = (identity, peer.not_valid_before_utc, peer.not_valid_after_utc)
            if len(self._verified) >= VERIFIED_LIMIT:
                self._verified.clear()
            self._verified[der] = found
        identity, not_before, not_after = found
        if not not_before <= self._now() < not_after:
            raise Unauthorized("client certificate expired")
        return identity

    async def _pinned(self, record: AgentRecord, certificate_key: str) -> AgentRecord:
        if not record.key_fingerprint:
            # An adopted Go agent's first mTLS contact: its certificate, which
            # our CA signed, is the proof; pin its key (any claim is dropped).
            pinning = await self._registry.pin(
                record.guid, certificate_key, self._now()
            )
            dropped = pinning.dropped_claim
            if pinning.pinned:
                self._audit.logged(
                    "mtls",
                    "pin key",
                    record.guid,
                    f"key={certificate_key}"
                    + (f" dropped claim {dropped}" if dropped else ""),
                )
            if pinning.record is None:
                raise Unauthorized("unknown agent")
            record = pinning.record
        if record.state != REGISTERED:
            # Revoked (or more) between our read and the pin.
            raise Unauthorized(f"agent {record.state}")
        if record.key_fingerprint != certificate_key:
            raise Unauthorized("client certificate does not carry the agent's key")
        return record

    async def authenticate(self, peer: PeerIdentity) -> AgentRecord:
        """The registered agent behind an mTLS request, checked every time.

        Against the registry's exact view in memory (:meth:`current`): no
        thread hand-off unless ``agents.db`` changed since the last read.

        Raises:
            Unauthorized: the agent is not registered with this key.
        """
        record = await self._registry.current(peer.guid)
        if record is None:
            raise Unauthorized("unknown agent")
        if record.state != REGISTERED:
            raise Unauthorized(f"agent {record.state}")
        return await self._pinned(record, peer.key)
