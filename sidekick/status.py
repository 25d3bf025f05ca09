"""`sidekick ls`: every key under the prefix, who holds it, how long it has left.

`build_rows` and the two renderers are pure; `collect` does the reading (etcd, and Docker for
the names of this node's containers, which it can do without).
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TextIO

from sidekick.config import Config
from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.model import KeyState, Registration, merge
from sidekick.oneshot import assess, brief, with_retry
from sidekick.store import EtcdUnavailable, Store

_NODE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
COLUMNS = ("KEY", "VALUE", "OWNER", "TTL", "CONTAINER")


class Row(NamedTuple):
    """One key, as `ls` shows it."""

    key: str
    value: str
    lease: int  # 0: a plain key
    node: str | None  # the node that announces it, when that can be told
    ttl: int | None  # seconds left on the lease; None for a plain key, -1 when it is gone
    container: str | None  # for this node's keys: the container's name
    this_node: bool

    @property
    def owner(self) -> str:
        if not self.lease:
            return "plain" + (f" ({self.node})" if self.node else "")
        return f"lease {self.lease:x}" + (f" ({self.node})" if self.node else "")

    @property
    def seconds_left(self) -> str:
        if self.ttl is None:
            return "-"
        return "expired" if self.ttl < 0 else f"{self.ttl}s"


def node_from_key(key_template: str, prefix: str) -> Callable[[str], str | None]:
    """A function that reads `{node}` back out of a key, when the key template has it."""
    if "{node}" not in key_template:
        return lambda _key: None
    pattern, seen = "", set()
    for literal, field, _spec, _conversion in string.Formatter().parse(key_template):
        pattern += re.escape(literal)
        if not field:
            continue
        if field == "prefix":
            pattern += re.escape(prefix)
        elif field in seen:
            pattern += f"(?P={field})"
        else:
            seen.add(field)
            body = _NODE_PATTERN if field == "node" else ".+?"
            pattern += f"(?P<{field}>{body})"
    compiled = re.compile(pattern)

    def read(key: str) -> str | None:
        match = compiled.fullmatch(key)
        return match.group("node") if match else None

    return read


def build_rows(
    actual: Mapping[str, KeyState],
    ttls: Mapping[int, int],
    mine: Mapping[str, Registration],
    config: Config,
) -> list[Row]:
    """The table, sorted by key.

    A key whose value is what this node announces for it is this node's (with the container's
    name); so is every key on a lease that holds one of those. Otherwise the node is read from
    the key when the key template has `{node}`.
    """
    ours = {k for k, r in mine.items() if k in actual and actual[k].value == r.value}
    our_leases = {actual[k].lease for k in ours if actual[k].lease}
    read_node = node_from_key(config.key_template, config.prefix)
    rows = []
    for key, state in sorted(actual.items()):
        this_node = key in ours or state.lease in our_leases
        rows.append(
            Row(
                key=key,
                value=state.value,
                lease=state.lease,
                node=config.node if this_node else read_node(key),
                ttl=ttls.get(state.lease, -1) if state.lease else None,
                container=mine[key].container_name if key in ours else None,
                this_node=this_node,
            )
        )
    return rows


def render_json(rows: Sequence[Row], config: Config) -> str:
    """One JSON document: the prefix, this node, and one object per key."""
    return json.dumps(
        {
            "prefix": config.prefix,
            "node": config.node,
            "registrations": [
                {
                    "key": row.key,
                    "value": row.value,
                    "lease": f"{row.lease:x}" if row.lease else None,
                    "node": row.node,
                    "ttl": row.ttl,
                    "container": row.container,
                    "this_node": row.this_node,
                }
                for row in rows
            ],
        },
        indent=2,
    )


def use_color(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set or TERM is dumb."""
    return (
        stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "") != "dumb"
    )


_BOLD, _DIM, _GREEN, _YELLOW, _CYAN, _RESET = (
    "\033[1m",
    "\033[2m",
    "\033[32m",
    "\033[33m",
    "\033[36m",
    "\033[0m",
)


def render_table(rows: Sequence[Row], color: bool = False) -> str:
    """Aligned columns; with `color`, this node's keys green, plain keys dim, short TTLs yellow."""
    cells = [COLUMNS] + [
        (row.key, row.value, row.owner, row.seconds_left, row.container or "-") for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        padded = [text.ljust(width) for text, width in zip(line, widths, strict=True)]
        padded[-1] = padded[-1].rstrip()
        if color:
            padded = _paint(padded, rows[index - 1] if index else None)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _paint(cells: list[str], row: Row | None) -> list[str]:
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}"

    if row is None:
        return [paint(_BOLD, text) for text in cells]
    key, value, owner, ttl, container = cells
    if row.this_node:
        key = paint(_GREEN, key)
    if not row.lease:
        owner = paint(_DIM, owner)
    if row.ttl is not None and row.ttl < 5:
        ttl = paint(_YELLOW, ttl)
    if row.container:
        container = paint(_CYAN, container)
    return [key, value, owner, ttl, container]


def collect(
    config: Config, store: Store, docker: DockerSource, warn: Callable[[str], None]
) -> list[Row]:
    """Read the prefix, the leases' time left and this node's containers; etcd errors go up."""
    actual, _ = with_retry(lambda: store.read_prefix(config.prefix + "/"), EtcdUnavailable)
    ttls = {
        lease: with_retry(functools.partial(store.time_to_live, lease), EtcdUnavailable)
        for lease in sorted({s.lease for s in actual.values() if s.lease})
    }
    try:
        containers = docker.running_containers()
    except DockerUnavailable as exc:
        warn(f"{brief(exc)}; container names not shown")
        containers = []
    mine = merge(assess(c, config).registrations for c in containers).registrations
    return build_rows(actual, ttls, mine, config)
