"""The look-up: Docker events in, each touched container's announcement out, with as few Docker
requests as the event allows.

Runs on: the loop's work: the main thread, or the events reader holding the loop's turn
(sidekick.handoff), one at a time; the look-ahead's reads at `create` run on its helper
threads. Each event is routed (intake.route); withdrawals need no request and are written
first, in one transaction; first starts of containers created while the agent ran were read at
`create` (sidekick.lookahead); the rest are looked up in one `docker ps` listing, inspected
only where the listing cannot tell. Writes go through `write`, a callable of the loop's that
turns etcd faults into a reconcile. What it learnt per container is kept by sidekick.knowledge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sidekick.config import Config
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.intake import Action, route
from sidekick.knowledge import Knowledge
from sidekick.lookahead import LookAhead
from sidekick.model import Container
from sidekick.sync import Sync
from sidekick.triage import started_from_read_ahead, triage

BATCH_SECONDS = 0.005  # look-ups written together while they take less than this
VERIFY_AFTER = 1.0  # read-ahead starts are looked up again, together, this long after
NETWORK_SETTLE = 0.25  # a network connect/disconnect shows in listings up to ~60 ms after its event


class Lookup:
    """Turns events into announcements on the Sync, through what it learnt per container."""

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
        self.knowledge = Knowledge(config, sync, log)  # what it learnt per container
        # Read-ahead starts to look up again (id -> name), all at once at next_verify: what
        # changed between create and start (a `docker network connect`) is right within 1 s.
        self.to_verify: dict[str, str] = {}
        self.next_verify = float("inf")

    def on_events(self, events: Sequence[DockerEvent]) -> None:
        """Update the announcements the events touch and write the difference."""
        batch = triage(events, self._action)
        for container_id in batch.last:  # a later event decides, not a check of the read-ahead
            self.to_verify.pop(container_id, None)
        lookups = batch.lookups
        for event in lookups:
            self.knowledge.started(event.container_id)
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
            by_network = event.container_id in self.knowledge.by_network
            return Action.LOOK_UP if by_network else Action.NOTHING
        return route(event, self._stop_signal(event.container_id))

    def may_wait_on_docker(self, event: DockerEvent) -> bool:
        """Whether `event` may need a request that waits on a dying container: a kill whose
        signal may be the stop signal of a container that announces something (its inspect)."""
        return event.action == "kill" and (
            self._action(event) is Action.LEARN_SIGNAL and self._announces(event.container_id)
        )

    def _announces(self, container_id: str) -> bool:
        """Whether the container announces something (a kill can withdraw it)."""
        return bool(self.sync.announced.get(container_id))

    def _stop_signal(self, container_id: str) -> int | None:
        """What `docker stop` sends the container, if known: from a read of it, or from its
        read at create, which may have ended after its start (taken here either way, so the
        look-ahead keeps none of it)."""
        if (read := self.look_ahead.stop_signal(container_id)) is not None:
            self.knowledge.stop_signals.setdefault(container_id, read)
        return self.knowledge.stop_signals.get(container_id)

    def _learn_signals(self, kills: Iterable[DockerEvent]) -> None:
        """Kills with a signal that may be the container's stop signal, taken after the rest
        of the batch (an inspect can wait on a dying container; the other withdrawals must
        not): one inspect each, for containers that announce something, and a withdrawal
        where the signal is the stop signal."""
        stopping = []
        for event in kills:
            if not self._announces(event.container_id):
                continue  # nothing to withdraw: the signal does not matter
            try:
                container = self.docker.inspect(event.container_id)
            except DockerUnavailable as exc:
                self.fault("docker", exc)  # the reconcile after the fault settles it
                return
            if container is not None:
                self.knowledge.remember(container)
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
            self.knowledge.ended(event.container_id, event.name, now)
        if gone:
            self.write()

    def _apply_read_ahead(self, starts: Sequence[DockerEvent]) -> set[str]:
        """Announce the started containers read at create, in one write; their ids."""
        done = set()
        for event in starts:
            ready = self.look_ahead.take(event.container_id)
            if (container := started_from_read_ahead(ready, event, self.config)) is not None:
                self.knowledge.record(event.container_id, event.name, container)
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
        done = {e.container_id for e in events if self.knowledge.verdict(e)}
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
            self.knowledge.record(container_id, name, container)
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
            named = name or (inspected.name if inspected else "")
            self.knowledge.record(container_id, named, inspected)
            pending = True
            if time.monotonic() - written >= BATCH_SECONDS:
                self.write()
                pending, written = False, time.monotonic()
        if pending:
            self.write()

    def confirm(self, listed: Sequence[Container]) -> list[Container]:
        """A reconcile's listing, with containers an event ended moments ago inspected again
        (Knowledge.confirm). DockerUnavailable goes up."""
        return self.knowledge.confirm(listed, self.docker.inspect)

    def replace_all(self, containers: Sequence[Container]) -> None:
        """A reconcile's snapshot: these are every running container in scope."""
        self.knowledge.replace_all(containers)
        # starts and removals drained: their entries are stale, not their stop signals
        self.look_ahead.clear(running={c.id for c in containers})
        self.to_verify, self.next_verify = {}, float("inf")  # just read them all
