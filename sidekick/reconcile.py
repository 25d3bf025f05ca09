"""The reconcile: both sides rebuilt from scratch (this node's keys only), with the one retry
policy, and READY=1 after the first.

Runs on: the main thread (or whichever runs Agent.run), in the loop's turn (sidekick.loop calls
run() when one is due: at start-up, after a reconnect or a new lease, on SIGHUP, every --resync
seconds, after a fault). It works on the loop's state (its queue, flags and parts): the loop
says when, this says how.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING

import tenacity

from sidekick.docker_source import DockerEvent, DockerUnavailable
from sidekick.handoff import counted
from sidekick.intake import STOP
from sidekick.retry import retrying
from sidekick.store import EtcdConfigError, EtcdError, EtcdUnavailable

if TYPE_CHECKING:
    from sidekick.loop import Loop

TRANSIENT = (EtcdError, DockerUnavailable)
SETTLE_AFTER = 3.0  # dockerd lists a container as running up to ~2.1 s after its `die`


class WaitingForLease(EtcdUnavailable):
    """No lease yet: the lease thread is still asking etcd (and reports etcd's state itself)."""


class ConfigurationRefused(Exception):
    """etcd refused the agent at start-up (credentials, role, TLS): retrying cannot help."""


class Reconcile:
    """The loop's reconcile, retried until done or stopped."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.ready_sent = False
        self.settle_after_reconnect = False  # one more reconcile SETTLE_AFTER a reconnect

    def run(self) -> None:
        """Reconcile, retrying transient faults with backoff, until done or stopping."""
        loop = self.loop
        try:
            retrying(
                TRANSIENT,
                wait=loop.retry_wait,
                until=lambda: loop.stop_requested or loop.stopping.is_set(),
                sleep=self._sleep_beating,
                before_sleep=self._before_retry,
            )(self._once)
        except tenacity.RetryError:
            return  # stopping

    def _once(self) -> None:
        """Rebuild both sides from scratch (this node's keys only) and write the difference."""
        loop, parts = self.loop, self.loop.parts
        started = time.monotonic()
        loop.wakeup.clear()  # a reconnect from now on cuts the next backoff short
        self._drain_queue()
        if loop.keeper.lease == 0:
            self.refused_at_start_up()
            raise WaitingForLease("waiting for the lease thread's lease")
        containers = loop.lookup.confirm(parts.docker.running_containers())
        loop.beat = time.monotonic()
        loop.lookup.replace_all(containers)
        try:
            if not self.loop.reconciled.is_set():
                parts.store.check_write(loop.config.prefix)  # a role without the prefix: exit 2
            loop.sync.refresh()
            written = loop.sync.write()
        except EtcdConfigError as exc:
            if not self.loop.reconciled.is_set():
                raise ConfigurationRefused(str(exc)) from exc
            raise
        except EtcdError as exc:
            if "lease not found" in str(exc):
                loop.keeper.check_now()
            raise
        if not written:
            raise EtcdUnavailable("etcd changed under every attempt to write")
        loop.etcd_ok = True
        loop.needs_reconcile = False
        loop.schedule_foreign_check()
        loop.schedule_resync()
        if self.settle_after_reconnect:  # once more shortly: the listing may lag a `die`
            self.settle_after_reconnect = False
            loop.next_resync = min(loop.next_resync, time.monotonic() + SETTLE_AFTER)
        elapsed = time.monotonic() - started
        parts.metrics.reconcile_seconds.observe(elapsed)
        loop.log.info(
            "reconciled",
            registrations=len(loop.sync.held),
            containers=len(loop.sync.announced),
            seconds=round(elapsed, 3),
        )
        parts.outages.up("etcd")
        parts.outages.up("docker")
        if not self.loop.reconciled.is_set():
            self.loop.reconciled.set()
            self._ready()

    def _ready(self) -> None:
        """READY=1, once: after the first reconcile, or when etcd cannot be reached for it
        (the agent is up and retrying; a node booting before etcd must not time the unit out)."""
        if not self.ready_sent:
            self.ready_sent = True
            parts = self.loop.parts
            parts.notifier.notify("READY=1", f"STATUS={parts.status()}")
            self.loop.keeper.ready_for_watchdog = True  # after READY=1: systemd's timeout first

    def refused_at_start_up(self) -> None:
        """etcd refused us before we ever served: a configuration error, not an outage."""
        error = self.loop.keeper.config_error
        if error is not None and not self.loop.reconciled.is_set():
            raise ConfigurationRefused(str(error))

    def _drain_queue(self) -> None:
        """Take queued events off: the snapshot about to be taken supersedes them. A withdrawal
        is applied at once all the same, so it reaches etcd even if Docker fails the snapshot."""
        loop = self.loop
        events: list[DockerEvent] = []
        while True:
            try:
                item = loop.queue.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                loop.queue.put(STOP)
                break
            loop.handoff.took(counted(item))
            if isinstance(item, DockerEvent):
                events.append(item)
        loop.lookup.withdraw_only(events)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and not isinstance(exc, WaitingForLease):
            self.loop.log_outage("etcd" if isinstance(exc, EtcdError) else "docker", exc)
        if isinstance(exc, EtcdError) and self.loop.keeper.etcd_error is not None:
            self._ready()  # etcd is down at start-up: say so in STATUS=, and keep trying

    def _sleep_beating(self, seconds: float) -> None:
        """The loop's own backoff: alive (the watchdog keeps being fed), and cut short by a
        stop, by Docker coming back, or by a new lease."""
        loop = self.loop
        deadline = time.monotonic() + seconds
        while not loop.stop_requested and (left := deadline - time.monotonic()) > 0:
            loop.beat = time.monotonic()
            loop.supervise()
            if loop.wakeup.wait(min(left, 0.1)):
                return
