"""``[store]``: which engine keeps the registry, and how to open it.

The director and ``dcvixctl`` open the store the same way, so both always
work on the same agents whatever the engine.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from dcvix.common.files import read_secret_line
from dcvix.director.config import STORE_URL, DirectorConfig, StoreSection
from dcvix.director.datadir import DirectorFiles
from dcvix.director.registry import StoreError
from dcvix.director.registry.engine import Engine, Runner
from dcvix.director.registry.postgres import PostgresEngine, describe
from dcvix.director.registry.sql import SqlRegistry
from dcvix.director.registry.sqlite import SqliteEngine, SqliteRegistry


def is_postgres(store: StoreSection) -> bool:
    """Whether the store is a PostgreSQL database (shared by directors)."""
    return urlsplit(store.url).scheme in ("postgresql", "postgres")


def director_files(config: DirectorConfig) -> DirectorFiles:
    """``data_dir``'s files, with ``agents.db`` where a ``sqlite:///`` URL puts it."""
    database = None
    if urlsplit(config.store.url).scheme == "sqlite":
        database = Path(unquote(urlsplit(config.store.url).path))
    return DirectorFiles(Path(config.director.data_dir), database)


def database_threads(store: StoreSection) -> int:
    """Threads of the database pool: one SQLite connection, or N PostgreSQL ones."""
    return store.connections if is_postgres(store) else 1


def store_password(store: StoreSection) -> str:
    """``password``, or the first line of ``password_file`` (which must be 0600).

    Raises:
        StoreError: the file cannot be read, or others may read it.
    """
    if not store.password_file:
        return store.password
    try:
        return read_secret_line(Path(store.password_file))
    except ValueError as error:
        raise StoreError(f"[store] password_file {error}") from None


def describe_store(url: str) -> str:
    """A store's URL for messages (without any password)."""
    if urlsplit(url).scheme == "sqlite":
        return url
    return describe(url)


def open_engine(url: str, password: str, must_exist: bool = False) -> Engine:
    """The engine of a store given by URL (``dcvixctl store copy``).

    Raises:
        StoreError: the URL is not a store's, ``must_exist`` and the SQLite
            file does not exist, or the store cannot be opened.
    """
    try:
        url = STORE_URL.parse(url)
    except ValueError as error:
        raise StoreError(str(error)) from None
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return PostgresEngine(url, password, 1)
    path = Path(unquote(parts.path))
    if must_exist and not path.is_file():
        raise StoreError(f"{path} does not exist")
    return SqliteEngine(path)


def open_registry(config: DirectorConfig, runner: Runner) -> SqlRegistry:
    """The registry on the configured store, its schema brought up to date.

    Raises:
        StoreError: one line: the store cannot be opened or used.
    """
    if is_postgres(config.store):
        engine = PostgresEngine(
            config.store.url, store_password(config.store), config.store.connections
        )
        return SqlRegistry(engine, runner)
    return SqliteRegistry(director_files(config).agents_db, runner)
