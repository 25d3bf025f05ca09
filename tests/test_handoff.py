"""The hand-off from the events reader to the loop (sidekick.handoff).

The gate is pure logic on a queue and a lock, table-tested here without servers; the agent
under contention (its turn taken again and again while containers start and die) runs against
the real Docker engine and etcd.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import docker
import pytest
import structlog

from sidekick.docker_source import DockerEvent
from sidekick.handoff import Handoff
from sidekick.intake import CROWD_GAP, DOCKER_CONNECTED, NEW_LEASE, EventReader, Item
from sidekick.metrics import Metrics
from sidekick.reconcile import SETTLE_AFTER
from sidekick.retry import Outages
from tests.conftest import Containers, EtcdServer, wait_for
from tests.test_core import HOST_IP, InProcess, _agent_log, _inprocess, sample  # noqa: F401 - fixtures


def event(action: str, container_id: str = "c1", at: float = 0.0) -> DockerEvent:
    return DockerEvent(action, "", container_id, "web", {}, at=at)


class Recorder:
    """A loop's handler: records what it handled on the caller's thread."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.handled: list[DockerEvent] = []

    def __call__(self, handled: DockerEvent) -> bool:
        if self.accept:
            self.handled.append(handled)
        return self.accept


def drain(out: queue.SimpleQueue[Item]) -> list[Item]:
    items = []
    while not out.empty():
        items.append(out.get_nowait())
    return items


class TestHandoff:
    def test_idle_loop_handles_on_the_readers_thread(self) -> None:
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        handler = Recorder()
        handoff = Handoff(out, handler)
        start = event("start")
        handoff.deliver(start)
        assert handler.handled == [start]
        assert out.empty()

    def test_busy_loop_gets_it_queued(self) -> None:
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        handler = Recorder()
        handoff = Handoff(out, handler)
        start = event("start")
        with handoff.turn:  # the loop is working
            handoff.deliver(start)
        assert handler.handled == []
        assert drain(out) == [start]

    def test_an_event_never_overtakes_one_queued_before_it(self) -> None:
        """The turn is free but the loop has not handled the queued `start` yet: the `die`
        after it is queued behind it, and so is what follows, until the loop took them."""
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        handler = Recorder()
        handoff = Handoff(out, handler)
        start, die, other = event("start"), event("die"), event("start", "c2")
        with handoff.turn:
            handoff.deliver(start)
        handoff.deliver(die)
        assert handler.handled == []
        assert drain(out) == [start, die]
        handoff.took(1)  # the loop handled the start only so far
        handoff.deliver(other)
        assert handler.handled == []
        assert drain(out) == [other]
        handoff.took(2)  # the die and the other start
        last = event("die", "c2")
        handoff.deliver(last)
        assert handler.handled == [last]

    def test_refused_by_the_loop_gets_it_queued(self) -> None:
        """The loop's handler says no (a reconcile due, an inspect that may wait): queued."""
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        handoff = Handoff(out, Recorder(accept=False))
        kill = event("kill")
        handoff.deliver(kill)
        assert drain(out) == [kill]
        assert (handoff.queued, handoff.handled) == (1, 0)

    def test_connection_counts_other_markers_do_not(self) -> None:
        """The stream's (re)connection is ordered with the events; a marker put by another
        thread (a new lease) is not the reader's to count."""
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        handler = Recorder()
        handoff = Handoff(out, handler)
        handoff.put(DOCKER_CONNECTED)
        out.put(NEW_LEASE)
        handoff.deliver(event("start"))
        assert handler.handled == []  # the connection's reconcile comes first
        assert drain(out) == [DOCKER_CONNECTED, NEW_LEASE, event("start")]
        handoff.took(2)  # the connection and the start; the new lease is not counted
        handoff.deliver(event("die"))
        assert [e.action for e in handler.handled] == ["die"]

    def test_the_handler_runs_with_the_turn_held(self) -> None:
        out: queue.SimpleQueue[Item] = queue.SimpleQueue()
        seen: list[bool] = []

        def handle(_event: DockerEvent) -> bool:
            seen.append(handoff.turn.locked())
            return True

        handoff = Handoff(out, handle)
        handoff.deliver(event("start"))
        assert seen == [True]
        assert not handoff.turn.locked()


class Created:
    """The look-ahead, as the reader sees it: the ids of the `create` events."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def created(self, container_id: str) -> None:
        self.ids.append(container_id)


class Routes:
    """The hand-off, as the reader sees it: each event offered (deliver: handled on the
    reader's thread if the loop is idle) or queued for the loop (put), in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def deliver(self, item: DockerEvent) -> None:
        self.seen.append(("offered", item.action, item.container_id))

    def put(self, item: Item) -> None:
        assert isinstance(item, DockerEvent)
        self.seen.append(("queued", item.action, item.container_id))


def follow(events: list[DockerEvent]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The reader's routing of a stream (EventReader._follow): what it offered or queued,
    and the ids it gave the look-ahead."""
    routes, created = Routes(), Created()
    log = structlog.get_logger("test")
    reader = EventReader(
        None,  # type: ignore[arg-type]  # _follow reads the stream it is given
        routes,  # type: ignore[arg-type]  # only deliver() and put() are called
        created,  # type: ignore[arg-type]  # only created() is called
        Metrics(),
        log,
        threading.Event(),
        Outages(log),
    )
    reader._follow(iter(events))
    return routes.seen, created.ids


class TestCrowding:
    """An event that follows another container's by less than CROWD_GAP (dockerd's times) is
    queued for the loop, to be taken with the rest of the burst, while the reader reads on;
    the others are offered to the loop's turn (handled on the reader's thread if it is idle)."""

    def test_one_container_at_a_time_is_offered(self) -> None:
        t = 1_000_000.0
        seen, created = follow(
            [
                event("create", "c1", t),
                event("start", "c1", t + 0.002),  # right after its own create: not a burst
                event("kill", "c1", t + 3),
                event("die", "c1", t + 3.001),
                event("create", "c2", t + 3.001 + CROWD_GAP * 2),
                event("start", "c2", t + 3.003 + CROWD_GAP * 2),
            ]
        )
        assert seen == [
            ("offered", "start", "c1"),
            ("offered", "kill", "c1"),
            ("offered", "die", "c1"),
            ("offered", "start", "c2"),
        ]
        assert created == ["c1", "c2"]

    def test_a_burst_is_queued(self) -> None:
        t = 1_000_000.0
        seen, created = follow(
            [
                event("create", "c1", t),
                event("create", "c2", t + 0.001),
                event("start", "c1", t + 0.010),  # 9 ms after c2's create
                event("start", "c2", t + 0.010 + CROWD_GAP * 0.9),  # after c1's start
                event("kill", "c1", t + 5),  # on its own again
            ]
        )
        assert seen == [
            ("queued", "start", "c1"),
            ("queued", "start", "c2"),
            ("offered", "kill", "c1"),
        ]
        assert created == ["c1", "c2"]

    def test_events_without_a_time_are_not_taken_for_a_burst(self) -> None:
        seen, _ = follow([event("start", "c1"), event("start", "c2")])
        assert seen == [("offered", "start", "c1"), ("offered", "start", "c2")]


# -- the agent, its turn contended ---------------------------------------------------------


class Contender:
    """Takes the loop's turn again and again, a few ms each time, as a busy loop would: the
    events reader finds it taken, free with events still queued, and free with none."""

    def __init__(self, turn: threading.Lock) -> None:
        self.turn = turn
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="contender", daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            with self.turn:
                time.sleep(0.003)
            time.sleep(0.002)

    def __enter__(self) -> Contender:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(5)


@pytest.mark.integration
def test_starts_and_kills_under_contention_leave_etcd_exact(
    inprocess: InProcess,
    containers: Containers,
    live_etcd: EtcdServer,
    docker_client: docker.DockerClient,
    scope: str,
) -> None:
    """Twelve `-p 80` containers started and six of them killed at once, while the loop's turn
    is taken over and over: etcd ends holding exactly the six running ones, from the events
    alone (no reconcile after the settle one; --resync 600). The order itself is pinned by
    TestHandoff: here the races are sampled, not forced."""
    running = inprocess.start(resync=600)
    agent = running.agent
    wait_for(  # the one more reconcile SETTLE_AFTER the stream connected is done
        lambda: agent.loop.next_resync - time.monotonic() > 60,
        timeout=SETTLE_AFTER + 10,
        message="the reconcile after the settle time",
    )
    reconciles = sample(agent, "sidekick_reconcile_duration_seconds_count")
    with Contender(agent.loop.handoff.turn):
        started = []
        threads = []
        for number in range(12):
            labels = {"sidekick.service": f"web{number}"}
            thread = threading.Thread(
                target=lambda labels=labels: started.append(
                    containers.run(labels=labels, ports={"80/tcp": ("127.0.0.1", None)})
                )
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(30)
        assert len(started) == 12
        killers = [threading.Thread(target=c.kill) for c in started[:6]]
        for killer in killers:
            killer.start()
        for killer in killers:
            killer.join(30)

        def expected() -> dict[str, str]:
            keys = {}
            for container in started[6:]:
                container.reload()
                port = container.ports["80/tcp"][0]["HostPort"]
                service = container.labels["sidekick.service"]
                keys[f"/{scope}/{service}-{port}"] = f"127.0.0.1:{port}"  # the bound address
            return keys

        want = expected()
        held: dict[str, str] = {}

        def exact() -> bool:
            held.update(live_etcd.keys(f"/{scope}/"))
            if held == want:
                return True
            print("etcd holds", held)  # shown when the wait fails
            held.clear()
            return False

        wait_for(exact, timeout=15, message=f"etcd to hold exactly {want}")

    assert sample(agent, "sidekick_reconcile_duration_seconds_count") == reconciles
    assert running.error is None
    handoff = agent.loop.handoff
    assert handoff.inline > 0  # both ways were taken
    assert handoff.queued > 1  # more than the stream's connection
    wait_for(lambda: handoff.handled == handoff.queued, message="every queued event handled")


@pytest.mark.integration
def test_a_failure_on_the_readers_thread_ends_the_agent_as_the_loops_would(
    inprocess: InProcess, containers: Containers
) -> None:
    """What handling an event raises on the reader's thread is raised by the loop: the agent's
    run() ends with it (a bug is not a thread restart), as when the loop handles the event."""
    running = inprocess.start()
    agent = running.agent
    injected = RuntimeError("injected: handling an event failed")

    def fail(_events: Any) -> None:
        raise injected

    agent.lookup.on_events = fail  # type: ignore[method-assign,assignment]
    containers.run(ports={"80/tcp": ("127.0.0.1", None)}, labels={"sidekick.service": "web"})
    running.thread.join(20)
    assert not running.thread.is_alive(), "the agent went on after the failure"
    assert running.error is injected
    assert agent.loop.handoff.inline + agent.loop.handoff.handled >= 1
