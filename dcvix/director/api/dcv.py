"""What the Amazon DCV pieces call: the token verifier and the Gateway resolver.

Their contracts are DCV's, not ours (CONTRACT §2):

- a DCV server (``[security] auth-token-verifier``) posts the form fields
  ``sessionId``, ``authenticationToken`` and ``clientAddress`` and reads an XML
  ``<auth>`` answer, always with status 200: a refusal is ``result="no"``
  whatever the reason, which only the director's log tells;
- the DCV Connection Gateway (``[resolver] url``) posts
  ``/resolveSession?sessionId=…&transport=HTTP|QUIC&clientIpAddress=…`` with no
  body and reads 404, or 200 JSON naming the DCV server. The seed's curl form,
  the same fields in a JSON body, works too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from dcvix.common.errors import BadRequest, NotFound
from dcvix.common.http import client_address, json_response, read_json
from dcvix.common.jsonfields import decode, json_name
from dcvix.common.networks import parse_address
from dcvix.common.validate import InvalidInput, check_session_id
from dcvix.director.api.authz import Role, authorized
from dcvix.director.audit import Audit
from dcvix.director.connections import ConnectionTokens
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.resolver import SessionResolver

log = Logger()

XML_TYPE = b"text/xml; charset=utf-8"
FORM_TYPE = b"application/x-www-form-urlencoded"
MAX_FIELDS = 32
REFUSED = (
    b'<auth result="no"><message>'
    b"dcvix-director: authentication token verification failed"
    b"</message></auth>"
)
DEFAULT_TRANSPORT = "HTTP"
# The Gateway sends HTTP or QUIC; the seed's example sends XXXX. Anything
# printable and short is echoed, as the Gateway is the one to judge it.
_TRANSPORT = re.compile(r"[\x21-\x7e]{1,32}")

_XML_ESCAPES = {
    '"': "&#34;",
    "'": "&#39;",
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "\t": "&#x9;",
    "\n": "&#xA;",
    "\r": "&#xD;",
}


def _xml_char_allowed(code: int) -> bool:
    """XML 1.0's Char production (the escapes above cover tab, LF and CR)."""
    return 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000


def xml_text(value: str) -> str:
    """``value`` as XML character data, escaped as Go's ``xml.EscapeText`` does.

    Quotes, tab, CR and LF become character references; a character XML cannot
    hold (a control character, a lone surrogate) becomes U+FFFD.
    """
    out = []
    for char in value:
        escaped = _XML_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif _xml_char_allowed(ord(char)):
            out.append(char)
        else:
            out.append("\ufffd")
    return "".join(out)


def verified(user: str) -> bytes:
    """The ``yes`` answer for ``user``."""
    name = xml_text(user).encode("utf-8")
    return b'<auth result="yes"><username>' + name + b"</username></auth>"


def form_fields(request: IRequest) -> dict[bytes, list[bytes]]:
    """An urlencoded body's fields, then the query's, as Go's ``FormValue`` reads them.

    The site leaves form bodies alone (see :class:`~dcvix.common.http.DcvixSite`).
    """
    fields: dict[bytes, list[bytes]] = {}
    kind = request.getHeader(b"Content-Type") or b""
    if kind.partition(b";")[0].strip().lower() == FORM_TYPE and request.content:
        body = request.content.read()
        request.content.seek(0)
        # Parsed as Latin-1 text, which maps each byte (raw or %XX) to one
        # character and back: parsing the bytes themselves refuses anything
        # but ASCII, which would drop every field for one odd byte.
        try:
            parsed = parse_qs(
                body.decode("latin-1"),
                keep_blank_values=True,
                max_num_fields=MAX_FIELDS,
                encoding="latin-1",
            )
        except ValueError:  # more fields than DCV ever sends: not a DCV server
            return {}
        fields = {
            name.encode("latin-1"): [value.encode("latin-1") for value in values]
            for name, values in parsed.items()
        }
    for name, values in request.args.items():
        fields.setdefault(name, []).extend(values)
    return fields


def _field(fields: dict[bytes, list[bytes]], name: bytes) -> str:
    """A form field's first value, or "" when absent or not UTF-8."""
    values = fields.get(name) or [b""]
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return ""


def query_fields(target: bytes) -> dict[str, str]:
    """The fields of a request target's query string, the first of each name.

    ``+`` is a space and ``%XX`` a byte, as in an HTML form (and Go's
    ``URL.Query``); a field without ``=`` is empty. Only the query counts: a
    body never adds fields here.

    Raises:
        BadRequest: a name or value that is not UTF-8.
    """
    query = target.partition(b"?")[2].partition(b"#")[0]
    found: dict[str, str] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("query string is not UTF-8") from None
        found.setdefault(name, value)
    return found


@dataclass(frozen=True)
class ResolveSessionRequest:
    """``POST /resolveSession``'s fields, from the query or a JSON body."""

    session_id: str = field(metadata=json_name("sessionId"))
    transport: str = ""
    client_ip_address: str = field(default="", metadata=json_name("clientIpAddress"))


def _resolve_request(request: IRequest) -> ResolveSessionRequest:
    """The Gateway's fields (query string), else the seed's (JSON body), checked.

    Raises:
        BadRequest: no valid ``sessionId``, a bad ``transport``, a body that
            is not a JSON object of strings.
    """
    fields = query_fields(request.uri)
    if "sessionId" in fields:
        asked = ResolveSessionRequest(
            fields["sessionId"],
            fields.get("transport", ""),
            fields.get("clientIpAddress", ""),
        )
    elif _has_body(request):
        asked = decode(ResolveSessionRequest, read_json(request))
    else:
        raise BadRequest("sessionId is required")
    if not asked.session_id:
        raise BadRequest("sessionId is required")
    try:
        check_session_id(asked.session_id)
    except InvalidInput:
        raise BadRequest("invalid sessionId") from None
    transport = asked.transport or DEFAULT_TRANSPORT
    if not _TRANSPORT.fullmatch(transport):
        raise BadRequest("invalid transport")
    return ResolveSessionRequest(asked.session_id, transport, asked.client_ip_address)


def _has_body(request: IRequest) -> bool:
    content = request.content
    if content is None:
        return False
    present = bool(content.read(1))
    content.seek(0)
    return present


def _session_or_not(text: str) -> str:
    """A session id anyone sent, for the trail: only when it is one."""
    if not text:
        return ""
    try:
        return check_session_id(text)
    except InvalidInput:
        return "(not a session id)"


def _client(text: str) -> str:
    """The client address the Gateway reported, for the log ("-" if none or bad)."""
    try:
        return str(parse_address(text)) if text else "-"
    except ValueError:
        return "-"


class DcvRoutes:
    """``POST /v1/user/authtokenverify`` and ``POST /resolveSession``.

    Args:
        connections: checks connection tokens.
        resolver: finds the server of a session id.
        dcv_port: the DCV web port given to the Gateway (``[director] dcv_port``).
        metrics: where checks and resolutions are counted and timed.
        audit: where refusals are recorded (once a minute per address).
    """

    def __init__(
        self,
        connections: ConnectionTokens,
        resolver: SessionResolver,
        dcv_port: int,
        metrics: DirectorMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        self._audit = audit
        self._connections = connections
        self._resolver = resolver
        self._dcv_port = dcv_port
        self._metrics = metrics if metrics is not None else DirectorMetrics()

    @authorized("POST", "/v1/user/authtokenverify", role=Role.PUBLIC)
    async def verify_token(self, request: IRequest) -> bytes:
        """DCV's ``auth-token-verifier``: 200 XML, ``yes`` with the user, or ``no``.

        Form fields (urlencoded body or query) ``sessionId``,
        ``authenticationToken``, ``clientAddress``. Yes only for an unexpired
        connection token of that session, whose session its (online) server
        reports as the token user's (and not used yet, with
        ``connection_token_single_use``). Why a token was refused is logged,
        never answered.
        """
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", XML_TYPE)
        fields = form_fields(request)
        try:
            with self._metrics.verification_seconds.time():
                user = await self._connections.verify(
                    _field(fields, b"authenticationToken"),
                    _field(fields, b"sessionId"),
                    client_address(request),
                )
        except Exception:
            # The DCV server expects XML whatever went wrong (the store, say).
            log.failure("verifying a DCV connection token failed")
            user, result = None, "error"
        else:
            result = "no" if user is None else "yes"
        self._metrics.verifications.labels(result).inc()
        if user is None:
            await self._refusal(
                "dcv server",
                "dcv token refused",
                _field(fields, b"sessionId"),
                f"result={result}",
                request,
            )
            return REFUSED
        return verified(user)

    @authorized("POST", "/resolveSession", role=Role.GATEWAY)
    async def resolve_session(self, request: IRequest, gateway: str) -> bytes:
        """The DCV server of a session, for the Connection Gateway.

        200 ``{"SessionId", "TransportProtocol", "DcvServerEndpoint", "Port",
        "WebUrlPath"}``; 404 when no online server holds it (or two do and no
        connection token says which); 400 without a valid ``sessionId``.
        """
        try:
            asked = _resolve_request(request)
        except BadRequest as error:
            self._metrics.resolutions.labels("invalid").inc()
            await self._refusal(
                f"gateway {gateway}", "resolve refused", "", error.message, request
            )
            raise
        client = _client(asked.client_ip_address)
        with self._metrics.resolution_seconds.time():
            state = await self._resolver.locate(
                asked.session_id, "" if client == "-" else client
            )
        self._metrics.resolutions.labels(
            "not_found" if state is None else "found"
        ).inc()
        if state is None:
            await self._refusal(
                f"gateway {gateway}",
                "resolve refused",
                asked.session_id,
                f"session not found for client {client}",
                request,
            )
            raise NotFound("session not found")
        log.debug(
            "gateway {gateway} resolved {session} to {server} for client {client}",
            gateway=gateway,
            session=asked.session_id,
            server=state.hostname,
            client=client,
        )
        return json_response(
            request,
            200,
            {
                "SessionId": asked.session_id,
                "TransportProtocol": asked.transport,
                "DcvServerEndpoint": state.dcv_host,
                "Port": self._dcv_port,
                "WebUrlPath": "/",
            },
        )

    async def _refusal(
        self, actor: str, action: str, target: str, detail: str, request: IRequest
    ) -> None:
        """A refusal for the trail, at most once a minute per address."""
        if self._audit is not None:
            await self._audit.refused(
                actor,
                action,
                _session_or_not(target),
                detail[:300],
                address=client_address(request),
            )
