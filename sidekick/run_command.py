"""`sidekick run`: the agent's wiring. Builds its parts from the Config (the store, the Docker
source, the lease file, the metrics and health server), hands it the signals, runs it and
turns its end into an exit code.

Runs on: the main thread, which then runs the agent's loop (agent.run()); the signal handlers
run there too, between two bytecodes. The metrics server answers on threads of its own.
"""

import signal
import sys
from pathlib import Path
from typing import Annotated

import structlog
import typer

from sidekick import hostaddr
from sidekick.agent import Agent, ConfigurationRefused
from sidekick.config import Config, ConfigError, parse_address, require_host_ip
from sidekick.leasefile import DEFAULT_LEASE_FILE, LeaseFile, LeaseFileBusy
from sidekick.metrics import MetricsServer
from sidekick.options import EXIT_FAILED, fail, make_docker, make_store, with_config
from sidekick.store import DryRunStore
from sidekick.supervise import AgentFailed
from sidekick.systemd import Notifier


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
