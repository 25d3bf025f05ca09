"""The agent: wires the parts together and runs the loop that owns the node's announcements.

Runs on: the main thread. Around it run the lease keeper (sidekick.lease, its own thread: no
Docker call can delay a keepalive), the Docker events reader (sidekick.intake) and the
look-ahead's helpers (sidekick.lookahead). The loop takes events off one queue, turns them into
announcements (sidekick.lookup) and writes the difference (sidekick.sync); it reconciles at
start-up, after a reconnect or a new lease, on SIGHUP and every --resync seconds. It restarts
a helper thread that dies, and gives up (exit with the lease kept) if one keeps dying.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import tenacity

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.health import Facts, problems
from sidekick.intake import DOCKER_CONNECTED, NEW_LEASE, RESYNC, STOP, EventReader, Item
from sidekick.lease import LeaseKeeper
from sidekick.leasefile import LeaseFile
from sidekick.lookahead import LookAhead
from sidekick.lookup import Lookup
from sidekick.metrics import Metrics
from sidekick.retry import Outages, Wait, backoff, retrying
from sidekick.store import EtcdConfigError, EtcdError, EtcdUnavailable, Store
from sidekick.supervise import AgentFailed, Part, Supervisor
from sidekick.sync import Sync
from sidekick.systemd import Notifier

__all__ = ["Agent", "AgentFailed", "ConfigurationRefused"]

TRANSIENT = (EtcdError, DockerUnavailable)
SUPERVISE_EVERY = 1.0  # seconds between looks at the helper threads


class WaitingForLease(EtcdUnavailable):
    """No lease yet: the lease thread is still asking etcd (and reports etcd's state itself)."""


class ConfigurationRefused(Exception):
    """etcd refused the agent at start-up (credentials, role, TLS): retrying cannot help."""


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
        self.notifier = notifier or Notifier({})
        self.lease_file = lease_file or LeaseFile(None)
        self.log = structlog.get_logger("sidekick")
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.stopping = threading.Event()  # set by the loop: the helpers end
        self._stop_requested = False  # set from a signal handler: a plain flag, no lock
        self.retry_wait = retry_wait or backoff(min(1.0, config.ttl / 3), jitter=0.25)
        self._wakeup = threading.Event()  # cuts the reconcile's backoff short: Docker is back
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
        self.look_ahead = LookAhead(docker, self.log)  # containers read at `create`
        self.lookup = Lookup(
            config, docker, self.look_ahead, self.sync, self._write, self._fault, self.log
        )
        self.reader = EventReader(
            docker.clone(),
            self.queue,
            self.look_ahead,
            self.metrics,
            self.log,
            self.stopping,
            self.outages,
        )
        self.reader.on_connect = self._wakeup.set
        self.etcd_ok = False  # the loop's last etcd request succeeded
        self.needs_reconcile = False  # the first reconcile follows the events stream's connection
        self.next_resync = time.monotonic() + config.resync
        self.next_foreign_check = float("inf")
        self.reconciled = threading.Event()  # set after the first reconcile
        self.beat = time.monotonic()  # the loop's last sign of life
        self.supervisor = Supervisor(self.metrics, self.log)

    def _on_new_lease(self) -> None:
        """From the lease thread: a lease was granted or resumed (or etcd refused us)."""
        self.queue.put(NEW_LEASE)
        self._wakeup.set()

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish. Safe in a signal handler: a flag and a reentrant queue."""
        self._stop_requested = True
        self.queue.put(STOP)

    def request_resync(self) -> None:
        """Ask for a reconcile now (SIGHUP). Safe in a signal handler."""
        self.queue.put(RESYNC)

    def stop(self) -> None:
        """Ask the loop to finish, from another thread (tests, embedding)."""
        self.request_stop()
        self._wakeup.set()

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
        keep_lease = self.config.keep_on_exit
        try:
            while not self.stopping.is_set():
                self._cycle()
        except (AgentFailed, ConfigurationRefused):
            keep_lease = True  # keys stay; a restarted agent resumes the lease
            raise
        finally:
            self._shutdown(keep_lease)

    def _supervise(self) -> None:
        if not self.stopping.is_set():
            self.supervisor.check()

    def _cycle(self) -> None:
        self.beat = time.monotonic()
        self._supervise()
        if self._stop_requested:
            self.stopping.set()
            return
        if self.needs_reconcile:
            self._reconcile_until_done()
            return
        now = time.monotonic()
        wake = min(
            self.next_resync,
            self.next_foreign_check,
            self.lookup.next_verify,
            now + SUPERVISE_EVERY,
        )
        try:
            item: Item | None = self.queue.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            item = None
        events: list[DockerEvent] = []
        while isinstance(item, DockerEvent):
            events.append(item)  # a burst (20 containers at once) costs one transaction
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                item = None
        if events:
            self.lookup.on_events(events)
        if item is not None:
            self._on_marker(item)
        now = time.monotonic()
        idle = not self.needs_reconcile and self.queue.empty()
        if now >= self.lookup.next_verify and idle:
            self.lookup.verify_read_ahead()
        if now >= self.next_foreign_check and idle:
            self.next_foreign_check = now + self.config.keepalive_interval
            self._guarded_etcd(self.sync.recheck_foreign)
        if now >= self.next_resync:
            self.needs_reconcile = True

    def _on_marker(self, item: Item) -> None:
        if item is STOP:
            self.stopping.set()
        elif item is NEW_LEASE:
            self._refused_at_start_up()
            self.needs_reconcile = True  # a new lease: read our keys again
        elif item in (DOCKER_CONNECTED, RESYNC):
            self.needs_reconcile = True

    def _shutdown(self, keep_lease: bool) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.stopping.set()
        self.reader.docker.close_events()
        self.look_ahead.stop()
        self.keeper.stop()
        lease, keys = self.keeper.lease, len(self.sync.held)
        if not lease or lease < 0:
            self.log.info("agent stopped")
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
        return time.monotonic() - self.beat < limit

    def problems(self) -> list[str]:
        """What is wrong now, in words; empty when all is well."""
        waiting = self.docker.stalled()
        self.metrics.docker_stalled.set(waiting)
        refused = self.keeper.config_error
        return problems(
            Facts(
                docker_waiting=waiting,
                docker_connected=self.reader.connected,
                etcd_refused=None if refused is None else str(refused),
                etcd_down=self.keeper.etcd_error is not None or not self.etcd_ok,
                lease_alive=self.keeper.healthy(),
                loop_alive=self.loop_alive(),
            )
        )

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz."""
        problems = self.problems()
        return (not problems, "; ".join(problems) or "ok")

    def status(self) -> str:
        """A one-line summary for systemd's STATUS=."""
        text = f"{len(self.sync.held)} registrations"
        if self.keeper.last_renewal:
            ago = time.monotonic() - self.keeper.last_renewal
            text += f", lease {self.keeper.lease:x} renewed {ago:.0f}s ago"
        problems = self.problems()
        return text + (f"; {'; '.join(problems)}" if problems else "")

    # -- etcd -------------------------------------------------------------------------------

    def _write(self) -> None:
        """The sync's write, for the look-up: a fault means a reconcile (with retries) next."""
        self.beat = time.monotonic()
        if self.keeper.lease == 0:
            self.needs_reconcile = True  # no lease yet, or a new one on its way
            return
        self._guarded_etcd(self._write_or_reconcile)

    def _write_or_reconcile(self) -> None:
        if not self.sync.write():
            self.needs_reconcile = True

    def _guarded_etcd(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
            self.etcd_ok = True
            self._schedule_foreign_check()
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self.keeper.check_now()
            self._fault("etcd", exc)

    def _schedule_foreign_check(self) -> None:
        if not self.sync.foreign:
            self.next_foreign_check = float("inf")
        elif self.next_foreign_check == float("inf"):
            self.next_foreign_check = time.monotonic() + self.config.keepalive_interval

    # -- reconcile ------------------------------------------------------------------------

    def _reconcile_until_done(self) -> None:
        try:
            retrying(
                TRANSIENT,
                wait=self.retry_wait,
                until=lambda: self._stop_requested or self.stopping.is_set(),
                sleep=self._sleep_beating,
                before_sleep=self._before_retry,
            )(self._reconcile)
        except tenacity.RetryError:
            return  # stopping

    def _reconcile(self) -> None:
        """Rebuild both sides from scratch (this node's keys only) and write the difference."""
        started = time.monotonic()
        self._wakeup.clear()  # a reconnect from now on cuts the next backoff short
        self._drain_queue()
        if self.keeper.lease == 0:
            self._refused_at_start_up()
            raise WaitingForLease("waiting for the lease thread's lease")
        containers = self.docker.running_containers()
        self.beat = time.monotonic()
        self.lookup.replace_all(containers)
        try:
            if not self.reconciled.is_set():
                self.store.check_write(self.config.prefix)  # a role without the prefix: exit 2
            self.sync.refresh()
            written = self.sync.write()
        except EtcdConfigError as exc:
            if not self.reconciled.is_set():
                raise ConfigurationRefused(str(exc)) from exc
            raise
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self.keeper.check_now()
            raise
        if not written:
            raise EtcdUnavailable("etcd changed under every attempt to write")
        self.etcd_ok = True
        self.needs_reconcile = False
        self._schedule_foreign_check()
        self.next_resync = time.monotonic() + self.config.resync
        elapsed = time.monotonic() - started
        self.metrics.reconcile_seconds.observe(elapsed)
        self.log.info(
            "reconciled",
            registrations=len(self.sync.held),
            containers=len(self.sync.announced),
            seconds=round(elapsed, 3),
        )
        self._recovered()
        if not self.reconciled.is_set():
            self.reconciled.set()
            self.notifier.notify("READY=1", f"STATUS={self.status()}")
            self.keeper.ready_for_watchdog = True  # after READY=1: systemd's start timeout first

    def _refused_at_start_up(self) -> None:
        """etcd refused us before we ever served: a configuration error, not an outage."""
        error = self.keeper.config_error
        if error is not None and not self.reconciled.is_set():
            raise ConfigurationRefused(str(error))

    def _drain_queue(self) -> None:
        """Take queued events off: the snapshot about to be taken supersedes them. A withdrawal
        is applied at once all the same, so it reaches etcd even if Docker fails the snapshot."""
        events: list[DockerEvent] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                self.queue.put(STOP)
                break
            if isinstance(item, DockerEvent):
                events.append(item)
        self.lookup.withdraw_only(events)

    # -- faults and retries ---------------------------------------------------------------

    def _fault(self, peer: str, exc: Exception) -> None:
        """A transient fault outside the retry loop: reconcile (with retries) next."""
        self.needs_reconcile = True
        self._log_outage(peer, exc)

    def _log_outage(self, peer: str, exc: BaseException) -> None:
        """Count every error; log an outage once, when it starts."""
        if peer == "etcd":
            self.etcd_ok = False
        self.metrics.errors.labels(peer, type(exc).__name__).inc()
        self.outages.down(peer, str(exc), refused=isinstance(exc, EtcdConfigError))

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and not isinstance(exc, WaitingForLease):
            self._log_outage("etcd" if isinstance(exc, EtcdError) else "docker", exc)

    def _recovered(self) -> None:
        self.outages.up("etcd")
        self.outages.up("docker")

    def _sleep_beating(self, seconds: float) -> None:
        """The loop's own backoff: alive (the watchdog keeps being fed), and cut short by a
        stop, by Docker coming back, or by a new lease."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            self.beat = time.monotonic()
            self._supervise()
            if self._wakeup.wait(min(left, 0.1)):
                return
