"""The look-ahead: containers read at `create`, so that their first `start` asks Docker nothing.

dockerd answers slowly while it starts many containers at once, and an inspect of a container
it is starting waits for that start to end. Labels, name, network and fixed published ports do
not change between create and start (docker_parse.container_as_started), so helper threads
read them as soon as the `create` event arrives, each on a Docker connection of its own. The
agent's loop takes the result at `start` if the read is done, and never waits for one in
flight (a `docker ps` listing answers in a millisecond, while an inspect waits for dockerd to
finish the start); an entry is used once, so no container read at create outlives a start. Only
the stop signal a read finds outlives it, whenever the read ends: for the `kill` of `docker
stop`, until the look-up takes it (a reconcile keeps those of running containers, and the
recent ones).

Runs on: created() (and drop(), from it) on the Docker events reader thread; take(),
stop_signal(), forget() and clear() in the loop's work (sidekick.handoff); the reads on THREADS
helper threads ("look-ahead-N"). The entries are shared under one lock.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Collection
from typing import Any

from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.model import Container

THREADS = 8  # reads at once: each may wait while dockerd starts its container
CAPACITY = 10_000  # containers created and not yet started or removed


class _State:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


QUEUED = _State("queued")  # waiting for a helper thread
READING = _State("reading")  # a helper's request is in flight


class LookAhead:
    """Created containers -> what they will be once started, read by helper threads."""

    def __init__(self, docker: DockerSource, log: Any, threads: int = THREADS) -> None:
        self._docker = docker
        self._log = log
        self._threads = threads
        self._entries: dict[str, Container | _State] = {}
        self._signals: dict[str, int] = {}  # stop signals read at create, for the look-up
        self._signal_only: set[str] = set()  # reads in flight whose start (or a reconcile) passed
        self._recent: set[str] = set()  # created, or a signal found, since the last clear()
        self._lock = threading.Lock()
        self._ids: queue.Queue[str | None] = queue.Queue(CAPACITY)
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._stopping.clear()
        self._workers = [self._start_worker(number) for number in range(self._threads)]

    def _start_worker(self, number: int) -> threading.Thread:
        thread = threading.Thread(
            target=self._read,
            args=(self._docker.clone(),),
            name=f"look-ahead-{number}",
            daemon=True,
        )
        thread.start()
        return thread

    def all_alive(self) -> bool:
        """Every helper thread runs (True before start())."""
        return all(thread.is_alive() for thread in self._workers)

    def revive(self) -> None:
        """Start a new helper in place of each dead one."""
        self._workers = [
            thread if thread.is_alive() else self._start_worker(number)
            for number, thread in enumerate(self._workers)
        ]

    def stop(self) -> None:
        self._stopping.set()
        for _ in range(self._threads):
            with contextlib.suppress(queue.Full):  # a full queue: the threads see _stopping
                self._ids.put_nowait(None)

    def created(self, container_id: str) -> None:
        """A `create` event: have a helper read the container (dropped when too many wait)."""
        with self._lock:
            if len(self._entries) >= CAPACITY:
                return
            self._entries[container_id] = QUEUED
            self._recent.add(container_id)
        try:
            self._ids.put_nowait(container_id)
        except queue.Full:
            self.drop(container_id)

    def take(self, container_id: str) -> Container | None:
        """The container as it is once started, if its read is done (once); a read still in
        flight is not waited for: it will keep only the stop signal."""
        with self._lock:
            entry = self._entries.get(container_id)
            if isinstance(entry, _State):
                self._signal_only.add(container_id)
                return None
            self._entries.pop(container_id, None)
        return entry

    def pending(self, container_id: str) -> bool:
        """A read of this container is queued or in flight."""
        with self._lock:
            return isinstance(self._entries.get(container_id), _State)

    def stop_signal(self, container_id: str) -> int | None:
        """The container's stop signal if a read at create found it (once)."""
        with self._lock:
            self._recent.discard(container_id)
            return self._signals.pop(container_id, None)

    def forget(self, container_id: str) -> None:
        """A later event decides: the read's result is not used (its stop signal is kept)."""
        self.take(container_id)

    def drop(self, container_id: str) -> None:
        """The container is gone: forget everything about it."""
        with self._lock:
            self._entries.pop(container_id, None)
            self._signals.pop(container_id, None)
            self._signal_only.discard(container_id)
            self._recent.discard(container_id)

    def clear(self, running: Collection[str] = ()) -> None:
        """Forget every finished read (a reconcile has just read every running container),
        but the stop signals that tell a stopping `kill` from a reload, which a listing does
        not: those of the `running` containers, and of those created (or whose signal was
        found) since the last clear, not started at the snapshot. Their reads still in flight
        will keep only the signal; older ones in flight (a helper gone) are forgotten."""
        with self._lock:
            keep = set(running) | self._recent
            self._signals = {k: v for k, v in self._signals.items() if k in keep}
            self._entries = {
                k: v for k, v in self._entries.items() if isinstance(v, _State) and k in keep
            }
            self._signal_only = set(self._entries)
            self._recent = set()

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self, docker: DockerSource) -> None:
        while (container_id := self._ids.get()) is not None and not self._stopping.is_set():
            with self._lock:
                if self._entries.get(container_id) is not QUEUED:
                    continue  # removed before its turn
                self._entries[container_id] = READING
            created = None
            try:
                created = docker.as_started(container_id)
            except DockerUnavailable:
                pass  # its start is looked up instead
            except Exception as exc:  # a helper must outlive any odd answer
                self._log.warning("look-ahead failed", id=container_id[:12], error=repr(exc))
            container = created.container if created else None
            with self._lock:
                if created and created.stop_signal is not None and container_id in self._entries:
                    if len(self._signals) >= CAPACITY:
                        self._signals.clear()
                        self._recent.clear()
                    self._signals[container_id] = created.stop_signal
                    self._recent.add(container_id)
                if container is None or container_id in self._signal_only:
                    self._entries.pop(container_id, None)
                    self._signal_only.discard(container_id)
                elif container_id in self._entries:  # not removed meanwhile
                    self._entries[container_id] = container
