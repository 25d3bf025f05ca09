"""triage: what a batch of events asks of the look-up (pure: no servers)."""

from __future__ import annotations

import signal
from typing import Any

from sidekick.config import Config
from sidekick.docker_parse import container_from_inspect
from sidekick.docker_source import DockerEvent
from sidekick.intake import Action, route
from sidekick.model import Container
from sidekick.triage import after_verdict, started_from_read_ahead, triage

SIGHUP = str(int(signal.SIGHUP))


def event(
    action: str, container_id: str = "c1", kind: str = "container", **extra: str
) -> DockerEvent:
    detail = extra.pop("detail", "")
    return DockerEvent(action, detail, container_id, extra.pop("name", "web"), extra, kind)


def by_route(event: DockerEvent) -> Action:
    """The look-up's routing with no stop signal known and every network event news."""
    return Action.LOOK_UP if event.kind == "network" else route(event, None)


def container(**fields: Any) -> Container:
    """A running container "web" (c1), with these fields changed."""
    return container_from_inspect({})._replace(
        **{"id": "c1", "name": "web", "running": True, **fields}
    )


class TestTriage:
    """The last event that changes something decides, one a container."""

    def test_last_event_decides(self) -> None:
        """A start after a die is a start; a die after a start is a withdrawal."""
        batch = triage([event("die"), event("start"), event("die", "c2")], by_route)
        assert [(e.container_id, e.action) for e in batch.lookups] == [("c1", "start")]
        assert [(e.container_id, e.action) for e in batch.withdrawals] == [("c2", "die")]

    def test_nothing_changes_nothing(self) -> None:
        """Events that change nothing (create, exec) leave no entry."""
        assert triage([event("create"), event("exec_start")], by_route).last == {}

    def test_network_event_after_withdrawal_is_not_news(self) -> None:
        """The disconnect of a container that just died leaves its withdrawal standing."""
        batch = triage([event("die"), event("disconnect", kind="network")], by_route)
        assert [e.action for e in batch.withdrawals] == ["die"]
        assert batch.lookups == []

    def test_unknown_kill_counts_until_a_later_event_decides(self) -> None:
        """A kill that may be the stop signal is learnt, unless its container's next event
        decides; it never replaces an earlier decision."""
        alone = triage([event("start"), event("kill", signal=SIGHUP)], by_route)
        assert list(alone.unknown_kills) == ["c1"]
        assert [e.action for e in alone.lookups] == ["start"]
        decided = triage([event("kill", signal=SIGHUP), event("die")], by_route)
        assert decided.unknown_kills == {}
        assert [e.action for e in decided.withdrawals] == ["die"]


class TestReadAhead:
    """A read at create serves a start unless the container's address is on a network."""

    def test_host_address_serves_with_the_events_name(self) -> None:
        ready = container(name="old")
        started = started_from_read_ahead(ready, event("start", name="new"), Config())
        assert started is not None and started.name == "new"

    def test_no_read_or_a_network_address_does_not(self) -> None:
        assert started_from_read_ahead(None, event("start"), Config()) is None
        by_network = container(labels={"sidekick.address": "container"})
        assert started_from_read_ahead(by_network, event("start"), Config()) is None


class TestVerdict:
    """A healthcheck's verdict applies to the record read before, when it has one."""

    def test_verdict_applies(self) -> None:
        known = container(health="starting", running=True)
        after = after_verdict(known, event("health_status", detail="healthy"))
        assert after == known._replace(health="healthy", running=True, paused=False)

    def test_no_record_no_healthcheck_or_odd_verdict(self) -> None:
        healthy = event("health_status", detail="healthy")
        assert after_verdict(None, healthy) is None
        assert after_verdict(container(health=None), healthy) is None
        odd = event("health_status", detail="?")
        assert after_verdict(container(health="starting"), odd) is None
