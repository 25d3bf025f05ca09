"""The etcd side of `sidekick render`: the prefix read, the watch stream, and the watch thread
that keeps the keys in step with them.

The watch is etcd's v3 watch over the grpc-gateway, read as a stream with a read timeout,
because etcd3gw's watch blocks forever on a dropped connection. The prefix is read once
(`range`, revision R) and watched from R+1; the revision of the last event applied is kept
and, whenever the stream drops, errors or stays silent for `--watch-timeout` seconds, a new
watch opens from that revision + 1, so no change is missed. Only a compacted revision or an
etcd whose revision went backwards (a new cluster) makes it read the whole prefix again.

Runs on: the watch thread ("render-watch"), but for EtcdWatcher.read_prefix, which the main
thread also calls for `--once`. The keys are changed under the renderer's lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import requests
import urllib3

from sidekick import retry
from sidekick.render_template import Keys
from sidekick.store import EtcdError, EtcdUnavailable, Store, b64, prefix_range_end, unb64

BACKOFF_FIRST, BACKOFF_CAP = 0.2, 5.0
PREFIX_PAGE = 10_000  # keys per range request when the whole prefix is read


class WatchSilent(Exception):
    """No message on the watch stream for the read timeout: maybe quiet, maybe dead."""


class WatchReset(Exception):
    """The watch cannot resume from our revision (compacted, or a new cluster)."""


class EtcdWatcher:
    """Prefix reads and watch streams through the Store: its endpoints with failover, its
    TLS settings and its auth token."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        """key -> value for every key under `prefix`, and the revision of the read."""
        keys, revision = self.store.read_prefix(prefix, page=PREFIX_PAGE)
        return {key: state.value for key, state in keys.items()}, revision

    def watch(self, prefix: str, start_revision: int, read_timeout: float) -> Iterator[Any]:
        """The watch stream's results, from `start_revision` on.

        Raises WatchSilent when nothing came for `read_timeout` seconds, EtcdUnavailable when
        the connection fails or the stream ends (the server went away), EtcdError when etcd
        answers with an error.
        """
        request = {
            "create_request": {
                "key": b64(prefix),
                "range_end": prefix_range_end(prefix),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        url = f"{self.store.endpoint.url}/v3/watch"
        answer = self.store.open_stream("/watch", request, read_timeout)
        try:
            if answer.status_code != 200:
                self._refused(f"etcd at {url}: {_message(_json(answer), answer)}")
            for line in answer.iter_lines(chunk_size=None):
                if not line:
                    continue
                message = json.loads(line)
                if "error" in message:
                    self._refused(f"etcd watch at {url}: {_message(message, answer)}")
                yield message.get("result", {})
        except requests.exceptions.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError):
                raise WatchSilent(f"no message for {read_timeout:g} s") from exc
            self.store.next_endpoint()
            raise EtcdUnavailable(f"etcd watch at {url}: {exc}") from exc
        except (requests.RequestException, ValueError) as exc:
            self.store.next_endpoint()
            raise EtcdUnavailable(f"etcd watch at {url}: {exc}") from exc
        finally:
            answer.close()
        self.store.next_endpoint()
        raise EtcdUnavailable(f"etcd watch at {url}: the stream ended")

    def _refused(self, message: str) -> NoReturn:
        if "token" in message or "authenticat" in message:
            self.store.forget_token()  # the next request logs in again
        raise EtcdError(message)


def _json(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(body: Mapping[str, Any], answer: requests.Response) -> str:
    error = body.get("error", body)
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(body.get("message") or error or f"HTTP {answer.status_code}")[:300]


class Follower:
    """The watch thread's loop: applies each change to `keys` and `revision` under `changed`
    (the renderer's lock) and calls `note_change(at_once)` with it held; reads the whole
    prefix again when the watch cannot resume, and backs off while etcd is unavailable."""

    def __init__(  # noqa: PLR0917 - the renderer's parts, handed over once
        self,
        watcher: EtcdWatcher,
        prefix: str,
        watch_timeout: float,
        changed: threading.Condition,
        note_change: Callable[[bool], None],
        stopping: Callable[[], bool],
        log: Any,
    ) -> None:
        self.watcher = watcher
        self.prefix = prefix
        self.watch_timeout = watch_timeout
        self.keys = Keys(prefix)
        self.revision = 0
        self.outage: str | None = None  # why etcd does not answer, while it does not
        self._failures = 0
        self._changed = changed
        self._note_change = note_change
        self._stopping = stopping
        self.log = log

    def run(self) -> None:
        """Read the prefix and follow it until `stopping()`; errors it does not expect go up."""
        full_read = True
        while not self._stopping():
            try:
                if full_read:
                    self._read_all()
                    full_read = False
                self._follow()
            except WatchSilent:
                # Quiet, or a connection that died without a word: a new watch from our
                # revision tells which, and loses nothing either way.
                self.log.debug("watch silent; resuming", revision=self.revision + 1)
            except WatchReset as exc:
                self.log.warning("watch cannot resume; reading the prefix again", reason=str(exc))
                full_read = True
            except EtcdError as exc:
                self._failures += 1
                if self.outage is None:
                    self.outage = str(exc)
                    self.log.warning("etcd unavailable; retrying with backoff", error=str(exc))
                wait = retry.delay(
                    self._failures, BACKOFF_CAP, jitter=BACKOFF_FIRST, shortest=BACKOFF_FIRST
                )
                time.sleep(wait)

    def _read_all(self) -> None:
        """Read the whole prefix; rendered at once, whatever --wait says."""
        kv, revision = self.watcher.read_prefix(self.prefix)
        with self._changed:
            self.keys.replace(kv)
            self.revision = revision
            self._note_change(True)
        self._healthy()

    def _healthy(self) -> None:
        """etcd answered: end the outage, if there was one."""
        if self.outage is not None:
            self.log.info("etcd is back", revision=self.revision)
        self.outage = None
        self._failures = 0

    def _follow(self) -> None:
        """Apply the watch stream to the keys until it fails; note each change."""
        stream = self.watcher.watch(self.prefix, self.revision + 1, self.watch_timeout)
        for result in stream:
            if self._stopping():
                return
            header = result.get("header", {})
            if int(result.get("compact_revision", 0)) > 0:
                raise WatchReset(
                    f"revision {self.revision + 1} is compacted "
                    f"(oldest kept: {result['compact_revision']})"
                )
            if result.get("canceled"):
                reason = str(result.get("cancel_reason", "no reason"))
                if "token" in reason or "permission" in reason:
                    self.watcher.store.forget_token()
                    raise EtcdError(f"watch canceled: {reason}")
                raise WatchReset(f"watch canceled: {reason}")
            if result.get("created"):
                current = int(header.get("revision", 0))
                if current < self.revision:
                    raise WatchReset(
                        f"etcd is at revision {current}, behind ours ({self.revision})"
                    )
                self._healthy()
                continue
            events = result.get("events", [])
            if not events:  # a progress notification: every event up to here was sent
                self.revision = max(self.revision, int(header.get("revision", 0)))
                continue
            self._apply(events)

    def _apply(self, events: Sequence[Mapping[str, Any]]) -> None:
        with self._changed:
            for event in events:
                kv = event.get("kv", {})
                key = unb64(kv.get("key", ""))
                if event.get("type") == "DELETE":
                    self.keys.delete(key)
                else:
                    self.keys.put(key, unb64(kv.get("value", "")))
                self.revision = max(self.revision, int(kv.get("mod_revision", 0)))
            self._note_change(False)
