"""The sync: this node's announcements in, the fewest etcd writes out, reading only this node's
keys (those on its lease, and those it wants), never the whole prefix.

Runs on: the loop's work (the main thread, or the events reader holding the loop's turn:
sidekick.handoff). A fleet of 10,000 nodes shares one prefix; a read of it per resync
would cost every node the whole fleet. Instead a refresh asks etcd for the keys on our lease
(one LeaseTimeToLive request) and reads those plus the keys we want, in transactions of at
most 128 range requests. Ownership is exactly model.plan's: adopt a plain key with our value,
never overwrite another owner's key (a clash, logged once), delete only keys on our lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidekick.config import Config
from sidekick.metrics import Metrics
from sidekick.model import (
    Clash,
    Delete,
    KeyState,
    Put,
    Registration,
    key_is_confined,
    merge,
    plan,
)
from sidekick.store import MAX_TXN_OPS, Store

PLAN_ATTEMPTS = 3  # re-reads after a transaction lost a race, before a full reconcile


class Sync:
    """Keeps etcd equal to `announced` (container id -> its registrations) on one lease."""

    def __init__(  # noqa: PLR0917 - collaborators
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        log: Any,
        lease: Callable[[], int],
        on_written: Callable[[Mapping[str, str]], None] = lambda _held: None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.log = log
        self.lease = lease  # the keeper's lease, read at each write
        self.on_written = on_written  # told the keys held after each successful write
        self.announced: dict[str, tuple[Registration, ...]] = {}
        self.actual: dict[str, KeyState] = {}  # our keys as last read, plus our writes
        self.held: dict[str, Registration] = {}  # keys we hold on our lease
        self.foreign: set[str] = set()  # keys we want that another lease holds (it may lapse)
        self._clashes: set[tuple[str, int, str]] = set()
        self._duplicates: set[tuple[str, str]] = set()
        # announced changed since the last successful write (a die after the kill that withdrew
        # the container changes nothing, and costs no write)
        self.dirty = False

    # -- reads ------------------------------------------------------------------------------

    def refresh(self, keys: Sequence[str] | None = None) -> None:
        """Read our keys again: those on our lease and those we want (or only `keys`)."""
        if keys is None:
            lease = self.lease()
            on_lease = self.store.lease_keys(lease)[1] if lease > 0 else []
            wanted = {r.key for regs in self.announced.values() for r in regs}
            mine = {k for k in on_lease if key_is_confined(k, self.config.prefix)}
            self.actual = self.store.read_keys(sorted(mine | wanted))
        else:
            fresh = self.store.read_keys(keys)
            for key in keys:
                if key in fresh:
                    self.actual[key] = fresh[key]
                else:
                    self.actual.pop(key, None)

    def recheck_foreign(self) -> None:
        """Read the keys other leases hold that we want: one vanishes when its owner's lease
        lapses, and no event says so."""
        if self.foreign:
            self.refresh(sorted(self.foreign))
            self.write()

    # -- writes -----------------------------------------------------------------------------

    def set(self, container_id: str, registrations: tuple[Registration, ...]) -> None:
        if self.announced.get(container_id, ()) != registrations:
            self.dirty = True
        if registrations:
            self.announced[container_id] = registrations
        else:
            self.announced.pop(container_id, None)

    def write(self) -> bool:
        """Write the difference between what is announced and what etcd holds; False when
        etcd kept changing under us (the caller reconciles). EtcdError goes up."""
        desired = merge(self.announced.values())
        self._report_duplicates(desired.duplicates)
        values = {key: r.value for key, r in desired.registrations.items()}
        for attempt in range(PLAN_ATTEMPTS):
            lease = self.lease()
            todo = plan(values, self.actual, lease)
            self._report_clashes(todo.clashes, lease)
            self.foreign = {
                key
                for key in values
                if (state := self.actual.get(key)) and state.lease not in {0, lease}
            }
            if self._apply([*todo.deletes, *todo.puts], desired.registrations, lease):
                # keep only keys we want or hold: another owner's key we no longer want would
                # otherwise be remembered as it was, and reported as a clash when wanted again
                self.actual = {
                    key: state
                    for key, state in self.actual.items()
                    if key in values or state.lease == lease
                }
                self.held = {
                    key: registration
                    for key, registration in desired.registrations.items()
                    if (state := self.actual.get(key)) and state.lease == lease
                }
                self.metrics.registrations.set(len(self.held))
                self.on_written({key: r.value for key, r in self.held.items()})
                self.dirty = False
                return True
            if attempt + 1 < PLAN_ATTEMPTS:
                self.refresh()
        return False

    def _apply(
        self, ops: Sequence[Put | Delete], wanted: dict[str, Registration], lease: int
    ) -> bool:
        """Apply ops in transactions; False when one lost a race (its keys changed)."""
        all_done = True
        for start in range(0, len(ops), MAX_TXN_OPS):
            batch = ops[start : start + MAX_TXN_OPS]
            succeeded, revision = self.store.txn(batch, lease)
            if not succeeded:
                all_done = False
                continue
            for op in batch:
                if isinstance(op, Put):
                    registration = wanted[op.key]
                    self.actual[op.key] = KeyState(op.value, lease, revision)
                    self.held[op.key] = registration
                    self.metrics.writes.labels("put").inc()
                    self.log.info(
                        "would register" if self.store.dry_run else "registered",
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
                        "would deregister" if self.store.dry_run else "deregistered",
                        key=op.key,
                        container=gone.container_name if gone else None,
                        id=gone.container_id[:12] if gone else None,
                    )
        self.metrics.registrations.set(len(self.held))
        return all_done

    # -- reports ----------------------------------------------------------------------------

    def _report_duplicates(self, duplicates: Sequence[tuple[Registration, Registration]]) -> None:
        """Log each duplicate key once while it lasts; the first container keeps it."""
        current = {(dropped.key, dropped.container_id) for _, dropped in duplicates}
        self._duplicates &= current  # forget resolved ones: a new duplicate is news again
        for kept, dropped in duplicates:
            if (dropped.key, dropped.container_id) not in self._duplicates:
                self._duplicates.add((dropped.key, dropped.container_id))
                self.log.warning(
                    "duplicate key; first container keeps it",
                    key=dropped.key,
                    container=dropped.container_name,
                    holder=kept.container_name,
                    proto=dropped.proto,  # one container's TCP and UDP port of one number
                )

    def _report_clashes(self, clashes: Sequence[Clash], lease: int) -> None:
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
                wanted_by=f"node {self.config.node} (lease {lease:x})",
            )
