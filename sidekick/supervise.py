"""The supervisor of the agent's helper threads: a dead one is restarted with backoff and
counted; when they keep dying the agent gives up (exit with the lease kept) rather than serve
half-alive.

Runs on: the main loop (check()); the threads it starts run their own targets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sidekick.metrics import Metrics
from sidekick.retry import delay

RESTARTS_ALLOWED = 5  # thread restarts within RESTART_WINDOW before the agent gives up
RESTART_WINDOW = 60.0


class AgentFailed(Exception):
    """A part of the agent keeps dying; the process exits with the lease kept."""


class Part:
    """A helper the supervisor watches: is it alive, and how to start it again."""

    def __init__(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        self.name = name
        self.alive = alive
        self.restart = restart


class Supervisor:
    """Restarts dead parts: each restart waits longer (0.5 s doubling to 10 s)."""

    def __init__(self, metrics: Metrics, log: Any) -> None:
        self.metrics = metrics
        self.log = log
        self.parts: list[Part] = []
        self._restarts: list[float] = []
        self._due: dict[str, float] = {}

    def thread(self, name: str, target: Callable[[], None]) -> Part:
        """Run `target` on a thread watched under `name` (restarted with the same target)."""
        box: list[threading.Thread] = []

        def start() -> None:
            box[:] = [threading.Thread(target=self._guarded(name, target), name=name, daemon=True)]
            box[0].start()

        start()
        return self.watch(Part(name, lambda: box[0].is_alive(), start))  # noqa: PLW0108 - box[0] changes

    def watch(self, part: Part) -> Part:
        self.parts.append(part)
        # Counted from 0, so the first restart is an increase that rate() and increase() see.
        self.metrics.thread_restarts.labels(part.name)
        return part

    def check(self) -> None:
        """Restart whatever died; AgentFailed when restarts keep coming."""
        now = time.monotonic()
        for part in self.parts:
            if part.alive() or now < self._due.get(part.name, 0.0):
                continue
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW]
            if len(self._restarts) >= RESTARTS_ALLOWED:
                raise AgentFailed(
                    f"the {part.name} thread keeps dying ({RESTARTS_ALLOWED} restarts in "
                    f"{RESTART_WINDOW:g} s); exiting with the lease kept"
                )
            self._restarts.append(now)
            self._due[part.name] = now + delay(len(self._restarts), 10.0, 0.1, shortest=0.5)
            self.metrics.thread_restarts.labels(part.name).inc()
            self.log.error("restarting a dead thread", thread=part.name)
            part.restart()

    def _guarded(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                target()
            except Exception:  # the supervisor restarts it: say why once, with the traceback
                self.log.exception("thread died", thread=name)

        return guarded
