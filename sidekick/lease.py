"""The lease keeper: this node's one etcd lease, kept alive whatever Docker does.

Runs on: its own thread ("lease"). It grants or resumes the lease (the lease file), renews it
every ttl/3, and when etcd answers that the lease is gone (TTL <= 0) grants a new one and puts
the node's keys back at once, before the loop has looked at Docker again: a stalled dockerd
cannot make the node's keys lapse. The loop talks to it through publish() (an immutable
snapshot of the keys it holds, swapped in one assignment) and check_now(); it reads `lease`,
`etcd_error` and `last_renewal`. The keeper tells the loop of a new lease through
`on_new_lease`, a callable that only puts a marker on the loop's queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidekick.config import Config
from sidekick.leasefile import LeaseFile
from sidekick.metrics import Metrics
from sidekick.model import Put
from sidekick.retry import Outages, delay
from sidekick.store import MAX_TXN_OPS, EtcdConfigError, EtcdError, Store
from sidekick.systemd import Notifier

RETRY_LONGEST = 1.0  # seconds between attempts while etcd is down (plus jitter)
RETRY_JITTER = 0.25


class LeaseKeeper:
    """Grant / resume, keepalive at the configured interval, re-grant with the keys put back,
    revoke on request. Self-repairing: no etcd error ends the thread."""

    def __init__(  # noqa: PLR0917 - collaborators
        self,
        config: Config,
        store: Store,
        lease_file: LeaseFile,
        metrics: Metrics,
        log: Any,
        on_new_lease: Callable[[], None] = lambda: None,
        notifier: Notifier | None = None,
        status: Callable[[], str] = lambda: "",
        loop_alive: Callable[[], bool] = lambda: True,
        outages: Outages | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.lease_file = lease_file
        self.metrics = metrics
        self.log = log
        self.on_new_lease = on_new_lease
        self.notifier = notifier or Notifier({})
        self.status = status
        self.loop_alive = loop_alive
        self.outages = outages or Outages(log)
        self.lease = 0  # 0 until granted or resumed; written by this thread only
        self.last_renewal = 0.0  # monotonic time etcd last confirmed the lease
        self.etcd_error: str | None = None  # the current outage, None while etcd answers
        self.config_error: EtcdConfigError | None = None  # etcd refused us (auth, TLS, role)
        self.granted = threading.Event()  # set once a lease is held
        self.published: Mapping[str, str] = {}  # key -> value the loop holds on the lease
        self.ready_for_watchdog = False  # READY=1 sent (sidekick.reconcile)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._longest = min(RETRY_LONGEST, config.ttl / 3)
        self._failures = 0
        self._next_watchdog = 0.0
        self._thread: threading.Thread | None = None

    # -- the loop's side ------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def publish(self, keys: Mapping[str, str]) -> None:
        """The keys the loop now holds on the lease (put back if the lease is ever lost)."""
        self.published = dict(keys)

    def check_now(self) -> None:
        """Renew at once (a write said the lease is not found)."""
        self._wake.set()

    def healthy(self) -> bool:
        """A lease etcd confirmed within the TTL."""
        return bool(self.lease) and time.monotonic() - self.last_renewal <= self.config.ttl

    def stop(self) -> None:
        """End the thread (its keepalives end with it); the lease itself is left as it is."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.config.etcd_timeout * 2 + 1)

    def revoke(self) -> None:
        """Revoke the lease (every key on it goes at once) and forget it; raises EtcdError."""
        if self.lease:
            self.store.revoke(self.lease)
            self.lease_file.remove()

    # -- the lease thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                delay = self._step()
                self._failures = 0
                self.etcd_error = None
                self.config_error = None
                self.outages.up("etcd")
            except EtcdError as exc:
                delay = self._failed(exc)
            self._feed_watchdog()
            self._wake.wait(max(0.0, min(delay, self._watchdog_due())))
            self._wake.clear()

    def _step(self) -> float:
        """One renewal (or grant); seconds until the next one."""
        if not self.lease:
            self._acquire()
            return self.config.keepalive_interval
        due = self.last_renewal + self.config.keepalive_interval - time.monotonic()
        if due > 0 and not self._wake.is_set():
            return due
        ttl = self._renew()
        if ttl <= 0:
            self.log.warning(
                "lease expired; granting a new one and putting the keys back",
                lease=f"{self.lease:x}",
                keys=len(self.published),
            )
            self.metrics.lease_regrants.inc()
            self.lease = 0
            self._acquire()
        return self.config.keepalive_interval

    def _acquire(self) -> None:
        """Resume the lease a previous run left alive (kill -9, --keep-on-exit), else grant
        one and put back the keys the node held (none at start-up)."""
        previous = self.lease_file.read()
        if previous and not self.granted.is_set():
            # A keepalive, not time_to_live: the JSON gateway leaves "TTL": 0 out, so a lease
            # in its last second reads as gone while its keys still stand. A keepalive renews
            # it, and answers <= 0 only once etcd has revoked the lease and its keys.
            self.lease = previous
            if self._renew() > 0:
                self.log.info("lease resumed", lease=f"{self.lease:x}", ttl=self.config.ttl)
                self.granted.set()
                self.on_new_lease()
                return
            self.lease = 0
        lease = self.store.grant(self.config.ttl)
        self.last_renewal = time.monotonic()
        self._put_back(lease)
        self.lease = lease
        if self.store.dry_run:
            self.log.info("would grant a lease", ttl=self.config.ttl)
        else:
            self.log.info("lease granted", lease=f"{lease:x}", ttl=self.config.ttl)
        problem = self.lease_file.write(lease)
        if problem is not None:
            self.log.warning(
                "cannot keep the lease id; a restart starts a new lease", error=problem
            )
        self.granted.set()
        self.on_new_lease()

    def _put_back(self, lease: int) -> None:
        """Put the node's keys on the new lease where nobody holds them (the old lease took
        them with it); a key someone else took meanwhile is left to the loop's next sync."""
        puts = [Put(key, value, 0) for key, value in sorted(self.published.items())]
        for start in range(0, len(puts), MAX_TXN_OPS):
            batch = puts[start : start + MAX_TXN_OPS]
            succeeded, _ = self.store.txn(batch, lease)
            if not succeeded:  # one key is taken: the others one by one
                for put in batch:
                    self.store.txn([put], lease)
        if puts:
            self.log.info("keys put back on the new lease", lease=f"{lease:x}", keys=len(puts))

    def _renew(self) -> int:
        """One keepalive, timed; the TTL etcd answered (<= 0: the lease is gone)."""
        started = time.monotonic()
        ttl = self.store.keepalive(self.lease)
        self.metrics.keepalive_seconds.observe(time.monotonic() - started)
        if ttl > 0:
            self.last_renewal = time.monotonic()
            self.metrics.last_keepalive.set_to_current_time()
        return ttl

    def _failed(self, exc: EtcdError) -> float:
        """Count the error, log a change of state once, and say when to try again."""
        self._failures += 1
        self.metrics.errors.labels("etcd", type(exc).__name__).inc()
        if isinstance(exc, EtcdConfigError):
            self.config_error = exc
        self.outages.down("etcd", str(exc), refused=isinstance(exc, EtcdConfigError))
        self.etcd_error = str(exc)
        if self.config_error is not None and not self.granted.is_set():
            self.on_new_lease()  # the loop decides: at start-up this is a configuration error
        return delay(self._failures, self._longest, RETRY_JITTER)

    # -- systemd ----------------------------------------------------------------------------

    def _watchdog_due(self) -> float:
        if not self.notifier.enabled:
            return float("inf")
        return max(0.0, self._next_watchdog - time.monotonic())

    def _feed_watchdog(self) -> None:
        """STATUS= every watchdog interval (or keepalive interval without a watchdog), with
        WATCHDOG=1 while this thread runs (it sends it) and the loop moves: a stuck loop or a
        stuck lease thread starves it and systemd restarts the agent (the lease resumes). An
        etcd outage does not: a restart cannot mend etcd, and restarts every WatchdogSec would
        use up the unit's StartLimitBurst; STATUS= says etcd is unreachable instead."""
        now = time.monotonic()
        if not self.notifier.enabled or now < self._next_watchdog or not self.ready_for_watchdog:
            return
        interval = self.notifier.watchdog_interval
        self._next_watchdog = now + (interval or self.config.keepalive_interval)
        fields = [f"STATUS={self.status()}"]
        if interval is not None and self.loop_alive():
            fields.insert(0, "WATCHDOG=1")
        self.notifier.notify(*fields)
