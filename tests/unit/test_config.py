"""Typed config of both daemons: kinds, errors, warnings, discovery, default file."""

from __future__ import annotations

import os
import re
import stat
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from dcvix.agent.config import AgentConfig
from dcvix.common.config import (
    BOOLEAN,
    LISTEN,
    LOG_LEVEL,
    PORT,
    ConfigError,
    Discovery,
    LoadedConfig,
    candidate_paths,
    default_file_text,
    discover,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    secret_keys,
)
from dcvix.director.config import DirectorConfig

TOKEN_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "dcvix.conf"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load_error(
    tmp_path: Path,
    text: str,
    config_class: type[DirectorConfig | AgentConfig] = DirectorConfig,
) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_class, path)
    return str(caught.value).replace(str(path), "FILE")


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("40s", 40.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("30", 30.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("2.5", 2.5),
        ("336h", 1209600.0),
        ("1h2m3s", 3723.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("10ns", 1e-8),
        (".5m", 30.0),
        ("1h0.5s", 3600.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["5d", "-1s", "abc", "", "1m30", "s", "1 m", "1m 30s", "1e3s", "1w"]
)
def test_duration_rejections(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (40, "40s"),
        (90, "1m30s"),
        (3600, "1h"),
        (1209600, "336h"),
        (0.3, "0.3s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_error_text(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[housekeeper]\nmax_age = 5d\n") == (
        "FILE: [housekeeper] max_age: '5d' is not a duration "
        "(use seconds or Go's form: 40s, 1m30s, 12h)"
    )


def test_positive_duration_rejects_zero(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[director]\nagent_cert_lifetime = 0s\n") == (
        "FILE: [director] agent_cert_lifetime: must be longer than zero"
    )


def test_plain_duration_allows_zero() -> None:
    config = parse_config(AgentConfig, "[agent]\nupdate_interval = 0\n", None)
    assert config.agent.update_interval == 0.0
    assert config.agent.reap_interval == 60.0


# --------------------------------------------------------------- log levels


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("trace", "debug"),
        ("debug", "debug"),
        ("info", "info"),
        ("warn", "warning"),
        ("warning", "warning"),
        ("error", "error"),
        ("critical", "critical"),
        ("fatal", "critical"),
        ("panic", "critical"),
        ("TRACE", "debug"),
        ("Warn", "warning"),
        ("INFO", "info"),
        ("Panic", "critical"),
    ],
)
def test_log_levels(text: str, level: str) -> None:
    assert LOG_LEVEL.parse(text) == level


def test_unknown_log_level(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[log]\nlevel = verbose\n") == (
        "FILE: [log] level: 'verbose' is not a log level "
        "(debug, info, warning, error, critical; Go's trace, warn, fatal, panic)"
    )


# ---------------------------------------------------------- booleans, ports


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("t", True),
        ("yes", True),
        ("Y", True),
        ("on", True),
        ("ON", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("f", False),
        ("no", False),
        ("n", False),
        ("off", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert BOOLEAN.parse(text) is value


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), ("8445", 8445), ("65535", 65535)]
)
def test_ports(text: str, value: int) -> None:
    assert PORT.parse(text) == value


# ---------------------------------------------- every kind's rejection text

DIRECTOR_REJECTIONS = [
    (
        "director",
        "director_port",
        "0",
        "0 must be at least 1 and at most 65535",
    ),
    (
        "director",
        "agent_port",
        "65536",
        "65536 must be at least 1 and at most 65535",
    ),
    ("director", "dcv_port", "84x3", "'84x3' is not an integer"),
    (
        "director",
        "director_host",
        "bad host",
        "'bad host' is not a host name or IP address",
    ),
    (
        "director",
        "auth_type",
        "kerberos",
        "'kerberos' is not one of pam, ldap, radius, external",
    ),
    ("director", "token_key", "not base64!", "is not valid base64"),
    ("director", "token_key", "AAAA", "must be base64 of 32 bytes, not 3"),
    (
        "director",
        "server_names",
        "ok.example, b c",
        "'b c' is not a host name or IP address",
    ),
    ("director", "auto_approve", "yes", "'yes' is not one of off, token"),
    ("director", "register_rate", "0", "0 must be at least 1"),
    ("director", "max_pending", "many", "'many' is not an integer"),
    ("director", "max_body_bytes", "1023", "1023 must be at least 1024"),
    ("director", "config_allow", "display", "'display' is not section/key"),
    (
        "director",
        "registration_token",
        "a\x01b",
        "control characters are not allowed",
    ),
    (
        "director",
        "connection_token_ttl",
        "-1s",
        "'-1s' is not a duration (use seconds or Go's form: 40s, 1m30s, 12h)",
    ),
    ("director", "login_lockout", "0", "must be longer than zero"),
    (
        "ldap_auth",
        "ldap_address",
        "http://ldap.example",
        "'http://ldap.example' is not an ldap, ldaps or ldapi URL",
    ),
    (
        "ldap_auth",
        "privacyidea_url",
        "ftp://pi.example",
        "'ftp://pi.example' is not a https or http URL",
    ),
    (
        "ldap_auth",
        "privacyidea_tls_strict",
        "maybe",
        "'maybe' is not a boolean (use true or false)",
    ),
    (
        "ldap_auth",
        "otp_type",
        "sms",
        "'sms' is not one of disabled, privacyidea, external",
    ),
    (
        "radius_auth",
        "radius_port",
        "-1",
        "-1 must be at least 1 and at most 65535",
    ),
    (
        "gateway",
        "gateways_list",
        "127.0.0.1, gw.example",
        "'gw.example' is not an IP address or network",
    ),
    (
        "gateway",
        "gateways_list",
        "10.0.0.0/33",
        "'10.0.0.0/33' is not an IP address or network",
    ),
    (
        "housekeeper",
        "housekeeper_frequency",
        "abc",
        "'abc' is not a duration (use seconds or Go's form: 40s, 1m30s, 12h)",
    ),
    ("log", "rotation", "-1", "-1 must be at least 0"),
    ("log", "format", "xml", "'xml' is not one of text, json"),
    ("log", "directory", "/var/\x7f\x1blog", "control characters are not allowed"),
]


@pytest.mark.parametrize(("section", "key", "value", "problem"), DIRECTOR_REJECTIONS)
def test_director_rejections(
    tmp_path: Path, section: str, key: str, value: str, problem: str
) -> None:
    text = f"[{section}]\n{key} = {value}\n"
    assert load_error(tmp_path, text) == f"FILE: [{section}] {key}: {problem}"


AGENT_REJECTIONS = [
    ("agent", "director_port", "http", "'http' is not an integer"),
    ("agent", "bind_address", "nope!", "'nope!' is not a host name or IP address"),
    (
        "agent",
        "advertise_address",
        "agent.example:99999",
        "99999 must be at least 1 and at most 65535",
    ),
    ("agent", "advertise_address", "[::1]x", "'[::1]x' is not host[:port]"),
    (
        "agent",
        "ca_fingerprint",
        "abcd",
        "must be a SHA-256 fingerprint: 64 hex digits",
    ),
    ("agent", "hostname", "-bad", "'-bad' is not a host name or IP address"),
    ("agent", "tags", "gpu,\x02", "control characters are not allowed"),
    (
        "agent",
        "update_interval",
        "-30s",
        "'-30s' is not a duration (use seconds or Go's form: 40s, 1m30s, 12h)",
    ),
    ("agent", "dcv_timeout", "0s", "must be longer than zero"),
    ("agent", "reap_all_sessions", "2", "'2' is not a boolean (use true or false)"),
    ("agent", "min_session_uid", "0", "0 must be at least 1"),  # never root
    ("agent", "config_allow", "display/quality, x", "'x' is not section/key"),
    (
        "log",
        "level",
        "notice",
        "'notice' is not a log level "
        "(debug, info, warning, error, critical; Go's trace, warn, fatal, panic)",
    ),
]


@pytest.mark.parametrize(("section", "key", "value", "problem"), AGENT_REJECTIONS)
def test_agent_rejections(
    tmp_path: Path, section: str, key: str, value: str, problem: str
) -> None:
    text = f"[{section}]\n{key} = {value}\n"
    error = load_error(tmp_path, text, AgentConfig)
    assert error == f"FILE: [{section}] {key}: {problem}"


def test_error_names_the_real_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[director]\ndirector_port = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(DirectorConfig, path)
    assert str(caught.value) == (
        f"{tmp_path}/dcvix.conf: [director] director_port: "
        "0 must be at least 1 and at most 65535"
    )


def test_first_bad_value_is_reported(tmp_path: Path) -> None:
    text = "[director]\ndirector_port = 8445\nagent_port = x\ndcv_port = y\n"
    assert load_error(tmp_path, text) == (
        "FILE: [director] agent_port: 'x' is not an integer"
    )


def test_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    text = "[director]\ndirector_port = 8445\nthis line is broken\n"
    assert load_error(tmp_path, text) == "FILE:3: expected 'key = value'"


def test_unclosed_section_gives_file_and_line(tmp_path: Path) -> None:
    assert load_error(tmp_path, "# c\n[director\n") == "FILE:2: unclosed section header"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigError) as caught:
        load_config(DirectorConfig, path)
    assert str(caught.value) == (
        f"{path}: cannot read config file: No such file or directory"
    )


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[director]\nregistration_token = caf\xe9\n")
    with pytest.raises(
        ConfigError, match=r"^.*latin1\.conf: cannot read config file: "
    ):
        load_config(DirectorConfig, path)


def test_parse_without_path_says_defaults() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(DirectorConfig, "[director]\ndirector_port = 0\n", None)
    assert str(caught.value) == (
        "<defaults>: [director] director_port: 0 must be at least 1 and at most 65535"
    )


# ------------------------------------------------------------ values loaded


def test_valid_values_of_every_kind(tmp_path: Path) -> None:
    text = """\
[director]
director_host = ::1
director_port = 9445
auth_type = LDAP
token_key = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
server_names = broker.example, 10.0.0.5 ,,
auto_approve = Token
agent_cert_lifetime = 1h30m
max_body_bytes = 1024
config_allow = display/quality, display/max-fps
registration_token = s3cret#;x

[ldap_auth]
ldap_address = ldaps://ldap.example:636
ldap_bind_password = pa#ss;word
privacyidea_tls_strict = no
otp_external_args = --check  --verbose

[gateway]
gateways_list = 10.0.0.1,  2001:DB8::1, 10.1.2.3/16, ::ffff:192.0.2.7, fd00::/8

[log]
level = Trace
rotation = 0
format = JSON
"""
    config = load_config(DirectorConfig, write(tmp_path, text))
    director = config.director
    assert director.director_host == "::1"
    assert director.director_port == 9445
    assert director.auth_type == "ldap"
    assert director.token_key == TOKEN_KEY
    assert director.server_names == ("broker.example", "10.0.0.5")
    assert director.auto_approve == "token"
    assert director.agent_cert_lifetime == 5400.0
    assert director.max_body_bytes == 1024
    assert director.config_allow == ("display/quality", "display/max-fps")
    assert director.registration_token == "s3cret#;x"
    assert config.ldap_auth.ldap_address == "ldaps://ldap.example:636"
    assert config.ldap_auth.ldap_bind_password == "pa#ss;word"
    assert config.ldap_auth.privacyidea_tls_strict is False
    assert config.ldap_auth.otp_external_args == ("--check", "--verbose")
    assert config.gateway.gateways_list == (
        "10.0.0.1",
        "2001:db8::1",
        "10.1.0.0/16",
        "192.0.2.7",
        "fd00::/8",
    )
    assert (config.log.level, config.log.rotation, config.log.format) == (
        "debug",
        0,
        "json",
    )
    assert config.source == LoadedConfig(tmp_path / "dcvix.conf", ())


def test_agent_values(tmp_path: Path) -> None:
    fingerprint = ":".join(["AB"] * 32)
    text = f"""\
[agent]
director_host = director.example
bind_address =
tags = gpu, , render ,
hostname = ws-01.example
advertise_address = [2001:db8::1]:9446
ca_fingerprint = {fingerprint}
reap_all_sessions = yes
min_session_uid = 500
update_interval = 1m
"""
    config = load_config(AgentConfig, write(tmp_path, text))
    agent = config.agent
    assert agent.director_host == "director.example"
    assert agent.bind_address == ""
    assert agent.tags == ("gpu", "render")
    assert agent.hostname == "ws-01.example"
    assert agent.effective_hostname == "ws-01.example"
    assert agent.advertise_address == "[2001:db8::1]:9446"
    assert agent.ca_fingerprint == "ab" * 32
    assert agent.reap_all_sessions is True
    assert agent.min_session_uid == 500
    assert agent.update_interval == 60.0


def test_empty_values_keep_defaults_for_most_kinds() -> None:
    text = """\
[director]
director_host =
director_port =
auth_type =
token_key =
agent_cert_lifetime =
data_dir =
[ldap_auth]
ldap_address =
privacyidea_tls_strict =
[housekeeper]
max_age =
[log]
level =
rotation =
format =
directory =
"""
    assert parse_config(DirectorConfig, text, None) == DirectorConfig()


def test_empty_values_keep_defaults_for_agent() -> None:
    text = """\
[agent]
director_host =
update_interval =
ca_fingerprint =
advertise_address =
reap_all_sessions =
min_session_uid =
hostname =
"""
    assert parse_config(AgentConfig, text, None) == AgentConfig()


def test_empty_strings_and_lists_are_empty() -> None:
    # As in Go: a string key written empty is the empty string; lists become empty.
    text = """\
[director]
config_allow =
registration_token =
[ldap_auth]
ldap_bind_password =
[gateway]
gateways_list =
"""
    config = parse_config(DirectorConfig, text, None)
    assert config.director.config_allow == ()
    assert config.director.registration_token == ""
    assert config.ldap_auth.ldap_bind_password == ""
    assert config.gateway.gateways_list == ()
    expected = DirectorConfig()
    assert config.director == replace(expected.director, config_allow=())
    assert config.ldap_auth == replace(expected.ldap_auth, ldap_bind_password="")


def test_defaults() -> None:
    director = DirectorConfig()
    assert director.director.director_host == "0.0.0.0"  # noqa: S104 - a value
    assert (director.director.director_port, director.director.agent_port) == (
        8445,
        8446,
    )
    assert director.director.dcv_port == 8443
    assert director.director.agent_cert_lifetime == 336 * 3600.0
    assert director.director.connection_token_ttl == 600.0
    assert director.housekeeper.housekeeper_frequency == 40.0
    assert director.housekeeper.max_age == 90.0
    assert director.housekeeper.pending_max_age == 168 * 3600.0
    assert director.log.directory == "/var/log/dcvix-director"
    assert director.log.level == "info"
    assert director.log.rotation == 2
    agent = AgentConfig()
    assert agent.agent.update_interval == 30.0
    assert agent.agent.reap_interval == 60.0
    assert agent.agent.renew_interval == 12 * 3600.0
    assert agent.agent.idle_timeout == 1800.0
    assert agent.agent.dcv_timeout == 20.0
    assert agent.agent.min_session_uid == 1000
    assert agent.log.directory == "/var/log/dcvix-agent"


def test_secret_keys() -> None:
    assert secret_keys(DirectorConfig) == {
        "token_key",
        "registration_token",
        "ldap_bind_password",
        "radius_secret",
        "password",
    }
    assert secret_keys(AgentConfig) == {"registration_token"}


# --------------------------------------------------------------- warnings


def test_unknown_keys_and_sections_are_warnings(tmp_path: Path) -> None:
    text = """\
stray = 1
[director]
director_port = 9000
tls_strict = true
[log]
levle = debug
[metrix]
enabled = yes
[empty]
"""
    path = write(tmp_path, text)
    config = load_config(DirectorConfig, path)
    assert config.director.director_port == 9000
    assert config.log.level == "info"
    assert config.source.warnings == (
        f"{path}: [director] tls_strict: unknown key, ignored",
        f"{path}: [log] levle: unknown key, ignored",
        f"{path}: [DEFAULT]: unknown section, ignored",
        f"{path}: [metrix]: unknown section, ignored",
        f"{path}: [empty]: unknown section, ignored",
    )


def test_known_file_has_no_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, "[director]\nauth_type = pam\n[log]\nlevel = warn\n")
    assert load_config(DirectorConfig, path).source == LoadedConfig(path, ())


def test_unknown_key_with_invalid_value_is_only_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nca_file = \x01\n", 0o600)
    config = load_config(AgentConfig, path)
    assert config.source.warnings == (f"{path}: [agent] ca_file: unknown key, ignored",)


@pytest.mark.parametrize(
    ("config_class", "text"),
    [
        (DirectorConfig, f"[director]\ntoken_key = {TOKEN_KEY}\n"),
        (DirectorConfig, "[director]\nregistration_token = enrol-me\n"),
        (DirectorConfig, "[ldap_auth]\nldap_bind_password = pa#ss\n"),
        (DirectorConfig, "[radius_auth]\nradius_secret = shared\n"),
        (AgentConfig, "[agent]\nregistration_token = enrol-me\n"),
    ],
)
def test_world_readable_secret_is_warned(
    tmp_path: Path, config_class: type[DirectorConfig | AgentConfig], text: str
) -> None:
    readable = write(tmp_path, text, 0o644)
    assert stat.S_IMODE(readable.stat().st_mode) == 0o644
    warnings = load_config(config_class, readable).source.warnings
    assert warnings == (
        f"{readable}: holds secrets but is readable by other users "
        f"(chmod 600 {readable})",
    )
    readable.chmod(0o600)
    assert load_config(config_class, readable).source.warnings == ()


def test_world_readable_without_secrets_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[director]\ndirector_port = 8445\ntoken_key =\n", 0o644)
    assert load_config(DirectorConfig, path).source.warnings == ()


# --------------------------------------------------------------- Go files

GO_DIRECTOR_CONF = """\
# dcvix director configuration (written for the Go director)
[director]
director_host = "0.0.0.0"
director_port = 8445
agent_port = 8446
auth_type = ldap
token_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
policydb_folder = "/etc/dcvix-director/policydb"
data_dir = /var/lib/dcvix-director

[pam_auth]
pam_service_name = login

[ldap_auth]
ldap_address = "ldap://ldap.example.com:389"
ldap_base_dn = "dc=example,dc=com"
ldap_bind_user = 'cn=reader,dc=example,dc=com'
ldap_bind_password = `p"a#ss;w'rd`
ldap_filter = (uid=%s)
otp_type = disabled
privacyidea_url = https://mfa.example.com
privacyidea_tls_strict = TRUE
otp_external_command = /usr/local/bin/otp-check
otp_external_args = "--mode otp"

[radius_auth]
radius_server = radius.example.com
radius_port = 1812
radius_secret = secret

[external_auth]
external_command = /usr/bin/external-auth
args =

[gateway]
gateways_list = 127.0.0.1, 10.1.2.3

[housekeeper]
housekeeper_frequency = 40s
max_age = 30s

[log]
; warn is logrus's name for warning
level = warn
directory = log
rotation = 2
"""


def test_go_director_config_loads(tmp_path: Path) -> None:
    config = load_config(DirectorConfig, write(tmp_path, GO_DIRECTOR_CONF))
    assert config.source.warnings == ()
    assert config.director.director_host == "0.0.0.0"  # noqa: S104 - a value
    assert config.director.auth_type == "ldap"
    assert config.director.token_key == TOKEN_KEY
    assert config.director.policydb_folder == "/etc/dcvix-director/policydb"
    assert config.ldap_auth.ldap_address == "ldap://ldap.example.com:389"
    assert config.ldap_auth.ldap_bind_user == "cn=reader,dc=example,dc=com"
    assert config.ldap_auth.ldap_bind_password == "p\"a#ss;w'rd"
    assert config.ldap_auth.ldap_filter == "(uid=%s)"
    assert config.ldap_auth.privacyidea_tls_strict is True
    assert config.ldap_auth.otp_external_args == ("--mode", "otp")
    assert config.external_auth.args == ()
    assert config.gateway.gateways_list == ("127.0.0.1", "10.1.2.3")
    assert config.housekeeper.housekeeper_frequency == 40.0
    assert config.housekeeper.max_age == 30.0
    assert config.log.level == "warning"
    assert config.log.directory == "log"
    assert config.log.rotation == 2


def test_go_agent_config_loads(tmp_path: Path) -> None:
    text = """\
[agent]
director_host = "director.example.com"
director_port = 8445
agent_port = 8446
bind_address = 0.0.0.0
tags = "gpu,a100"
# dcv_path = /usr/bin/dcv
update_interval = 30
reap_interval = 60
# data_dir = "/var/lib/dcvix-agent"

[log]
level = Debug
directory = /var/log/dcvix-agent
rotation = 5
"""
    config = load_config(AgentConfig, write(tmp_path, text))
    assert config.source.warnings == ()
    assert config.agent.director_host == "director.example.com"
    assert config.agent.tags == ("gpu", "a100")
    assert config.agent.update_interval == 30.0
    assert config.agent.reap_interval == 60.0
    assert config.agent.dcv_path == "/usr/bin/dcv"
    assert (config.log.level, config.log.rotation) == ("debug", 5)


# ------------------------------------------------------------- default file

_KEY_LINE = re.compile(r"^# ([a-z_]+ =.*)$", re.MULTILINE)


@pytest.mark.parametrize("config_class", [DirectorConfig, AgentConfig])
def test_default_file_parses_to_defaults(
    config_class: type[DirectorConfig | AgentConfig],
) -> None:
    text = default_file_text(config_class, "dcvix test configuration")
    assert text.startswith("# dcvix test configuration\n")
    assert parse_config(config_class, text, None) == config_class()


@pytest.mark.parametrize(
    ("config_class", "key_lines"), [(DirectorConfig, 69), (AgentConfig, 29)]
)
def test_uncommented_default_file_parses_to_defaults(
    config_class: type[DirectorConfig | AgentConfig], key_lines: int
) -> None:
    text = default_file_text(config_class, "dcvix test configuration")
    uncommented, count = _KEY_LINE.subn(r"\1", text)
    assert count == key_lines
    config = parse_config(config_class, uncommented, None)
    assert config == config_class()
    assert config.source.warnings == ()


def test_default_file_shows_values_in_go_form() -> None:
    text = default_file_text(DirectorConfig, "t")
    for line in (
        "[director]",
        "# director_host = 0.0.0.0",
        "# token_key =",
        "# agent_cert_lifetime = 336h",
        "# config_allow = display/quality",
        "# privacyidea_tls_strict = true",
        "# housekeeper_frequency = 40s",
        "# max_age = 1m30s",
        "# directory = /var/log/dcvix-director",
    ):
        assert line in text.splitlines()
    agent_lines = default_file_text(AgentConfig, "t").splitlines()
    assert "# reap_interval = 1m" in agent_lines
    assert "# tags =" in agent_lines


# --------------------------------------------------------------- discovery


def test_candidate_paths(tmp_path: Path) -> None:
    assert candidate_paths("agent", tmp_path) == [
        Path("/etc/dcvix-agent/dcvix-agent.conf"),
        tmp_path / "dcvix-agent.conf",
    ]
    assert candidate_paths("director", Path("/srv"), etc=tmp_path) == [
        tmp_path / "dcvix-director" / "dcvix-director.conf",
        Path("/srv/dcvix-director.conf"),
    ]


def test_explicit_conf_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as caught:
        discover("director", str(missing), "text", [tmp_path / "a.conf"])
    assert str(caught.value) == f"{missing}: config file not found"
    assert not (tmp_path / "a.conf").exists()


def test_explicit_conf_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        discover("director", str(tmp_path), "text", [])


def test_explicit_conf_wins(tmp_path: Path) -> None:
    explicit = tmp_path / "mine.conf"
    explicit.write_text("")
    first = tmp_path / "first.conf"
    first.write_text("")
    assert discover("agent", str(explicit), "text", [first]) == Discovery(explicit)


def test_first_existing_candidate_is_used(tmp_path: Path) -> None:
    first, second, third = (tmp_path / n for n in ("1.conf", "2.conf", "3.conf"))
    second.write_text("[agent]\n")
    third.write_text("[agent]\n")
    (tmp_path / "dir.conf").mkdir()
    found = discover(
        "agent", None, "default", [first, tmp_path / "dir.conf", second, third]
    )
    assert found == Discovery(second)
    assert not first.exists()


def test_default_written_to_first_writable(tmp_path: Path) -> None:
    first = tmp_path / "etc" / "dcvix-director" / "dcvix-director.conf"
    second = tmp_path / "dcvix-director.conf"
    found = discover("director", None, "# default\n", [first, second])
    assert found == Discovery(
        first, True, (f"no config file found: wrote the defaults to {first}",)
    )
    assert first.read_text() == "# default\n"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert not second.exists()
    # The next start finds it.
    assert discover("director", None, "# other\n", [first, second]) == Discovery(first)


def test_unwritable_first_candidate_falls_through(tmp_path: Path) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("a file where a folder should be")
    first = blocker / "dcvix-agent" / "dcvix-agent.conf"
    second = tmp_path / "dcvix-agent.conf"
    found = discover("agent", None, "# default\n", [first, second])
    assert found == Discovery(
        second,
        True,
        (
            f"cannot write {first}: Not a directory",
            f"no config file found: wrote the defaults to {second}",
        ),
    )
    assert second.read_text() == "# default\n"
    assert stat.S_IMODE(second.stat().st_mode) == 0o600


def test_candidate_in_root_is_never_written(tmp_path: Path) -> None:
    in_root = Path("/") / f"dcvix-test-{uuid.uuid4().hex}.conf"
    second = tmp_path / "dcvix-agent.conf"
    try:
        found = discover("agent", None, "# default\n", [in_root, second])
        assert not in_root.exists()
    finally:
        in_root.unlink(missing_ok=True)
    assert found == Discovery(
        second, True, (f"no config file found: wrote the defaults to {second}",)
    )


def test_nothing_writable_starts_with_defaults(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    first = blocker / "a" / "dcvix-director.conf"
    second = blocker / "dcvix-director.conf"
    in_root = Path("/") / f"dcvix-test-{uuid.uuid4().hex}.conf"
    try:
        found = discover("director", None, "# default\n", [first, in_root, second])
        assert not in_root.exists()
    finally:
        in_root.unlink(missing_ok=True)
    assert found == Discovery(
        None,
        False,
        (
            f"cannot write {first}: Not a directory",
            f"cannot write {second}: File exists",
            "no config file found for dcvix-director: starting with defaults",
        ),
    )


def test_written_default_loads(tmp_path: Path) -> None:
    target = tmp_path / "dcvix-agent.conf"
    found = discover("agent", None, default_file_text(AgentConfig, "t"), [target])
    assert found.path == target
    config = load_config(AgentConfig, target)
    assert config == AgentConfig(source=LoadedConfig(target, ()))
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/lib/dcvix-director/agents.db",
        "postgresql://dcvix@db.example.org:5432/dcvix",
        "postgres://dcvix@[2001:db8::5]/dcvix?sslmode=verify-full",
    ],
)
def test_store_urls(url: str) -> None:
    config = parse_config(DirectorConfig, f"[store]\nurl = {url}\n", None)
    assert config.store.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@h/db", "'mysql://u@h/db' is not a sqlite:/// or postgresql:// URL"),
        ("sqlite://host/x.db", "'sqlite://host/x.db': a SQLite store is sqlite:///"),
        ("postgresql://u@h/", "give postgresql://user@host[:port]/database"),
        ("postgresql://u:secret@h/db", "must not hold a password"),
        ("postgresql://u@h/db?sslmode=require&Password=secret", "must not hold a"),
        ("postgresql://u@h/db?sslpassword=secret", "must not hold a password"),
    ],
)
def test_bad_store_urls_are_refused_without_echoing_secrets(
    url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(DirectorConfig, f"[store]\nurl = {url}\n", None)
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9445", "127.0.0.1:9445"),
        ("0.0.0.0:9445", "0.0.0.0:9445"),
        ("[::1]:9446", "[::1]:9446"),
        ("", ""),
    ],
)
def test_a_metrics_listen_address_is_an_ip_and_a_port(text: str, parsed: str) -> None:
    assert LISTEN.parse(text) == parsed


@pytest.mark.parametrize("text", ["127.0.0.1", "localhost:9445", ":9445", "1.2.3.4:0"])
def test_a_metrics_listen_address_without_ip_or_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        LISTEN.parse(text)
