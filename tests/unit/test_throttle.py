"""LoginThrottle: 5 failures within 300 s lock a user or an address for 300 s."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from dcvix.director.throttle import LoginThrottle, same_user


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_740_830_400)
    return clock


@pytest.fixture
def throttle(clock: Clock) -> LoginThrottle:
    return LoginThrottle(5, 300, clock)


def test_five_failures_lock_the_user_until_the_lockout_ends(
    clock: Clock, throttle: LoginThrottle
) -> None:
    for attempt in range(5):
        assert not throttle.locked("alice", "10.0.0.1"), attempt
        throttle.failed("alice", "10.0.0.1")

    assert throttle.locked("alice", "10.0.0.1")  # the sixth attempt
    clock.advance(299)
    assert throttle.locked("alice", "10.0.0.1")
    clock.advance(1)
    assert not throttle.locked("alice", "10.0.0.1")


def test_four_failures_do_not_lock(throttle: LoginThrottle) -> None:
    for _ in range(4):
        throttle.failed("alice", "10.0.0.1")

    assert not throttle.locked("alice", "10.0.0.1")


def test_many_addresses_cannot_guess_one_password(throttle: LoginThrottle) -> None:
    for n in range(5):
        throttle.failed("alice", f"10.0.0.{n}")

    assert throttle.locked("alice", "10.0.0.99")
    assert throttle.locked("alice", "192.0.2.1")
    assert not throttle.locked("bob", "10.0.0.99")
    assert not throttle.locked("bob", "10.0.0.1")


def test_user_names_are_compared_case_folded(throttle: LoginThrottle) -> None:
    for n, name in enumerate(["alice", "Alice", "ALICE", "aLice", "alicE"]):
        throttle.failed(name, f"10.0.0.{n}")

    assert throttle.locked("alice", "10.0.0.99")
    assert throttle.locked("ALICE", "10.0.0.99")


def test_one_address_cannot_try_many_users(throttle: LoginThrottle) -> None:
    for n in range(5):
        throttle.failed(f"user{n}", "10.0.0.1")

    assert throttle.locked("someone-new", "10.0.0.1")
    assert not throttle.locked("someone-new", "10.0.0.2")
    assert not throttle.locked("user0", "10.0.0.2")


def test_success_clears_the_user_but_not_the_address(throttle: LoginThrottle) -> None:
    for _ in range(4):
        throttle.failed("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")

    # alice starts afresh (from elsewhere) ...
    for _ in range(4):
        throttle.failed("alice", "10.0.0.2")
    assert not throttle.locked("alice", "10.0.0.2")
    # ... but the address keeps its four: one more locks it, for anyone.
    throttle.failed("mallory", "10.0.0.1")
    assert throttle.locked("bob", "10.0.0.1")


def test_old_failures_slide_out_of_the_window(
    clock: Clock, throttle: LoginThrottle
) -> None:
    for _ in range(4):
        throttle.failed("alice", "10.0.0.1")
    clock.advance(200)
    throttle.failed("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.1")

    # The lock lasts 300 s from the failure that set it, whatever the others.
    clock.advance(299)
    assert throttle.locked("alice", "10.0.0.1")
    clock.advance(1)
    assert not throttle.locked("alice", "10.0.0.1")
    # The failures of the past window no longer count: five new ones are needed.
    for _ in range(4):
        throttle.failed("alice", "10.0.0.1")
    assert not throttle.locked("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.1")


def test_attempts_in_flight_count_until_they_end(throttle: LoginThrottle) -> None:
    """A burst of simultaneous attempts cannot pass the limit before any fails."""
    for _ in range(5):
        assert not throttle.locked("alice", "10.0.0.1")
        throttle.started("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.2")  # per user
    assert throttle.locked("bob", "10.0.0.1")  # per address

    for _ in range(5):
        throttle.ended("alice", "10.0.0.1")
    assert not throttle.locked("alice", "10.0.0.1")
    assert not throttle.locked("bob", "10.0.0.1")


def test_in_flight_and_failures_add_up(throttle: LoginThrottle) -> None:
    for _ in range(3):
        throttle.failed("alice", "10.0.0.1")
    throttle.started("alice", "10.0.0.1")
    assert not throttle.locked("alice", "10.0.0.1")
    throttle.started("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.1")

    throttle.ended("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")
    throttle.ended("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")
    assert not throttle.locked("alice", "10.0.0.1")


def test_other_limits(clock: Clock) -> None:
    throttle = LoginThrottle(2, 60, clock)
    throttle.failed("alice", "10.0.0.1")
    assert not throttle.locked("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    assert throttle.locked("alice", "10.0.0.1")

    clock.advance(60)
    assert not throttle.locked("alice", "10.0.0.1")


def test_names_ldap_takes_for_one_share_one_count(throttle: LoginThrottle) -> None:
    """`alice `, ` alice`, `ALICE` and `a  lice`/`a lice` are one entry to LDAP."""
    spellings = ["alice ", " alice", "ALICE", "\talice\t", "Alice"]
    for n, name in enumerate(spellings):
        throttle.failed(name, f"10.0.0.{n}")
    assert throttle.locked("alice", "10.0.1.1")
    for n in range(5):
        throttle.failed(("a  lice", "a lice")[n % 2], f"10.0.2.{n}")
    assert throttle.locked("A Lice", "10.0.3.1")
    assert not throttle.locked("alicex", "10.0.3.2")


@pytest.mark.parametrize(
    ("user", "key"),
    [("alice", "alice"), (" Alice  Smith ", "alice smith"), ("ÉVE", "éve")],
)
def test_same_user(user: str, key: str) -> None:
    assert same_user(user) == key


@pytest.mark.parametrize(
    "variant",
    [
        "\uff41\uff4c\uff49\uff43\uff45",  # full-width
        "\u24d0lice",  # circled
        "al\u200bice",
        "ali\u00adce",
        "\U0001d41alice",  # mathematical bold
    ],
)
def test_unicode_spellings_a_directory_matches_share_one_count(
    throttle: LoginThrottle, variant: str
) -> None:
    for n in range(5):
        throttle.failed(variant, f"10.0.4.{n}")
    assert throttle.locked("alice", "10.0.5.1")


def test_retry_after_is_the_longest_lock_left(
    clock: Clock, throttle: LoginThrottle
) -> None:
    assert throttle.retry_after("alice", "10.0.0.1") is None
    for _ in range(5):
        throttle.failed("alice", "10.0.0.1")
    clock.advance(100)
    assert throttle.retry_after("alice", "10.0.0.1") == 200
    # Attempts still at the back end lock without a known end.
    for _ in range(5):
        throttle.started("bob", "10.0.0.2")
    assert throttle.locked("bob", "10.0.0.2")
    assert throttle.retry_after("bob", "10.0.0.2") is None
    clock.advance(200)
    assert throttle.retry_after("alice", "10.0.0.1") is None
