"""Wall-clock time read from an injected clock (a reactor, or a test's ``Clock``)."""

from __future__ import annotations

import datetime as dt

from twisted.internet.interfaces import IReactorTime


def now_utc(clock: IReactorTime) -> dt.datetime:
    """The clock's time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(clock.seconds(), dt.UTC)
