"""Every ``dcvix-agent.conf`` key: Go's (agent reference §3.3) and CONTRACT §4's."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from dcvix.common.config import (
    BIND_ADDRESS,
    BOOLEAN,
    CONFIG_KEYS,
    CSV,
    DURATION,
    FINGERPRINT,
    HOST,
    HOST_PORT,
    PATH,
    PORT,
    POSITIVE_DURATION,
    SECRET,
    LoadedConfig,
    LogSection,
    integer,
    setting,
)


@dataclass(frozen=True)
class AgentSection:
    """``[agent]``."""

    director_host: str = setting(
        HOST, "127.0.0.1", "Director host name or IP (any: its key is checked)."
    )
    director_port: int = setting(PORT, 8445, "Director port.")
    agent_port: int = setting(PORT, 8446, "Port of the agent's HTTPS API.")
    bind_address: str = setting(
        BIND_ADDRESS,
        "0.0.0.0",  # noqa: S104 - Go's default; the API needs mTLS
        "Address the API listens on; empty listens on every address (IPv4 and IPv6).",
    )
    tags: tuple[str, ...] = setting(
        CSV, (), "Tags reported to the director; the OS name is added."
    )
    dcv_path: str = setting(PATH, "/usr/bin/dcv", "The dcv command.")
    update_interval: float = setting(
        DURATION, 30.0, "Period of reports to the director (0 turns them off)."
    )
    reap_interval: float = setting(
        DURATION, 60.0, "Period of the idle-session reaper (0 turns it off)."
    )
    data_dir: str = setting(
        PATH, "/var/lib/dcvix-agent", "Key, GUID and certificates (0700)."
    )
    hostname: str = setting(
        HOST,
        "",
        "Name the agent registers with and reports; empty: the OS host name.",
    )
    advertise_address: str = setting(
        HOST_PORT, "", "Where the director should reach the agent (NAT)."
    )
    ca_fingerprint: str = setting(
        FINGERPRINT, "", "SHA-256 of the only director CA to trust."
    )
    registration_token: str = setting(
        SECRET,
        "",
        "Sent as registrationToken, only over a verified channel.",
        secret=True,
    )
    renew_interval: float = setting(
        POSITIVE_DURATION, 12 * 3600.0, "Renew certificates older than this."
    )
    idle_timeout: float = setting(
        POSITIVE_DURATION, 1800.0, "Sessions idle this long are reaped."
    )
    reap_all_sessions: bool = setting(
        BOOLEAN, False, "Reap sessions not made by dcvix too."
    )
    min_session_uid: int = setting(
        integer(0), 1000, "Lowest uid a virtual session may run as."
    )
    dcv_timeout: float = setting(
        POSITIVE_DURATION, 20.0, "Time limit of one dcv command."
    )
    config_allow: tuple[str, ...] = setting(
        CONFIG_KEYS, ("display/quality",), "DCV settings the agent accepts."
    )

    @property
    def effective_hostname(self) -> str:
        """The configured hostname, else the OS host name."""
        return self.hostname or socket.gethostname()


@dataclass(frozen=True)
class AgentLogSection(LogSection):
    """``[log]`` of the agent."""

    directory: str = setting(
        PATH, "/var/log/dcvix-agent", "Folder of dcvix-agent.log (created 0700)."
    )


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent configuration."""

    source: LoadedConfig = field(default_factory=lambda: LoadedConfig(None))
    agent: AgentSection = field(default_factory=AgentSection)
    log: AgentLogSection = field(default_factory=AgentLogSection)
