"""The hand-off of Docker events from the events reader to the loop.

Runs on: put() and deliver() on the events reader's thread ("docker-events"), which takes
`turn` there too; `turn` and took() on the main loop. The loop holds its turn while it works
(not while it waits for the queue); deliver() takes the turn when it is free and every event
queued before has been handled, and calls the loop's handler right there on the reader's
thread: an idle agent takes a `start` up without a thread switch, and one thread at a time
writes, in the stream's order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from sidekick.docker_source import DockerEvent
from sidekick.intake import DOCKER_CONNECTED, Item


class Handoff:
    """The loop's queue, with a count of what the reader queued and the loop has handled."""

    def __init__(self, out: queue.SimpleQueue[Item], handle: Callable[[DockerEvent], bool]) -> None:
        self.out = out
        self.handle = handle  # the loop's: with the turn held, handle the event now, or False
        self.turn = threading.Lock()
        self.queued = 0  # events and connections the reader queued (counted by the reader)
        self.handled = 0  # of those, taken off the queue by the loop (counted under the turn)
        self.inline = 0  # events the loop's handler took on the reader's thread

    def put(self, item: Item) -> None:
        """Queue an event, or the stream's (re)connection, for the loop."""
        self.queued += counted(item)
        self.out.put(item)

    def deliver(self, event: DockerEvent) -> None:
        """Handle `event` on this thread if the loop is idle and nothing queued before it is
        left; queue it otherwise."""
        if self.turn.acquire(blocking=False):
            try:
                if self.handled == self.queued and self.handle(event):
                    self.inline += 1
                    return
            finally:
                self.turn.release()
        self.put(event)

    def took(self, items: int) -> None:
        """The loop (turn held) took this many counted items off the queue."""
        self.handled += items


def counted(item: Item | None) -> bool:
    """Whether the reader counts `item` when it queues it (markers of other threads: no)."""
    return isinstance(item, DockerEvent) or item is DOCKER_CONNECTED
