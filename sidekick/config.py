"""One frozen Config, read from flags, then SIDEKICK_* variables, then the environment file.

Every problem is a ConfigError whose message names the option (or the variable) at fault,
so the CLI can print it on one line and exit 2.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidekick import templating

DEFAULT_ENVIRONMENT_FILE = Path("/etc/environment")
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_KEY_TEMPLATE = "{prefix}/{service}-{port}"
DEFAULT_VALUE_TEMPLATE = "{ip}:{port}"
TEMPLATE_FIELDS = templating.FIELDS
ADDRESS_MODES = ("host", "container")
# Docker's network names (daemon/names.go: RestrictedNamePattern)
NETWORK_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
DEFAULT_TTL = 30
MIN_TTL = 2  # etcd silently raises anything smaller to 2 s
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9][A-Za-z0-9._-]*)+$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A bad option; the message names it."""


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS files and credentials for etcd. The password never appears in a repr or a log."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DockerTLS:
    """Client TLS for a Docker engine on tcp://."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Config:
    """Everything the commands need, validated."""

    prefix: str = "/test"
    etcd_endpoints: tuple[Endpoint, ...] = (Endpoint("http", "127.0.0.1", 2379),)
    etcd_timeout: float = 5.0
    docker_timeout: float = 10.0
    docker_url: str | None = None
    host_ip: str | None = None
    host_ip_source: str = "none"
    environment_file: Path = DEFAULT_ENVIRONMENT_FILE
    ttl: int = DEFAULT_TTL
    keepalive_interval: float = 10.0
    resync: float = 60.0
    all_containers: bool = False
    filters: tuple[tuple[str, str], ...] = ()
    key_template: str = DEFAULT_KEY_TEMPLATE
    value_template: str = DEFAULT_VALUE_TEMPLATE
    keep_on_exit: bool = False
    address: str = "host"  # host: published ports at the node's address; container: see model
    network: str | None = None  # with address container: the network whose address counts
    node: str = field(default_factory=socket.gethostname)
    log_format: str = "auto"
    log_level: str = "info"
    etcd_security: EtcdSecurity = EtcdSecurity()
    docker_tls: DockerTLS | None = None

    def label_filters(self) -> list[str]:
        """The `--filter label=...` values in Docker's filter syntax."""
        return [value for kind, value in self.filters if kind == "label"]


# option name -> its flag; its variable is env_name(name).
OPTIONS: dict[str, str] = {
    "prefix": "--prefix",
    "etcd_endpoints": "--etcd-endpoints",
    "etcd_timeout": "--etcd-timeout",
    "docker_url": "--docker-url",
    "docker_timeout": "--docker-timeout",
    "host_ip": "--host-ip",
    "environment_file": "--environment-file",
    "ttl": "--ttl",
    "keepalive_interval": "--keepalive-interval",
    "resync": "--resync",
    "all_containers": "--all",
    "filters": "--filter",
    "key_template": "--key-template",
    "value_template": "--value-template",
    "keep_on_exit": "--keep-on-exit",
    "address": "--address",
    "network": "--network",
    "node": "--node",
    "log_format": "--log-format",
    "log_level": "--log-level",
    "etcd_ca": "--etcd-ca",
    "etcd_cert": "--etcd-cert",
    "etcd_key": "--etcd-key",
    "etcd_user": "--etcd-user",
    "etcd_password_file": "--etcd-password-file",
    "docker_tls_ca": "--docker-tls-ca",
    "docker_tls_cert": "--docker-tls-cert",
    "docker_tls_key": "--docker-tls-key",
}


def env_name(name: str) -> str:
    """The SIDEKICK_* variable for an option."""
    return "SIDEKICK_" + ("ALL" if name == "all_containers" else name.upper())


def read_environment_file(path: Path) -> dict[str, str]:
    """Parse a systemd-style EnvironmentFile (KEY=VALUE lines, # comments, optional quotes)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class _Sources:
    """Looks an option up in flags, then the process environment, then the environment file."""

    def __init__(
        self, flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, str]
    ):
        self.flags = flags
        self.environ = environ
        self.file_values = file_values

    def get(self, name: str) -> tuple[Any, str] | None:
        value = self.flags.get(name)
        if value is not None and value not in ((), []):
            return value, OPTIONS[name]
        var = env_name(name)
        if self.environ.get(var, "") != "":
            return self.environ[var], var
        if self.file_values.get(var, "") != "":
            return self.file_values[var], f"{var} (environment file)"
        return None


def load_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config: flags first, then SIDEKICK_* variables, then the environment file."""
    environ = os.environ if environ is None else environ
    flag_file = flags.get("environment_file")
    if flag_file is not None:
        env_file, env_file_source = Path(flag_file), "--environment-file"
    elif environ.get("SIDEKICK_ENVIRONMENT_FILE"):
        env_file, env_file_source = (
            Path(environ["SIDEKICK_ENVIRONMENT_FILE"]),
            "SIDEKICK_ENVIRONMENT_FILE",
        )
    else:
        env_file, env_file_source = DEFAULT_ENVIRONMENT_FILE, ""
    file_values: dict[str, str] = {}
    if env_file.is_file():
        try:
            file_values = read_environment_file(env_file)
        except OSError as exc:
            raise ConfigError(
                f"{env_file_source or '--environment-file'}: cannot read {env_file}: {exc.strerror}"
            ) from exc
    elif env_file_source:
        raise ConfigError(f"{env_file_source}: {env_file} does not exist")

    src = _Sources(flags, environ, file_values)
    values: dict[str, Any] = {"environment_file": env_file}

    def text(name: str) -> tuple[str, str] | None:
        found = src.get(name)
        return None if found is None else (str(found[0]), found[1])

    if (found := text("prefix")) is not None:
        values["prefix"] = _parse_prefix(*found)
    if (found := src.get("etcd_endpoints")) is not None:
        values["etcd_endpoints"] = _parse_endpoints(found[0], found[1])
    if (found := text("docker_url")) is not None:
        values["docker_url"] = found[0]
    elif environ.get("DOCKER_HOST"):
        values["docker_url"] = environ["DOCKER_HOST"]
    ttl = DEFAULT_TTL
    if (found := text("ttl")) is not None:
        ttl = _parse_number(*found, kind=int, minimum=MIN_TTL)
    values["ttl"] = ttl
    keepalive = ttl / 3
    if (found := text("keepalive_interval")) is not None:
        keepalive = _parse_number(*found, kind=float, minimum=0.1)
        if keepalive >= ttl:
            raise ConfigError(
                f"{found[1]}: must be shorter than --ttl ({ttl} s), got {keepalive:g}"
            )
    values["keepalive_interval"] = keepalive
    timeout = min(5.0, (ttl - keepalive) / 2)
    if (found := text("etcd_timeout")) is not None:
        timeout = _parse_number(*found, kind=float, minimum=0.05)
        if keepalive + 2 * timeout > ttl:
            raise ConfigError(
                f"{found[1]}: keepalive interval ({keepalive:g} s) + 2 x etcd timeout "
                f"({timeout:g} s) must fit in --ttl ({ttl} s)"
            )
    values["etcd_timeout"] = timeout
    if (found := text("resync")) is not None:
        values["resync"] = _parse_number(*found, kind=float, minimum=1.0)
    if (found := text("docker_timeout")) is not None:
        docker_timeout = _parse_number(*found, kind=float, minimum=0.5)
        resync = values.get("resync", Config.resync)
        if docker_timeout >= resync:
            raise ConfigError(
                f"{found[1]}: a Docker request may wait at most {docker_timeout:g} s, which must "
                f"be shorter than --resync ({resync:g} s)"
            )
        values["docker_timeout"] = docker_timeout
    for name in ("all_containers", "keep_on_exit"):
        if (found := src.get(name)) is not None:
            values[name] = _parse_bool(*found)
    if (found := src.get("filters")) is not None:
        values["filters"] = _parse_filters(*found)
    for name, required in (("key_template", "{prefix}/"), ("value_template", "")):
        if (found := text(name)) is not None:
            values[name] = _parse_template(*found, required_start=required)
    if (found := text("address")) is not None:
        if found[0].strip().lower() not in ADDRESS_MODES:
            raise ConfigError(f"{found[1]}: must be host or container, got {found[0]!r}")
        values["address"] = found[0].strip().lower()
    if (found := text("network")) is not None:
        if not NETWORK_RE.fullmatch(found[0]):
            raise ConfigError(
                f"{found[1]}: not a Docker network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*), "
                f"got {found[0]!r}"
            )
        values["network"] = found[0]
    if (found := text("node")) is not None:
        if not _NODE_RE.fullmatch(found[0]):
            raise ConfigError(
                f"{found[1]}: must match [A-Za-z0-9][A-Za-z0-9._-]*, got {found[0]!r}"
            )
        values["node"] = found[0]
    for name, choices in (("log_format", LOG_FORMATS), ("log_level", LOG_LEVELS)):
        if (found := text(name)) is not None:
            choice = found[0].lower()
            if choice not in choices:
                raise ConfigError(
                    f"{found[1]}: must be one of {', '.join(choices)}, got {found[0]!r}"
                )
            values[name] = choice

    host_ip = _find_host_ip(src, environ, file_values)
    if host_ip is not None:
        values["host_ip"], values["host_ip_source"] = host_ip
    values["etcd_security"] = _etcd_security(src, environ, file_values)
    values["docker_tls"] = _docker_tls(src, environ, values.get("docker_url"))
    return Config(**values)


def _readable(src: _Sources, name: str) -> Path | None:
    found = src.get(name)
    if found is None:
        return None
    path = Path(str(found[0]))
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"{found[1]}: cannot read {path}")
    return path


def _cert_pair(src: _Sources, cert: str, key: str) -> tuple[Path | None, Path | None]:
    pair = (_readable(src, cert), _readable(src, key))
    if (pair[0] is None) != (pair[1] is None):
        raise ConfigError(f"{OPTIONS[cert]}: needs {OPTIONS[key]} too (and the other way round)")
    return pair


def _etcd_security(
    src: _Sources, environ: Mapping[str, str], file_values: Mapping[str, str]
) -> EtcdSecurity:
    cert, key = _cert_pair(src, "etcd_cert", "etcd_key")
    user = src.get("etcd_user")
    password_file = _readable(src, "etcd_password_file")
    password = None
    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    elif environ.get("SIDEKICK_ETCD_PASSWORD") or file_values.get("SIDEKICK_ETCD_PASSWORD"):
        password = environ.get("SIDEKICK_ETCD_PASSWORD") or file_values["SIDEKICK_ETCD_PASSWORD"]
    if user is not None and not password:
        raise ConfigError(
            f"{user[1]}: needs a password from --etcd-password-file or SIDEKICK_ETCD_PASSWORD"
        )
    if user is None and password:
        raise ConfigError("--etcd-user: a password is set but no user")
    return EtcdSecurity(
        ca=_readable(src, "etcd_ca"),
        cert=cert,
        key=key,
        user=None if user is None else str(user[0]),
        password=password,
    )


def _docker_tls(
    src: _Sources, environ: Mapping[str, str], docker_url: str | None
) -> DockerTLS | None:
    """--docker-tls-*; else DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem) with DOCKER_TLS_VERIFY."""
    cert, key = _cert_pair(src, "docker_tls_cert", "docker_tls_key")
    ca = _readable(src, "docker_tls_ca")
    if ca is None and cert is None and environ.get("DOCKER_CERT_PATH"):
        base = Path(environ["DOCKER_CERT_PATH"])
        if environ.get("DOCKER_TLS_VERIFY", "") not in {"", "0"}:
            ca = base / "ca.pem"
        cert, key = base / "cert.pem", base / "key.pem"
        for path in (p for p in (ca, cert, key) if p is not None):
            if not path.is_file():
                raise ConfigError(f"DOCKER_CERT_PATH: {path} does not exist")
    if ca is None and cert is None:
        return None
    if docker_url is None or not docker_url.startswith(("tcp://", "https://")):
        raise ConfigError("--docker-tls-ca: TLS needs --docker-url tcp://HOST:PORT")
    return DockerTLS(ca=ca, cert=cert, key=key)


def require_host_ip(config: Config) -> str:
    """The node's address, or a ConfigError saying where it is looked for."""
    if config.host_ip is None:
        raise ConfigError(
            "--host-ip: no host IP: pass --host-ip, set SIDEKICK_HOST_IP, or set "
            f"COREOS_PRIVATE_IPV4 in the environment or in {config.environment_file} "
            "(sidekick never guesses 127.0.0.1 or a docker0 address)"
        )
    return config.host_ip


def _find_host_ip(
    src: _Sources, environ: Mapping[str, str], file_values: Mapping[str, str]
) -> tuple[str, str] | None:
    found = src.get("host_ip")
    if found is None:
        if environ.get("COREOS_PRIVATE_IPV4"):
            found = (environ["COREOS_PRIVATE_IPV4"], "COREOS_PRIVATE_IPV4")
        elif file_values.get("COREOS_PRIVATE_IPV4"):
            found = (file_values["COREOS_PRIVATE_IPV4"], "COREOS_PRIVATE_IPV4 (environment file)")
    if found is None:
        return None
    value, source = str(found[0]).strip(), found[1]
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        raise ConfigError(f"{source}: not an IP address: {value!r}") from None
    if unreachable(address):
        raise ConfigError(f"{source}: {value} is not an address other nodes can reach")
    return str(address), source


def unreachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Unspecified (0.0.0.0, ::) or scoped (fe80::1%eth0): no other node can reach it."""
    return address.is_unspecified or "%" in str(address)


def parse_address(value: str, source: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) to listen on."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 < number < 65536:
        raise ConfigError(f"{source}: expected HOST:PORT like 127.0.0.1:9476, got {value!r}")
    return host, number


def _parse_prefix(value: str, source: str) -> str:
    prefix = value.rstrip("/") if value != "/" else value
    if not _PREFIX_RE.fullmatch(prefix) or any(part in {".", ".."} for part in prefix.split("/")):
        raise ConfigError(
            f"{source}: must be an absolute key path like /test "
            f"(segments of [A-Za-z0-9._-], no . or ..), got {value!r}"
        )
    return prefix


def _parse_endpoints(value: Any, source: str) -> tuple[Endpoint, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    urls = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not urls:
        raise ConfigError(f"{source}: no endpoint given")
    endpoints = []
    for url in urls:
        parts = urlsplit(url)
        try:
            port = 2379 if parts.port is None else parts.port
        except ValueError:
            raise ConfigError(f"{source}: bad port in {url!r}") from None
        if port == 0:
            raise ConfigError(f"{source}: bad port in {url!r}")
        if (
            parts.scheme not in {"http", "https"}
            or not parts.hostname
            or parts.path not in {"", "/"}
        ):
            raise ConfigError(
                f"{source}: {url!r} is not an etcd client URL like http://127.0.0.1:2379"
            )
        endpoints.append(Endpoint(parts.scheme, parts.hostname, port))
    return tuple(endpoints)


def _parse_number(value: str, source: str, *, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: not a number: {value!r}") from None
    if math.isnan(number) or math.isinf(number) or number < minimum:
        raise ConfigError(f"{source}: must be at least {minimum:g}, got {value}")
    return number


def _parse_bool(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{source}: not a boolean (true/false): {value!r}")


def _parse_filters(value: Any, source: str) -> tuple[tuple[str, str], ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    filters = []
    for item in items:
        kind, sep, rest = str(item).strip().partition("=")
        if kind != "label" or not sep or not rest or rest.startswith("="):
            raise ConfigError(f"{source}: expected label=KEY or label=KEY=VALUE, got {item!r}")
        filters.append((kind, rest))
    return tuple(filters)


def _parse_template(value: str, source: str, *, required_start: str) -> str:
    try:
        templating.parse(value, allow_json=not required_start)
    except templating.TemplateError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not value.startswith(required_start):
        raise ConfigError(
            f"{source}: must start with {required_start!r} so keys stay under the prefix"
        )
    return value
