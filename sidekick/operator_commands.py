"""The operator's commands: register, deregister, ls (alias status) and doctor.

Runs on: the main thread (ls asks etcd for the leases' time left on worker threads, in
sidekick.status). The logic lives in sidekick.oneshot, sidekick.status and sidekick.doctor,
imported inside each command so the agent never loads them; these functions only parse
options and turn results into exit codes.
"""

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from sidekick.config import Config, ConfigError
from sidekick.leasefile import DEFAULT_LEASE_FILE, LeaseFile
from sidekick.options import AGENT_ONLY, EXIT_ETCD, fail, make_docker, make_store, with_config
from sidekick.store import Store

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
