"""`python -m bench.agentprofile OUT.json <sidekick arguments>`: `sidekick` with the CPU time
of each of its threads and stages counted, for bench/cpuprofile.py.

Not a profiler that hooks every call (cProfile slows Python code two to three times, and more
than system calls, so its shares mislead): each thread's CPU is read from its own CPU clock
(pthread_getcpuclockid), and each stage's from time.thread_time() around its one entry point
(STAGES, wrapped here; a stage inside another counts for the outer one only). A thread blocked
on a socket or a queue costs nothing. The first SIGUSR2 marks the start of the window; the
second writes OUT.json: per thread group (look-ahead-0, -1, ... together), its CPU seconds in
the window and, per stage and call (`docker requests: list`), the seconds and the calls.

Runs on: the agent's threads (the wrappers), its main thread (the signal handler).
"""

from __future__ import annotations

import functools
import json
import re
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Counts = dict[tuple[str, str, str], list[float]]  # (thread, stage, call) -> [seconds, calls]


def thread_group(name: str) -> str:
    """look-ahead-3 -> look-ahead: numbered helpers of one kind are one row."""
    return re.sub(r"-\d+$", "", name)


class Stages:
    """CPU seconds and calls per (thread, stage, call), counted by the wrappers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counts = {}
        self.local = threading.local()

    def add(self, stage: str, call: str, seconds: float) -> None:
        key = (threading.current_thread().name, stage, call)
        with self.lock:
            entry = self.counts.setdefault(key, [0.0, 0.0])
            entry[0] += seconds
            entry[1] += 1

    def timed(self, stage: str, call: Callable[..., str]) -> Callable[[Any], Any]:
        """A decorator: the wrapped function's CPU time counted under (stage, call(*args))."""

        def wrap(function: Any) -> Any:
            @functools.wraps(function)
            def timed_call(*args: Any, **kwargs: Any) -> Any:
                if getattr(self.local, "inside", False):  # nested: the outer stage counts
                    return function(*args, **kwargs)
                self.local.inside = True
                started = time.thread_time()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.add(stage, call(*args, **kwargs), time.thread_time() - started)
                    self.local.inside = False

            return timed_call

        return wrap

    def timed_iterator(self, stage: str) -> Callable[[Any], Any]:
        """A decorator for a generator: the CPU time of producing each item."""

        def wrap(function: Any) -> Any:
            @functools.wraps(function)
            def timed_items(*args: Any, **kwargs: Any) -> Iterator[Any]:
                items = function(*args, **kwargs)
                while True:
                    started = time.thread_time()
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                    finally:
                        self.add(stage, "", time.thread_time() - started)
                    yield item

            return timed_items

        return wrap

    def snapshot(self) -> Counts:
        with self.lock:
            return {k: list(v) for k, v in self.counts.items()}


def instrument(stages: Stages) -> None:
    """Wrap each stage's entry point (imported here, before sidekick runs)."""
    import structlog._base  # noqa: PLC0415 - sidekick's own import order first (rich)

    from sidekick.docker_source import DockerSource  # noqa: PLC0415
    from sidekick.gateway import Gateway  # noqa: PLC0415

    # `path` and `call` are positional in every call site; a keyword one is counted as "?"
    DockerSource._call = stages.timed(  # type: ignore[method-assign]
        "docker requests", lambda _self, call="?", *_a, **_k: call
    )(DockerSource._call)
    Gateway._post = stages.timed(  # type: ignore[method-assign]
        "etcd requests", lambda _self, path="?", *_a, **_k: path
    )(Gateway._post)
    DockerSource._follow = stages.timed_iterator("events stream")(  # type: ignore[method-assign]
        DockerSource._follow
    )
    base = structlog._base.BoundLoggerBase
    base._proxy_to_logger = stages.timed(  # type: ignore[method-assign]
        "log lines", lambda *_a, **_k: ""
    )(base._proxy_to_logger)


def thread_cpu() -> dict[int, tuple[str, float]]:
    """Every live thread's CPU seconds, by ident: (name, seconds)."""
    out = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            out[thread.ident] = (thread.name, time.clock_gettime(clock))
        except OSError:  # it ended meanwhile
            continue
    return out


def report(
    begin: tuple[dict[int, tuple[str, float]], Counts],
    end: tuple[dict[int, tuple[str, float]], Counts],
) -> dict[str, Any]:
    """Per thread group: cpu_s, and stages {stage: {call: [seconds, calls]}} in the window."""
    (cpu_begin, counts_begin), (cpu_end, counts_end) = begin, end
    out: dict[str, Any] = {}

    def group(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = out.setdefault(thread_group(name), {"cpu_s": 0.0, "stages": {}})
        return entry

    for ident, (name, seconds) in cpu_end.items():
        group(name)["cpu_s"] += seconds - cpu_begin.get(ident, (name, 0.0))[1]
    for (thread, stage, call), (seconds, calls) in counts_end.items():
        was = counts_begin.get((thread, stage, call), [0.0, 0.0])
        if calls - was[1] <= 0:
            continue
        entry = group(thread)["stages"].setdefault(stage, {}).setdefault(call, [0.0, 0.0])
        entry[0] += seconds - was[0]
        entry[1] += calls - was[1]
    return out


class Window:
    """The signal handler: the window's start, then its end (OUT.json written)."""

    def __init__(self, stages: Stages, out: Path) -> None:
        self.stages = stages
        self.out = out
        self.begin: tuple[dict[int, tuple[str, float]], Counts] | None = None

    def mark(self, _signum: int, _frame: Any) -> None:
        now = (thread_cpu(), self.stages.snapshot())
        if self.begin is None:
            self.begin = now
            return
        partial = self.out.with_suffix(".partial")
        partial.write_text(json.dumps(report(self.begin, now), indent=1))
        partial.replace(self.out)  # whole, for the bench that waits for it


def main() -> None:
    import sidekick  # noqa: F401, PLC0415 - structlog without rich, as `sidekick run` has it

    stages = Stages()
    instrument(stages)
    signal.signal(signal.SIGUSR2, Window(stages, Path(sys.argv[1])).mark)
    sys.argv = ["sidekick", *sys.argv[2:]]
    runpy.run_module("sidekick", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
