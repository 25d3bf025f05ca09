"""sidekick.sync's bookkeeping, with a dry-run store (no etcd request is made)."""

from __future__ import annotations

import io

import structlog

from sidekick.config import Config, Endpoint
from sidekick.metrics import Metrics
from sidekick.model import Registration
from sidekick.store import DryRunStore
from sidekick.sync import Sync


def test_dirty_only_when_the_announcements_change():
    """A write is needed only after an announcement changed: the loop skips it otherwise
    (a `die` after the `kill` that withdrew the container, a `destroy`)."""
    out = io.StringIO()
    store = DryRunStore([Endpoint("http", "127.0.0.1", 9)], 1.0, out)  # never contacted
    config = Config(prefix="/x", host_ip="192.0.2.5", node="n")
    sync = Sync(config, store, Metrics(), structlog.get_logger("test"), lambda: 7)
    web = (Registration("/x/web-80", "192.0.2.5:80", "c1", "web"),)
    assert not sync.dirty
    sync.set("c1", web)
    assert sync.dirty
    assert sync.write()
    assert not sync.dirty
    assert "would put /x/web-80 = 192.0.2.5:80" in out.getvalue()
    sync.set("c1", web)  # the same again
    sync.set("c2", ())  # nothing, for a container that announced nothing
    assert not sync.dirty
    sync.set("c1", ())
    assert sync.dirty
    assert sync.write()
    assert "would delete /x/web-80" in out.getvalue()
    assert not sync.dirty
