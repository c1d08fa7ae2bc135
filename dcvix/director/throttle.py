"""Failed-login throttling per user and per source address, on an injected clock."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime


def same_user(user: str) -> str:
    """The throttle's key for a user id: what a directory would take as one name.

    LDAP servers match names ignoring case, compatibility forms (full-width
    letters are the plain ones), invisible format characters and
    insignificant spaces (RFC 4518), so all of those share one count of
    failures; folding more than a directory does only makes the lock stricter.
    """
    folded = unicodedata.normalize(
        "NFKC", unicodedata.normalize("NFKC", user).casefold()
    )
    visible = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


class LoginThrottle:
    """``max_failures`` failures within ``lockout`` seconds lock for ``lockout``.

    Counted per user (so many addresses cannot guess one password) and per
    address (so one address cannot try many users). The lock lasts ``lockout``
    from the failure that set it. A success clears the user's count only: an
    attacker's own good login must not reset the address's.
    Attempts still waiting for the back end count as failures until they end,
    so a burst of simultaneous logins cannot slip past the limit. User names
    are compared as LDAP compares them (:func:`same_user`).
    """

    def __init__(self, max_failures: int, lockout: float, clock: IReactorTime) -> None:
        self._max = max_failures
        self._lockout = lockout
        self._clock = clock
        self._failures: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._pending: dict[tuple[str, str], int] = defaultdict(int)
        self._locked_until: dict[tuple[str, str], float] = {}
        # Told the kind ("user" or "address") of each lock a failure sets.
        self.on_lock: Callable[[str], None] = lambda kind: None

    @staticmethod
    def keys(user: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """The user's key and the address's, as failures are counted under."""
        return ("user", same_user(user)), ("address", address)

    _keys = keys

    def horizon(self) -> float:
        """Failures before this time no longer count."""
        return self._clock.seconds() - self._lockout

    def adopt(
        self,
        keys: tuple[tuple[str, str], tuple[str, str]],
        failures: Mapping[tuple[str, str], list[float]],
        locks: Mapping[tuple[str, str], float],
    ) -> None:
        """Take a shared store's count of ``keys`` as this director's.

        The store holds every director's failures and locks, this one's
        included, and forgets a user's when any director sees them log in:
        what it says replaces what this director remembers.
        """
        horizon = self.horizon()
        for key in keys:
            recent = sorted(t for t in failures.get(key, ()) if t > horizon)
            if recent:
                self._failures[key] = recent
            else:
                self._failures.pop(key, None)
            if key in locks:
                self._locked_until[key] = locks[key]
            else:
                self._locked_until.pop(key, None)

    def locks(self, user: str, address: str) -> dict[tuple[str, str], float]:
        """The locks holding for these two keys, until when."""
        return {
            key: self._locked_until[key]
            for key in self._keys(user, address)
            if self._lock_holds(key)
        }

    def _recent(self, key: tuple[str, str]) -> list[float]:
        horizon = self._clock.seconds() - self._lockout
        kept = [t for t in self._failures.get(key, ()) if t > horizon]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def _lock_holds(self, key: tuple[str, str]) -> bool:
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self._clock.seconds() < until:
            return True
        del self._locked_until[key]
        return False

    def locked(self, user: str, address: str) -> bool:
        """Whether a login for ``user`` from ``address`` must be refused now."""
        return any(
            self._lock_holds(key)
            or len(self._recent(key)) + self._pending.get(key, 0) >= self._max
            for key in self._keys(user, address)
        )

    def retry_after(self, user: str, address: str) -> float | None:
        """Seconds until a locked login may be tried again, when a lock says.

        None when only attempts still waiting for the back end hold it (they
        end when the back end answers, which nobody can tell in advance).
        """
        now = self._clock.seconds()
        waits = [
            self._locked_until[key] - now
            for key in self._keys(user, address)
            if self._lock_holds(key)
        ]
        return max(waits) if waits else None

    def started(self, user: str, address: str) -> None:
        """An attempt went to the back end: it counts until :meth:`ended`."""
        for key in self._keys(user, address):
            self._pending[key] += 1

    def ended(self, user: str, address: str) -> None:
        """The back end answered (or failed) for an attempt :meth:`started`."""
        for key in self._keys(user, address):
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]

    def failed(self, user: str, address: str) -> float:
        """Count one failure against both; its time."""
        now = self._clock.seconds()
        for key in self._keys(user, address):
            self._recent(key)
            self._failures[key].append(now)
            if len(self._failures[key]) >= self._max:
                if not self._lock_holds(key):
                    self.on_lock(key[0])
                self._locked_until[key] = now + self._lockout
        return now

    def succeeded(self, user: str, address: str) -> None:
        """Forget the user's failures (not the address's)."""
        user_key, _ = self._keys(user, address)
        self._failures.pop(user_key, None)
        self._locked_until.pop(user_key, None)

    def prune(self) -> None:
        """Forget entries that no longer matter (called now and then)."""
        for key in list(self._failures):
            self._recent(key)
        for key in list(self._locked_until):
            self._lock_holds(key)
