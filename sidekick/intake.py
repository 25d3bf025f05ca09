"""Event intake: the Docker events reader thread, and route(), the pure decision of what an
event means for the container's keys.

Runs on: EventReader runs on its own thread ("docker-events"); it reads the stream and hands
each record to the loop (sidekick.handoff: handled on this thread when the loop is idle, queued
otherwise; an event that may wait on a dying container is always queued, since dockerd drops
events for a slow reader, and so is one that follows another container's event by less than
CROWD_GAP, so that a burst is taken together while this thread reads on), handing `create` to
the look-ahead. route() is pure and is called wherever the loop's work runs.
"""

from __future__ import annotations

import enum
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidekick.docker_parse import signal_number
from sidekick.docker_source import DockerEvent, DockerSource, DockerUnavailable
from sidekick.lookahead import LookAhead
from sidekick.metrics import Metrics
from sidekick.retry import Outages, delay

if TYPE_CHECKING:
    from sidekick.handoff import Handoff


class Action(enum.Enum):
    """What the loop does with a container after an event."""

    WITHDRAW = "withdraw"  # it announces nothing now; no need to ask Docker
    START = "start"  # a start: the look-ahead may know it already, else look it up
    LOOK_UP = "look-up"  # ask Docker what it announces now
    LEARN_SIGNAL = "learn-signal"  # a kill with a signal that may be its stop signal: inspect
    NOTHING = "nothing"  # e.g. `docker kill -s HUP`: the container goes on serving


# `docker stop` sends the container's own stop signal, SIGTERM unless the image or `docker run
# --stop-signal` says otherwise; SIGKILL ends any container.
ALWAYS_STOPPING = frozenset({signal.SIGTERM, signal.SIGKILL})
GONE = frozenset({"die", "stop", "destroy", "pause"})  # stop, destroy: not followed, but final
CHANGED = frozenset({"restart", "unpause", "health_status"})


def route(event: DockerEvent, stop_signal: int | None) -> Action:
    """What `event` means, given the container's stop signal (None: not known yet).

    A `kill` with SIGTERM, SIGKILL or the container's own stop signal (SIGWINCH for httpd,
    SIGQUIT for nginx) is `docker stop`'s first step: withdraw at once, before the graceful
    drain. Any other signal (a reload) changes nothing; an unknown stop signal is learnt.
    """
    if event.action in GONE:
        return Action.WITHDRAW
    if event.action == "kill":
        sent = signal_number(event.attributes.get("signal"))
        if sent is None or sent in ALWAYS_STOPPING or sent == stop_signal:
            return Action.WITHDRAW
        return Action.NOTHING if stop_signal is not None else Action.LEARN_SIGNAL
    if event.action == "start":
        return Action.START
    if event.action in CHANGED:
        return Action.LOOK_UP
    return Action.NOTHING


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DOCKER_CONNECTED = _Marker("docker-connected")  # the stream (re)opened: reconcile
NEW_LEASE = _Marker("new-lease")  # the keeper granted or resumed a lease (or etcd refused us)
RESYNC = _Marker("resync")  # SIGHUP: reconcile now
STOP = _Marker("stop")  # SIGTERM / SIGINT
WAKE = _Marker("wake")  # an event handled on the reader's thread moved a deadline of the loop
# The event just before was another container's, this soon before (dockerd's times): a burst,
# whose events the loop takes together while the reader reads on.
CROWD_GAP = 0.05

Item = DockerEvent | _Marker


class EventReader:
    """Follows the Docker events stream and hands every record to the loop."""

    def __init__(  # noqa: PLR0917 - collaborators
        self,
        docker: DockerSource,
        out: Handoff,
        look_ahead: LookAhead,
        metrics: Metrics,
        log: Any,
        stopping: threading.Event,
        outages: Outages,
    ) -> None:
        self.docker = docker
        self.out = out
        self.look_ahead = look_ahead
        self.metrics = metrics
        self.log = log
        self.stopping = stopping
        self.outages = outages
        self.connected = False  # the events stream is open
        self.on_connect: Callable[[], None] = lambda: None
        # whether network connects and disconnects matter yet (set by the agent), and
        # whether the open stream carries them
        self.networks_matter: Callable[[], bool] = lambda: True
        self.with_networks = True

    def run(self) -> None:
        quick_ends = 0  # streams that ended at once (e.g. a proxy refusing /events)
        attempt = 0
        while not self.stopping.is_set():
            self.with_networks = self.networks_matter()
            try:
                events = self.docker.open_events(networks=self.with_networks)
            except DockerUnavailable as exc:
                attempt += 1
                self.outages.down("docker", str(exc))
                self.metrics.errors.labels("docker", type(exc).__name__).inc()
                self.stopping.wait(delay(attempt, 1.0, 0.1))
                continue
            if self._lacks_networks():
                self.docker.close_events()  # they came to matter while it opened: again
                continue
            self.outages.up("docker")
            attempt = 0
            connected = time.monotonic()
            self.connected = True
            self.out.put(DOCKER_CONNECTED)
            self.on_connect()
            self._follow(events)
            self.connected = False
            if self.stopping.is_set():
                return
            if self._lacks_networks():
                self.log.info("docker events: following network connections from now on")
                continue  # resubscribe(): the reconnection's reconcile covers the gap
            self.metrics.errors.labels("docker", "stream-ended").inc()
            self.log.warning("docker event stream ended; reconnecting")
            quick_ends = quick_ends + 1 if time.monotonic() - connected < 1.0 else 0
            if quick_ends:
                self.stopping.wait(min(1.0, 0.05 * 2**quick_ends))

    def _lacks_networks(self) -> bool:
        """Network connects and disconnects matter now, and the open stream leaves them out."""
        return not self.with_networks and self.networks_matter()

    def resubscribe(self) -> None:
        """From the loop's work: network connects and disconnects have come to matter (a
        container is announced by a network address); reopen the stream with them, unless it
        has them. Its DOCKER_CONNECTED reconciles what came between the two streams."""
        if not self.with_networks:
            self.docker.close_events()

    def _follow(self, events: Any) -> None:
        last_id, last_at = "", 0.0
        try:
            for event in events:
                self.metrics.docker_events.labels(event.action).inc()
                crowded = event.container_id != last_id and 0 < event.at < last_at + CROWD_GAP
                last_id, last_at = event.container_id, event.at
                if event.action == "create":
                    self.look_ahead.created(event.container_id)
                elif crowded:  # a burst: the loop takes it with the rest while this reads on
                    self.out.put(event)
                else:
                    self.out.deliver(event)
        except (DockerUnavailable, OSError, ValueError) as exc:
            self.log.error("docker event stream failed", error=repr(exc))
