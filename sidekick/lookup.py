"""The look-up: Docker events in, each touched container's announcement out, with as few Docker
requests as the event allows.

Runs on: the main loop (the look-ahead's reads at `create` run on its helper threads). Each
event is routed (intake.route); withdrawals need no request and are written first, in one
transaction; first starts of containers created while the agent ran were read at `create`
(sidekick.lookahead); the rest are looked up in one `docker ps` listing, inspected only where
the listing cannot tell. Writes go through `write`, a callable of the loop's that turns etcd
faults into a reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.intake import Action, route
from sidekick.lookahead import LookAhead
from sidekick.model import Announcement, Container, announce
from sidekick.sync import Sync
from sidekick.triage import after_verdict, started_from_read_ahead, triage

BATCH_SECONDS = 0.005  # look-ups written together while they take less than this
VERIFY_AFTER = 1.0  # read-ahead starts are looked up again, together, this long after
GONE_MEMORY = 10.0  # dockerd lists a container as running for up to ~2 s after its `die`
NETWORK_SETTLE = 0.25  # a network connect/disconnect shows in listings up to ~60 ms after its event


class Lookup:
    """Turns events into announcements on the Sync, and keeps what it learnt per container."""

    def __init__(  # noqa: PLR0917 - collaborators
        self,
        config: Config,
        docker: DockerSource,
        look_ahead: LookAhead,
        sync: Sync,
        write: Callable[[], None],
        fault: Callable[[str, Exception], None],
        log: Any,
    ) -> None:
        self.config = config
        self.docker = docker
        self.look_ahead = look_ahead
        self.sync = sync
        self.write = write
        self.fault = fault
        self.log = log
        # container id -> what `docker stop` sends. Not derived from `known`: a listing's
        # record has no stop signal (None) and must not make the look-up forget one an inspect
        # or the read at create found (the look-ahead keeps that until it is taken here).
        self.stop_signals: dict[str, int] = {}
        self.known: dict[str, Container] = {}  # container id -> its last full record
        self.warned: dict[str, str] = {}  # container id -> last problem logged
        # Read-ahead starts to look up again (id -> name), all at once at next_verify: what
        # changed between create and start (a `docker network connect`) is right within 1 s.
        self.to_verify: dict[str, str] = {}
        self.next_verify = float("inf")
        self.gone_at: dict[str, float] = {}  # container id -> when an event ended it
        self.by_network: set[str] = set()  # running containers announced by a network address

    def on_events(self, events: Sequence[DockerEvent]) -> None:
        """Update the announcements the events touch and write the difference."""
        batch = triage(events, self._action)
        for container_id in batch.last:  # a later event decides, not a check of the read-ahead
            self.to_verify.pop(container_id, None)
        for event in events:
            if event.action == "destroy":
                self.stop_signals.pop(event.container_id, None)
                self.known.pop(event.container_id, None)
                self.look_ahead.drop(event.container_id)
        lookups = batch.lookups
        for event in lookups:
            self.gone_at.pop(event.container_id, None)  # started again: the listing is right
        self.withdraw(batch.withdrawals)
        starts = [e for e in lookups if e.action == "start"]
        done = self._apply_read_ahead(starts)  # reads still in flight: looked up instead
        done |= self._apply_verdicts([e for e in lookups if e.action == "health_status"])
        for event in starts:  # a read at create knows the stop signal even when not the ports
            self._stop_signal(event.container_id)
        for container_id in batch.last.keys() - done:  # a read at create serves a first start only
            self.look_ahead.forget(container_id)
        self.look_up(
            {e.container_id: e.name for e in lookups if e.container_id not in done},
            starting={e.container_id for e in starts},
        )
        if settle := {e.container_id: e.name for e in lookups if e.kind == "network"}:
            self.to_verify.update(settle)  # the look just made may have come too soon: again
            self.next_verify = min(self.next_verify, time.monotonic() + NETWORK_SETTLE)
        self._learn_signals(batch.unknown_kills.values())

    def _action(self, event: DockerEvent) -> Action:
        """route(); a network connect or disconnect matters only to a running container
        announced (or skipped) by its network address."""
        if event.kind == "network":
            return Action.LOOK_UP if event.container_id in self.by_network else Action.NOTHING
        return route(event, self._stop_signal(event.container_id))

    def _stop_signal(self, container_id: str) -> int | None:
        """What `docker stop` sends the container, if known: from a read of it, or from its
        read at create, which may have ended after its start (taken here either way, so the
        look-ahead keeps none of it)."""
        if (read := self.look_ahead.stop_signal(container_id)) is not None:
            self.stop_signals.setdefault(container_id, read)
        return self.stop_signals.get(container_id)

    def _learn_signals(self, kills: Iterable[DockerEvent]) -> None:
        """Kills with a signal that may be the container's stop signal, taken after the rest
        of the batch (an inspect can wait on a dying container; the other withdrawals must
        not): one inspect each, for containers that announce something, and a withdrawal
        where the signal is the stop signal."""
        stopping = []
        for event in kills:
            if not self.sync.announced.get(event.container_id):
                continue  # nothing to withdraw: the signal does not matter
            try:
                container = self.docker.inspect(event.container_id)
            except DockerUnavailable as exc:
                self.fault("docker", exc)  # the reconcile after the fault settles it
                return
            if container is not None:
                self.remember(container)
            if container is None or route(event, container.stop_signal) is Action.WITHDRAW:
                stopping.append(event)
        self.withdraw(stopping)

    def withdraw_only(self, events: Sequence[DockerEvent]) -> None:
        """Of these events, apply only the withdrawals (a reconcile's snapshot follows)."""
        last: dict[str, tuple[DockerEvent, Action]] = {}
        for event in events:
            action = route(event, self._stop_signal(event.container_id))
            if action is not Action.NOTHING:
                last[event.container_id] = (event, action)
        self.withdraw(e for e, action in last.values() if action is Action.WITHDRAW)

    def withdraw(self, events: Iterable[DockerEvent]) -> None:
        """Announce nothing for the containers these events end, in one write."""
        gone = list(events)
        now = time.monotonic()
        for event in gone:
            self.set(event.container_id, event.name, Announcement())
            self.gone_at[event.container_id] = now
        if gone:
            self.write()

    def _apply_read_ahead(self, starts: Sequence[DockerEvent]) -> set[str]:
        """Announce the started containers read at create, in one write; their ids."""
        done = set()
        for event in starts:
            ready = self.look_ahead.take(event.container_id)
            if (container := started_from_read_ahead(ready, event, self.config)) is not None:
                self.remember(container)
                self.set(event.container_id, event.name, announce(container, self.config))
                done.add(event.container_id)
                if not container.host_network:  # its ports cannot change before the start
                    self.to_verify[event.container_id] = event.name
        if done:
            self.write()
            self.next_verify = min(self.next_verify, time.monotonic() + VERIFY_AFTER)
        return done

    def _apply_verdicts(self, events: Sequence[DockerEvent]) -> set[str]:
        """A healthcheck's verdict, taken from its event and applied to the container's
        record read before (its ports and labels cannot change while it runs), in one
        write: no Docker request. The ids done; the rest are looked up."""
        done = set()
        for event in events:
            container = after_verdict(self.known.get(event.container_id), event)
            if container is None:
                continue
            self.known[event.container_id] = container
            self.set(event.container_id, event.name, announce(container, self.config))
            done.add(event.container_id)
        if done:
            self.write()
        return done

    def verify_read_ahead(self) -> None:
        """Look the read-ahead starts up again, in one listing, and write any difference."""
        pending, self.to_verify = self.to_verify, {}
        self.next_verify = float("inf")
        self.look_up(pending)

    def look_up(self, names: Mapping[str, str], starting: Collection[str] = ()) -> None:
        """Look containers up in one `docker ps` listing and write them in one transaction.

        What the listing cannot tell (healthchecks, host networking, a container gone
        meanwhile) is inspected, and written as it comes, batched only while the inspects
        take under BATCH_SECONDS, so one slow inspect does not hold back the rest.
        """
        if not names:
            return
        try:
            listed = self.docker.listed(list(names), starting)
        except DockerUnavailable as exc:
            self.fault("docker", exc)  # the reconcile will look again
            return
        for container_id, container in listed.items():
            name = names[container_id] or container.name  # a network event names no container
            self.remember(container)  # a healthcheck's next verdict applies to it, no request
            self.set(container_id, name, announce(container, self.config))
        if listed:
            self.write()
        pending, written = False, time.monotonic()
        for container_id, name in names.items():
            if container_id in listed:
                continue
            try:
                inspected = self.docker.inspect(container_id)
            except DockerUnavailable as exc:
                self.fault("docker", exc)  # the reconcile will look again
                continue
            if inspected is not None:
                self.remember(inspected)
            announcement = announce(inspected, self.config) if inspected else Announcement()
            self.set(container_id, name or (inspected.name if inspected else ""), announcement)
            pending = True
            if time.monotonic() - written >= BATCH_SECONDS:
                self.write()
                pending, written = False, time.monotonic()
        if pending:
            self.write()

    def remember(self, container: Container) -> None:
        """Keep the container's record, and what it says of its stop signal."""
        self.known[container.id] = container
        if container.stop_signal is not None:
            self.stop_signals[container.id] = container.stop_signal

    def set(self, container_id: str, name: str, announcement: Announcement) -> None:
        """Record a container's announcement (logging a new problem once)."""
        if announcement.problem is not None:
            if self.warned.get(container_id) != announcement.problem:
                self.log.warning(
                    "container skipped",
                    container=name,
                    id=container_id[:12],
                    reason=announcement.problem,
                )
            self.warned[container_id] = announcement.problem
        else:
            self.warned.pop(container_id, None)
        self.by_network.discard(container_id)
        if announcement.by_network:  # a network connect or disconnect may change it
            self.by_network.add(container_id)
        self.sync.set(container_id, announcement.registrations)

    def confirm(self, listed: Sequence[Container]) -> list[Container]:
        """A reconcile's listing, with containers an event ended moments ago inspected
        again: dockerd's listing shows a container as running for a while after its `die`
        (measured: up to 2.1 s), where inspect waits for the container and is right.
        DockerUnavailable goes up."""
        now = time.monotonic()
        self.gone_at = {c: t for c, t in self.gone_at.items() if now - t < GONE_MEMORY}
        confirmed = []
        for container in listed:
            if container.id not in self.gone_at:
                confirmed.append(container)
            elif (again := self.docker.inspect(container.id)) is not None and again.running:
                confirmed.append(again)
        return confirmed

    def replace_all(self, containers: Sequence[Container]) -> None:
        """A reconcile's snapshot: these are every running container in scope."""
        seen = {c.id for c in containers}
        for container in containers:
            self.remember(container)
            self.set(container.id, container.name, announce(container, self.config))
        for container_id in set(self.sync.announced) - seen:
            self.sync.set(container_id, ())
        for known in (self.warned, self.stop_signals, self.known):
            for container_id in set(known) - seen:
                known.pop(container_id, None)
        self.by_network &= seen
        self.look_ahead.clear()  # starts and removals drained: their entries are stale
        self.to_verify, self.next_verify = {}, float("inf")  # just read them all
