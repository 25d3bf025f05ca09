"""sidekick.lookahead against the real Docker engine: containers read at `create`."""

from __future__ import annotations

import time

import pytest
import structlog

from sidekick.docker_source import DockerSource
from sidekick.lookahead import LookAhead
from sidekick.model import PortBinding
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


def test_take_waits_for_the_read_and_uses_it_once(look_ahead, containers, scope):
    """take() waits for a read in flight; the entry is gone after one take."""
    port = free_port()
    container = create(containers, scope, port)
    look_ahead.created(container.id)
    ready = look_ahead.take(container.id, deadline=time.monotonic() + 10)
    assert ready is not None
    assert (ready.id, ready.running, ready.bindings) == (
        container.id,
        True,
        (PortBinding(80, "127.0.0.1", port),),
    )
    assert look_ahead.take(container.id, deadline=time.monotonic() + 10) is None
    assert len(look_ahead) == 0


def test_unknown_forgotten_and_unreadable(look_ahead, containers, scope):
    """Nothing for a container never created, one forgotten, or one removed before its read."""
    assert look_ahead.take("0" * 64, deadline=time.monotonic() + 1) is None
    container = create(containers, scope, free_port())
    look_ahead.created(container.id)
    look_ahead.forget(container.id)
    assert look_ahead.take(container.id, deadline=time.monotonic() + 1) is None
    gone = create(containers, scope, free_port())
    gone.remove()
    look_ahead.created(gone.id)
    assert look_ahead.take(gone.id, deadline=time.monotonic() + 10) is None
    deadline = time.monotonic() + 10
    while len(look_ahead) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(look_ahead) == 0  # the failed read left nothing behind


def test_clear(look_ahead, containers, scope):
    container = create(containers, scope, free_port())
    look_ahead.created(container.id)
    look_ahead.clear()
    assert look_ahead.take(container.id, deadline=time.monotonic() + 1) is None
