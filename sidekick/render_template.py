"""The template side of `sidekick render`: the Jinja2 template, the keys it reads, the text.

Runs on: load_template on the main thread at start-up; render_text on the render thread (the
main one). Keys are changed by the watch thread and read by the render thread, under the
renderer's lock. The only module of the renderer that imports jinja2.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, overload

import jinja2

from sidekick.config import ConfigError

BUILTIN_TEMPLATE = "nginx.conf.j2"


class RenderError(Exception):
    """The template could not be rendered, or the new file failed its check or reload."""


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
