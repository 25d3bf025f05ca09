"""One retry policy for the agent, the one-shot commands and the renderer.

Runs on: whichever thread calls it; it keeps no state. Exponential backoff with jitter (so a
fleet that lost etcd together does not come back in step), a stop by attempts or time where
the caller gives one, and only the named exceptions retried: anything else goes up at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import tenacity

Wait = tenacity.wait.wait_base


def backoff(longest: float, jitter: float, shortest: float = 0.05) -> Wait:
    """Exponential from `shortest` up to `longest` seconds, plus up to `jitter` at random."""
    return tenacity.wait_exponential(multiplier=shortest, max=longest) + tenacity.wait_random(
        0, jitter
    )


def retrying(
    kinds: tuple[type[BaseException], ...],
    *,
    wait: Wait,
    attempts: int | None = None,
    seconds: float | None = None,
    until: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity.Retrying for `kinds`; stops after `attempts`, after `seconds`, or once
    `until()` is true (then tenacity.RetryError); otherwise the last error is re-raised."""
    stop: Any = tenacity.stop_never
    if attempts is not None:
        stop = stop | tenacity.stop_after_attempt(attempts)
    if seconds is not None:
        stop = stop | tenacity.stop_after_delay(seconds)
    if until is not None:
        stop = stop | (lambda _state: until())
    extra: dict[str, Any] = {}
    if sleep is not None:
        extra["sleep"] = sleep
    if before_sleep is not None:
        extra["before_sleep"] = before_sleep
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(kinds),
        wait=wait,
        stop=stop,
        reraise=until is None,
        **extra,
    )


def delay(attempt: int, longest: float, jitter: float, shortest: float = 0.05) -> float:
    """The wait before retry number `attempt` (1, 2, ...), as backoff() would choose it, for
    loops that retry on their own (the lease thread)."""
    return float(min(longest, shortest * 2 ** (attempt - 1)) + random.uniform(0, jitter))  # noqa: S311


class Outages:
    """Which peers (etcd, docker) are down now, so that an outage is logged once when it
    starts and once when it ends, whichever thread meets it. Runs on: any thread (a lock)."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._down: dict[str, str] = {}  # peer -> first error of the current outage
        self._lock = threading.Lock()

    def down(self, peer: str, error: str, *, refused: bool = False) -> None:
        """`peer` failed; the first failure of an outage is logged (error level if refused)."""
        with self._lock:
            if peer in self._down:
                return
            self._down[peer] = error
        if refused:
            self.log.error(f"{peer} refused the agent; retrying with backoff", error=error)
        else:
            self.log.warning(f"{peer} unavailable; retrying with backoff", error=error)

    def up(self, peer: str) -> None:
        """`peer` answered; the end of an outage is logged."""
        with self._lock:
            if self._down.pop(peer, None) is None:
                return
        self.log.info(f"{peer} is back")

    def is_down(self, peer: str) -> bool:
        return peer in self._down
