"""The layout of the director's ``data_dir``: one place names every file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DirectorFiles:
    """The PKI files of a director ``data_dir``, and its SQLite store.

    ``database`` is ``[store] url``'s file when it names one.
    """

    data_dir: Path
    database: Path | None = None

    @property
    def ca_key(self) -> Path:
        """The CA's private key."""
        return self.data_dir / "ca.key"

    @property
    def ca_pem(self) -> Path:
        """The CA certificate, also sent to agents."""
        return self.data_dir / "ca.pem"

    @property
    def server_key(self) -> Path:
        """The director's TLS key."""
        return self.data_dir / "server.key"

    @property
    def server_crt(self) -> Path:
        """The director's TLS certificate."""
        return self.data_dir / "server.crt"

    @property
    def agents_db(self) -> Path:
        """The agent registry (of a SQLite store)."""
        return self.database or self.data_dir / "agents.db"

    @property
    def token_key(self) -> Path:
        """The PASETO key generated when ``token_key`` is not configured."""
        return self.data_dir / "token.key"
