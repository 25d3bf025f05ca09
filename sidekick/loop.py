"""The loop: the main thread's work, on the parts the agent wired together.

Runs on: the main thread (or whichever runs Agent.run); it owns the announcements (through
sidekick.lookup and sidekick.sync). It takes Docker events and markers off one queue; a marker
comes from another thread (the events reader: connected; the lease thread: a new lease) or from
a signal handler (stop, resync), which only sets `stop_requested` and puts on the queue. While
the loop waits, the events reader may take its turn and handle an event on its own thread
(_handle_inline, through sidekick.handoff): one thread at a time, in the stream's order. It
reconciles at start-up, after a reconnect or a new lease, on SIGHUP and every --resync seconds,
with the one retry policy; faults outside a reconcile mark one as needed.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import tenacity

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.handoff import Handoff, counted
from sidekick.intake import DOCKER_CONNECTED, NEW_LEASE, RESYNC, STOP, WAKE, Item
from sidekick.lease import LeaseKeeper
from sidekick.lookup import Lookup
from sidekick.metrics import Metrics
from sidekick.retry import Outages, Wait, retrying
from sidekick.store import EtcdConfigError, EtcdError, EtcdUnavailable, Store
from sidekick.supervise import Supervisor
from sidekick.sync import Sync
from sidekick.systemd import Notifier

TRANSIENT = (EtcdError, DockerUnavailable)
SUPERVISE_EVERY = 1.0  # seconds between looks at the helper threads
SETTLE_AFTER = 3.0  # dockerd lists a container as running up to ~2.1 s after its `die`


def resync_period(resync: float) -> float:
    """--resync, give or take a tenth at random: a fleet that came back together (after an
    etcd outage) does not resync together ever after."""
    return resync * random.uniform(0.9, 1.1)  # noqa: S311 - spread, not secrecy


class WaitingForLease(EtcdUnavailable):
    """No lease yet: the lease thread is still asking etcd (and reports etcd's state itself)."""


class ConfigurationRefused(Exception):
    """etcd refused the agent at start-up (credentials, role, TLS): retrying cannot help."""


class Parts(NamedTuple):
    """What the loop drives, built by the agent."""

    config: Config
    store: Store
    docker: DockerSource
    keeper: LeaseKeeper
    sync: Sync
    supervisor: Supervisor
    metrics: Metrics
    notifier: Notifier
    outages: Outages
    log: Any
    status: Callable[[], str]


class Loop:
    """Events in, writes out; reconciles with retries; stops when asked."""

    def __init__(self, parts: Parts, retry_wait: Wait) -> None:
        self.parts = parts
        self.config = parts.config
        self.keeper = parts.keeper
        self.sync = parts.sync
        self.log = parts.log
        self.retry_wait = retry_wait
        self.lookup: Lookup  # set by the agent once built (it writes through this loop)
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.stopping = threading.Event()  # set by the loop: the helpers end
        self.stop_requested = False  # set from a signal handler: a plain flag, no lock
        self.keep_lease_requested = False  # SIGUSR1: stop for a restart, the lease kept
        self.ready_sent = False
        self.settle_after_reconnect = False  # one more reconcile SETTLE_AFTER a reconnect
        self.wakeup = threading.Event()  # cuts the reconcile's backoff short
        self.etcd_ok = False  # the loop's last etcd request succeeded
        self.needs_reconcile = False  # the first reconcile follows the events stream's connection
        self.next_resync = time.monotonic() + resync_period(self.config.resync)
        self.next_foreign_check = float("inf")
        self.reconciled = threading.Event()  # set after the first reconcile
        self.beat = time.monotonic()  # the loop's last sign of life
        # the events reader's way in: its turn is held while the loop works, not while it waits
        self.handoff = Handoff(self.queue, self._handle_inline)
        self.sleep_until = float("inf")  # when the waiting loop wakes by itself
        self.worked_until = 0.0  # Unix time the last events were handled (dockerd's clock)
        self.inline_error: Exception | None = None  # raised on the reader's thread: ours
        self.thread: int | None = None  # the loop's own thread (run)

    def run(self) -> None:
        """Cycle until stopped (AgentFailed or ConfigurationRefused go up)."""
        self.thread = threading.get_ident()
        while not self.stopping.is_set():
            self.cycle()

    def supervise(self) -> None:
        if not self.stopping.is_set():
            self.parts.supervisor.check()

    def cycle(self) -> None:
        self.beat = time.monotonic()
        self.supervise()
        if self.stop_requested:
            self.stopping.set()
            return
        if self.needs_reconcile:
            with self.handoff.turn:
                self._reconcile_until_done()
            return
        now = time.monotonic()
        self.sleep_until = wake = min(self._next_deadline(), now + SUPERVISE_EVERY)
        try:
            item: Item | None = self.queue.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            item = None
        with self.handoff.turn:
            self._take(item)

    def _take(self, item: Item | None) -> None:
        """Handle `item` and what follows it on the queue, then the timed work (the turn held).
        What an event handled on the reader's thread raised goes up here, as the loop's own."""
        if (error := self.inline_error) is not None:
            self.inline_error = None
            raise error
        events: list[DockerEvent] = []
        while isinstance(item, DockerEvent):
            events.append(item)  # a burst (20 containers at once) costs one transaction
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                item = None
        self.handoff.took(len(events) + counted(item))
        if events:
            self._observe_lag(events)
            self.lookup.on_events(events)
            self.worked_until = time.time()
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

    def _handle_inline(self, event: DockerEvent) -> bool:
        """On the events reader's thread, the turn held and nothing queued before `event`
        left (Handoff.deliver): handle it now, unless the loop has other work first or it
        may wait on dockerd; False: the reader queues it."""
        if not self._may_handle_inline(event):
            return False
        try:
            self._observe_lag([event])
            self.lookup.on_events([event])
            self.worked_until = time.time()
        except Exception as exc:  # the loop's to raise, as if it had failed itself
            self.inline_error = exc
        if self.inline_error or self.needs_reconcile or self._next_deadline() < self.sleep_until:
            self.queue.put(WAKE)  # the loop sleeps past what is now due: wake it
        return True

    def _may_handle_inline(self, event: DockerEvent) -> bool:
        """No reconcile or stop is due; `event` did not come while events were being handled
        (a burst: the loop takes it with the rest, in one transaction); and it needs no
        request that can wait long on dockerd (a dying container's inspect), which would hold
        up the stream's reader."""
        return not (
            self.needs_reconcile
            or self.stop_requested
            or self.stopping.is_set()
            or self.inline_error is not None
            or 0 < event.at < self.worked_until
            or self.lookup.may_wait_on_docker(event)
        )

    def _next_deadline(self) -> float:
        """The earliest of the timed work the loop sleeps until."""
        return min(self.next_resync, self.next_foreign_check, self.lookup.next_verify)

    def _observe_lag(self, events: list[DockerEvent]) -> None:
        """How long after dockerd's time of each event the loop takes it up."""
        now = time.time()
        lag = self.parts.metrics.event_lag_seconds
        for event in events:
            if event.at:
                lag.observe(max(0.0, now - event.at))

    def _on_marker(self, item: Item) -> None:
        if item is STOP:
            self.stopping.set()
        elif item is NEW_LEASE:
            self._refused_at_start_up()
            self.needs_reconcile = True  # a new lease: read our keys again
        elif item is DOCKER_CONNECTED:
            # events missed while the stream was down: a `die` among them leaves a listing
            # that still shows the container for a moment, so look once more shortly after
            self.needs_reconcile = self.settle_after_reconnect = True
        elif item is RESYNC:
            self.needs_reconcile = True
        # WAKE: nothing to do but look at the deadlines again

    # -- etcd -------------------------------------------------------------------------------

    def write(self) -> None:
        """The sync's write, for the look-up, when its announcements changed: a fault means a
        reconcile (with retries) next."""
        if threading.get_ident() == self.thread:  # the reader's writes are no sign of the loop
            self.beat = time.monotonic()
        if not self.sync.dirty:
            return  # etcd holds them already: the last write succeeded, or a reconcile is due
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
            self.fault("etcd", exc)

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
                until=lambda: self.stop_requested or self.stopping.is_set(),
                sleep=self._sleep_beating,
                before_sleep=self._before_retry,
            )(self._reconcile)
        except tenacity.RetryError:
            return  # stopping

    def _reconcile(self) -> None:
        """Rebuild both sides from scratch (this node's keys only) and write the difference."""
        started = time.monotonic()
        self.wakeup.clear()  # a reconnect from now on cuts the next backoff short
        self._drain_queue()
        if self.keeper.lease == 0:
            self._refused_at_start_up()
            raise WaitingForLease("waiting for the lease thread's lease")
        containers = self.lookup.confirm(self.parts.docker.running_containers())
        self.beat = time.monotonic()
        self.lookup.replace_all(containers)
        try:
            if not self.reconciled.is_set():
                self.parts.store.check_write(
                    self.config.prefix
                )  # a role without the prefix: exit 2
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
        self.next_resync = time.monotonic() + resync_period(self.config.resync)
        if self.settle_after_reconnect:  # once more shortly: the listing may lag a `die`
            self.settle_after_reconnect = False
            self.next_resync = min(self.next_resync, time.monotonic() + SETTLE_AFTER)
        elapsed = time.monotonic() - started
        self.parts.metrics.reconcile_seconds.observe(elapsed)
        self.log.info(
            "reconciled",
            registrations=len(self.sync.held),
            containers=len(self.sync.announced),
            seconds=round(elapsed, 3),
        )
        self._recovered()
        if not self.reconciled.is_set():
            self.reconciled.set()
            self._ready()

    def _ready(self) -> None:
        """READY=1, once: after the first reconcile, or when etcd cannot be reached for it
        (the agent is up and retrying; a node booting before etcd must not time the unit out)."""
        if not self.ready_sent:
            self.ready_sent = True
            self.parts.notifier.notify("READY=1", f"STATUS={self.parts.status()}")
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
            self.handoff.took(counted(item))
            if isinstance(item, DockerEvent):
                events.append(item)
        self.lookup.withdraw_only(events)

    # -- faults and retries ---------------------------------------------------------------

    def fault(self, peer: str, exc: Exception) -> None:
        """A transient fault outside the retry loop: reconcile (with retries) next."""
        self.needs_reconcile = True
        self._log_outage(peer, exc)

    def _log_outage(self, peer: str, exc: BaseException) -> None:
        """Count every error; log an outage once, when it starts."""
        if peer == "etcd":
            self.etcd_ok = False
        self.parts.metrics.errors.labels(peer, type(exc).__name__).inc()
        self.parts.outages.down(peer, str(exc), refused=isinstance(exc, EtcdConfigError))

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and not isinstance(exc, WaitingForLease):
            self._log_outage("etcd" if isinstance(exc, EtcdError) else "docker", exc)
        if isinstance(exc, EtcdError) and self.keeper.etcd_error is not None:
            self._ready()  # etcd is down at start-up: say so in STATUS=, and keep trying

    def _recovered(self) -> None:
        self.parts.outages.up("etcd")
        self.parts.outages.up("docker")

    def _sleep_beating(self, seconds: float) -> None:
        """The loop's own backoff: alive (the watchdog keeps being fed), and cut short by a
        stop, by Docker coming back, or by a new lease."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested and (left := deadline - time.monotonic()) > 0:
            self.beat = time.monotonic()
            self.supervise()
            if self.wakeup.wait(min(left, 0.1)):
                return
