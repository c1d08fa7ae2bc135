"""Every ``dcvix-director.conf`` key: Go's (reference §10.3) and CONTRACT §4's."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from dcvix.common.config import (
    BOOLEAN,
    CONFIG_KEYS,
    HOST,
    HOST_LIST,
    KEY32,
    LISTEN,
    NETWORK_LIST,
    PATH,
    PORT,
    POSITIVE_DURATION,
    SECRET,
    TEXT,
    WORDS,
    Kind,
    LoadedConfig,
    LogSection,
    MetricsSection,
    choice,
    integer,
    setting,
    url,
)
from dcvix.common.http import keepalive_timeout_setting, request_timeout_setting


def _parse_ldap_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme == "ldapi" or (
        parts.scheme in ("ldap", "ldaps") and parts.hostname
    ):
        return text
    raise ValueError(f"{text!r} is not an ldap, ldaps or ldapi URL")


# ldapi:// names a socket path (percent-encoded) where others name a host.
LDAP_URL: Kind[str] = Kind("ldap/ldaps/ldapi URL", _parse_ldap_url)


def _parse_store_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(
                f"{text!r}: a SQLite store is sqlite:/// and an absolute file path"
            )
        return text
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.hostname or len(parts.path) < 2:
            raise ValueError(f"{text!r}: give postgresql://user@host[:port]/database")
        secret_keys = {"password", "sslpassword"} & {
            key.lower() for key, _ in parse_qsl(parts.query)
        }
        if parts.password is not None or secret_keys:
            raise ValueError(
                "the store URL must not hold a password: use [store] password_file"
            )
        _ = parts.port  # a bad port raises ValueError with its own message
        return text
    raise ValueError(f"{text!r} is not a sqlite:/// or postgresql:// URL")


STORE_URL: Kind[str] = Kind("sqlite:/// or postgresql:// URL", _parse_store_url)


@dataclass(frozen=True)
class DirectorSection:
    """``[director]``."""

    director_host: str = setting(
        HOST,
        "0.0.0.0",  # noqa: S104 - Go's default
        "Address the HTTPS API listens on.",
    )
    director_port: int = setting(PORT, 8445, "Port of the HTTPS API.")
    agent_port: int = setting(
        PORT, 8446, "Agent port used when an agent does not report its own."
    )
    dcv_port: int = setting(
        PORT, 8443, "DCV web port given to gateways and in .dcv files."
    )
    auth_type: str = setting(
        choice("pam", "ldap", "radius", "external"), "pam", "Login back end."
    )
    token_key: str = setting(
        KEY32,
        "",
        "Base64 of 32 bytes for PASETO tokens; empty: generated once into "
        "data_dir/token.key.",
        secret=True,
    )
    policydb_folder: str = setting(
        PATH, "policydb", "Folder of users.json and pools.json."
    )
    data_dir: str = setting(
        PATH,
        "/var/lib/dcvix-director",
        "CA, certificates, agents.db and token.key (0700).",
    )
    server_names: tuple[str, ...] = setting(
        HOST_LIST, (), "Extra DNS names or IPs for the director's certificate."
    )
    registration_token: str = setting(
        SECRET, "", "When set, required to create a pending agent.", secret=True
    )
    auto_approve: str = setting(
        choice("off", "token"), "off", "`token`: approve agents with a valid token."
    )
    agent_cert_lifetime: float = setting(
        POSITIVE_DURATION, 336 * 3600.0, "Lifetime of agent certificates."
    )
    register_rate: int = setting(
        integer(1), 30, "New pending agents per minute per source address."
    )
    max_pending: int = setting(integer(1), 1000, "Pending agents at most.")
    config_allow: tuple[str, ...] = setting(
        CONFIG_KEYS, ("display/quality",), "DCV settings users and admins may push."
    )
    max_body_bytes: int = setting(
        integer(1024), 1048576, "Request body cap in bytes (register: 16 KiB)."
    )
    proxy_addresses: tuple[str, ...] = setting(
        NETWORK_LIST,
        (),
        "TCP balancers (addresses or networks) whose connections start with a "
        "PROXY header (v1 or v2) naming the client; empty: none.",
    )
    agent_write_timeout: float = setting(
        POSITIVE_DURATION,
        30.0,
        "How long a call that changes an agent (create or close a session) may "
        "take before the director answers 504 (Go's 30 s).",
    )
    reuse_port: bool = setting(
        BOOLEAN,
        False,
        "Let other director processes of this machine listen on director_port "
        "too (SO_REUSEPORT; the kernel spreads connections); needs a "
        "PostgreSQL store.",
    )
    request_timeout: float = request_timeout_setting()
    keepalive_timeout: float = keepalive_timeout_setting()
    connection_token_ttl: float = setting(
        POSITIVE_DURATION, 600.0, "Lifetime of DCV connection tokens."
    )
    connection_token_single_use: bool = setting(
        BOOLEAN,
        False,
        "The first successful verification consumes a connection token.",
    )
    login_max_failures: int = setting(
        integer(1), 5, "Failed logins (per user or address) before a lockout."
    )
    login_lockout: float = setting(
        POSITIVE_DURATION, 300.0, "How long a login lockout lasts."
    )
    auth_concurrency: int = setting(
        integer(1), 8, "Login back-end calls (threads or processes) at once."
    )
    auth_queue: int = setting(
        integer(0), 64, "Logins waiting for a back end; beyond them: 503 at once."
    )


@dataclass(frozen=True)
class PamSection:
    """``[pam_auth]``."""

    pam_service_name: str = setting(TEXT, "login", "PAM service used for logins.")


@dataclass(frozen=True)
class LdapSection:
    """``[ldap_auth]``."""

    ldap_address: str = setting(LDAP_URL, "ldap://127.0.0.1:389", "LDAP server URL.")
    ldap_base_dn: str = setting(TEXT, "dc=example,dc=com", "Search base.")
    ldap_bind_user: str = setting(
        TEXT, "cn=admin,dc=example,dc=com", "DN the director binds as to search."
    )
    ldap_bind_password: str = setting(
        SECRET, "password", "Password of ldap_bind_user.", secret=True
    )
    ldap_filter: str = setting(
        TEXT,
        "(sAMAccountName=%s)",
        "User search filter; each %s is the user id, escaped.",
    )
    ldap_user_attribute: str = setting(
        TEXT,
        "sAMAccountName",
        "Attribute of the entry found that is the user id tokens and policy use.",
    )
    ldap_starttls: bool = setting(
        BOOLEAN, False, "Upgrade an ldap:// connection with StartTLS."
    )
    ldap_ca_file: str = setting(
        PATH, "", "CA certificates for ldaps:// and StartTLS; empty: the system's."
    )
    ldap_timeout: float = setting(
        POSITIVE_DURATION, 10.0, "Time limit to connect and for each answer."
    )
    otp_type: str = setting(
        choice("disabled", "privacyidea", "external"), "disabled", "Second factor."
    )
    privacyidea_url: str = setting(
        url("https", "http"), "https://mfaserver.domain.com", "privacyIDEA server."
    )
    privacyidea_tls_strict: bool = setting(
        BOOLEAN, True, "Verify privacyIDEA's TLS certificate."
    )
    otp_external_command: str = setting(
        PATH, "/usr/bin/external-auth", "OTP check command."
    )
    otp_external_args: tuple[str, ...] = setting(
        WORDS, (), "Arguments of the OTP command."
    )


@dataclass(frozen=True)
class RadiusSection:
    """``[radius_auth]``."""

    radius_server: str = setting(HOST, "127.0.0.1", "RADIUS server.")
    radius_port: int = setting(PORT, 1812, "RADIUS authentication port.")
    radius_secret: str = setting(SECRET, "secret", "RADIUS shared secret.", secret=True)
    radius_timeout: float = setting(
        POSITIVE_DURATION, 5.0, "Time to wait for each answer before sending again."
    )
    radius_retries: int = setting(
        integer(0), 2, "Requests sent again after a timeout before giving up."
    )
    radius_nas_identifier: str = setting(
        TEXT, "dcvix", "NAS-Identifier sent in every Access-Request."
    )


@dataclass(frozen=True)
class ExternalSection:
    """``[external_auth]``."""

    external_command: str = setting(
        PATH, "/usr/bin/external-auth", "Login check command (user, password on stdin)."
    )
    args: tuple[str, ...] = setting(WORDS, (), "Arguments of the login command.")


@dataclass(frozen=True)
class GatewaySection:
    """``[gateway]``."""

    gateways_list: tuple[str, ...] = setting(
        NETWORK_LIST,
        ("127.0.0.1",),
        "DCV Connection Gateway addresses or networks (e.g. 10.0.8.0/24) allowed "
        "to call /resolveSession; empty: none.",
    )


@dataclass(frozen=True)
class HousekeeperSection:
    """``[housekeeper]``."""

    housekeeper_frequency: float = setting(
        POSITIVE_DURATION, 40.0, "How often stale servers and sessions are dropped."
    )
    max_age: float = setting(
        POSITIVE_DURATION, 90.0, "A server not heard from this long is offline."
    )
    pending_max_age: float = setting(
        POSITIVE_DURATION, 168 * 3600.0, "Pending agents older than this are purged."
    )


@dataclass(frozen=True)
class StoreSection:
    """``[store]``."""

    url: str = setting(
        STORE_URL,
        "",
        "Where agents, revoked tokens and the audit trail are kept: "
        "sqlite:///path or postgresql://user@host:port/database; "
        "empty: data_dir/agents.db.",
    )
    password: str = setting(SECRET, "", "Password of the PostgreSQL user.", secret=True)
    password_file: str = setting(
        PATH,
        "",
        "File whose first line is that password (instead of password; not "
        "readable by others).",
    )
    connections: int = setting(
        integer(1, 64),
        4,
        "PostgreSQL connections, and database threads, of this director.",
    )


@dataclass(frozen=True)
class AuditSection:
    """``[audit]``: how long the trail is kept, and where it is exported."""

    keep: float = setting(
        POSITIVE_DURATION,
        2160 * 3600.0,  # audit.DEFAULT_KEEP
        "Audit lines older than this are vacuumed from the store.",
    )
    file: str = setting(
        PATH,
        "",
        "Also append each audit line to this file as a JSON line (0600; reopened "
        "on SIGHUP after logrotate); empty: none.",
    )
    syslog: bool = setting(
        BOOLEAN, False, "Also send each audit line to syslog (RFC 5424, authpriv)."
    )
    syslog_address: str = setting(
        PATH, "/dev/log", "The syslog daemon's UNIX datagram socket."
    )


@dataclass(frozen=True)
class DirectorMetricsSection(MetricsSection):
    """``[metrics]`` of the director."""

    listen: str = setting(
        LISTEN,
        "127.0.0.1:9445",
        "Where Prometheus scrapes /metrics (plain HTTP; keep it on loopback or "
        "set token_file); empty: nowhere.",
    )
    https: bool = setting(
        BOOLEAN,
        False,
        "Also serve /metrics on the director's HTTPS port, behind token_file's "
        "token (required then).",
    )


@dataclass(frozen=True)
class DirectorLogSection(LogSection):
    """``[log]`` of the director."""

    directory: str = setting(
        PATH,
        "/var/log/dcvix-director",
        "Folder of dcvix-director.log (created 0700).",
    )


@dataclass(frozen=True)
class DirectorConfig:
    """The whole director configuration."""

    source: LoadedConfig = field(default_factory=lambda: LoadedConfig(None))
    director: DirectorSection = field(default_factory=DirectorSection)
    pam_auth: PamSection = field(default_factory=PamSection)
    ldap_auth: LdapSection = field(default_factory=LdapSection)
    radius_auth: RadiusSection = field(default_factory=RadiusSection)
    external_auth: ExternalSection = field(default_factory=ExternalSection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    housekeeper: HousekeeperSection = field(default_factory=HousekeeperSection)
    store: StoreSection = field(default_factory=StoreSection)
    metrics: DirectorMetricsSection = field(default_factory=DirectorMetricsSection)
    audit: AuditSection = field(default_factory=AuditSection)
    log: DirectorLogSection = field(default_factory=DirectorLogSection)
