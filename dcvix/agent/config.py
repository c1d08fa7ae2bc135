"""Every ``dcvix-agent.conf`` key: Go's (agent reference §3.3) and CONTRACT §4's."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from dcvix.agent.directors import format_directors
from dcvix.common.config import (
    BIND_ADDRESS,
    BOOLEAN,
    CONFIG_KEYS,
    CSV,
    DURATION,
    FINGERPRINT,
    HOST_PORT,
    LISTEN,
    PATH,
    PORT,
    POSITIVE_DURATION,
    SECRET,
    ConfigError,
    Kind,
    LoadedConfig,
    LogSection,
    MetricsSection,
    integer,
    setting,
)
from dcvix.common.http import keepalive_timeout_setting, request_timeout_setting
from dcvix.common.tls import DIRECTOR_NAME
from dcvix.common.validate import is_hostname

# Names the director never gives an agent (CONTRACT §3): its own certificate's.
RESERVED_HOSTNAMES = frozenset({"localhost", DIRECTOR_NAME})


def hostname_problem(name: str) -> str | None:
    """Why the director would refuse ``name`` as an agent's hostname, or None.

    The director's rule (RFC 1123, no wildcard, not an IP address, not
    ``localhost`` or ``dcvix-director``): an agent that starts with such a name
    would be answered 400 at every registration, forever.
    """
    if not name:
        return "it is empty"
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return f"{name!r} is an IP address; the director needs a host name"
    if "*" in name:
        return f"{name!r} is a wildcard; the director needs one name"
    if name.endswith(".") and is_hostname(name[:-1]):
        return f"{name!r} ends with a dot; the director needs {name[:-1]!r}"
    if not is_hostname(name):
        # An RFC 1123 name: letters, digits, inner hyphens, dot-separated labels.
        return f"{name!r} is not a host name or IP address"
    if name.lower() in RESERVED_HOSTNAMES:
        return f"{name!r} is reserved: the director refuses it"
    return None


def _parse_agent_hostname(text: str) -> str:
    problem = hostname_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


AGENT_HOSTNAME: Kind[str] = Kind("host name (RFC 1123)", _parse_agent_hostname)

DIRECTOR_HOSTS: Kind[str] = Kind(
    "comma-separated host[:port] (host name or IP)", format_directors
)


@dataclass(frozen=True)
class AgentSection:
    """``[agent]``."""

    director_host: str = setting(
        DIRECTOR_HOSTS,
        "127.0.0.1",
        "Director host name or IP (any: its key is checked); several, comma-"
        "separated (host:port each), for failover to the next that answers.",
    )
    director_port: int = setting(
        PORT, 8445, "Director port (of director_host entries without one)."
    )
    director_failback: float = setting(
        POSITIVE_DURATION,
        300.0,
        "After failing over, how long before the first director_host is tried again.",
    )
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
        AGENT_HOSTNAME,
        "",
        "Name the agent registers with and reports; empty: the OS host name. "
        "A name the director refuses (an IP address, `localhost`, a wildcard) "
        "stops the agent at start.",
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
        integer(1), 1000, "Lowest uid a virtual session may run as (never root)."
    )
    max_session_uid: int = setting(
        integer(0),
        60000,
        "Highest uid a virtual session may run as (the overflow uid `nobody` never).",
    )
    dcv_timeout: float = setting(
        POSITIVE_DURATION, 20.0, "Time limit of one dcv command."
    )
    request_timeout: float = request_timeout_setting()
    keepalive_timeout: float = keepalive_timeout_setting()
    config_allow: tuple[str, ...] = setting(
        CONFIG_KEYS, ("display/quality",), "DCV settings the agent accepts."
    )

    @property
    def effective_hostname(self) -> str:
        """The configured hostname, else the OS host name."""
        return self.hostname or socket.gethostname()


@dataclass(frozen=True)
class AgentMetricsSection(MetricsSection):
    """``[metrics]`` of the agent: its API port never serves them (mTLS only)."""

    listen: str = setting(
        LISTEN,
        "127.0.0.1:9446",
        "Where Prometheus scrapes /metrics (plain HTTP; keep it on loopback or "
        "set token_file); empty: nowhere.",
    )


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
    metrics: AgentMetricsSection = field(default_factory=AgentMetricsSection)
    log: AgentLogSection = field(default_factory=AgentLogSection)


def check_agent_config(config: AgentConfig) -> None:
    """What one key alone cannot tell: checked at start, before anything is made.

    Raises:
        ConfigError: ``FILE: [agent] key: problem``, as for a bad value.
    """
    where = str(config.source.path) if config.source.path else "<defaults>"
    agent = config.agent
    if agent.max_session_uid < agent.min_session_uid:
        raise ConfigError(
            f"{where}: [agent] max_session_uid: {agent.max_session_uid} is below "
            f"min_session_uid ({agent.min_session_uid})"
        )
    if not agent.hostname:
        problem = hostname_problem(socket.gethostname())
        if problem is not None:
            raise ConfigError(
                f"{where}: [agent] hostname: not set, and the OS host name cannot "
                f"be used: {problem}; set hostname"
            )
