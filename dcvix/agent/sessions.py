"""What the agent does with sessions when the director asks: the rules over dcv."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from dcvix.agent.dcv import (
    DEFAULT_MAX_SESSION_UID,
    DcvCli,
    DcvError,
    Session,
    check_local_user,
    check_owner,
    check_session_type,
)
from dcvix.common.errors import Conflict
from dcvix.common.files import atomic_write
from dcvix.common.validate import InvalidInput, check_config, check_session_id

log = Logger()

MAX_CREATED_REMEMBERED = 10000
# A whole create (waiting for dcv, listing, creating) answers within this, so
# the director (30 s) always hears the agent's own answer (CONTRACT §4).
CREATE_LIMIT = 25.0


def _check_free(listed: Sequence[Session], session_type: str, session_id: str) -> None:
    """Refuse, as the caller's conflict, a create that dcv would fail.

    Raises:
        Conflict: ``session_id`` is taken, or a console session exists.
    """
    if any(session.id == session_id for session in listed):
        raise Conflict(f"session id {session_id} is taken")
    if session_type == "console" and any(s.type == "console" for s in listed):
        raise Conflict("the console session is someone else's")


class CreatedSessions:
    """The ids of sessions this agent created, kept in ``data_dir``.

    The reaper closes only those (and ``dcvix_`` ones), unless told otherwise.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            loaded = json.loads(path.read_text())
            self._ids = [str(i) for i in loaded] if isinstance(loaded, list) else []
        except (OSError, ValueError):
            self._ids = []

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def add(self, session_id: str) -> None:
        """Remember one more (the oldest are forgotten past a bound)."""
        if session_id in self._ids:
            return
        self._ids = [*self._ids, session_id][-MAX_CREATED_REMEMBERED:]
        self._store()

    def snapshot(self) -> frozenset[str]:
        """The ids remembered now (before a listing, see :meth:`forget_gone`)."""
        return frozenset(self._ids)

    def forget_gone(self, before: frozenset[str], alive: set[str]) -> None:
        """Forget ids known ``before`` a listing that the listing no longer shows.

        Ids added while the listing ran are kept: their session may be newer
        than the listing.
        """
        gone = before - alive
        kept = [i for i in self._ids if i not in gone]
        if kept != self._ids:
            self._ids = kept
            self._store()

    def _store(self) -> None:
        """Write the ids; a disk that refuses is one error line, not a failure.

        The session exists whatever the disk says: the ids stay right in
        memory and the next write that succeeds stores them all (the old file
        stays whole meanwhile: the write is atomic).
        """
        try:
            atomic_write(self._path, json.dumps(self._ids).encode(), 0o600)
        except OSError as error:
            log.error(
                "cannot store the sessions this agent created in {path}: {error}",
                path=str(self._path),
                error=error.strerror or str(error),
            )


class SessionManager:
    """Lists, creates (or reuses), closes sessions and pushes DCV settings.

    Args:
        dcv: the ``dcv`` wrapper.
        created: the record of sessions this agent made.
        min_session_uid: lowest uid a virtual session may run as.
        config_allow: ``section/key`` settings that may be set.
        max_session_uid: highest uid a virtual session may run as.
    """

    def __init__(
        self,
        dcv: DcvCli,
        created: CreatedSessions,
        min_session_uid: int,
        config_allow: Sequence[str],
        max_session_uid: int = DEFAULT_MAX_SESSION_UID,
    ) -> None:
        self.dcv = dcv
        self.created = created
        self._min_uid = min_session_uid
        self._max_uid = max_session_uid
        self._allow = tuple(config_allow)

    async def list(self) -> list[Session]:
        """Every session dcv reports."""
        return await self.dcv.list_sessions()

    async def create(self, owner: str, session_type: str, session_id: str) -> str:
        """The id of ``owner``'s session of that type: an existing one, or a new one.

        Raises:
            InvalidInput: a bad owner, type or id, or an owner who may not run a
                virtual session here.
            Conflict: another session has that id, or (console) the console
                is someone else's: dcv would refuse.
            DcvError: dcv failed.
        """
        owner = check_owner(owner)
        session_type = check_session_type(session_type)
        session_id = check_session_id(session_id)
        run_as = None
        if session_type == "virtual":
            run_as = check_local_user(owner, self._min_uid, self._max_uid)
        clock = self.dcv.clock
        deadline = clock.seconds() + CREATE_LIMIT
        acquiring = self.dcv.lock.acquire()
        acquiring.addTimeout(CREATE_LIMIT, clock)
        try:
            await acquiring
        except DeferredTimeout:
            raise DcvError("timeout", "dcv stayed busy: no session created") from None
        try:
            listed = await self.dcv.list_sessions(limit=deadline - clock.seconds())
            for session in listed:
                if session.owner == owner and session.type == session_type:
                    return session.id
            _check_free(listed, session_type, session_id)
            await self.dcv.create_session(
                owner,
                session_type,
                session_id,
                run_as,
                limit=deadline - clock.seconds(),
            )
            self.created.add(session_id)
        finally:
            self.dcv.lock.release()
        log.info(
            "created {kind} session {id} for {owner}",
            kind=session_type,
            id=session_id,
            owner=owner,
        )
        return session_id

    async def close(
        self, session_id: str, only_if: Callable[[Session], bool] | None = None
    ) -> bool:
        """Close a session; False when there is no such session.

        ``only_if`` is asked about the session as dcv lists it under the lock,
        just before the close (the reaper's "still idle?"); False keeps it.
        """
        session_id = check_session_id(session_id)
        await self.dcv.lock.acquire()
        try:
            sessions = await self.dcv.list_sessions()
            found = next((s for s in sessions if s.id == session_id), None)
            if found is None or (only_if is not None and not only_if(found)):
                return False
            await self.dcv.close_session(session_id)
        finally:
            self.dcv.lock.release()
        log.info("closed session {id}", id=session_id)
        return True

    async def configure(self, entries: Sequence[Any]) -> None:
        """Apply ``[{"section", "key", "value"}...]``, all checked before any runs.

        Raises:
            InvalidInput, NotAllowed: an entry that may not be applied.
            DcvError: dcv failed (entries before it were applied).
        """
        checked = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise InvalidInput("config entries must be objects")
            section, key, value = (entry.get(k) for k in ("section", "key", "value"))
            if not (
                isinstance(section, str)
                and isinstance(key, str)
                and isinstance(value, str)
            ):
                raise InvalidInput("section, key and value must be strings")
            checked.append(check_config(section, key, value, self._allow))
        await self.dcv.lock.acquire()
        try:
            for section, key, value in checked:
                await self.dcv.set_config(section, key, value)
                log.info(
                    "set DCV {section}/{key} = {value}",
                    section=section,
                    key=key,
                    value=value,
                )
        finally:
            self.dcv.lock.release()
