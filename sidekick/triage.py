"""Pure: what a batch of Docker events asks of the look-up, and which records serve without a
Docker request. No servers and no state: table-tested like model.plan.

Runs on: the loop's work, called by the look-up (sidekick.lookup); pure, so any thread could.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from sidekick.config import Config
from sidekick.docker_source import DockerEvent
from sidekick.intake import Action
from sidekick.model import Container, address_mode

HEALTH_VERDICTS = frozenset({"healthy", "unhealthy", "starting"})  # `health_status: X`


class Batch(NamedTuple):
    """A batch of events, one deciding event a container."""

    last: dict[str, tuple[DockerEvent, Action]]  # container id -> its last event that changes
    unknown_kills: dict[str, DockerEvent]  # kills that may be the stop signal, none after them

    @property
    def withdrawals(self) -> list[DockerEvent]:
        return [e for e, action in self.last.values() if action is Action.WITHDRAW]

    @property
    def lookups(self) -> list[DockerEvent]:
        """The deciding events that are not withdrawals: starts, verdicts, changes."""
        return [e for e, action in self.last.values() if action is not Action.WITHDRAW]


def triage(events: Sequence[DockerEvent], action_of: Callable[[DockerEvent], Action]) -> Batch:
    """The last event that changes something decides, per container; a network event after
    a container's withdrawal is not news; a kill whose signal may be the stop signal counts
    only while no later event of its container decides."""
    last: dict[str, tuple[DockerEvent, Action]] = {}
    unknown_kills: dict[str, DockerEvent] = {}
    for event in events:
        action = action_of(event)
        ended = event.container_id in last and last[event.container_id][1] is Action.WITHDRAW
        if event.kind == "network" and ended:
            continue  # the disconnect of a container that just died is not news
        if action is Action.LEARN_SIGNAL:
            unknown_kills[event.container_id] = event
        elif action is not Action.NOTHING:
            last[event.container_id] = (event, action)
            unknown_kills.pop(event.container_id, None)
    return Batch(last, unknown_kills)


def started_from_read_ahead(
    ready: Container | None, event: DockerEvent, config: Config
) -> Container | None:
    """The container a `start` starts, from its read at create; None when there is no such
    read or it cannot serve (an address on a network is known only once the container runs:
    look it up)."""
    if ready is None or address_mode(ready, config) == "container":
        return None
    return ready._replace(name=event.name or ready.name)


def after_verdict(known: Container | None, event: DockerEvent) -> Container | None:
    """The container as a `health_status` event leaves it, from its record read before (its
    ports and labels cannot change while it runs); None when that record cannot tell (none,
    no healthcheck in it, a verdict we do not know)."""
    if known is None or known.health is None or event.detail not in HEALTH_VERDICTS:
        return None
    return known._replace(
        health=event.detail, running=True, paused=False, name=event.name or known.name
    )
