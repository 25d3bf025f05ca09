"""What the look-up knows of each container, and each container's announcement recorded on the
Sync: last full record, stop signal, problem logged, announced by a network address, ended by an
event moments ago.

Runs on: the loop's work (the main thread, or the events reader holding the loop's turn),
called by the look-up (sidekick.lookup) only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sidekick.config import Config
from sidekick.docker_source import DockerEvent
from sidekick.model import Announcement, Container, announce
from sidekick.sync import Sync
from sidekick.triage import after_verdict

GONE_MEMORY = 10.0  # dockerd lists a container as running for up to ~2 s after its `die`


class Knowledge:
    """Per-container facts kept between events, and the announcements set on the Sync."""

    def __init__(self, config: Config, sync: Sync, log: Any) -> None:
        self.config = config
        self.sync = sync
        self.log = log
        # container id -> what `docker stop` sends. Not derived from `known`: a listing's
        # record has no stop signal (None) and must not make the look-up forget one an inspect
        # or the read at create found (the look-ahead keeps that until it is taken here).
        self.stop_signals: dict[str, int] = {}
        self.known: dict[str, Container] = {}  # container id -> its last full record
        self.warned: dict[str, str] = {}  # container id -> last problem logged
        self.gone_at: dict[str, float] = {}  # container id -> when an event ended it
        self.by_network: set[str] = set()  # running containers announced by a network address
        # Docker's network events matter once a container is announced (or skipped) by a
        # network address, and from the start with --address container; never again not.
        self.networks_matter = config.address == "container"
        self.on_networks_matter: Callable[[], None] = lambda: None  # the reader's resubscribe

    def remember(self, container: Container) -> None:
        """Keep the container's record, and what it says of its stop signal."""
        self.known[container.id] = container
        if container.stop_signal is not None:
            self.stop_signals[container.id] = container.stop_signal

    def started(self, container_id: str) -> None:
        """The container started again: a listing is right about it."""
        self.gone_at.pop(container_id, None)

    def ended(self, container_id: str, name: str, now: float) -> None:
        """An event ended the container: announce nothing, and have a reconcile soon after
        inspect it rather than trust its listing (confirm)."""
        self.set(container_id, name, Announcement())
        self.gone_at[container_id] = now

    def record(self, container_id: str, name: str, container: Container | None) -> None:
        """Keep a read of the container (a healthcheck's next verdict then applies to it with
        no request) and record its announcement; None: it is gone, announce nothing."""
        if container is not None:
            self.remember(container)
        announcement = announce(container, self.config) if container is not None else Announcement()
        self.set(container_id, name, announcement)

    def verdict(self, event: DockerEvent) -> bool:
        """Apply a healthcheck's verdict, taken from its event, to the container's record read
        before, and record its announcement; False when that record cannot tell."""
        container = after_verdict(self.known.get(event.container_id), event)
        if container is None:
            return False
        self.known[event.container_id] = container
        self.set(event.container_id, event.name, announce(container, self.config))
        return True

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
            if not self.networks_matter:
                self.networks_matter = True
                self.on_networks_matter()
        self.sync.set(container_id, announcement.registrations)

    def confirm(
        self, listed: Sequence[Container], inspect: Callable[[str], Container | None]
    ) -> list[Container]:
        """A reconcile's listing, with containers an event ended moments ago inspected
        again: dockerd's listing shows a container as running for a while after its `die`
        (measured: up to 2.1 s), where inspect waits for the container and is right.
        DockerUnavailable (from `inspect`) goes up."""
        now = time.monotonic()
        self.gone_at = {c: t for c, t in self.gone_at.items() if now - t < GONE_MEMORY}
        confirmed = []
        for container in listed:
            if container.id not in self.gone_at:
                confirmed.append(container)
            elif (again := inspect(container.id)) is not None and again.running:
                confirmed.append(again)
        return confirmed

    def replace_all(self, containers: Sequence[Container]) -> None:
        """A reconcile's snapshot: these are every running container in scope."""
        seen = {c.id for c in containers}
        for container in containers:
            self.record(container.id, container.name, container)
        for container_id in set(self.sync.announced) - seen:
            self.sync.set(container_id, ())
        for known in (self.warned, self.stop_signals, self.known):
            for container_id in set(known) - seen:
                known.pop(container_id, None)
        self.by_network &= seen
