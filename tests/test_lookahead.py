"""sidekick.lookahead against the real Docker engine: containers read at `create`."""

from __future__ import annotations

import io
import signal
import time
from typing import Any

import pytest
import structlog

from sidekick.config import Config, Endpoint
from sidekick.docker_source import DockerEvent, DockerSource
from sidekick.lookahead import LookAhead
from sidekick.lookup import Lookup
from sidekick.metrics import Metrics
from sidekick.model import PortBinding
from sidekick.store import DryRunStore
from sidekick.sync import Sync
from tests.conftest import TEST_LABEL, Containers, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(name="look_ahead")
def _look_ahead():
    source = DockerSource(None, timeout=10, label_filters=[], opted_in_only=True)
    look_ahead = LookAhead(source, structlog.get_logger("test"), threads=2)
    look_ahead.start()
    yield look_ahead
    look_ahead.stop()


def create(containers: Containers, scope: str, port: int):
    return containers.client.containers.create(
        containers.image,
        "httpd -f -p 80",
        labels={TEST_LABEL: scope, "sidekick.enable": "true"},
        ports={"80/tcp": ("127.0.0.1", port)},
    )


def quitting(containers: Containers, scope: str) -> Any:
    """A container created (not started) with SIGQUIT for its stop signal."""
    return containers.client.containers.create(
        containers.image,
        "httpd -f -p 80",
        labels={TEST_LABEL: scope, "sidekick.enable": "true"},
        ports={"80/tcp": ("127.0.0.1", free_port())},
        stop_signal="SIGQUIT",
    )


def read_ended(look_ahead: LookAhead, container_id: str) -> None:
    """Wait until the look-ahead's read of this container is no longer in flight."""
    deadline = time.monotonic() + 10
    while look_ahead.pending(container_id):
        assert time.monotonic() < deadline, "the read at create never ended"
        time.sleep(0.01)


def test_take_uses_a_finished_read_once(look_ahead, containers, scope):
    """A read that has ended is taken once; the entry is gone after it."""
    port = free_port()
    container = create(containers, scope, port)
    look_ahead.created(container.id)
    read_ended(look_ahead, container.id)
    ready = look_ahead.take(container.id)
    assert ready is not None
    assert (ready.id, ready.running, ready.bindings) == (
        container.id,
        True,
        (PortBinding(80, "127.0.0.1", port),),
    )
    assert look_ahead.take(container.id) is None
    assert len(look_ahead) == 0


def test_a_read_in_flight_is_not_waited_for_and_keeps_the_stop_signal(containers, scope):
    """take() never waits: a read still queued at the start is not used, yet the stop signal
    it finds is kept for the `kill` of `docker stop`, and its entry goes."""
    container = containers.client.containers.create(
        containers.image,
        "httpd -f -p 80",
        labels={TEST_LABEL: scope, "sidekick.enable": "true"},
        ports={"80/tcp": ("127.0.0.1", free_port())},
        stop_signal="SIGQUIT",
    )
    source = DockerSource(None, timeout=10, label_filters=[], opted_in_only=True)
    look_ahead = LookAhead(source, structlog.get_logger("test"), threads=1)
    look_ahead.created(container.id)  # no helper runs yet: the read stays queued
    assert look_ahead.pending(container.id)
    assert look_ahead.take(container.id) is None
    look_ahead.start()
    try:
        read_ended(look_ahead, container.id)
        assert look_ahead.stop_signal(container.id) == signal.SIGQUIT
        assert look_ahead.take(container.id) is None  # the read's result was not kept
        assert len(look_ahead) == 0
    finally:
        look_ahead.stop()


def test_unknown_forgotten_and_unreadable(look_ahead, containers, scope):
    """Nothing for a container never created, one forgotten, or one removed before its read."""
    assert look_ahead.take("0" * 64) is None
    container = create(containers, scope, free_port())
    look_ahead.created(container.id)
    look_ahead.forget(container.id)
    read_ended(look_ahead, container.id)
    assert look_ahead.take(container.id) is None
    gone = create(containers, scope, free_port())
    gone.remove()
    look_ahead.created(gone.id)
    read_ended(look_ahead, gone.id)
    assert look_ahead.take(gone.id) is None
    deadline = time.monotonic() + 10
    while len(look_ahead) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(look_ahead) == 0  # the failed read left nothing behind


def test_clear_and_drop(containers, scope):
    """A container cleared (a reconcile) while its read waits keeps only the stop signal the
    read finds; one dropped (too many waiting) keeps nothing; a container after them in the
    queue is read as usual."""
    source = DockerSource(None, timeout=10, label_filters=[], opted_in_only=True)
    look_ahead = LookAhead(source, structlog.get_logger("test"), threads=1)
    cleared, dropped, later = (
        containers.client.containers.create(
            containers.image,
            "httpd -f -p 80",
            labels={TEST_LABEL: scope, "sidekick.enable": "true"},
            ports={"80/tcp": ("127.0.0.1", free_port())},
            stop_signal="SIGQUIT",
        )
        for _ in range(3)
    )
    look_ahead.created(cleared.id)  # no helper runs yet: queued
    look_ahead.clear()
    look_ahead.created(dropped.id)
    look_ahead.drop(dropped.id)
    look_ahead.created(later.id)
    look_ahead.start()  # reads the queue in order: cleared, dropped, then later
    try:
        read_ended(look_ahead, later.id)
        assert look_ahead.stop_signal(later.id) == signal.SIGQUIT  # the helper went past both
        for gone in (cleared, dropped):
            assert look_ahead.take(gone.id) is None
        assert look_ahead.stop_signal(cleared.id) == signal.SIGQUIT
        assert look_ahead.stop_signal(dropped.id) is None
        assert look_ahead.take(later.id) is not None
        assert len(look_ahead) == 0
    finally:
        look_ahead.stop()


def test_a_reconcile_keeps_the_stop_signals_docker_stop_needs(containers, scope):
    """A reconcile's clear() drops every finished read, but not the stop signals its snapshot
    cannot tell, by which a stopping `kill` is told apart from a reload: a running
    container's, and one found, or still to be found, since the clear before (a container
    created meanwhile but not started is not in the snapshot). At the next clear, that of a
    container still not running goes."""

    running, recent, old, queued = (quitting(containers, scope) for _ in range(4))
    source = DockerSource(None, timeout=10, label_filters=[], opted_in_only=True)
    look_ahead = LookAhead(source, structlog.get_logger("test"), threads=1)
    look_ahead.start()
    try:
        for container in (running, recent, old):
            look_ahead.created(container.id)
            read_ended(look_ahead, container.id)
    finally:
        look_ahead.stop()
    look_ahead.clear(running={running.id})
    assert look_ahead.take(running.id) is None  # a read from before the snapshot: not used
    assert len(look_ahead) == 0
    assert look_ahead.stop_signal(recent.id) == signal.SIGQUIT  # created, not started yet
    look_ahead.clear(running={running.id})  # the next reconcile: old's is old now
    assert look_ahead.stop_signal(running.id) == signal.SIGQUIT
    assert look_ahead.stop_signal(old.id) is None

    helper = LookAhead(source, structlog.get_logger("test"), threads=1)
    helper.created(queued.id)  # no helper runs yet: the read stays queued
    helper.clear()
    helper.start()
    try:
        read_ended(helper, queued.id)
        assert helper.stop_signal(queued.id) == signal.SIGQUIT
        assert helper.take(queued.id) is None
        assert len(helper) == 0
    finally:
        helper.stop()


def test_every_reconcile_keeps_the_signals_of_the_running_containers(containers, scope):
    """Lookup.replace_all, which every reconcile goes through, tells the look-ahead which
    containers run: after two reconciles (at the second nothing is recent any more), the
    `kill` of `docker stop` with a running container's own stop signal still withdraws it
    with no inspect of the dying container; the signal of one never started is gone."""

    started, never_started = quitting(containers, scope), quitting(containers, scope)
    source = DockerSource(
        None, timeout=10, label_filters=[f"{TEST_LABEL}={scope}"], opted_in_only=True
    )
    look_ahead = LookAhead(source, structlog.get_logger("test"), threads=1)
    config = Config(prefix="/x", host_ip="127.0.0.1", node="n")
    store = DryRunStore([Endpoint("http", "127.0.0.1", 9)], 1.0, io.StringIO())  # never asked
    sync = Sync(config, store, Metrics(), structlog.get_logger("test"), lambda: 7)
    lookup = Lookup(
        config, source, look_ahead, sync, lambda: None, _no_fault, structlog.get_logger("test")
    )
    look_ahead.start()
    try:
        for container in (started, never_started):
            look_ahead.created(container.id)
            read_ended(look_ahead, container.id)
    finally:
        look_ahead.stop()
    started.start()
    snapshot = source.running_containers()
    assert [c.id for c in snapshot] == [started.id]
    for _ in range(2):
        lookup.replace_all(snapshot)
    assert sync.announced.get(started.id)  # a kill can withdraw it
    stop = DockerEvent("kill", "", started.id, started.name, {"signal": str(int(signal.SIGQUIT))})
    assert not lookup.may_wait_on_docker(stop)  # its stop signal is known: no inspect
    lookup.on_events([stop])
    assert not sync.announced.get(started.id)  # withdrawn at the kill
    assert look_ahead.stop_signal(never_started.id) is None


def _no_fault(peer: str, exc: Exception) -> None:
    raise AssertionError(f"{peer}: {exc}")
