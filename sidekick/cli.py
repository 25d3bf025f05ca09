"""The command line: parse options, build objects, map errors to exit codes.

Exit codes: 0 done, 1 nothing to do, 2 bad usage or configuration (etcd refusing the agent's
credentials, role or certificate at start-up included), 3 etcd unreachable, 4 the agent gave up
(a part of it kept dying; its lease is kept so a restarted agent resumes it).
"""

import functools
import inspect
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, overload

import structlog
import typer
from prometheus_client import CollectorRegistry

from sidekick import __version__, hostaddr, logs
from sidekick.agent import Agent, ConfigurationRefused
from sidekick.config import (
    Config,
    ConfigError,
    env_name,
    load_config,
    parse_address,
    require_host_ip,
)
from sidekick.docker_source import DockerSource
from sidekick.leasefile import DEFAULT_LEASE_FILE, LeaseFile, LeaseFileBusy
from sidekick.metrics import MetricsServer
from sidekick.store import DryRunStore, Store
from sidekick.supervise import AgentFailed
from sidekick.systemd import Notifier

EXIT_NOTHING, EXIT_USAGE, EXIT_ETCD, EXIT_FAILED = 1, 2, 3, 4

app = typer.Typer(
    name="sidekick",
    help="Announce this node's Docker containers in etcd (v3), on a lease kept alive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def _version_callback(value: bool) -> None:
    if value:
        print(f"sidekick {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Announce Docker containers in etcd, the way confd and nginx expect them."""


@app.command()
def version() -> None:
    """Print the version."""
    print(f"sidekick {__version__}")


@app.command()
@with_config
def run(
    config: Config,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="SIDEKICK_METRICS_ADDRESS",
            help="Serve Prometheus /metrics and /healthz on HOST:PORT, e.g. 127.0.0.1:9476.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every write and delete; make none.")
    ] = False,
    lease_file: Annotated[
        Path,
        typer.Option(
            "--lease-file",
            envvar="SIDEKICK_LEASE_FILE",
            help="Where the lease id is kept, so a restarted agent resumes its lease. "
            "One file per agent; '' disables.",
        ),
    ] = DEFAULT_LEASE_FILE,
    force_host_ip: Annotated[
        bool,
        typer.Option(
            "--force-host-ip",
            envvar="SIDEKICK_FORCE_HOST_IP",
            help="Announce a loopback or bridge host IP all the same (a one-node test).",
        ),
    ] = False,
) -> None:
    """Run the agent: follow Docker events and keep etcd right until SIGTERM."""
    try:
        # with container addresses the node's own is needed only for containers that say
        # otherwise (label sidekick.address=host, --net host): they are skipped saying so
        ip = None if config.address == "container" else require_host_ip(config)
        address = parse_address(metrics_address, "--metrics-address") if metrics_address else None
    except ConfigError as exc:
        fail(str(exc))
    ip = ip or config.host_ip
    verdict = None if ip is None else hostaddr.judge(ip, hostaddr.local_addresses())
    if verdict is not None and verdict.refuse and not force_host_ip:
        fail(f"{verdict.text} (from {config.host_ip_source}; --force-host-ip to use it anyway)")
    store = (
        DryRunStore(config.etcd_endpoints, config.etcd_timeout, sys.stdout, config.etcd_security)
        if dry_run
        else make_store(config)
    )
    lease_store = LeaseFile(None if dry_run or str(lease_file) in {"", "."} else lease_file)
    try:
        lease_store.lock()
    except LeaseFileBusy as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--lease-file: cannot open {lease_file}: {exc.strerror}")
    if verdict is not None:  # forced, or only doubtful: said once, in the log
        structlog.get_logger("sidekick").warning(verdict.text, source=config.host_ip_source)
    agent = Agent(config, store, make_docker(config), notifier=Notifier(), lease_file=lease_store)
    server = None
    if address is not None:
        try:
            server = MetricsServer(address, agent.metrics.registry, agent.health)
        except OSError as exc:
            fail(f"--metrics-address: cannot listen on {metrics_address}: {exc.strerror}")
        server.start()

    # Handlers only hand the signal to the loop (a flag and a reentrant queue): no lock is
    # taken inside a handler. SIGTERM/SIGINT stop (the lease is revoked unless --keep-on-exit);
    # SIGHUP asks for a reconcile now, as daemons reread on HUP.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: agent.request_stop())
    signal.signal(signal.SIGINT, lambda _signum, _frame: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda _signum, _frame: agent.request_resync())
    # SIGUSR1 (systemd's RestartKillSignal in the shipped units): exit keeping the lease, so
    # `systemctl restart` (an upgrade) keeps every key; the next agent resumes the lease.
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: agent.request_restart())
    try:
        agent.run()
    except ConfigurationRefused as exc:
        fail(str(exc))
    except AgentFailed as exc:
        fail(str(exc), EXIT_FAILED)
    finally:
        if server is not None:
            server.stop()


def _health_server(
    metrics_address: str | None,
    health: Callable[[], tuple[bool, str]],
    registry: CollectorRegistry,
) -> MetricsServer | None:
    """/healthz and /metrics on --metrics-address, started; None without one."""
    if metrics_address is None:
        return None
    try:
        address = parse_address(metrics_address, "--metrics-address")
        server = MetricsServer(address, registry, health)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--metrics-address: cannot listen on {metrics_address}: {exc.strerror}")
    server.start()
    return server


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


# -- operator commands: register, deregister, ls (status), doctor ---------------------------
# The logic lives in sidekick.oneshot, sidekick.status and sidekick.doctor; these functions
# only parse options and turn results into exit codes.

ContainerNames = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="CONTAINER",
        help="Container names or ids. (default: every opted-in container on this node)",
        show_default=False,
    ),
]
ServiceOption = Annotated[
    str | None,
    typer.Option("--service", help="A backend that is not a container: its service name."),
]
PortOption = Annotated[
    int | None, typer.Option("--port", help="With --service: the port it listens on.")
]
IpOption = Annotated[
    str | None,
    typer.Option("--ip", help="With --service: its address. (default: the host IP)"),
]


def _explicit_ttl(ctx: typer.Context) -> int | None:
    """--ttl exactly as typed on this command line: SIDEKICK_TTL is the agent's, not register's."""
    value = ctx.params.get("ttl")
    return None if value is None else int(value)


@app.command("register")
@with_config(
    without=AGENT_ONLY,
    helps={
        "ttl": "Put the keys on a lease of this many seconds (at least 2). "
        "(default: none: plain keys)"
    },
)
def register_command(
    config: Config,
    ctx: typer.Context,
    *,
    containers: ContainerNames = None,
    service: ServiceOption = None,
    port: PortOption = None,
    ip: IpOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every write it would make; make none.")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="Seconds to wait for named containers to exist, run and be healthy.",
        ),
    ] = 10.0,
) -> None:
    """Announce containers (or --service/--port) once, as plain keys; with --ttl N, on a lease.

    For unit files on a node without an agent (the agent announces by label):
    ExecStartPost=/usr/local/bin/sidekick register apache-%i

    Never overwrites a key that holds another value; a key with the same value is left as it is.

    Exit codes: 0 registered or already announced, 1 nothing registered or a key refused,
    2 bad usage, 3 etcd unreachable.
    """
    from sidekick import oneshot  # noqa: PLC0415

    if wait < 0:
        fail(f"--wait: must be at least 0, got {wait:g}")
    code = oneshot.register(
        oneshot.Target(tuple(containers or ()), service, port, ip),
        config,
        make_store(config),
        lambda: make_docker(config),
        oneshot.Report(sys.stdout, sys.stderr),
        lease_ttl=_explicit_ttl(ctx),
        dry_run=dry_run,
        wait=wait,
    )
    raise typer.Exit(code)


@app.command("deregister")
@with_config(without=AGENT_ONLY | {"ttl"})
def deregister_command(
    config: Config,
    *,
    containers: ContainerNames = None,
    service: ServiceOption = None,
    port: PortOption = None,
    ip: IpOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every delete it would make; make none.")
    ] = False,
) -> None:
    """Withdraw containers (or --service/--port) once: the inverse of register, for ExecStop=.

    Deletes a key only while it holds this node's announcement; any other value is refused.

    Exit codes: 0 deleted or not there, 1 nothing to deregister or a key refused,
    2 bad usage, 3 etcd unreachable.
    """
    from sidekick import oneshot  # noqa: PLC0415

    code = oneshot.deregister(
        oneshot.Target(tuple(containers or ()), service, port, ip),
        config,
        make_store(config),
        lambda: make_docker(config),
        oneshot.Report(sys.stdout, sys.stderr),
        dry_run=dry_run,
    )
    raise typer.Exit(code)


@with_config(without=AGENT_ONLY | {"ttl"})
def ls_command(
    config: Config,
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for scripts.")
    ] = False,
    this_node: Annotated[
        bool,
        typer.Option(
            "--this-node",
            help="Only this node's keys, read as the agent reads them (the keys on its lease "
            "and those its containers want), never the whole prefix.",
        ),
    ] = False,
    by_node: Annotated[
        str | None,
        typer.Option(
            "--by-node",
            metavar="NAME",
            help="Only the keys of node NAME (the key template needs {node}).",
            show_default=False,
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            metavar="NAME",
            help="Only the keys of service NAME (the key template needs {service}).",
            show_default=False,
        ),
    ] = None,
    lease_file: Annotated[
        Path,
        typer.Option(
            "--lease-file",
            envvar="SIDEKICK_LEASE_FILE",
            help="With --this-node: the agent's lease file, whose lease's keys are shown.",
        ),
    ] = DEFAULT_LEASE_FILE,
) -> None:
    """List the keys under the prefix: value, owner (lease and node, or plain), TTL, container;
    then one summary line (keys, owners, nodes)."""
    from sidekick import oneshot, status  # noqa: PLC0415
    from sidekick.store import EtcdError  # noqa: PLC0415

    try:
        selection = status.check_selection(status.Selection(this_node, by_node, service), config)
    except ConfigError as exc:
        fail(str(exc))
    report = oneshot.Report(sys.stdout, sys.stderr)
    try:
        rows = status.collect(
            config,
            make_store(config),
            make_docker(config),
            report.warning,
            selection=selection,
            lease_file=LeaseFile(None if str(lease_file) in {"", "."} else lease_file),
        )
    except EtcdError as exc:
        fail(oneshot.etcd_message(exc), EXIT_ETCD)
    if as_json:
        print(status.render_json(rows, config))
    elif rows:
        print(status.render_table(rows, color=status.use_color(sys.stdout)))
        print(status.summarize(rows).line())
    else:
        where = f"{config.prefix}/{status.describe(selection)}"
        print(f"sidekick: no keys under {where}", file=sys.stderr)


app.command("ls")(ls_command)
app.command("status", help="Alias of ls.")(ls_command)


@app.command("doctor")
@with_config(
    without=AGENT_ONLY,
    helps={"ttl": "TTL of the test lease doctor grants and revokes (at least 2). (default: 30)"},
)
def doctor_command(
    config: Config,
    lease_file: Annotated[
        Path,
        typer.Option(
            "--lease-file",
            envvar="SIDEKICK_LEASE_FILE",
            help="The agent's lease file, to say whether its lease is alive.",
        ),
    ] = DEFAULT_LEASE_FILE,
) -> None:
    """Check what the agent needs, one line each: exit 0 when all hold, 1 otherwise."""
    from sidekick import doctor, status  # noqa: PLC0415

    color, unicode = status.use_color(sys.stdout), doctor.can_encode(sys.stdout)
    checks = []
    store_for = functools.partial(Store, timeout=config.etcd_timeout, security=config.etcd_security)
    for check in doctor.run_checks(config, make_docker(config), store_for, lease_file):
        checks.append(check)
        print(doctor.render(check, color=color, unicode=unicode), flush=True)
    raise typer.Exit(doctor.exit_code(checks))


def main() -> None:
    """Console-script entry point: a usage error (a misspelt flag or command) is one line on
    stderr, with click's suggestion in it, and exit 2, like every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # click's UsageError; typer vendors click in newer releases, so match it by name
        if not any(kind.__name__ == "UsageError" for kind in type(exc).__mro__):
            raise
        ctx = getattr(exc, "ctx", None)
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        if type(exc).__name__ != "NoArgsIsHelpError":  # `sidekick` alone: the help was shown
            where = ctx.command_path if ctx is not None else "sidekick"
            print(f"sidekick: error: {message} (see '{where} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)


# -- render: confd's job for the load balancer ------------------------------------------------


def _option_name(ctx: typer.Context, param: str, flag: str, envvar: str) -> str:
    """The flag, or the variable when the value came from the environment (for error lines)."""
    source = ctx.get_parameter_source(param)
    return envvar if source is not None and source.name == "ENVIRONMENT" else flag


@app.command()
@with_config(
    without=AGENT_ONLY
    | {"ttl", "host_ip", "all_containers", "filters", "key_template", "value_template", "node"}
    | {"address", "network"}
)
def render(
    config: Config,
    ctx: typer.Context,
    *,
    dest: Annotated[
        Path, typer.Option("--dest", help="The file to write, e.g. /etc/nginx/nginx.conf.")
    ],
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            help="Jinja2 template. (default: the shipped nginx template for upstream backend)",
            show_default=False,
        ),
    ] = None,
    variables: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A template variable NAME=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    check_cmd: Annotated[
        str | None,
        typer.Option(
            "--check-cmd",
            help="Shell command run on the new file, named {src}, before it goes live "
            "(e.g. 'nginx -t -c {src}').",
            show_default=False,
        ),
    ] = None,
    reload_cmd: Annotated[
        str | None,
        typer.Option(
            "--reload-cmd", help="Shell command run after a new file went live.", show_default=False
        ),
    ] = None,
    reload_signal: Annotated[
        str | None,
        typer.Option(
            "--reload-signal",
            help="Signal (e.g. HUP) sent to --reload-container.",
            show_default=False,
        ),
    ] = None,
    reload_container: Annotated[
        str | None,
        typer.Option(
            "--reload-container",
            help="Container that gets --reload-signal through the Docker API.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="Octal mode of the file.")] = "0644",
    watch_timeout: Annotated[
        float,
        typer.Option(
            "--watch-timeout",
            help="Seconds of silence after which the watch is opened again from the last revision.",
        ),
    ] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Render once and exit.")] = False,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="SIDEKICK_RENDER_METRICS_ADDRESS",
            help="Serve Prometheus /metrics and /healthz (503 while the check or the reload "
            "fails) on HOST:PORT.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            envvar="SIDEKICK_RENDER_WAIT",
            metavar="MIN[:MAX]",
            help="Render once no change came for MIN seconds, holding none longer than MAX "
            "(default 4 x MIN); 0 renders at once. (default: 0.05)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Render a template from the values under --prefix each time they change (like confd)."""
    from sidekick import render as rendering  # noqa: PLC0415 - jinja2 only for this command
    from sidekick.store import EtcdError, EtcdUnavailable  # noqa: PLC0415

    try:
        options = rendering.make_options(
            dest=dest,
            template=template,
            variables=variables or [],
            check_cmd=check_cmd,
            reload_cmd=reload_cmd,
            reload_signal=reload_signal,
            reload_container=reload_container,
            mode=mode,
            watch_timeout=watch_timeout,
            once=once,
            wait=rendering.DEFAULT_WAIT if wait is None else wait,
            wait_name=_option_name(ctx, "wait", "--wait", "SIDEKICK_RENDER_WAIT"),
        )
        renderer = rendering.Renderer(
            options,
            config.prefix,
            rendering.EtcdWatcher(make_store(config)),
            docker_url=config.docker_url,
        )
    except ConfigError as exc:
        fail(str(exc))
    if not once:
        server = _health_server(metrics_address, renderer.health, renderer.metrics.registry)
        try:
            renderer.run()
        finally:
            if server is not None:
                server.stop()
        return
    try:
        live = renderer.once()
    except EtcdUnavailable as exc:
        fail(str(exc), EXIT_ETCD)
    except (EtcdError, rendering.RenderError) as exc:
        fail(str(exc), EXIT_NOTHING)
    if not live:
        fail(f"{dest} was not replaced: the new file was refused (see the log)", EXIT_NOTHING)
