"""The RADIUS back end against a real FreeRADIUS (``services.radiusd``).

The server requires a Message-Authenticator in every request and signs its
replies, except the Accept for erin: that is how Debian 12's FreeRADIUS
answers out of the box, and dcvix must not take it for an accept.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from services import (  # noqa: F401 (fixture)
    RADIUS_ALICE,
    RADIUS_BOB,
    RADIUS_CAROL,
    RADIUS_DAVE,
    RADIUS_DAVE_OTP,
    RADIUS_ERIN,
    Radiusd,
    idle_pool_after,
    radiusd_fixture,
)
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth.radius import RadiusAuthenticator
from dcvix.director.config import RadiusSection

pytestmark = pytest.mark.service


@pytest.fixture
def pool() -> Iterator[ThreadPoolService]:
    yield from idle_pool_after("dcvix-test-radius", 10)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def backend(
    radiusd: Radiusd,
    pool: ThreadPoolService,
    host: str = "127.0.0.1",
    secret: str | None = None,
    timeout: float = 5.0,
    retries: int = 2,
) -> RadiusAuthenticator:
    settings = RadiusSection(
        radius_server=host,
        radius_port=radiusd.port,
        radius_secret=radiusd.secret if secret is None else secret,
        radius_timeout=timeout,
        radius_retries=retries,
    )
    return RadiusAuthenticator(settings, pool)


@pytest_twisted.ensureDeferred
async def test_accept_and_reject(radiusd: Radiusd, pool: ThreadPoolService) -> None:
    radius = backend(radiusd, pool)
    alice, bob = RADIUS_ALICE, RADIUS_BOB
    assert await radius.authenticate(alice.name, alice.password, "") == alice.name
    assert await radius.authenticate(alice.name, "not-" + alice.password, "") is None
    assert await radius.authenticate(bob.name, bob.password, "") is None
    assert await radius.authenticate("nobody", "whatever", "") is None


@pytest_twisted.ensureDeferred
async def test_otp_is_appended_to_the_password(
    radiusd: Radiusd, pool: ThreadPoolService
) -> None:
    radius = backend(radiusd, pool)
    dave = RADIUS_DAVE
    assert await radius.authenticate(dave.name, dave.password, RADIUS_DAVE_OTP) == (
        dave.name
    )
    assert await radius.authenticate(dave.name, dave.password, "000000") is None
    assert await radius.authenticate(dave.name, dave.password, "") is None


@pytest_twisted.ensureDeferred
async def test_challenge_is_a_refusal(
    radiusd: Radiusd, pool: ThreadPoolService, events: EventLoggingObserver
) -> None:
    carol = RADIUS_CAROL
    radius = backend(radiusd, pool)
    assert await radius.authenticate(carol.name, carol.password, "") is None
    assert any(
        "challenge-response is not supported" in event.get("log_format", "")
        for event in events
    )


@pytest_twisted.ensureDeferred
async def test_unsigned_accept_is_unavailable(
    radiusd: Radiusd, pool: ThreadPoolService
) -> None:
    erin = RADIUS_ERIN
    radius = backend(radiusd, pool, timeout=0.3, retries=0)
    with pytest.raises(AuthUnavailable, match="without a Message-Authenticator"):
        await radius.authenticate(erin.name, erin.password, "")


@pytest_twisted.ensureDeferred
async def test_wrong_secret_is_unavailable(
    radiusd: Radiusd, pool: ThreadPoolService
) -> None:
    # The server drops a request whose Message-Authenticator it cannot verify.
    radius = backend(radiusd, pool, secret="not-the-secret", timeout=0.3, retries=1)
    alice = RADIUS_ALICE
    with pytest.raises(AuthUnavailable, match=r"no valid answer .* to 2 request"):
        await radius.authenticate(alice.name, alice.password, "")


@pytest_twisted.ensureDeferred
async def test_ipv6_server(radiusd: Radiusd, pool: ThreadPoolService) -> None:
    if not radiusd.ipv6:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    radius = backend(radiusd, pool, host="::1")
    alice = RADIUS_ALICE
    assert await radius.authenticate(alice.name, alice.password, "") == alice.name
    assert await radius.authenticate(alice.name, "wrong", "") is None
