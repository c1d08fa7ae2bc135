"""Filters and pages for ``GET /v1/servers``: what the web UI asks for at scale.

Without a parameter the answer stays Go's full array, for old clients and
scripts. ``online``, ``pool`` and ``q`` filter it; ``limit`` (with ``after``,
the last hostname of the previous page) pages it, in the listing's own order
(hostname descending), and the answer then says where the next page starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dcvix.common.errors import BadRequest
from dcvix.director.sessions import ServerView

MAX_LIMIT = 1000
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class ServerQuery:
    """A checked ``/v1/servers`` query."""

    online: bool | None = None
    pool: str = ""
    text: str = ""
    limit: int = 0
    after: str = ""

    @property
    def paged(self) -> bool:
        """Whether the answer is a page (``{"servers", "next"}``)."""
        return self.limit > 0

    @classmethod
    def parse(cls, args: Mapping[bytes, Sequence[bytes]]) -> ServerQuery:
        """The query of a request's ``args``.

        Raises:
            BadRequest: a value that is not one (``online=maybe``, ``limit=0``).
        """

        def one(name: str) -> str | None:
            values = args.get(name.encode())
            return values[0].decode("utf-8", "replace") if values else None

        online_text = one("online")
        online = None
        if online_text is not None:
            if online_text.lower() not in _BOOLEANS:
                raise BadRequest("online must be true or false")
            online = _BOOLEANS[online_text.lower()]
        limit_text = one("limit")
        limit = 0
        if limit_text is not None:
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
                raise BadRequest(f"limit must be a number from 1 to {MAX_LIMIT}")
            limit = int(limit_text)
        after = one("after") or ""
        if after and not limit:
            raise BadRequest("after needs limit")
        return cls(online, one("pool") or "", (one("q") or "").lower(), limit, after)

    def keeps(self, view: ServerView, pools: Sequence[str]) -> bool:
        """Whether the filters keep a server (``pools``: the pools holding it)."""
        if self.online is not None and view.online != self.online:
            return False
        if self.pool and self.pool not in pools:
            return False
        if self.text:
            state = view.state
            haystack = [state.hostname, *state.tags, view.agent_state]
            return any(self.text in item.lower() for item in haystack)
        return True

    def page(self, views: Sequence[ServerView]) -> tuple[list[ServerView], str | None]:
        """The views of this page (hostname descending), and the next ``after``."""
        start = (
            [v for v in views if v.state.hostname < self.after] if self.after else views
        )
        chosen = list(start[: self.limit])
        more = len(start) > self.limit
        return chosen, (chosen[-1].state.hostname if more and chosen else None)
