"""Files written the way state files must be: whole or not at all, private."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from twisted.logger import Logger

log = Logger()

# What :func:`atomic_write` names its temp files: ``.<name>.<mkstemp's 8>.tmp``.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the folder.

    A crash leaves either the old file or the new one, never half of either.
    """
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_directory(path.parent)


def remove_interrupted_writes(directory: Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left in ``directory``.

    A process killed inside :func:`atomic_write` (SIGKILL, power loss) leaves
    its temp file beside the untouched target; every such crash would add one.
    Call it at start, before anything in the process writes to ``directory``.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
                log.info(
                    "removed {path}, left by an interrupted write", path=str(entry)
                )
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700, or tighten an existing one (Go made them 0755).

    Raises:
        OSError: when the folder cannot be created or changed.
    """
    # Path.mkdir(parents=True) would make the missing parents with the umask's
    # mode; like Go's MkdirAll(dir, 0700), every folder made here is 0700.
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        os.chmod(path, current & 0o700)
        log.info(
            "tightened {path} from {old:o} to {new:o}",
            path=str(path),
            old=current,
            new=current & 0o700,
        )


def require_owner_only(path: Path) -> None:
    """Refuse a secret file that group or other users may read (it must be 0600).

    Raises:
        ValueError: others may read it (the message names the fix).
        OSError: it cannot be looked at.
    """
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(
            f"{path} is readable by other users (mode {mode:04o}); "
            f"it must be 0600: chmod 600 {path}"
        )


def read_secret_line(path: Path) -> str:
    """The first line of a file only its owner may read (a password, a token).

    Raises:
        ValueError: the file cannot be read, is not UTF-8, or others may read it
            (the message names the file and the fix, never the content).
    """
    try:
        require_owner_only(path)
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    return lines[0] if lines else ""
