"""The agent loop: Docker events in, etcd writes out, one lease kept alive.

One thread reads the Docker events stream and only puts records on a queue (dockerd drops
events for a slow reader). The main thread owns all state: it takes events off the queue,
keeps the lease alive every ttl/3, and reconciles at start-up, after every reconnect and
every --resync seconds. Decisions are the pure functions of sidekick.model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import structlog
import tenacity

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.leasefile import LeaseFile
from sidekick.lookahead import LookAhead
from sidekick.metrics import Metrics
from sidekick.model import (
    Announcement,
    Clash,
    Delete,
    KeyState,
    Put,
    Registration,
    announce,
    merge,
    plan,
)
from sidekick.store import MAX_TXN_OPS, EtcdError, EtcdUnavailable, Store
from sidekick.systemd import Notifier

# Actions after which a container announces nothing, without asking Docker (a `kill` counts
# when its signal ends the container; see _keeps_serving).
GONE_ACTIONS = frozenset({"die", "stop", "destroy", "pause", "kill"})
# `docker kill -s` signals that end a container; any other (HUP to reload nginx) changes nothing.
STOP_SIGNALS = frozenset({"9", "15", "SIGKILL", "SIGTERM", "KILL", "TERM"})
TRANSIENT = (EtcdError, DockerUnavailable)
BATCH_SECONDS = 0.005  # look-ups written together while they take less than this
PLAN_ATTEMPTS = 3  # re-reads after a transaction lost a race, before a full reconcile
LOOK_AHEAD_WAIT = 0.02  # at most this long per batch for look-aheads dockerd is answering
VERIFY_AFTER = 1.0  # read-ahead starts are looked up again, together, this long after


def backoff(longest: float, jitter: float) -> tenacity.wait.wait_base:
    """Exponential from 50 ms up to `longest`, plus up to `jitter` seconds of randomness."""
    return tenacity.wait_exponential(multiplier=0.05, max=longest) + tenacity.wait_random(0, jitter)


def _keeps_serving(event: DockerEvent) -> bool:
    """`docker kill -s HUP` and the like: the container goes on serving."""
    return event.action == "kill" and event.attributes.get("signal", "") not in STOP_SIGNALS


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DOCKER_CONNECTED = _Marker("docker-connected")
STOP = _Marker("stop")

Item = DockerEvent | _Marker


class Agent:
    """Keeps etcd equal to the registrations of this node's running, opted-in containers."""

    def __init__(  # noqa: PLR0917 - collaborators, each with a default but the first three
        self,
        config: Config,
        store: Store,
        docker: DockerSource,
        retry_wait: tenacity.wait.wait_base | None = None,
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
        self.docker_connected = False  # the events stream is open
        self.etcd_ok = False  # the last etcd request succeeded
        self.last_keepalive = 0.0  # monotonic time of the last renewal (or grant)
        self._next_watchdog = 0.0
        self.log = structlog.get_logger("sidekick")
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.stopping = threading.Event()
        # Both back off to 1 s (plus jitter, so a fleet does not retry in step): a peer that
        # returns is noticed within about a second.
        self.retry_wait = retry_wait or backoff(min(1.0, config.ttl / 3), jitter=0.25)
        self.docker_retry_wait = backoff(1.0, jitter=0.1)
        self._wakeup = threading.Event()  # cuts the reconcile's backoff short: Docker is back
        self.lease = 0
        self.announced: dict[str, tuple[Registration, ...]] = {}  # container id -> its keys
        self.actual: dict[str, KeyState] = {}  # the prefix as last read, plus our writes
        self.held: dict[str, Registration] = {}  # keys we wrote on our lease
        self.foreign: set[str] = set()  # keys we want that another lease holds (it may lapse)
        self.needs_reconcile = False  # the first reconcile follows the events stream's connection
        self.next_keepalive = float("inf")
        self.next_resync = time.monotonic() + config.resync
        self.reconciled = threading.Event()  # set after the first reconcile
        self._warned: dict[str, str] = {}  # container id -> last problem logged
        self._clashes: set[tuple[str, int, str]] = set()
        self._duplicates: set[tuple[str, str]] = set()
        self._outages: dict[str, str] = {}  # peer -> first error of the current outage
        self._reader: threading.Thread | None = None
        self.look_ahead = LookAhead(docker, self.log)  # containers read at `create`
        # Read-ahead starts to look up again (id -> name), all at once at next_verify: what
        # changed between create and start (a `docker network connect`) is right within 1 s.
        self.to_verify: dict[str, str] = {}
        self.next_verify = float("inf")

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self.stopping.set()
        self._wakeup.set()
        self.queue.put(STOP)
        self.look_ahead.stop()
        self.docker.close_events()

    def run(self) -> None:
        """Serve until stop(); then revoke the lease unless --keep-on-exit."""
        self.log.info(
            "agent starting",
            node=self.config.node,
            prefix=self.config.prefix,
            ttl=self.config.ttl,
            etcd=[e.url for e in self.config.etcd_endpoints],
        )
        self._reader = threading.Thread(target=self._read_events, name="docker-events", daemon=True)
        self._reader.start()
        self.look_ahead.start()
        try:
            while not self.stopping.is_set():
                self._cycle()
        finally:
            self._shutdown()

    def _cycle(self) -> None:
        self._heartbeat()
        if self.needs_reconcile:
            self._reconcile_until_done()
            return
        wake = min(self.next_keepalive, self.next_resync, self._next_watchdog, self.next_verify)
        timeout = max(0.0, wake - time.monotonic())
        try:
            item: Item | None = self.queue.get(timeout=timeout)
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
            self._on_events(events)
        if item is DOCKER_CONNECTED:
            self.needs_reconcile = True
        now = time.monotonic()
        if now >= self.next_verify and not self.needs_reconcile and self.queue.empty():
            self._verify_read_ahead()
        if self.lease and not self.needs_reconcile and now >= self.next_keepalive:
            self._keepalive()
        if now >= self.next_resync:
            self.needs_reconcile = True

    def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.docker.close_events()
        if not self.lease:
            self.log.info("agent stopped")
            return
        if self.config.keep_on_exit:
            self.log.info(
                "agent stopped; keys left to expire with the lease",
                lease=self.lease,
                keys=len(self.held),
            )
            return
        try:
            self.store.revoke(self.lease)
            self.lease_file.remove()
            self.log.info("lease revoked; keys removed", lease=self.lease, keys=len(self.held))
        except EtcdError as exc:
            self.log.warning(
                "could not revoke the lease; keys expire within the ttl",
                lease=self.lease,
                error=str(exc),
            )

    # -- health -----------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """(ok, reason): Docker and etcd reachable and the lease alive."""
        problems = []
        if not self.docker_connected:
            problems.append("docker events stream not connected")
        if not self.etcd_ok:
            problems.append("etcd unreachable")
        if not self.lease or time.monotonic() - self.last_keepalive > self.config.ttl:
            problems.append("no live lease")
        return (not problems, "; ".join(problems) or "ok")

    def status(self) -> str:
        """A one-line summary for systemd's STATUS=."""
        if not self.last_keepalive:
            return f"{len(self.held)} registrations, no keepalive yet"
        ago = time.monotonic() - self.last_keepalive
        return f"{len(self.held)} registrations, last keepalive {ago:.0f}s ago"

    def _heartbeat(self) -> None:
        """Feed systemd's watchdog from the loop itself, so a stuck loop starves it."""
        interval = self.notifier.watchdog_interval
        now = time.monotonic()
        if interval is None:
            self._next_watchdog = float("inf")
        elif now >= self._next_watchdog:
            self._next_watchdog = now + interval
            if self.reconciled.is_set():  # before READY=1 systemd's start timeout applies
                self.notifier.notify("WATCHDOG=1", f"STATUS={self.status()}")

    # -- the Docker events reader (its own thread) -----------------------------------------

    def _read_events(self) -> None:
        quick_ends = 0  # streams that ended at once (e.g. a proxy refusing /events)
        while not self.stopping.is_set():
            try:
                retrying = self._retry("docker events", self._sleep, self.docker_retry_wait)
                events = retrying(self.docker.open_events)
            except tenacity.RetryError:
                return  # stopping
            connected = time.monotonic()
            self.docker_connected = True
            self.queue.put(DOCKER_CONNECTED)
            self._wakeup.set()
            try:
                for event in events:
                    self.metrics.docker_events.labels(event.action).inc()
                    if event.action == "create":
                        self.look_ahead.created(event.container_id)
                    else:
                        self.queue.put(event)
            except Exception as exc:  # the reader must outlive any odd answer
                self.log.error("docker event stream failed", error=repr(exc))
            self.docker_connected = False
            if self.stopping.is_set():
                return
            self.metrics.errors.labels("docker", "stream-ended").inc()
            self.log.warning("docker event stream ended; reconnecting")
            quick_ends = quick_ends + 1 if time.monotonic() - connected < 1.0 else 0
            if quick_ends:
                self._sleep(min(1.0, 0.05 * 2**quick_ends))

    # -- events ---------------------------------------------------------------------------

    def _on_events(self, events: Sequence[DockerEvent]) -> None:
        """Update the announcements the events touch and write the difference.

        Withdrawals need no look-up: they are written first, in one transaction. First starts
        of containers created while the agent ran need none either (sidekick.lookahead): those
        read already are written next, then those whose read dockerd is still answering,
        waited for up to LOOK_AHEAD_WAIT. The rest are looked up (_look_up).
        """
        last = {e.container_id: e for e in events if not _keeps_serving(e)}  # last one decides
        for container_id in last:  # a later event decides, not a check of the read-ahead
            self.to_verify.pop(container_id, None)
        self._withdraw(last.values())
        lookups = [e for e in last.values() if e.action not in GONE_ACTIONS]
        starts = [e for e in lookups if e.action == "start"]
        done = self._apply_read_ahead(
            [e for e in starts if not self.look_ahead.pending(e.container_id)], deadline=0.0
        )
        done |= self._apply_read_ahead(
            [e for e in starts if e.container_id not in done],
            deadline=time.monotonic() + LOOK_AHEAD_WAIT,
        )
        for container_id in last.keys() - done:  # a read made at create serves a first start only
            self.look_ahead.forget(container_id)
        self._look_up({e.container_id: e.name for e in lookups if e.container_id not in done})

    def _withdraw(self, events: Iterable[DockerEvent]) -> None:
        """Announce nothing for the containers these events end, in one write."""
        gone = [e for e in events if e.action in GONE_ACTIONS]
        for event in gone:
            self._set_announcement(event.container_id, event.name, Announcement())
        if gone and self.lease:
            self._sync()

    def _apply_read_ahead(self, starts: Sequence[DockerEvent], deadline: float) -> set[str]:
        """Announce the started containers read at create, in one write; their ids."""
        done = set()
        for event in starts:
            ready = self.look_ahead.take(event.container_id, deadline)
            if ready is not None:
                container = ready._replace(name=event.name or ready.name)
                announcement = announce(container, self.config)
                self._set_announcement(event.container_id, event.name, announcement)
                done.add(event.container_id)
                if not container.host_network:  # its ports cannot change before the start
                    self.to_verify[event.container_id] = event.name
        if done:
            self._sync()
            self.next_verify = min(self.next_verify, time.monotonic() + VERIFY_AFTER)
        return done

    def _verify_read_ahead(self) -> None:
        """Look the read-ahead starts up again, in one listing, and write any difference."""
        pending, self.to_verify = self.to_verify, {}
        self.next_verify = float("inf")
        self._look_up(pending)

    def _look_up(self, names: Mapping[str, str]) -> None:
        """Look containers up in one `docker ps` listing and write them in one transaction.

        What the listing cannot tell (healthchecks, host networking, a container gone
        meanwhile) is inspected, and written as it comes, batched only while the inspects
        take less than BATCH_SECONDS, so one slow inspect does not hold back the rest.
        """
        if not names:
            return
        try:
            listed = self.docker.listed(list(names))
        except DockerUnavailable as exc:
            self._fault("docker", exc)  # the reconcile will look again
            return
        for container_id, container in listed.items():
            self._set_announcement(
                container_id, names[container_id], announce(container, self.config)
            )
        if listed:
            self._sync()
        pending, written = False, time.monotonic()
        for container_id, name in names.items():
            if container_id in listed:
                continue
            try:
                inspected = self.docker.inspect(container_id)
            except DockerUnavailable as exc:
                self._fault("docker", exc)  # the reconcile will look again
                continue
            announcement = announce(inspected, self.config) if inspected else Announcement()
            self._set_announcement(container_id, name, announcement)
            pending = True
            if time.monotonic() - written >= BATCH_SECONDS:
                self._sync()
                pending, written = False, time.monotonic()
        if pending:
            self._sync()

    def _set_announcement(self, container_id: str, name: str, announcement: Announcement) -> None:
        if announcement.problem is not None:
            if self._warned.get(container_id) != announcement.problem:
                self.log.warning(
                    "container skipped",
                    container=name,
                    id=container_id[:12],
                    reason=announcement.problem,
                )
            self._warned[container_id] = announcement.problem
        else:
            self._warned.pop(container_id, None)
        if announcement.registrations:
            self.announced[container_id] = announcement.registrations
        else:
            self.announced.pop(container_id, None)

    # -- etcd -----------------------------------------------------------------------------

    def _sync(self) -> None:
        """Write the difference between what is announced and what etcd holds."""
        desired = merge(self.announced.values())
        current = {(dropped.key, dropped.container_id) for _, dropped in desired.duplicates}
        self._duplicates &= current  # forget resolved ones: a new duplicate is news again
        for kept, dropped in desired.duplicates:
            if (dropped.key, dropped.container_id) not in self._duplicates:
                self._duplicates.add((dropped.key, dropped.container_id))
                self.log.warning(
                    "duplicate key; first container keeps it",
                    key=dropped.key,
                    container=dropped.container_name,
                    holder=kept.container_name,
                )
        values = {key: r.value for key, r in desired.registrations.items()}
        try:
            for attempt in range(PLAN_ATTEMPTS):
                todo = plan(values, self.actual, self.lease)
                self._report_clashes(todo.clashes)
                self.foreign = {
                    key
                    for key in values
                    if (state := self.actual.get(key)) and state.lease not in {0, self.lease}
                }
                ops: list[Put | Delete] = [*todo.deletes, *todo.puts]
                if self._write(ops, desired.registrations):
                    # what we hold now, counting keys a resumed lease already carried
                    self.held = {
                        key: registration
                        for key, registration in desired.registrations.items()
                        if (state := self.actual.get(key)) and state.lease == self.lease
                    }
                    self.metrics.registrations.set(len(self.held))
                    return
                if attempt + 1 < PLAN_ATTEMPTS:
                    self.actual, _ = self.store.read_prefix(self.config.prefix + "/")
            self.needs_reconcile = True
        except EtcdError as exc:
            self._fault("etcd", exc)

    def _write(self, ops: Sequence[Put | Delete], wanted: dict[str, Registration]) -> bool:
        """Apply ops in transactions; False when one lost a race (its keys changed)."""
        all_done = True
        for start in range(0, len(ops), MAX_TXN_OPS):
            batch = ops[start : start + MAX_TXN_OPS]
            succeeded, revision = self.store.txn(batch, self.lease)
            self.etcd_ok = True
            if not succeeded:
                all_done = False
                continue
            for op in batch:
                if isinstance(op, Put):
                    registration = wanted[op.key]
                    self.actual[op.key] = KeyState(op.value, self.lease, revision)
                    self.held[op.key] = registration
                    self.metrics.writes.labels("put").inc()
                    self.log.info(
                        "registered",
                        key=op.key,
                        value=op.value,
                        container=registration.container_name,
                        id=registration.container_id[:12],
                    )
                else:
                    self.actual.pop(op.key, None)
                    gone = self.held.pop(op.key, None)
                    self.metrics.writes.labels("delete").inc()
                    self.log.info(
                        "deregistered",
                        key=op.key,
                        container=gone.container_name if gone else None,
                        id=gone.container_id[:12] if gone else None,
                    )
        self.metrics.registrations.set(len(self.held))
        return all_done

    def _report_clashes(self, clashes: Sequence[Clash]) -> None:
        """Log each clash once while it lasts."""
        self._clashes &= {(c.key, c.held_lease, c.held_value) for c in clashes}
        for clash in clashes:
            marker = (clash.key, clash.held_lease, clash.held_value)
            if marker in self._clashes:
                continue
            self._clashes.add(marker)
            self.metrics.clashes.inc()
            self.log.error(
                "key held by another owner; left as it is",
                key=clash.key,
                held_value=clash.held_value,
                held_by=f"lease {clash.held_lease:x}" if clash.held_lease else "a plain key",
                wanted_value=clash.wanted,
                wanted_by=f"node {self.config.node} (lease {self.lease:x})",
            )

    def _keepalive(self) -> None:
        self.next_keepalive = time.monotonic() + self.config.keepalive_interval
        try:
            ttl = self._renew()
        except EtcdError as exc:
            self._fault("etcd", exc)
            return
        if ttl <= 0:
            self.log.warning(
                "lease expired; granting a new one and rewriting every key", lease=self.lease
            )
            self.lease = 0
            self.needs_reconcile = True
        elif self.foreign:
            self._recheck_foreign()

    def _recheck_foreign(self) -> None:
        """Read the prefix again: a key another lease holds vanishes when that lease lapses,
        and no event says so; without this it would stay missing until the next resync."""
        try:
            self.actual, _ = self.store.read_prefix(self.config.prefix + "/")
        except EtcdError as exc:
            self._fault("etcd", exc)
            return
        self._sync()

    def _renew(self) -> int:
        """One keepalive, timed; returns the TTL etcd answered (<= 0: the lease is gone)."""
        started = time.monotonic()
        ttl = self.store.keepalive(self.lease)
        self.etcd_ok = True
        self.metrics.keepalive_seconds.observe(time.monotonic() - started)
        if ttl > 0:
            self.last_keepalive = time.monotonic()
            self.metrics.last_keepalive.set_to_current_time()
        return ttl

    # -- reconcile ------------------------------------------------------------------------

    def _reconcile_until_done(self) -> None:
        try:
            self._retry("reconcile", self._sleep_beating)(self._reconcile)
        except tenacity.RetryError:
            return  # stopping

    def _reconcile(self) -> None:
        """Rebuild both sides from scratch and write the difference."""
        started = time.monotonic()
        self._wakeup.clear()  # a reconnect from now on cuts the next backoff short
        self._drain_queue()
        # A periodic resync on a healthy lease needs no extra keepalive: the timer renews it.
        fresh = self.etcd_ok and time.monotonic() < self.next_keepalive
        if self.lease and not fresh:
            if self._renew() <= 0:
                self.log.warning("lease expired; granting a new one", lease=self.lease)
                self.lease = 0
            self.next_keepalive = time.monotonic() + self.config.keepalive_interval
        if not self.lease:
            self._take_lease()
            self.next_keepalive = time.monotonic() + self.config.keepalive_interval
        containers = self.docker.running_containers()
        seen = set()
        for container in containers:
            seen.add(container.id)
            self._set_announcement(container.id, container.name, announce(container, self.config))
        for container_id in set(self.announced) - seen:
            self.announced.pop(container_id, None)
        for container_id in set(self._warned) - seen:
            self._warned.pop(container_id, None)
        self.look_ahead.clear()  # starts and removals drained above: their entries are stale
        self.to_verify, self.next_verify = {}, float("inf")  # just read them all
        self.actual, _ = self.store.read_prefix(self.config.prefix + "/")
        self.needs_reconcile = False
        self._sync()
        if self.needs_reconcile:  # _sync hit a fault: let the retry policy take over
            raise EtcdUnavailable("etcd changed or failed during reconcile")
        self.next_resync = time.monotonic() + self.config.resync
        elapsed = time.monotonic() - started
        self.metrics.reconcile_seconds.observe(elapsed)
        self.metrics.registrations.set(len(self.held))
        self.log.info(
            "reconciled",
            registrations=len(self.held),
            containers=len(self.announced),
            seconds=round(elapsed, 3),
        )
        self._recovered()
        if not self.reconciled.is_set():
            self.reconciled.set()
            self.notifier.notify("READY=1", f"STATUS={self.status()}")

    def _take_lease(self) -> None:
        """Resume the lease a previous run left alive (kill -9, --keep-on-exit), else grant one."""
        self.held.clear()
        previous = self.lease_file.read()
        if previous:
            # A keepalive, not time_to_live: the JSON gateway leaves "TTL": 0 out, so a lease
            # in its last second reads as gone while its keys still stand. A keepalive renews
            # it, and answers <= 0 only once etcd has revoked the lease and its keys.
            self.lease = previous
            if self._renew() > 0:
                self.log.info("lease resumed", lease=self.lease, ttl=self.config.ttl)
                return
            self.lease = 0
        self.lease = self.store.grant(self.config.ttl)
        self.last_keepalive = time.monotonic()
        self.etcd_ok = True
        self.log.info("lease granted", lease=self.lease, ttl=self.config.ttl)
        problem = self.lease_file.write(self.lease)
        if problem is not None:
            self.log.warning(
                "cannot keep the lease id; a restart starts a new lease", error=problem
            )

    def _drain_queue(self) -> None:
        """Take queued events off: the snapshot about to be taken supersedes them. A withdrawal
        is applied at once all the same, so it reaches etcd even if Docker fails the snapshot."""
        last: dict[str, DockerEvent] = {}
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                self.queue.put(STOP)
                break
            if isinstance(item, DockerEvent) and not _keeps_serving(item):
                last[item.container_id] = item
        self._withdraw(last.values())

    # -- faults and retries ---------------------------------------------------------------

    def _fault(self, peer: str, exc: Exception) -> None:
        """A transient fault outside the retry loop: reconcile (with retries) next."""
        self.needs_reconcile = True
        self._log_outage(peer, exc)

    def _count_error(self, exc: BaseException) -> None:
        peer = "etcd" if isinstance(exc, EtcdError) else "docker"
        if peer == "etcd":
            self.etcd_ok = False
        self.metrics.errors.labels(peer, type(exc).__name__).inc()

    def _log_outage(self, peer: str, exc: BaseException) -> None:
        self._count_error(exc)
        if peer not in self._outages:
            self._outages[peer] = str(exc)
            self.log.warning(f"{peer} unavailable; retrying with backoff", error=str(exc))

    def _recovered(self) -> None:
        for peer in list(self._outages):
            self.log.info(f"{peer} is back")
        self._outages.clear()

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)  # a stop request cuts a backoff short

    def _sleep_beating(self, seconds: float) -> None:
        """The loop's own backoff: still alive, so the watchdog keeps being fed."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self._heartbeat()
            if self._wakeup.wait(min(left, max(0.05, self._next_watchdog - time.monotonic()))):
                return

    def _retry(
        self, what: str, sleep: Callable[[float], None], wait: tenacity.wait.wait_base | None = None
    ) -> tenacity.Retrying:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None:
                self._log_outage("etcd" if isinstance(exc, EtcdError) else "docker", exc)
            self.log.info(
                "retry scheduled",
                action=what,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                error=str(exc),
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TRANSIENT),
            wait=wait or self.retry_wait,
            stop=lambda _state: self.stopping.is_set(),
            sleep=sleep,
            before_sleep=before_sleep,
        )
        return retrying
