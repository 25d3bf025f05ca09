"""`sidekick render`: confd's job for the seed's nginx, done here.

Watches a prefix in etcd and renders a Jinja2 template to a file each time what it renders
changes. This module is the renderer's loop, and the module the CLI imports; its parts are
sidekick.render_options (the options), sidekick.render_template (the template and the keys it
reads), sidekick.render_watch (the etcd watch) and sidekick.render_output (the check, the swap
and the reload).

Two threads: the watch thread applies each change to the keys it keeps (a dict, and the keys
and the one-level values kept sorted as they change, so no render sorts 100,000 values again)
and notes that a render is due; the render thread (the main one) waits as `--wait MIN[:MAX]`
says, and renders the template with the lock held (the keys are not copied: that costs more
than the template at 100,000 keys for a small one); it checks, swaps and reloads with the lock
released, while the watch goes on. Changes that come meanwhile are rendered together, next.

Runs on: the main thread, the render thread (run(), once()); the watch thread ("render-watch")
runs render_watch.Follower, which notes its changes here; stop() on any thread.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import structlog

from sidekick.metrics import RenderMetrics
from sidekick.render_options import DEFAULT_WAIT, RenderOptions, make_options
from sidekick.render_output import Output, ReloadError
from sidekick.render_template import RenderError, Snapshot, load_template, render_text
from sidekick.render_watch import EtcdWatcher, Follower

__all__ = ["DEFAULT_WAIT", "EtcdWatcher", "RenderError", "Renderer", "make_options"]


class _Stop(BaseException):
    """Raised from the signal handler to leave a blocking read at once."""


class Renderer:
    """Renders, then checks, swaps in and reloads through `output` (the render thread); keeps
    the etcd watch going through `follow` (the watch thread). `_changed` guards the keys, the
    revision and the pending change."""

    def __init__(
        self,
        options: RenderOptions,
        prefix: str,
        watcher: EtcdWatcher,
        docker_url: str | None = None,
        metrics: RenderMetrics | None = None,
    ) -> None:
        self.options = options
        self.prefix = prefix
        self.watcher = watcher
        self.template = load_template(options.template)
        self.log = structlog.get_logger("sidekick.render").bind(dest=str(options.dest))
        self._changed = threading.Condition()
        self._first: float | None = None  # monotonic time of the first change not rendered
        self._last = 0.0  # ... and of the latest one
        self._at_once = False  # a full read: render it without waiting
        self._watch_failed: BaseException | None = None
        self._stopping = False
        self._busy = False  # between taking the keys and reloading: finish before stopping
        self.metrics = metrics or RenderMetrics()
        self.output = Output(options, self.log, self.metrics, docker_url)
        self.follow = Follower(
            watcher,
            prefix,
            options.watch_timeout,
            self._changed,
            self._note_change,
            lambda: self._stopping,
            self.log,
        )
        self.metrics.peer_up.labels("etcd").set_function(lambda: float(self.follow.outage is None))

    # -- one render --------------------------------------------------------------------

    def update(self) -> bool:
        """Render the current keys (render thread); if the text is new, check, swap and
        reload; reload anyway while a reload is owed. Every change noted so far is in it.

        Returns True when the file is live (written now or already the same), False when
        this text was refused (template error or failed check). Raises ReloadError when
        the reload fails.
        """
        self._busy = True
        try:
            with self._changed:  # the watch thread waits while the template reads the keys
                self._first, self._at_once = None, False
                keys = self.follow.keys
                revision, values = self.follow.revision, len(keys.values)
                text = self._render(keys.view())
            live, installed = (False, False) if text is None else self.output.go_live(text)
            if installed:
                self.log.info("rendered", values=values, revision=revision)
            if installed or self.output.reload_failing is not None:
                self.output.reload()
            return live
        finally:
            self._busy = False
            if self._stopping:
                raise _Stop

    def _render(self, snapshot: Snapshot) -> str | None:
        """The template's text; None (and why, in `output.refused`) when it fails."""
        try:
            return render_text(self.template, self.prefix, snapshot, self.options.variables)
        except RenderError as exc:
            self.output.template_failed(exc)
            return None

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz (Output.health)."""
        return self.output.health()

    # -- the render thread ---------------------------------------------------------------

    def once(self) -> bool:
        """Read the prefix, render, install and reload if new. True when the file is live."""
        kv, revision = self.watcher.read_prefix(self.prefix)
        with self._changed:
            self.follow.keys.replace(kv)
            self.follow.revision = revision
        return self.update()

    def run(self) -> None:
        """Render now and after every change, until SIGTERM or SIGINT (the main thread)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop()
        except _Stop:
            self.log.info("render stopped")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        """Stop both threads (any thread): the render thread at once, the watch thread at
        its next message or read timeout."""
        self._stopping = True
        with self._changed:
            self._changed.notify_all()

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        if not self._busy:
            raise _Stop

    def _loop(self) -> None:
        """Start the watch thread; render when a change or an owed reload falls due."""
        watch = threading.Thread(target=self._watch_thread, name="render-watch", daemon=True)
        watch.start()
        try:
            while not self._stopping:
                with self._changed:
                    if self._watch_failed is not None:
                        raise self._watch_failed
                    delay = self._next_due() - time.monotonic()
                    if delay > 0:
                        self._changed.wait(min(delay, self.options.watch_timeout))
                        continue
                self._update_logged()
        finally:
            self.stop()

    def _next_due(self) -> float:
        """When the render thread has work: the pending changes' render (as --wait says) or
        the owed reload's next try. The caller holds `_changed`."""
        owed = self.output.reload_failing is not None
        due = self.output.reload_due if owed else float("inf")
        if self._first is not None and self._at_once:
            due = min(due, self._first)
        elif self._first is not None:
            due = min(due, self.options.wait.due(self._first, self._last))
        return due

    def _update_logged(self) -> None:
        try:
            self.update()
        except ReloadError as exc:
            self.output.reload_failed(str(exc))

    # -- the watch thread ----------------------------------------------------------------

    def _note_change(self, at_once: bool) -> None:
        """A change to render (the caller holds `_changed`); wakes the render thread."""
        now = time.monotonic()
        if self._first is None:
            self._first = now
        self._last = now
        self._at_once = self._at_once or at_once
        self._changed.notify_all()

    def _watch_thread(self) -> None:
        """The watch loop; an error it does not expect ends the renderer (in the main thread)."""
        try:
            self.follow.run()
        except BaseException as exc:
            self.log.exception("watch thread failed")
            with self._changed:
                self._watch_failed = exc
                self._changed.notify_all()
