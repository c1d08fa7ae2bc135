"""DcvixSite on a real loopback port, spoken to in raw HTTP/1.1 over sockets.

Body cap (413 and the connection closed, never spooled to disk), CSRF and the
security headers, seen from the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from OpenSSL.crypto import X509, PKey
from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from certs import foreign_ca
from dcvix.common.http import (
    DcvixSite,
    install_error_handlers,
    json_pieces_response,
    json_response,
)
from dcvix.director.api.authz import Gate, Role, authorized
from dcvix.director.api.root import DirectorRoot
from dcvix.testing import director_harness

MiB = 1024 * 1024
KiB = 1024
TOO_LARGE = {"error": "request body too large"}


class ProbeAPI:
    """Routes that tell what body reached them."""

    app = Klein()
    install_error_handlers(app)

    @staticmethod
    def _seen(request: IRequest) -> bytes:
        assert request.content is not None
        body = request.content.read()
        return json_response(
            request,
            200,
            {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        )

    @app.route("/echo", methods=["POST", "PUT", "DELETE", "PATCH"])
    def echo(self, request: IRequest) -> bytes:
        return self._seen(request)

    @app.route("/v1/agent/register", methods=["POST"])
    def register(self, request: IRequest) -> bytes:
        return self._seen(request)

    @app.route("/hello", methods=["GET", "OPTIONS"])
    def hello(self, request: IRequest) -> bytes:
        return json_response(request, 200, {"hello": "world"})

    @app.route("/pieces/<int:count>", methods=["GET"])
    def pieces(self, request: IRequest, count: int) -> Any:
        """``count`` JSON strings of 1 KiB in an array, given in pieces."""
        return json_pieces_response(request, piece_list(count))

    @app.route("/slow", methods=["GET"])
    def slow(self, request: IRequest) -> Any:
        """Answers after 1.5 s: longer than the short request timeouts below."""
        from twisted.internet import reactor

        return deferLater(
            reactor, 1.5, lambda: json_response(request, 200, {"hello": "late"})
        )


def piece_list(count: int) -> list[bytes]:
    items = [json.dumps(f"{n:04d}" + "x" * 1020).encode() for n in range(count)]
    pieces = [b"["]
    for n, item in enumerate(items):
        pieces += ([b", "] if n else []) + [item]
    return [*pieces, b"]"]


def seen(body: bytes) -> dict[str, Any]:
    return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def reactor() -> Iterator[Any]:
    from twisted.internet import reactor as global_reactor

    yield global_reactor
    pytest_twisted.blockon(_settle(global_reactor))
    leftovers = [c for c in global_reactor.getDelayedCalls() if c.active()]
    assert not leftovers, f"test left delayed calls behind: {leftovers}"


@inlineCallbacks
def _settle(reactor: Any, turns: int = 100) -> Any:
    for _ in range(turns):
        if not [c for c in reactor.getDelayedCalls() if c.active()]:
            return
        yield deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def serve(reactor: Any) -> Iterator[Callable[..., int]]:
    """Listen with a site on 127.0.0.1; every port is closed after the test."""
    ports: list[Any] = []

    def listen(site: Site) -> int:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return int(port.getHost().port)

    yield listen
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def probe(serve: Callable[..., int]) -> int:
    """ProbeAPI behind DcvixSite with the default 1 MiB cap."""
    return serve(DcvixSite(ProbeAPI().app.resource()))


@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record any attempt to put a request body in a temporary file."""
    import tempfile

    import twisted.web.http

    calls: list[str] = []

    def temporary_file(*args: Any, **kwargs: Any) -> io.BytesIO:
        calls.append("tempfile.TemporaryFile")
        return io.BytesIO()

    def content_file(length: int | None) -> io.BytesIO:
        calls.append(f"_getContentFile({length})")
        return io.BytesIO()

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    monkeypatch.setattr(twisted.web.http, "_getContentFile", content_file)
    yield calls


# ------------------------------------------------------------ raw HTTP client


@dataclass
class RawAnswer:
    status_line: str
    headers: dict[str, str]
    body: bytes
    closed: bool = False
    body_bytes_sent: int = 0
    extra: bytes = b""
    interim: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def json(self) -> Any:
        return json.loads(self.body)


def _head(
    method: str,
    path: str,
    headers: dict[str, str],
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_answer(sock: socket.socket, buffered: bytes = b"") -> RawAnswer:
    data = buffered
    interim: list[str] = []
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed mid-head: {data!r}")
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1].startswith("1"):
            interim.append(lines[0])
            continue
        break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        assert name.lower() not in headers, f"header {name} twice"
        headers[name.lower()] = value.strip()
    closed = False
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(data) < length:
            data += _recv_more(sock)
        body, extra = data[:length], data[length:]
    elif headers.get("transfer-encoding") == "chunked":
        body, extra = _dechunk(sock, data)
    else:
        assert headers.get("connection") == "close", headers
        body, extra, closed = _until_eof(sock, data), b"", True
    return RawAnswer(lines[0], headers, body, closed, extra=extra, interim=interim)


def _recv_more(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise AssertionError("connection closed mid-body")
    return chunk


def _until_eof(sock: socket.socket, data: bytes) -> bytes:
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _dechunk(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        while b"\r\n" not in data:
            data += _recv_more(sock)
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            data += _recv_more(sock)
        body += data[:size]
        data = data[size + 2 :]
        if size == 0:
            return body, data


def _wait_closed(sock: socket.socket, answer: RawAnswer) -> None:
    """Read until the server closes (EOF or reset); keep what else came."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            answer.closed = True
            return
        except TimeoutError:
            continue
        if not chunk:
            answer.closed = True
            return
        answer.extra += chunk


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> RawAnswer:
    """One request with a Content-Length body; the connection is closed after."""
    base = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    if body or method not in ("GET", "HEAD", "OPTIONS"):
        base["Content-Length"] = str(len(body))
    with _connect(port) as sock:
        # Refused mid-body, the send may fail: the answer is already on its way.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_head(method, path, {**base, **(headers or {})}) + body)
        answer = _read_answer(sock)
        _wait_closed(sock, answer)
        return answer


def declared_only(
    port: int, path: str, length: int, headers: dict[str, str] | None = None
) -> RawAnswer:
    """Declare a body but send none of it; wait for the answer and the close."""
    head = {"Host": f"127.0.0.1:{port}", "Content-Length": str(length)}
    with _connect(port) as sock:
        sock.sendall(_head("POST", path, {**head, **(headers or {})}))
        answer = _read_answer(sock)
        _wait_closed(sock, answer)
        return answer


def chunked(
    port: int,
    path: str,
    chunks: list[bytes],
    interval: float,
    headers: dict[str, str] | None = None,
) -> RawAnswer:
    """Send a chunked body slowly, stopping when an answer arrives."""
    head = {"Host": f"127.0.0.1:{port}", "Transfer-Encoding": "chunked"}
    sent = 0
    with _connect(port) as sock:
        sock.sendall(_head("POST", path, {**head, **(headers or {})}))
        finished = True
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                finished = False
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                finished = False
                break
            sent += len(chunk)
        if finished:
            sock.sendall(b"0\r\n\r\n")
        answer = _read_answer(sock)
        answer.body_bytes_sent = sent
        _wait_closed(sock, answer)
        return answer


def trickled(port: int, data: bytes, interval: float) -> RawAnswer:
    """Send ``data`` a byte at a time (slowloris), stopping when an answer comes."""
    with _connect(port) as sock:
        for byte in data:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                break
            sock.sendall(bytes([byte]))
        answer = _read_answer(sock)
        _wait_closed(sock, answer)
        return answer


def kept_alive(port: int, pause: float) -> list[RawAnswer]:
    """``GET /hello``, ``pause`` s of silence, then ``GET /slow``, on one connection."""
    head = {"Host": f"127.0.0.1:{port}"}
    with _connect(port) as sock:
        sock.sendall(_head("GET", "/hello", head))
        first = _read_answer(sock)
        time.sleep(pause)  # the subject: silence between requests, not a wait
        sock.sendall(_head("GET", "/slow", head))
        return [first, _read_answer(sock)]


def in_thread(f: Callable[..., RawAnswer], *args: Any, **kwargs: Any) -> Any:
    return threads.deferToThread(f, *args, **kwargs)


def assert_security_headers(answer: RawAnswer) -> None:
    h = answer.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["strict-transport-security"].startswith("max-age=")
    assert int(h["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000
    assert h["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert "default-src" in h["content-security-policy"]
    assert h["cache-control"] == "no-store"
    assert h["server"] == "dcvix"


# ---------------------------------------------------------- (a) declared size


@pytest_twisted.ensureDeferred
async def test_declared_length_over_the_cap_is_413_before_any_body_byte(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    answer = await in_thread(declared_only, probe, "/echo", 2 * MiB)
    assert answer.status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert answer.json() == TOO_LARGE
    assert answer.body.endswith(b"\n")
    assert answer.closed
    assert answer.extra == b""
    assert spooled == []


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_cap_gets_413_and_no_continue(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    answer = await in_thread(
        declared_only, probe, "/echo", 2 * MiB, {"Expect": "100-continue"}
    )
    assert answer.interim == []
    assert answer.status == 413
    assert answer.json() == TOO_LARGE
    assert answer.closed
    assert answer.extra == b""


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_under_the_cap_gets_continue(
    reactor: Any, probe: int
) -> None:
    def run() -> RawAnswer:
        head = {
            "Host": f"127.0.0.1:{probe}",
            "Content-Length": "5",
            "Expect": "100-continue",
            "Connection": "close",
        }
        with _connect(probe) as sock:
            sock.sendall(_head("POST", "/echo", head))
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")
            sock.sendall(b"hello")
            answer = _read_answer(sock)
            _wait_closed(sock, answer)
            return answer

    answer = await in_thread(run)
    assert answer.status == 200
    assert answer.json() == seen(b"hello")


@pytest_twisted.ensureDeferred
async def test_body_sent_with_an_oversized_declaration_is_still_refused(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    body = b"x" * (MiB + 1)
    answer = await in_thread(exchange, probe, "POST", "/echo", body)
    assert answer.status == 413
    assert answer.json() == TOO_LARGE
    assert answer.closed
    assert spooled == []


# ---------------------------------------------------------- (b) chunked growth


@pytest_twisted.ensureDeferred
async def test_slow_chunked_body_is_refused_once_it_passes_the_cap(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    chunk = b"c" * (64 * KiB)
    answer = await in_thread(chunked, probe, "/echo", [chunk] * 40, 0.02)
    assert answer.status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert answer.json() == TOO_LARGE
    assert answer.headers["connection"] == "close"
    assert answer.closed
    # 16 chunks are exactly the cap; the 17th crosses it, and the answer came
    # long before the 40 chunks were all sent.
    assert 17 * 64 * KiB <= answer.body_bytes_sent <= 24 * 64 * KiB
    assert spooled == []


@pytest_twisted.ensureDeferred
async def test_chunked_body_at_the_cap_reaches_the_route_intact(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    chunks = [bytes([i]) * (64 * KiB) for i in range(16)]
    answer = await in_thread(
        chunked, probe, "/echo", chunks, 0.0, {"Connection": "close"}
    )
    assert answer.status == 200
    assert answer.json() == seen(b"".join(chunks))
    assert answer.body_bytes_sent == MiB
    assert spooled == []


# ---------------------------------------------------- (c) under the cap, intact


@pytest_twisted.ensureDeferred
async def test_body_at_the_cap_reaches_the_route_intact(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    body = bytes(range(256)) * (MiB // 256)
    assert len(body) == MiB
    answer = await in_thread(exchange, probe, "POST", "/echo", body)
    assert answer.status == 200
    assert answer.json() == seen(body)
    assert spooled == []


@pytest_twisted.ensureDeferred
async def test_small_body_with_a_form_content_type_reaches_the_route_intact(
    reactor: Any, probe: int, spooled: list[str]
) -> None:
    body = b'{"a": "b&c=d"}'
    answer = await in_thread(
        exchange,
        probe,
        "POST",
        "/echo",
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status == 200
    assert answer.json() == seen(body)
    assert spooled == []


# ---------------------------------------------------------- (d) the control


@pytest_twisted.ensureDeferred
async def test_a_plain_site_would_spool_the_same_body(
    reactor: Any, serve: Callable[..., int], spooled: list[str]
) -> None:
    """Shows the spool probe works: Twisted's own Site spools 200 kB bodies."""
    port = serve(Site(ProbeAPI().app.resource()))
    body = b"s" * 200_000
    answer = await in_thread(exchange, port, "POST", "/echo", body)
    assert answer.status == 200
    assert answer.json() == seen(body)
    assert spooled == ["_getContentFile(200000)"]


# ------------------------------------------------------- (e) per-path limits


@pytest.fixture
def register_probe(serve: Callable[..., int], tmp_path: Path) -> Iterator[int]:
    """ProbeAPI with the director's per-path limits (register: 16 KiB)."""
    with director_harness(tmp_path) as director:
        limits = director.root.body_limit
        yield serve(DcvixSite(ProbeAPI().app.resource(), body_limit=limits))


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agent/register",
        "/v1/agent/register/",
        "/v1/agent/register?x=1",
        "/v1/agent/%72egister",
        "/v1/agent%2Fregister",
        "//v1/agent/register",
        "/v1//agent/register",
    ],
)
@pytest_twisted.ensureDeferred
async def test_register_body_over_16_kib_is_413(
    reactor: Any, register_probe: int, path: str
) -> None:
    answer = await in_thread(exchange, register_probe, "POST", path, b"r" * (20 * KiB))
    assert answer.status == 413
    assert answer.json() == TOO_LARGE
    assert answer.closed


@pytest_twisted.ensureDeferred
async def test_register_body_of_10_kib_reaches_the_route(
    reactor: Any, register_probe: int
) -> None:
    body = b"r" * (10 * KiB)
    answer = await in_thread(
        exchange, register_probe, "POST", "/v1/agent/register", body
    )
    assert answer.status == 200
    assert answer.json() == seen(body)


@pytest_twisted.ensureDeferred
async def test_register_chunked_body_over_16_kib_is_413(
    reactor: Any, register_probe: int
) -> None:
    answer = await in_thread(
        chunked, register_probe, "/v1/agent/register", [b"r" * (4 * KiB)] * 8, 0.01
    )
    assert answer.status == 413
    assert answer.json() == TOO_LARGE
    assert answer.closed


@pytest_twisted.ensureDeferred
async def test_other_paths_keep_the_general_cap(
    reactor: Any, register_probe: int
) -> None:
    body = b"o" * (20 * KiB)
    answer = await in_thread(exchange, register_probe, "POST", "/echo", body)
    assert answer.status == 200
    assert answer.json() == seen(body)


@pytest_twisted.ensureDeferred
async def test_director_site_uses_its_limits(
    reactor: Any, serve: Callable[..., int], tmp_path: Path
) -> None:
    with director_harness(tmp_path, max_body_bytes=4096) as director:
        api = director.root
        port = serve(DcvixSite(api.resource(), body_limit=api.body_limit))
        over = await in_thread(exchange, port, "POST", "/v1/health", b"h" * 5000)
        assert (over.status, over.json()) == (413, TOO_LARGE)
        under = await in_thread(exchange, port, "POST", "/v1/health", b"h" * 4000)
        assert (under.status, under.json()) == (405, {"error": "method not allowed"})
        # Over the general cap, under register's own: it reaches the route.
        register = await in_thread(
            exchange, port, "POST", "/v1/agent/register", b"h" * (10 * KiB)
        )
        assert (register.status, register.json()) == (
            400,
            {"error": "request body is not valid JSON"},
        )


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/v1/%ff", "127.0.0.1"),
        ("/hello%c3%28", "127.0.0.1"),
        ("/hello", "\xff.example"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_utf8_is_a_json_400(
    reactor: Any, probe: int, path: str, host: str
) -> None:
    answer = await in_thread(exchange, probe, "GET", path, headers={"Host": host})
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "request URL is not UTF-8"}
    assert_security_headers(answer)


@pytest_twisted.ensureDeferred
async def test_a_percent_encoded_utf8_path_is_routed(reactor: Any, probe: int) -> None:
    answer = await in_thread(exchange, probe, "GET", "/%68ello")
    assert (answer.status, answer.json()) == (200, {"hello": "world"})


# ------------------------------------------------------------------ (f) CSRF


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"Origin": "https://evil.example"}, "cross-origin request refused"),
        ({"Origin": "null"}, "cross-origin request refused"),
        ({"Origin": "http://director.example:8445"}, "cross-origin request refused"),
        ({"Origin": "https://director.example"}, "cross-origin request refused"),
        (
            {"Origin": "https://director.example:8445.evil.example"},
            "cross-origin request refused",
        ),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site request refused"),
        (
            {"Origin": "https://director.example:8445", "Sec-Fetch-Site": "cross-site"},
            "cross-site request refused",
        ),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest_twisted.ensureDeferred
async def test_cross_site_state_change_is_403(
    reactor: Any, probe: int, method: str, headers: dict[str, str], error: str
) -> None:
    answer = await in_thread(
        exchange,
        probe,
        method,
        "/echo",
        b"{}",
        {"Host": "director.example:8445", **headers},
    )
    assert answer.status == 403
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": error}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://director.example:8445"},
        {"Origin": "HTTPS://Director.Example:8445"},
        {"Origin": "https://director.example:8445", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_same_origin_or_headerless_state_change_passes(
    reactor: Any, probe: int, headers: dict[str, str]
) -> None:
    answer = await in_thread(
        exchange,
        probe,
        "POST",
        "/echo",
        b"{}",
        {"Host": "director.example:8445", **headers},
    )
    assert answer.status == 200
    assert answer.json() == seen(b"{}")


@pytest.mark.parametrize("method", ["GET", "OPTIONS"])
@pytest_twisted.ensureDeferred
async def test_safe_methods_pass_whatever_the_origin(
    reactor: Any, probe: int, method: str
) -> None:
    answer = await in_thread(
        exchange,
        probe,
        method,
        "/hello",
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert answer.status == 200
    assert answer.json() == {"hello": "world"}


# ------------------------------------------------------ (g) security headers


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/hello", b"", {}, 200),
        ("GET", "/nothing", b"", {}, 404),
        ("DELETE", "/hello", b"", {}, 405),
        ("POST", "/echo", b"b" * (MiB + 1), {}, 413),
        ("POST", "/echo", b"{}", {"Origin": "https://evil.example"}, 403),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_answer_carries_the_security_headers(
    reactor: Any,
    probe: int,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    answer = await in_thread(exchange, probe, method, path, body, headers)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == ({"error"} if status != 200 else {"hello"})
    assert_security_headers(answer)


@pytest_twisted.ensureDeferred
async def test_the_413_on_a_declared_length_carries_the_security_headers(
    reactor: Any, probe: int
) -> None:
    answer = await in_thread(declared_only, probe, "/echo", 2 * MiB)
    assert answer.status == 413
    assert_security_headers(answer)


@pytest_twisted.ensureDeferred
async def test_director_health_carries_the_security_headers(
    reactor: Any, serve: Callable[..., int], tmp_path: Path
) -> None:
    with director_harness(tmp_path) as director:
        api = director.root
        port = serve(DcvixSite(api.resource(), body_limit=api.body_limit))
        answer = await in_thread(exchange, port, "GET", "/v1/health")
    assert answer.status == 200
    assert answer.json() == {"status": "healthy"}
    assert_security_headers(answer)
    assert "twisted" not in json.dumps(answer.headers).lower()


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_closed_after_the_idle_timeout(
    serve: Callable[..., int],
) -> None:
    """Idle, slow (slowloris) and never-finished TLS handshakes do not hold a socket.

    Twisted's default was 12 h. The site's timeout covers the HTTP channel
    from the moment the connection is made, so behind TLS it also ends a
    handshake that never finishes (the second case: a ClientHello cut short).
    """
    site = DcvixSite(ProbeAPI().app.resource(), idle_timeout=1.0)
    plain = serve(site)
    identity = foreign_ca()
    options = CertificateOptions(
        privateKey=PKey.from_cryptography_key(identity.key),
        certificate=X509.from_cryptography(identity.certificate),
    )
    tls = serve(
        TLSMemoryBIOFactory(
            options, False, DcvixSite(ProbeAPI().app.resource(), idle_timeout=1.0)
        )
    )

    def closed_by_server(port: int, first: bytes) -> bool:
        """Whether the server ends the connection (a long socket timeout)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        with sock:
            if first:
                sock.sendall(first)
            try:
                return sock.recv(1024) == b""  # an orderly close
            except ConnectionResetError:
                return True  # an aborted one

    cases = [
        (plain, b""),
        (plain, b"GET /v1/probe"),  # half a request line, then nothing
        (tls, b"\x16\x03\x01\x02\x00\x01"),  # a ClientHello cut short
    ]
    for port, first in cases:
        assert await threads.deferToThread(closed_by_server, port, first), first


@pytest_twisted.ensureDeferred
async def test_a_request_trickled_past_the_request_timeout_is_answered_408(
    serve: Callable[..., int],
) -> None:
    """Slowloris: each byte restarts the idle timeout, never the request's clock.

    Headers or a body sent a byte every 0.2 s with a 1 s request timeout (and
    Twisted's 12 h idle timeout untouched) get a 408 and the close.
    """
    site = DcvixSite(ProbeAPI().app.resource(), idle_timeout=3600, request_timeout=1)
    port = serve(site)
    endless_head = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: x\r\n" * 50
    body_head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    for data in (endless_head, body_head + b"x" * 100):
        answer = await threads.deferToThread(trickled, port, data, 0.2)
        assert answer.status == 408, data
        assert answer.json() == {"error": "request timeout"}
        assert answer.headers["connection"] == "close"
        assert answer.closed


def pipelined_then_silent(port: int, data: bytes) -> RawAnswer:
    """Send ``data`` in one write, read the first answer, then the next."""
    with _connect(port) as sock:
        sock.settimeout(30)
        sock.sendall(data)
        first = _read_answer(sock)
        assert first.status == 200, first
        answer = _read_answer(sock, first.extra)
        _wait_closed(sock, answer)
        return answer


@pytest_twisted.ensureDeferred
async def test_a_partial_request_pipelined_behind_another_is_timed_too(
    serve: Callable[..., int],
) -> None:
    """Twisted parses it from its buffer, with no new bytes: it still gets 408."""
    site = DcvixSite(ProbeAPI().app.resource(), idle_timeout=3600, request_timeout=1)
    port = serve(site)
    data = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n"
    answer = await threads.deferToThread(pipelined_then_silent, port, data)
    assert (answer.status, answer.json()) == (408, {"error": "request timeout"})
    assert answer.closed


def read_whole(port: int, path: str) -> tuple[RawAnswer, bytes]:
    """GET ``path``: its answer and its whole body."""
    with _connect(port) as sock:
        sock.settimeout(30)
        sock.sendall(_head("GET", path, {"Host": "x", "Connection": "close"}))
        answer = _read_answer(sock)
    return answer, answer.body


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("count", [10, 3000])
async def test_an_answer_in_pieces_is_whole_small_or_streamed(
    serve: Callable[..., int], count: int
) -> None:
    # 3,000 pieces of 1 KiB are over STREAM_OVER: written as the client reads.
    port = serve(DcvixSite(ProbeAPI().app.resource()))
    answer, body = await threads.deferToThread(read_whole, port, f"/pieces/{count}")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert body == b"".join(piece_list(count)) + b"\n"
    if count > 1000:  # streamed: its length said up front
        assert int(answer.headers["content-length"]) == len(body)
    assert json.loads(body) == [f"{n:04d}" + "x" * 1020 for n in range(count)]


def leave_mid_answer(port: int, path: str) -> int:
    """Read a little of a streamed answer, then close; bytes read."""
    with _connect(port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.sendall(_head("GET", path, {"Host": "x"}))
        return len(sock.recv(4096))


class DirectPieces:
    """The pieces route on the director's root: an exact path, without Klein."""

    @authorized("GET", "/pieces", role=Role.PUBLIC)
    def pieces(self, request: IRequest) -> Any:
        count = int(request.args[b"count"][0])
        return json_pieces_response(request, piece_list(count))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("route", ["klein", "direct"])
async def test_a_client_leaving_a_streamed_answer_leaves_nothing_behind(
    serve: Callable[..., int], route: str
) -> None:
    if route == "klein":
        site, path = DcvixSite(ProbeAPI().app.resource()), "/pieces/{}"
    else:
        root = DirectorRoot(MiB, Gate(None, None, None), [DirectPieces()])  # type: ignore[arg-type]
        site, path = DcvixSite(root.resource()), "/pieces?count={}"
    port = serve(site)
    errors = EventLoggingObserver()
    globalLogPublisher.addObserver(errors)
    try:
        left = await threads.deferToThread(leave_mid_answer, port, path.format(20000))
        # The server notices, stops writing and still answers the next client.
        answer, body = await threads.deferToThread(read_whole, port, path.format(10))
    finally:
        globalLogPublisher.removeObserver(errors)
    assert left > 0
    assert answer.status == 200 and json.loads(body)[0].startswith("0000")
    # Without a word: no "Producer was not unregistered" or other failure.
    assert [formatEvent(e) for e in errors if "log_failure" in e] == []


@pytest_twisted.ensureDeferred
async def test_the_request_timeout_spares_kept_alive_connections_and_slow_answers(
    serve: Callable[..., int],
) -> None:
    """Its clock runs while a request arrives: not between requests, not while
    the request is answered (here both last longer than the timeout)."""
    site = DcvixSite(ProbeAPI().app.resource(), request_timeout=1)
    port = serve(site)
    first, second = await threads.deferToThread(kept_alive, port, 1.5)
    assert (first.status, first.json()) == (200, {"hello": "world"})
    assert (second.status, second.json()) == (200, {"hello": "late"})
