"""sidekick.sync's bookkeeping, with a dry-run store (no etcd request is made), and the
loop's use of it."""

from __future__ import annotations

import io
import types

import structlog
import tenacity

from sidekick.config import Config, Endpoint
from sidekick.loop import Loop, Parts
from sidekick.metrics import Metrics
from sidekick.model import Registration
from sidekick.store import DryRunStore
from sidekick.sync import Sync


def test_dirty_only_when_the_announcements_change():
    """A write is needed only after an announcement changed: the loop skips it otherwise
    (a `die` after the `kill` that withdrew the container)."""
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


class _CountingSync:
    """Stands in for the Sync the loop drives: counts write passes."""

    def __init__(self) -> None:
        self.dirty = False
        self.foreign: set[str] = set()
        self.writes = 0

    def write(self) -> bool:
        self.writes += 1
        self.dirty = False
        return True


def test_the_loop_makes_a_write_pass_only_when_the_sync_is_dirty():
    """Loop.write (the look-up's write after each batch) skips the pass when no announcement
    changed since the last successful write."""
    sync = _CountingSync()
    parts = Parts(
        config=Config(prefix="/x", host_ip="192.0.2.5", node="n"),
        store=None,  # type: ignore[arg-type]  # not reached: the sync stands in for the writes
        docker=None,  # type: ignore[arg-type]
        keeper=types.SimpleNamespace(lease=7),  # type: ignore[arg-type]
        sync=sync,  # type: ignore[arg-type]
        supervisor=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        notifier=None,  # type: ignore[arg-type]
        outages=None,  # type: ignore[arg-type]
        log=structlog.get_logger("test"),
        status=lambda: "",
    )
    loop = Loop(parts, retry_wait=tenacity.wait_none())
    loop.write()
    assert sync.writes == 0
    sync.dirty = True
    loop.write()
    assert (sync.writes, sync.dirty, loop.needs_reconcile) == (1, False, False)
