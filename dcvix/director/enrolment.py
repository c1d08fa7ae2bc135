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
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    TooManyRequests,
    Unauthorized,
)
from dcvix.common.http import go_fields
from dcvix.common.pki import certificate_pem, public_key_fingerprint
from dcvix.common.validate import canonical_guid, is_hostname
from dcvix.director import store
from dcvix.director.ca import (
    AGENT_CN_PREFIX,
    CertificateAuthority,
    CertificateRequestError,
    parse_csr,
)
from dcvix.director.store import AgentRecord, AgentStore

log = Logger()

RENEWAL_INTERVAL_SECONDS = 43200  # what Go directors announce; agents ignore it
KEY_MISMATCH_AUDIT_SECONDS = 60.0


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


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key, on a clock."""

    def __init__(self, limit: int, window: float, clock: IReactorTime) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        events = self._events[key]
        horizon = self._clock.seconds() - self._window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return deque()
        return events

    def allowed(self, key: str) -> bool:
        """Whether one more event for ``key`` fits now."""
        return len(self._recent(key)) < self._limit

    def record(self, key: str) -> None:
        """Count one event for ``key`` now."""
        self._recent(key)
        self._events[key].append(self._clock.seconds())


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
        registry: AgentStore,
        authority: CertificateAuthority,
        policy: EnrolmentPolicy,
        clock: IReactorTime,
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._policy = policy
        self._clock = clock
        self._new_pending = RateLimiter(policy.register_rate, 60.0, clock)
        self._mismatch_audited: dict[str, float] = {}

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock.seconds(), dt.UTC)

    # ------------------------------------------------------------ register

    async def register(self, body: Any, address: str) -> dict[str, Any]:
        """``POST /v1/agent/register``: the decision table of CONTRACT §3.

        Raises:
            ApiError: the refusal the agent must see (403 while pending).
        """
        fields = go_fields(
            body,
            {"csr": str, "guid": str, "hostname": str, "registrationToken": str},
        )
        csr = _decode_csr(fields["csr"])
        guid = canonical_guid(fields["guid"])
        if guid is None:
            raise BadRequest("guid must be a UUID")
        hostname = self._check_hostname(fields["hostname"])
        if csr.subject != _expected_subject(guid):
            raise Unauthorized("csr guid mismatch")
        key = public_key_fingerprint(csr.public_key())
        record = await self._registry.run(store.get_txn, guid)
        if record is None:
            return await self._register_new(
                csr, guid, hostname, key, address, fields["registrationToken"]
            )
        if record.state == store.REVOKED:
            raise Unauthorized("agent revoked")
        if record.state == store.DENIED:
            raise Forbidden("agent denied")
        if record.state == store.PENDING:
            await self._still_pending(record, hostname, key, address)
        return await self._register_known(record, csr, hostname, key, address)

    def _check_hostname(self, hostname: str) -> str:
        if not is_hostname(hostname):
            raise BadRequest("invalid hostname")
        if hostname.lower() in self._policy.reserved_names:
            raise BadRequest(f"hostname {hostname} is reserved for the director")
        return hostname

    async def _still_pending(
        self, record: AgentRecord, hostname: str, key: str, address: str
    ) -> None:
        if record.key_fingerprint and record.key_fingerprint != key:
            await self._key_mismatch(record, address)
        if not record.key_fingerprint or record.hostname != hostname:
            await self._registry.run(
                store.to_pending_txn, record.guid, hostname, key, address, self._now()
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
        if not record.key_fingerprint:
            reason = "adopted without a key: its first key awaits approval"
        elif record.key_fingerprint != key:
            await self._key_mismatch(record, address)
        elif record.hostname != hostname:
            reason = f"hostname changed from {record.hostname} to {hostname}"
        elif record.cert_expires_at is not None and record.cert_expires_at <= now:
            reason = "its last certificate expired"
        else:
            return await self._issue(record.guid, csr, record.hostname, address, True)
        await self._registry.run(
            store.to_pending_txn, record.guid, hostname, key, address, now
        )
        log.warn(
            "agent {guid} ({hostname}) is back to pending: {reason}",
            guid=record.guid,
            hostname=hostname,
            reason=reason,
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
        expected = self._policy.registration_token
        token_ok = bool(expected) and hmac.compare_digest(
            token.encode(), expected.encode()
        )
        if expected and not token_ok:
            log.warn(
                "refused agent {guid} from {address}: wrong registration token",
                guid=guid,
                address=address,
            )
            raise Unauthorized("invalid registration token")
        if not self._new_pending.allowed(address):
            raise TooManyRequests("too many new agents from this address")
        pending = await self._registry.run(store.count_txn, store.PENDING)
        if pending >= self._policy.max_pending:
            raise TooManyRequests("too many pending agents")
        now = self._now()
        # create_registered_txn re-checks the hostname in its transaction: an
        # agent that loses a race for it falls through to pending.
        if (
            token_ok
            and self._policy.auto_approve
            and await self._may_auto_approve(hostname)
            and await self._registry.run(
                store.create_registered_txn, guid, hostname, key, address, now
            )
        ):
            await self._registry.run(
                store.audit_txn,
                now,
                "auto_approve",
                "approve",
                guid,
                f"hostname={hostname} key={key} from {address}",
            )
            log.info(
                "agent {guid} ({hostname}) approved by token",
                guid=guid,
                hostname=hostname,
            )
            return await self._issue(guid, csr, hostname, address, True)

        if await self._registry.run(
            store.create_pending_txn, guid, hostname, key, address, now
        ):
            self._new_pending.record(address)
            log.info(
                "new pending agent {guid} ({hostname}) from {address}, "
                "key fingerprint {fingerprint}",
                guid=guid,
                hostname=hostname,
                address=address,
                fingerprint=key,
            )
        raise PendingApproval()

    async def _may_auto_approve(self, hostname: str) -> bool:
        if hostname.lower() in self._policy.own_names:
            return False
        registered = await self._registry.run(store.list_txn, store.REGISTERED)
        return all(r.hostname.lower() != hostname.lower() for r in registered)

    async def _key_mismatch(self, record: AgentRecord, address: str) -> NoReturn:
        now = self._clock.seconds()
        last = self._mismatch_audited.get(record.guid)
        if last is None or now - last >= KEY_MISMATCH_AUDIT_SECONDS:
            self._mismatch_audited[record.guid] = now
            log.warn(
                "agent {guid} presented another key from {address}: refused",
                guid=record.guid,
                address=address,
            )
            await self._registry.run(
                store.audit_txn,
                self._now(),
                f"address {address}",
                "key mismatch",
                record.guid,
                f"state={record.state}",
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
        await self._registry.run(
            store.record_issue_txn,
            guid,
            certificate.serial_number,
            certificate.not_valid_after_utc,
            address,
            now,
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
        self, peer: x509.Certificate | None, body: Any, address: str
    ) -> dict[str, Any]:
        """``POST /v1/agent/renew`` (mTLS): a new certificate for the same key.

        A pending agent stays pending (403); revoked, denied or unknown: 401.
        """
        guid, certificate_key = self._peer_identity(peer)
        fields = go_fields(body, {"csr": str})
        csr = _decode_csr(fields["csr"])
        if csr.subject != _expected_subject(guid):
            raise Unauthorized("csr guid mismatch")
        record = await self._registry.run(store.get_txn, guid)
        if record is None:
            raise Unauthorized("unknown agent")
        if record.state == store.PENDING:
            raise PendingApproval()
        if record.state != store.REGISTERED:
            raise Unauthorized(f"agent {record.state}")
        record = await self._pinned(record, certificate_key)
        if public_key_fingerprint(csr.public_key()) != record.key_fingerprint:
            await self._key_mismatch(record, address)
        answer = await self._issue(guid, csr, record.hostname, address, False)
        return answer

    def _peer_identity(self, peer: x509.Certificate | None) -> tuple[str, str]:
        if peer is None:
            raise Unauthorized("client certificate required")
        guid = guid_of(peer)
        if guid is None or not self._authority.issued(peer):
            raise Unauthorized("invalid client certificate")
        now = self._now()
        if not peer.not_valid_before_utc <= now < peer.not_valid_after_utc:
            raise Unauthorized("client certificate expired")
        return guid, public_key_fingerprint(peer.public_key())

    async def _pinned(self, record: AgentRecord, certificate_key: str) -> AgentRecord:
        if not record.key_fingerprint:
            # An adopted Go agent's first mTLS contact: its certificate, which
            # our CA signed, is the proof; pin its key.
            await self._registry.run(store.pin_txn, record.guid, certificate_key)
            log.info("pinned the key of adopted agent {guid}", guid=record.guid)
            refreshed = await self._registry.run(store.get_txn, record.guid)
            assert refreshed is not None
            record = refreshed
        if record.key_fingerprint != certificate_key:
            raise Unauthorized("client certificate does not carry the agent's key")
        return record

    async def authenticate(self, peer: x509.Certificate | None) -> AgentRecord:
        """The registered agent behind an mTLS request, checked every time.

        Raises:
            Unauthorized: no certificate, not ours, expired, or the agent is not
                registered with this key.
        """
        guid, certificate_key = self._peer_identity(peer)
        record = await self._registry.run(store.get_txn, guid)
        if record is None:
            raise Unauthorized("unknown agent")
        if record.state != store.REGISTERED:
            raise Unauthorized(f"agent {record.state}")
        return await self._pinned(record, certificate_key)
