"""The agent: wires the parts together, starts and stops them, and says how they are.

Runs on: the main thread (run(), then the loop, sidekick.loop); health() and status() also on
the metrics server's and the lease thread's threads (they only read). Around the loop run the
lease keeper (sidekick.lease, its own thread: no Docker call can delay a keepalive), the Docker
events reader (sidekick.intake) and the look-ahead's helpers (sidekick.lookahead), watched by
sidekick.supervise: a helper that dies is restarted; if they keep dying the agent gives up with
the lease kept.
"""

from __future__ import annotations

import threading
import time

import structlog

from sidekick.config import Config
from sidekick.docker_source import DockerSource
from sidekick.health import Facts, problems
from sidekick.intake import NEW_LEASE, RESYNC, STOP, EventReader
from sidekick.lease import LeaseKeeper
from sidekick.leasefile import LeaseFile
from sidekick.lookahead import LookAhead
from sidekick.lookup import Lookup
from sidekick.loop import Loop, Parts
from sidekick.metrics import Metrics
from sidekick.reconcile import ConfigurationRefused
from sidekick.retry import Outages, Wait, backoff
from sidekick.store import EtcdError, Store
from sidekick.supervise import AgentFailed, Part, Supervisor
from sidekick.sync import Sync
from sidekick.systemd import Notifier

__all__ = ["Agent", "AgentFailed", "ConfigurationRefused"]


SHUTDOWN_TURN_WAIT = 1.0  # seconds the exit waits for an event the reader is handling


class Agent:
    """Keeps etcd equal to the registrations of this node's running, opted-in containers."""

    def __init__(  # noqa: PLR0917 - collaborators, each with a default but the first three
        self,
        config: Config,
        store: Store,
        docker: DockerSource,
        retry_wait: Wait | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        lease_file: LeaseFile | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.docker = docker
        self.metrics = metrics or Metrics()
        store.timed = self.metrics.etcd_request  # before the clones below: they time theirs too
        docker.timed = self.metrics.docker_request
        self.notifier = notifier or Notifier({})
        self.lease_file = lease_file or LeaseFile(None)
        self.log = structlog.get_logger("sidekick")
        self.outages = Outages(self.log)  # each outage logged once, by whoever meets it first
        self.keeper = LeaseKeeper(
            config,
            store.clone(),  # a connection of its own: never behind the loop's requests
            self.lease_file,
            self.metrics,
            self.log,
            on_new_lease=self._on_new_lease,
            notifier=self.notifier,
            status=self.status,
            loop_alive=self.loop_alive,
            outages=self.outages,
        )
        self.sync = Sync(
            config, store, self.metrics, self.log, lambda: self.keeper.lease, self.keeper.publish
        )
        self.supervisor = Supervisor(self.metrics, self.log)
        parts = Parts(
            config,
            store,
            docker,
            self.keeper,
            self.sync,
            self.supervisor,
            self.metrics,
            self.notifier,
            self.outages,
            self.log,
            self.status,
        )
        self.loop = Loop(parts, retry_wait or backoff(min(1.0, config.ttl / 3), jitter=0.25))
        self.look_ahead = LookAhead(docker, self.log)  # containers read at `create`
        self.lookup = Lookup(
            config, docker, self.look_ahead, self.sync, self.loop.write, self.loop.fault, self.log
        )
        self.loop.lookup = self.lookup
        self.reader = EventReader(
            docker.clone(),
            self.loop.handoff,
            self.look_ahead,
            self.metrics,
            self.log,
            self.loop.stopping,
            self.outages,
        )
        self.reader.on_connect = self.loop.wakeup.set
        knowledge = self.lookup.knowledge
        self.reader.networks_matter = lambda: knowledge.networks_matter
        knowledge.on_networks_matter = self.reader.resubscribe
        # Gauges read when scraped, so /metrics is current without a /healthz call.
        self.metrics.docker_stalled.set_function(self.docker.stalled)
        self.metrics.lease_ttl.set(config.ttl)
        self.metrics.peer_up.labels("etcd").set_function(lambda: float(self.etcd_up()))
        self.metrics.peer_up.labels("docker").set_function(lambda: float(self.reader.connected))

    @property
    def reconciled(self) -> threading.Event:
        """Set after the first reconcile (READY=1)."""
        return self.loop.reconciled

    def _on_new_lease(self) -> None:
        """From the lease thread: a lease was granted or resumed (or etcd refused us)."""
        self.loop.queue.put(NEW_LEASE)
        self.loop.wakeup.set()

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish. Safe in a signal handler: a flag and a reentrant queue."""
        self.loop.stop_requested = True
        self.loop.queue.put(STOP)

    def request_resync(self) -> None:
        """Ask for a reconcile now (SIGHUP). Safe in a signal handler."""
        self.loop.queue.put(RESYNC)

    def request_restart(self) -> None:
        """Stop keeping the lease (SIGUSR1, systemd's RestartKillSignal): the keys stay and
        the next agent resumes the lease from the lease file. Safe in a signal handler."""
        self.loop.keep_lease_requested = True
        self.request_stop()

    def stop(self) -> None:
        """Ask the loop to finish, from another thread (tests, embedding)."""
        self.request_stop()
        self.loop.wakeup.set()

    def run(self) -> None:
        """Serve until stopped; then revoke the lease unless --keep-on-exit or a failure."""
        self.log.info(
            "agent starting",
            node=self.config.node,
            prefix=self.config.prefix,
            ttl=self.config.ttl,
            etcd=[e.url for e in self.config.etcd_endpoints],
        )
        self.lease_file.lock()
        self.keeper.start()
        self.look_ahead.start()
        self.supervisor.watch(Part("lease", self.keeper.alive, self.keeper.start))
        self.supervisor.watch(Part("look-ahead", self.look_ahead.all_alive, self.look_ahead.revive))
        self.supervisor.thread("docker-events", self.reader.run)
        failed = False
        try:
            self.loop.run()
        except (AgentFailed, ConfigurationRefused):
            failed = True  # keys stay; a restarted agent resumes the lease
            raise
        finally:
            keep = failed or self.config.keep_on_exit or self.loop.keep_lease_requested
            self._shutdown(keep)

    def _shutdown(self, keep_lease: bool) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.loop.stopping.set()
        self.reader.docker.close_events()
        # an event the reader is handling ends its write before the lease goes (bounded: a
        # stalled Docker request must not hold the exit up)
        self.loop.handoff.turn.acquire(timeout=SHUTDOWN_TURN_WAIT)
        self.look_ahead.stop()
        self.keeper.stop()
        lease, keys = self.keeper.lease, len(self.sync.held)
        if not lease or self.store.dry_run:
            self.log.info("agent stopped")
        elif self.loop.keep_lease_requested:
            self.log.info(
                "agent stopped for a restart; keys kept on the lease", lease=f"{lease:x}", keys=keys
            )
        elif keep_lease:
            self.log.info(
                "agent stopped; keys left to expire with the lease", lease=f"{lease:x}", keys=keys
            )
        else:
            try:
                self.keeper.revoke()
                self.log.info("lease revoked; keys removed", lease=f"{lease:x}", keys=keys)
            except EtcdError as exc:
                self.log.warning(
                    "could not revoke the lease; keys expire within the ttl",
                    lease=f"{lease:x}",
                    error=str(exc),
                )
        self.lease_file.unlock()

    # -- health -----------------------------------------------------------------------------

    def loop_alive(self) -> bool:
        """The loop moved lately (a Docker or etcd request may hold it up to its timeout)."""
        limit = self.config.docker_timeout + self.config.etcd_timeout * 2 + 5.0
        return time.monotonic() - self.loop.beat < limit

    def etcd_up(self) -> bool:
        """The last etcd request of the loop and of the lease thread succeeded, and etcd has
        not refused the agent's credentials."""
        return (
            self.keeper.config_error is None
            and self.keeper.etcd_error is None
            and self.loop.etcd_ok
        )

    def problems(self) -> list[str]:
        """What is wrong now, in words; empty when all is well."""
        waiting = self.docker.stalled()
        refused = self.keeper.config_error
        return problems(
            Facts(
                docker_waiting=waiting,
                docker_connected=self.reader.connected,
                etcd_refused=None if refused is None else str(refused),
                etcd_down=self.keeper.etcd_error is not None or not self.loop.etcd_ok,
                lease_alive=self.keeper.healthy(),
                loop_alive=self.loop_alive(),
            )
        )

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz."""
        found = self.problems()
        return (not found, "; ".join(found) or "ok")

    def status(self) -> str:
        """A one-line summary for systemd's STATUS=."""
        text = f"{len(self.sync.held)} registrations"
        if self.keeper.last_renewal:
            ago = time.monotonic() - self.keeper.last_renewal
            text += f", lease {self.keeper.lease:x} renewed {ago:.0f}s ago"
        found = self.problems()
        return text + (f"; {'; '.join(found)}" if found else "")
