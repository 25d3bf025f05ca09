"""`sidekick render`: confd's job for the seed's nginx, done here.

Watches a prefix in etcd and renders a Jinja2 template to a file each time what it renders
changes. A new file is staged beside the old one, checked (`--check-cmd`, e.g. `nginx -t`)
and only then renamed over it, so a file that fails the check never goes live; then the
consumer is reloaded (`--reload-cmd`, or a signal to a container through the Docker API).

The watch is etcd's v3 watch over the grpc-gateway, read as a stream with a read timeout,
because etcd3gw's watch blocks forever on a dropped connection. The loop reads the prefix
once (`range`, revision R) and watches from R+1; it keeps the revision of the last event it
applied and, whenever the stream drops, errors or stays silent for `--watch-timeout`
seconds, opens a new watch from that revision + 1, so no change is missed. Only a compacted
revision or an etcd whose revision went backwards (a new cluster) makes it read the whole
prefix again.

Two threads: the watch thread applies each change to the keys it keeps (a dict, and the keys
and the one-level values kept sorted as they change, so no render sorts 100,000 values again)
and notes that a render is due; the render thread (the main one) waits as `--wait MIN[:MAX]`
says, and renders the template with the lock held (the keys are not copied: that costs more
than the template at 100,000 keys for a small one); it checks, swaps and reloads with the lock
released, while the watch goes on. Changes that come meanwhile are rendered together, next.

A reload that fails is owed: it is tried again on the next change and on a timer (1 s,
doubling up to 30 s) until it succeeds. `Renderer.health()` says, in /healthz's shape, when
the latest render was refused or a reload is owed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, overload

import jinja2
import requests
import structlog
import urllib3

from sidekick import retry
from sidekick.config import ConfigError
from sidekick.metrics import RenderMetrics
from sidekick.store import EtcdError, EtcdUnavailable, Store, b64, prefix_range_end, unb64

BUILTIN_TEMPLATE = "nginx.conf.j2"
DEFAULT_WATCH_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
BACKOFF_FIRST, BACKOFF_CAP = 0.2, 5.0
RELOAD_RETRY_FIRST, RELOAD_RETRY_CAP = 1.0, 30.0
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = frozenset({"values", "entries", "prefix", "getv", "getvs"})
DEFAULT_WAIT = "0.05"  # 0.2 s held at most: see README, measured in docs/benchmarks.md
PREFIX_PAGE = 10_000  # keys per range request when the whole prefix is read
MAX_PER_MIN = 4  # --wait MIN without MAX holds a change at most 4 x MIN
_SECONDS_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


class RenderError(Exception):
    """The template could not be rendered, or the new file failed its check or reload."""


class ReloadError(RenderError):
    """The reload command or signal failed."""


class WatchSilent(Exception):
    """No message on the watch stream for the read timeout: maybe quiet, maybe dead."""


class WatchReset(Exception):
    """The watch cannot resume from our revision (compacted, or a new cluster)."""


class _Stop(BaseException):
    """Raised from the signal handler to leave a blocking read at once."""


@dataclass(frozen=True)
class Wait:
    """--wait MIN[:MAX]: render once no change came for `least` seconds, but hold no change
    longer than `most` (docker-gen's -wait). Wait(0, 0) renders at once."""

    least: float = 0.0
    most: float = 0.0

    def due(self, first: float, last: float) -> float:
        """When changes that came from `first` to `last` (monotonic) are rendered."""
        return min(last + self.least, first + self.most)


def parse_wait(text: str, name: str = "--wait") -> Wait:
    """MIN or MIN:MAX in seconds (`ms` and `s` suffixes allowed); MAX defaults to 4 x MIN.
    A ConfigError names the option (`name`) at fault."""
    least_text, sep, most_text = text.strip().partition(":")
    least, most = _seconds(least_text), _seconds(most_text) if sep else None
    if least is None or (sep and most is None):
        raise ConfigError(
            f"{name}: expected MIN[:MAX] in seconds, e.g. 0.1 or 0.1:0.4, got {text!r}"
        )
    if most is None:
        most = least * MAX_PER_MIN
    if most < least:
        raise ConfigError(f"{name}: MAX ({most:g}) must not be less than MIN ({least:g})")
    return Wait(least, most)


def _seconds(text: str) -> float | None:
    """`0.5`, `500ms` or `0.5s` in seconds; None when it is none of those."""
    match = _SECONDS_RE.fullmatch(text.strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


@dataclass(frozen=True)
class RenderOptions:
    """What `sidekick render` does, validated."""

    dest: Path
    template: Path | None = None  # None: the nginx template shipped in the package
    variables: Mapping[str, str] = field(default_factory=dict)
    check_cmd: str | None = None
    reload_cmd: str | None = None
    reload_signal: str | None = None
    reload_container: str | None = None
    mode: int = 0o644
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT
    once: bool = False
    wait: Wait = Wait()


def make_options(
    *,
    dest: Path,
    template: Path | None = None,
    variables: Sequence[str] = (),
    check_cmd: str | None = None,
    reload_cmd: str | None = None,
    reload_signal: str | None = None,
    reload_container: str | None = None,
    mode: str = "0644",
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
    once: bool = False,
    wait: str = DEFAULT_WAIT,
    wait_name: str = "--wait",
) -> RenderOptions:
    """RenderOptions from command-line values; a ConfigError names the option at fault."""
    parsed: dict[str, str] = {}
    for item in variables:
        name, sep, value = item.partition("=")
        if not sep or not _VAR_RE.fullmatch(name) or name in _RESERVED:
            raise ConfigError(
                f"--set: expected NAME=VALUE with NAME an identifier other than "
                f"{', '.join(sorted(_RESERVED))}, got {item!r}"
            )
        parsed[name] = value
    if template is not None and not template.is_file():
        raise ConfigError(f"--template: {template} is not a file")
    if not dest.parent.is_dir():
        raise ConfigError(f"--dest: directory {dest.parent} does not exist")
    if dest.is_dir():
        raise ConfigError(f"--dest: {dest} is a directory")
    if check_cmd is not None and "{src}" not in check_cmd:
        raise ConfigError(f"--check-cmd: must name the new file as {{src}}, got {check_cmd!r}")
    if reload_cmd and (reload_signal or reload_container):
        raise ConfigError("--reload-cmd: give either a command or --reload-signal, not both")
    if bool(reload_signal) != bool(reload_container):
        raise ConfigError("--reload-signal and --reload-container go together")
    signal_name = None
    if reload_signal:
        signal_name = reload_signal.upper().removeprefix("SIG")
        if signal_name not in signal.Signals.__members__ and f"SIG{signal_name}" not in (
            signal.Signals.__members__
        ):
            raise ConfigError(f"--reload-signal: unknown signal {reload_signal!r}")
    try:
        file_mode = int(mode, 8)
    except ValueError:
        raise ConfigError(f"--mode: not an octal mode: {mode!r}") from None
    if not 0 <= file_mode <= 0o7777:
        raise ConfigError(f"--mode: not a file mode: {mode!r}")
    if watch_timeout < 0.5:
        raise ConfigError(f"--watch-timeout: must be at least 0.5, got {watch_timeout:g}")
    coalescing = parse_wait(wait, wait_name)
    return RenderOptions(
        dest=dest,
        template=template,
        variables=parsed,
        check_cmd=check_cmd,
        reload_cmd=reload_cmd,
        reload_signal=signal_name,
        reload_container=reload_container,
        mode=file_mode,
        watch_timeout=watch_timeout,
        once=once,
        wait=coalescing,
    )


# -- the template ---------------------------------------------------------------------------


def load_template(path: Path | None) -> jinja2.Template:
    """The template at `path`, or the shipped nginx one; a ConfigError when it does not parse."""
    if path is None:
        source = resources.files("sidekick").joinpath("templates", BUILTIN_TEMPLATE).read_text()
        loader: jinja2.BaseLoader = jinja2.DictLoader({BUILTIN_TEMPLATE: source})
        name = BUILTIN_TEMPLATE
    else:
        loader, name = jinja2.FileSystemLoader(str(path.parent)), path.name
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders a config file, not HTML
    )
    env.filters["fromjson"] = _from_json  # values laid out by --value-template '{json:...}'
    try:
        return env.get_template(name)
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        raise ConfigError(f"--template: {path or BUILTIN_TEMPLATE}{where}: {exc}") from exc


def _from_json(text: str) -> Any:
    """The `fromjson` filter: a value written by --value-template '{json:...}' as a dict; a
    value that is not JSON fails the render (the live file stays), naming it."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise jinja2.TemplateRuntimeError(f"fromjson: not JSON: {str(text)[:80]!r}") from exc


def _pattern(glob: str) -> re.Pattern[str]:
    """confd's path.Match: `*` matches within one key segment."""
    return re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in glob) + r"\Z")


class Keys:
    """The keys under the prefix as the watch changes them: key -> value, the keys sorted, and
    the values one level under the prefix sorted (confd's getvs "<prefix>/*"), each kept in
    order by bisection as keys come and go, so a render sorts nothing.

    Changed by the watch thread and read by the render thread, under the renderer's lock.
    """

    def __init__(self, prefix: str, kv: Mapping[str, str] | None = None) -> None:
        self._one_level = _pattern(prefix.rstrip("/") + "/*")
        self.replace(kv or {})

    def replace(self, kv: Mapping[str, str]) -> None:
        """Every key at once (a full read of the prefix)."""
        self.kv = dict(kv)
        self.sorted_keys = sorted(self.kv)
        self.values = sorted(v for k, v in self.kv.items() if self._one_level.match(k))

    def put(self, key: str, value: str) -> None:
        old = self.kv.get(key)
        if old == value:
            return
        self.kv[key] = value
        if old is None:
            insort(self.sorted_keys, key)
        if self._one_level.match(key):
            if old is not None:
                _remove_sorted(self.values, old)
            insort(self.values, value)

    def delete(self, key: str) -> None:
        old = self.kv.pop(key, None)
        if old is None:
            return
        _remove_sorted(self.sorted_keys, key)
        if self._one_level.match(key):
            _remove_sorted(self.values, old)

    def view(self) -> Snapshot:
        """The keys as they are, not copied (100,000 keys take 10 to 30 ms to copy): valid
        while the keys do not change, i.e. while the renderer's lock is held."""
        return Snapshot(self.kv, self.sorted_keys, self.values)


def _remove_sorted(items: list[str], item: str) -> None:
    index = bisect_left(items, item)
    if index < len(items) and items[index] == item:
        del items[index]


@dataclass(frozen=True)
class Snapshot:
    """The keys as one render sees them (Keys.view)."""

    kv: Mapping[str, str]
    sorted_keys: Sequence[str]
    values: Sequence[str]  # one level under the prefix, sorted

    @classmethod
    def of(cls, prefix: str, kv: Mapping[str, str]) -> Snapshot:
        return Keys(prefix, kv).view()


class Entries(Sequence[tuple[str, str]]):
    """(key, value) for every key, sorted by key, read from the snapshot as the template
    asks: a template that never reads `entries` costs nothing for them."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def __len__(self) -> int:
        return len(self._snapshot.sorted_keys)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        kv = self._snapshot.kv
        return ((key, kv[key]) for key in self._snapshot.sorted_keys)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | list[tuple[str, str]]:
        kv = self._snapshot.kv
        if isinstance(index, slice):
            return [(key, kv[key]) for key in self._snapshot.sorted_keys[index]]
        key = self._snapshot.sorted_keys[index]
        return key, kv[key]


def context(
    prefix: str, kv: Mapping[str, str] | Snapshot, variables: Mapping[str, str]
) -> dict[str, Any]:
    """What a template sees.

    values   the values of the keys one level under the prefix, sorted (confd's
             getvs "<prefix>/*", which the seed's template reads)
    entries  (key, value) for every key under the prefix, sorted by key
    prefix   the prefix
    getvs(pattern), getv(key, default)   as in confd
    and every --set NAME=VALUE.
    """
    snapshot = kv if isinstance(kv, Snapshot) else Snapshot.of(prefix, kv)

    def getvs(pattern: str) -> list[str]:
        rx = _pattern(pattern)
        return sorted(v for k, v in snapshot.kv.items() if rx.match(k))

    def getv(key: str, default: str | None = None) -> str | None:
        return snapshot.kv.get(key, default)

    return {
        **variables,
        "prefix": prefix,
        "values": list(snapshot.values),
        "entries": Entries(snapshot),
        "getvs": getvs,
        "getv": getv,
    }


def render_text(
    template: jinja2.Template,
    prefix: str,
    kv: Mapping[str, str] | Snapshot,
    variables: Mapping[str, str],
) -> str:
    try:
        return template.render(context(prefix, kv, variables))
    except jinja2.TemplateError as exc:
        raise RenderError(f"template: {exc}") from exc


# -- etcd: a prefix read and a watch stream ------------------------------------------------


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


# -- the file and the reload ----------------------------------------------------------------


class Renderer:
    """Renders, stages, checks, swaps in and reloads (the render thread); keeps the etcd watch
    going (the watch thread). `_changed` guards the keys, the revision and the pending change."""

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
        self.docker_url = docker_url
        self.template = load_template(options.template)
        self.log = structlog.get_logger("sidekick.render").bind(dest=str(options.dest))
        self.keys = Keys(prefix)
        self.revision = 0
        self._changed = threading.Condition()
        self._first: float | None = None  # monotonic time of the first change not rendered
        self._last = 0.0  # ... and of the latest one
        self._at_once = False  # a full read: render it without waiting
        self._watch_failed: BaseException | None = None
        self.rejected: str | None = None  # the text whose check failed last
        self.refused: str | None = None  # why the latest render is not live, one line
        self.reload_failing: str | None = None  # why the owed reload failed last, one line
        self._reload_failures = 0
        self._reload_due = 0.0  # monotonic time of the owed reload's next try
        self._stopping = False
        self._busy = False  # between taking the keys and reloading: finish before stopping
        self._outage: str | None = None
        self._failures = 0
        self.metrics = metrics or RenderMetrics()
        self.metrics.refused.set_function(lambda: float(self.refused is not None))
        self.metrics.reload_failing.set_function(lambda: float(self.reload_failing is not None))
        self.metrics.peer_up.labels("etcd").set_function(lambda: float(self._outage is None))

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
                revision, values = self.revision, len(self.keys.values)
                text = self._render(self.keys.view())
            live, installed = (False, False) if text is None else self._go_live(text)
            if installed:
                self.log.info("rendered", values=values, revision=revision)
            if installed or self.reload_failing is not None:
                self._reload()
            return live
        finally:
            self._busy = False
            if self._stopping:
                raise _Stop

    def _render(self, snapshot: Snapshot) -> str | None:
        """The template's text; None (and why, in `refused`) when it fails."""
        try:
            return render_text(self.template, self.prefix, snapshot, self.options.variables)
        except RenderError as exc:
            self.log.error("render failed; the old file stays", error=str(exc))
            self.metrics.failures.labels("template").inc()
            self.refused = _one_line(f"render failing: {exc}")
            return None

    def _go_live(self, text: str) -> tuple[bool, bool]:
        """(the file is live, a new file went live now); records why a text is refused."""
        if text == self._live_text():
            self.log.debug("unchanged")
            self.refused = None
            return True, False
        if text == self.rejected:
            self.log.debug("same text as the one refused; not checked again")
            return False, False
        refusal = self._install(text)
        if refusal is not None:
            self.metrics.failures.labels("check").inc()
            self.rejected, self.refused = text, _one_line(f"check failing: {refusal}")
            return False, False
        self.rejected = self.refused = None
        self.metrics.renders.inc()
        return True, True

    def _live_text(self) -> str | None:
        try:
            return self.options.dest.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _install(self, text: str) -> str | None:
        """Stage `text` beside dest, check it, rename it over dest. None when it went live,
        else the check's output."""
        dest = self.options.dest
        fd, staged_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        staged = Path(staged_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fchmod(out.fileno(), self.options.mode)
                os.fsync(out.fileno())
            if self.options.check_cmd is not None:
                command = self.options.check_cmd.replace("{src}", shlex.quote(str(staged)))
                ok, output = _shell(command)
                if not ok:
                    self.log.error(
                        "check failed; the new file is not installed",
                        command=command,
                        output=output,
                    )
                    return output
            # The data is on disk before the rename; the rename itself need not be (no fsync
            # of the directory, which costs up to 150 ms on a busy disk): after a crash the old
            # file or the new one is there, whole, and the next start renders it again.
            os.replace(staged, dest)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    def _reload(self) -> None:
        """Reload the consumer; ReloadError when that fails."""
        if self.options.reload_cmd:
            ok, output = _shell(self.options.reload_cmd)
            if not ok:
                raise ReloadError(f"reload command failed: {output}")
            self.log.info("reloaded", command=self.options.reload_cmd)
        elif self.options.reload_container and self.options.reload_signal:
            import docker  # noqa: PLC0415 - only this reload needs docker-py
            import docker.errors  # noqa: PLC0415

            try:
                client = docker.DockerClient(base_url=self.docker_url or None, timeout=10)
                client.api.kill(self.options.reload_container, signal=self.options.reload_signal)
            except docker.errors.DockerException as exc:
                raise ReloadError(f"reload signal failed: {exc}") from exc
            self.log.info(
                "reloaded",
                container=self.options.reload_container,
                signal=self.options.reload_signal,
            )
        if self.reload_failing is not None:
            self.log.info("reload succeeded", failed_attempts=self._reload_failures)
        self.reload_failing, self._reload_failures = None, 0

    def _reload_failed(self, error: str) -> None:
        """Owe the reload: logged when it starts failing, tried again when due or on a change."""
        self._reload_failures += 1
        self.metrics.failures.labels("reload").inc()
        delay = reload_retry_delay(self._reload_failures)
        self._reload_due = time.monotonic() + delay
        if self.reload_failing is None:
            self.log.error("reload failed", error=error, retry_in=delay)
        else:
            self.log.debug("reload failed again", error=error, retry_in=delay)
        self.reload_failing = _one_line(error)

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz: not ok while the latest render is refused (the old file
        stays live) or a reload is owed."""
        problems = [self.refused] if self.refused is not None else []
        if self.reload_failing is not None:
            problems.append(f"reload failing: {self.reload_failing}")
        return (not problems, "; ".join(problems) or "ok")

    # -- the render thread ---------------------------------------------------------------

    def once(self) -> bool:
        """Read the prefix, render, install and reload if new. True when the file is live."""
        kv, revision = self.watcher.read_prefix(self.prefix)
        with self._changed:
            self.keys.replace(kv)
            self.revision = revision
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
        due = self._reload_due if self.reload_failing is not None else float("inf")
        if self._first is not None and self._at_once:
            due = min(due, self._first)
        elif self._first is not None:
            due = min(due, self.options.wait.due(self._first, self._last))
        return due

    def _update_logged(self) -> None:
        try:
            self.update()
        except ReloadError as exc:
            self._reload_failed(str(exc))

    # -- the watch thread ----------------------------------------------------------------

    def _note_change(self, at_once: bool = False) -> None:
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
            self._watch_loop()
        except BaseException as exc:
            self.log.exception("watch thread failed")
            with self._changed:
                self._watch_failed = exc
                self._changed.notify_all()

    def _watch_loop(self) -> None:
        full_read = True
        while not self._stopping:
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
                if self._outage is None:
                    self._outage = str(exc)
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
            self._note_change(at_once=True)
        self._healthy()

    def _healthy(self) -> None:
        """etcd answered: end the outage, if there was one."""
        if self._outage is not None:
            self.log.info("etcd is back", revision=self.revision)
        self._outage = None
        self._failures = 0

    def _follow(self) -> None:
        """Apply the watch stream to the keys until it fails; note each change."""
        stream = self.watcher.watch(self.prefix, self.revision + 1, self.options.watch_timeout)
        for result in stream:
            if self._stopping:
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
            self._note_change()


def reload_retry_delay(failures: int) -> float:
    """Seconds before an owed reload is tried again after `failures` failures in a row."""
    return retry.delay(min(failures, 32), RELOAD_RETRY_CAP, jitter=0.0, shortest=RELOAD_RETRY_FIRST)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shell(command: str) -> tuple[bool, str]:
    """Run a shell command; (succeeded, the tail of its output)."""
    try:
        proc = subprocess.run(  # noqa: S602 - the operator's own command line, as confd runs it
            command,
            shell=True,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {COMMAND_TIMEOUT:g} s"
    output = " ".join((proc.stdout + proc.stderr).split())[-600:]
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {output}"
    return True, output
