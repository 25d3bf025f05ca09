"""The loop: the main thread's work, on the parts the agent wired together.

Runs on: the main thread (or whichever runs Agent.run); it owns the announcements (through
sidekick.lookup and sidekick.sync). It takes Docker events and markers off one queue; a marker
comes from another thread (the events reader: connected; the lease thread: a new lease) or from
a signal handler (stop, resync), which only sets `stop_requested` and puts on the queue. While
the loop waits, the events reader may take its turn and handle an event on its own thread
(_handle_inline, through sidekick.handoff): one thread at a time, in the stream's order. It
reconciles (sidekick.reconcile, with the one retry policy) at start-up, after a reconnect or a
new lease, on SIGHUP and every --resync seconds; faults outside a reconcile mark one as needed.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource
from sidekick.handoff import Handoff, counted
from sidekick.intake import DOCKER_CONNECTED, NEW_LEASE, RESYNC, STOP, WAKE, Item
from sidekick.lease import LeaseKeeper
from sidekick.lookup import Lookup
from sidekick.metrics import Metrics
from sidekick.reconcile import Reconcile
from sidekick.retry import Outages, Wait
from sidekick.store import EtcdConfigError, EtcdError, Store
from sidekick.supervise import Supervisor
from sidekick.sync import Sync
from sidekick.systemd import Notifier

SUPERVISE_EVERY = 1.0  # seconds between looks at the helper threads


def resync_period(resync: float) -> float:
    """--resync, give or take a tenth at random: a fleet that came back together (after an
    etcd outage) does not resync together ever after."""
    return resync * random.uniform(0.9, 1.1)  # noqa: S311 - spread, not secrecy


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
    """Events in, writes out; says when to reconcile; stops when asked."""

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
        self.wakeup = threading.Event()  # cuts the reconcile's backoff short
        self.etcd_ok = False  # the loop's last etcd request succeeded
        self.needs_reconcile = False  # the first reconcile follows the events stream's connection
        self.next_resync = time.monotonic() + resync_period(self.config.resync)
        self.next_foreign_check = float("inf")
        self.reconciled = threading.Event()  # set after the first reconcile
        self.reconcile = Reconcile(self)
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
                self.reconcile.run()
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
            self.reconcile.refused_at_start_up()
            self.needs_reconcile = True  # a new lease: read our keys again
        elif item is DOCKER_CONNECTED:
            # events missed while the stream was down: a `die` among them leaves a listing
            # that still shows the container for a moment, so look once more shortly after
            self.needs_reconcile = self.reconcile.settle_after_reconnect = True
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
            self.schedule_foreign_check()
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self.keeper.check_now()
            self.fault("etcd", exc)

    def schedule_resync(self) -> None:
        """The next periodic reconcile, --resync from now (give or take a tenth)."""
        self.next_resync = time.monotonic() + resync_period(self.config.resync)

    def schedule_foreign_check(self) -> None:
        if not self.sync.foreign:
            self.next_foreign_check = float("inf")
        elif self.next_foreign_check == float("inf"):
            self.next_foreign_check = time.monotonic() + self.config.keepalive_interval

    # -- faults ---------------------------------------------------------------------------

    def fault(self, peer: str, exc: Exception) -> None:
        """A transient fault outside the retry loop: reconcile (with retries) next."""
        self.needs_reconcile = True
        self.log_outage(peer, exc)

    def log_outage(self, peer: str, exc: BaseException) -> None:
        """Count every error; log an outage once, when it starts."""
        if peer == "etcd":
            self.etcd_ok = False
        self.parts.metrics.errors.labels(peer, type(exc).__name__).inc()
        self.parts.outages.down(peer, str(exc), refused=isinstance(exc, EtcdConfigError))
