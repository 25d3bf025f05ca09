"""The options every command shares, turned into one Config; the adapters built from it;
`fail` and the exit codes (listed in sidekick.cli).

Runs on: the main thread, while a command starts.
"""

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, overload

import typer

from sidekick import logs
from sidekick.config import Config, ConfigError, env_name, load_config
from sidekick.docker_source import DockerSource
from sidekick.store import Store

EXIT_NOTHING, EXIT_USAGE, EXIT_ETCD, EXIT_FAILED = 1, 2, 3, 4


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr, then exit."""
    print(f"sidekick: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


# The options every command shares: (name, flag, type, help). Defaults live in config.Config.
SHARED_OPTIONS: list[tuple[str, str, Any, str]] = [
    (
        "etcd_endpoints",
        "--etcd-endpoints",
        str,
        "Comma-separated etcd client URLs. (default: http://127.0.0.1:2379)",
    ),
    ("prefix", "--prefix", str, "Key prefix the registrations live under. (default: /test)"),
    (
        "host_ip",
        "--host-ip",
        str,
        "This node's address, for ports published on 0.0.0.0 or ::. (default: COREOS_PRIVATE_IPV4)",
    ),
    (
        "environment_file",
        "--environment-file",
        Path,
        "KEY=VALUE file read for SIDEKICK_* and COREOS_PRIVATE_IPV4. (default: /etc/environment)",
    ),
    (
        "docker_url",
        "--docker-url",
        str,
        "Docker engine URL. (default: DOCKER_HOST, else the local socket)",
    ),
    (
        "all_containers",
        "--all",
        bool,
        "Announce every container with a published TCP port unless it has sidekick.enable=false.",
    ),
    ("filters", "--filter", list[str], "Only containers matching label=KEY[=VALUE] (repeatable)."),
    (
        "address",
        "--address",
        str,
        "host: published ports at the node's address; container: the container's own IP and "
        "port on --network (label sidekick.address overrides). (default: host)",
    ),
    (
        "network",
        "--network",
        str,
        "With --address container: the network whose address is announced (label "
        "sidekick.network overrides; needed for containers on several networks).",
    ),
    (
        "key_template",
        "--key-template",
        str,
        "Key layout; also {proto}, {label:NAME}. (default: {prefix}/{service}-{port})",
    ),
    (
        "value_template",
        "--value-template",
        str,
        "Value layout; also {label:NAME}, {json:NAME,...}. (default: {ip}:{port})",
    ),
    ("node", "--node", str, "This node's name, for {node}. (default: the hostname)"),
    (
        "ttl",
        "--ttl",
        int,
        "Lease TTL in seconds (at least 2). (default: 30)",
    ),
    (
        "keepalive_interval",
        "--keepalive-interval",
        float,
        "Seconds between keepalives. (default: ttl/3)",
    ),
    (
        "etcd_timeout",
        "--etcd-timeout",
        float,
        "Seconds before an etcd request fails. (default: min(5, ttl/3))",
    ),
    ("resync", "--resync", float, "Seconds between full reconciles. (default: 60)"),
    (
        "keep_on_exit",
        "--keep-on-exit",
        bool,
        "On shutdown leave the keys to expire with the lease instead of revoking it.",
    ),
    (
        "log_format",
        "--log-format",
        str,
        "auto, console or json. (default: auto: console on a terminal)",
    ),
    ("log_level", "--log-level", str, "debug, info, warning or error. (default: info)"),
    ("etcd_ca", "--etcd-ca", Path, "CA file that etcd's server certificate must chain to."),
    ("etcd_cert", "--etcd-cert", Path, "Client certificate for etcd (with --etcd-key)."),
    ("etcd_key", "--etcd-key", Path, "Client key for etcd (with --etcd-cert)."),
    (
        "etcd_user",
        "--etcd-user",
        str,
        "etcd user; the password comes from a file or the environment.",
    ),
    (
        "etcd_password_file",
        "--etcd-password-file",
        Path,
        "File holding the etcd password (or set SIDEKICK_ETCD_PASSWORD; never a flag value).",
    ),
    (
        "docker_timeout",
        "--docker-timeout",
        float,
        "Seconds before a Docker request fails; the lease never waits on it. (default: 10)",
    ),
    ("docker_tls_ca", "--docker-tls-ca", Path, "CA for a Docker engine on tcp:// with TLS."),
    ("docker_tls_cert", "--docker-tls-cert", Path, "Client certificate for the Docker engine."),
    ("docker_tls_key", "--docker-tls-key", Path, "Client key for the Docker engine."),
]


AGENT_ONLY = frozenset({"keepalive_interval", "resync", "keep_on_exit"})


Command = Callable[..., Any]


@overload
def with_config(command: Command) -> Command: ...


@overload
def with_config(
    *, without: frozenset[str] = frozenset(), helps: dict[str, str] | None = None
) -> Callable[[Command], Command]: ...


def with_config(
    command: Command | None = None,
    *,
    without: frozenset[str] = frozenset(),
    helps: dict[str, str] | None = None,
) -> Command | Callable[[Command], Command]:
    """Add the shared options, but those in `without`, to a command, which receives them as
    `config: Config`. `helps` replaces an option's help text for this command. Each help names
    the option's SIDEKICK_* variable."""
    if command is None:
        return functools.partial(with_config, without=without, helps=helps)
    used = [option for option in SHARED_OPTIONS if option[0] not in without]
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "config"]
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                kind | None,
                typer.Option(
                    flag,
                    help=f"{(helps or {}).get(name, text)} (env: {env_name(name)})",
                    show_default=False,
                ),
            ],
        )
        for name, flag, kind, text in used
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name, *_ in used}
        try:
            config = load_config(flags)
        except ConfigError as exc:
            fail(str(exc))
        logs.configure(config.log_format, config.log_level)
        return command(config=config, **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return wrapper


def make_store(config: Config) -> Store:
    return Store(config.etcd_endpoints, config.etcd_timeout, config.etcd_security)


def make_docker(config: Config) -> DockerSource:
    return DockerSource(
        config.docker_url,
        timeout=config.docker_timeout,
        label_filters=config.label_filters(),
        opted_in_only=not config.all_containers,
        tls=config.docker_tls,
    )
