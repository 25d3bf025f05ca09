"""`sidekick ls`: every key under the prefix, who holds it, how long it has left.

`build_rows`, `select`, `summarize` and the renderers are pure; `collect` does the reading
(etcd, and Docker for the names of this node's containers, which it can do without). At fleet
size a filter keeps the read small: `--this-node` reads only this node's keys, as the agent does
(the keys on its lease and the keys its containers want), never the prefix; `--by-node` and
`--service` read the narrowest range the key template allows. Runs on the main thread; the
leases' time left is asked a few leases at a time on worker threads.
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import NamedTuple, TextIO

from sidekick.config import Config, ConfigError
from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.leasefile import LeaseFile
from sidekick.model import KeyState, Registration, key_is_confined, merge
from sidekick.oneshot import assess, brief, with_retry
from sidekick.store import EtcdUnavailable, Store

_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # what a node and a service name may be
_FIELD_PATTERNS = {"node": _NAME_PATTERN, "service": _NAME_PATTERN, "port": r"\d+"}
COLUMNS = ("KEY", "VALUE", "OWNER", "TTL", "CONTAINER")
PAGE = 10_000  # keys per range request
TTL_WORKERS = 4  # leases asked for their time left at once (etcd has no bulk call)


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


def key_fields(key_template: str, prefix: str) -> Callable[[str], dict[str, str] | None]:
    """A function that reads the template's fields ({node}, {service}, {port}, ...) back out
    of a key; None for a key the template does not make."""
    pattern, seen = "", set()
    for literal, field, _spec, _conversion in string.Formatter().parse(key_template):
        pattern += re.escape(literal)
        if not field:
            continue
        if field == "prefix":
            pattern += re.escape(prefix)
        elif field in {"label", "json"}:  # {label:NAME}: any label's value, not read back
            pattern += "(?:.+?)"
        elif field in seen:
            pattern += f"(?P={field})"
        else:
            seen.add(field)
            pattern += f"(?P<{field}>{_FIELD_PATTERNS.get(field, '.+?')})"
    compiled = re.compile(pattern)

    def read(key: str) -> dict[str, str] | None:
        match = compiled.fullmatch(key)
        return match.groupdict() if match else None

    return read


def node_from_key(key_template: str, prefix: str) -> Callable[[str], str | None]:
    """A function that reads `{node}` back out of a key, when the key template has it."""
    if "{node}" not in key_template:
        return lambda _key: None
    fields = key_fields(key_template, prefix)

    def read(key: str) -> str | None:
        found = fields(key)
        return found["node"] if found else None

    return read


@dataclass(frozen=True)
class Selection:
    """Which keys `ls` shows: --this-node, --by-node NAME, --service NAME (all: every key)."""

    this_node: bool = False
    node: str | None = None
    service: str | None = None


def check_selection(selection: Selection, config: Config) -> Selection:
    """The selection as `collect` reads it (--by-node of this node is --this-node); a
    ConfigError when the key template cannot tell what it asks."""
    if selection.this_node and selection.node not in {None, config.node}:
        raise ConfigError(
            f"--by-node: {selection.node} is not this node ({config.node}); "
            "give --this-node or --by-node, not both"
        )
    for name, flag in (("node", "--by-node"), ("service", "--service")):
        if getattr(selection, name) is not None and f"{{{name}}}" not in config.key_template:
            if name == "node" and selection.node == config.node:
                continue
            raise ConfigError(
                f"{flag}: the key template {config.key_template} has no {{{name}}}, so a "
                f"key's {name} cannot be told"
                + ("; run `sidekick ls --this-node` on that node" if name == "node" else "")
            )
    if selection.node == config.node:
        return Selection(this_node=True, service=selection.service)
    return selection


def describe(selection: Selection) -> str:
    """ " of this node", " of node n2 and service web", or "" (for the empty-listing note)."""
    parts = ["this node"] if selection.this_node else []
    parts += [f"node {selection.node}"] if selection.node else []
    parts += [f"service {selection.service}"] if selection.service else []
    return f" of {' and '.join(parts)}" if parts else ""


def range_prefix(key_template: str, prefix: str, known: Mapping[str, str]) -> str:
    """The longest start every key the template makes with the `known` fields shares: the
    range `ls` reads (e.g. /test/web- for {prefix}/{service}-{port} and --service web)."""
    start = ""
    for literal, field, spec, conversion in string.Formatter().parse(key_template):
        start += literal
        if field is None:
            continue
        if field == "prefix":
            start += prefix
        elif field in known and not spec and not conversion:
            start += known[field]
        else:
            break
    return start


def select(rows: Sequence[Row], selection: Selection, config: Config) -> list[Row]:
    """The rows the selection asks for: by node (this node's, or the one read from the key)
    and by service (read from the key)."""
    if selection.node is None and selection.service is None:
        return list(rows)
    fields = key_fields(config.key_template, config.prefix)
    chosen = []
    for row in rows:
        if selection.node is not None and row.node != selection.node:
            continue
        if selection.service is not None:
            found = fields(row.key)
            if found is None or found.get("service") != selection.service:
                continue
        chosen.append(row)
    return chosen


@dataclass(frozen=True)
class Summary:
    """The line after the table: how many keys, owners (leases and plain keys) and nodes."""

    keys: int
    leases: int
    plain: int
    nodes: int
    unknown_node: int  # keys whose node cannot be told

    @property
    def owners(self) -> int:
        return self.leases + self.plain

    def line(self) -> str:
        unknown = f" ({_count(self.unknown_node, 'key')} of no known node)"
        return (
            f"{_count(self.keys, 'key')}; {_count(self.owners, 'owner')} "
            f"({_count(self.leases, 'lease')}, {_count(self.plain, 'plain key')}); "
            f"{_count(self.nodes, 'node')}{unknown if self.unknown_node else ''}"
        )


def _count(number: int, word: str) -> str:
    return f"{number:,} {word}{'' if number == 1 else 's'}"


def summarize(rows: Sequence[Row]) -> Summary:
    leases = {row.lease for row in rows if row.lease}
    nodes = {row.node for row in rows if row.node is not None}
    return Summary(
        keys=len(rows),
        leases=len(leases),
        plain=sum(1 for row in rows if not row.lease),
        nodes=len(nodes),
        unknown_node=sum(1 for row in rows if row.node is None),
    )


def build_rows(
    actual: Mapping[str, KeyState],
    ttls: Mapping[int, int],
    mine: Mapping[str, Registration],
    config: Config,
    agent_lease: int = 0,
) -> list[Row]:
    """The table, sorted by key.

    A key whose value is what this node announces for it is this node's (with the container's
    name); so is every key on a lease that holds one of those, and every key on this node's
    agent lease. Otherwise the node is read from the key when the key template has `{node}`.
    """
    ours = {k for k, r in mine.items() if k in actual and actual[k].value == r.value}
    our_leases = {actual[k].lease for k in ours if actual[k].lease} | (
        {agent_lease} if agent_lease else set()
    )
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
    """One JSON document: the prefix, this node, one object per key, and the summary."""
    return json.dumps(
        {
            "prefix": config.prefix,
            "node": config.node,
            "summary": {**asdict(summarize(rows)), "owners": summarize(rows).owners},
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
    config: Config,
    store: Store,
    docker: DockerSource,
    warn: Callable[[str], None],
    *,
    selection: Selection = Selection(),
    lease_file: LeaseFile | None = None,
) -> list[Row]:
    """The selected keys with their leases' time left and this node's containers' names;
    etcd errors go up. `selection` must have been through check_selection."""
    mine = _announced(config, docker, warn)
    if selection.this_node:
        actual, agent_lease, ttls = _read_this_node(config, store, mine, lease_file)
    else:
        known = {"node": selection.node, "service": selection.service}
        start = range_prefix(
            config.key_template, config.prefix, {k: v for k, v in known.items() if v}
        )
        actual, _ = with_retry(lambda: store.read_prefix(start, page=PAGE), EtcdUnavailable)
        agent_lease, ttls = 0, {}
    rows = select(build_rows(actual, {}, mine, config, agent_lease), selection, config)
    leases = {row.lease for row in rows if row.lease and row.lease not in ttls}
    ttls.update(time_left(store, leases))
    return [row._replace(ttl=ttls.get(row.lease, -1)) if row.lease else row for row in rows]


def _announced(
    config: Config, docker: DockerSource, warn: Callable[[str], None]
) -> dict[str, Registration]:
    """The keys this node's running containers would announce (none without Docker)."""
    try:
        containers = docker.running_containers()
    except DockerUnavailable as exc:
        warn(f"{brief(exc)}; container names not shown")
        containers = []
    return merge(assess(c, config).registrations for c in containers).registrations


def _read_this_node(
    config: Config,
    store: Store,
    mine: Mapping[str, Registration],
    lease_file: LeaseFile | None,
) -> tuple[dict[str, KeyState], int, dict[int, int]]:
    """This node's keys as the agent reads them: those on its lease (named by the lease file,
    when that lease is alive; one request) and those its containers want. (keys, the agent's
    lease or 0, its time left)."""
    lease = lease_file.read() if lease_file is not None else None
    ttl, on_lease = -1, list[str]()
    if lease:
        ttl, on_lease = with_retry(functools.partial(store.lease_keys, lease), EtcdUnavailable)
    agent_lease = lease if lease and ttl >= 0 else 0
    wanted = {k for k in on_lease if key_is_confined(k, config.prefix)} | set(mine)
    actual = with_retry(functools.partial(store.read_keys, sorted(wanted)), EtcdUnavailable)
    return actual, agent_lease, ({agent_lease: ttl} if agent_lease else {})


def time_left(store: Store, leases: Collection[int]) -> dict[int, int]:
    """Seconds left on each lease (-1: gone), asked TTL_WORKERS at a time, each worker on a
    connection of its own."""
    local = threading.local()

    def ask(lease: int) -> int:
        if not hasattr(local, "store"):
            local.store = store.clone()
        own: Store = local.store
        return with_retry(functools.partial(own.time_to_live, lease), EtcdUnavailable)

    ordered = sorted(leases)
    if len(ordered) <= 1:
        return {lease: ask(lease) for lease in ordered}
    with ThreadPoolExecutor(min(TTL_WORKERS, len(ordered))) as pool:
        return dict(zip(ordered, pool.map(ask, ordered), strict=True))
