"""Unit tests for the pure parts of sidekick.status (`sidekick ls`): rows, table and JSON."""

from __future__ import annotations

import json

import pytest

from sidekick.config import Config, ConfigError
from sidekick.model import KeyState, Registration
from sidekick.status import (
    Row,
    Selection,
    build_rows,
    check_selection,
    key_fields,
    node_from_key,
    range_prefix,
    render_json,
    render_table,
    select,
    summarize,
)

NODE_TEMPLATE = "{prefix}/{node}-{service}-{port}"

MINE = {"/test/apache-8001": Registration("/test/apache-8001", "10.0.0.5:8001", "c1", "web-1")}
AGENT_LEASE, OTHER_LEASE = 0x694D, 0xBEEF


@pytest.fixture(name="config")
def _config() -> Config:
    return Config(prefix="/test", host_ip="10.0.0.5", node="node1")


def rows_for(config: Config, actual: dict[str, KeyState]) -> dict[str, Row]:
    ttls = {AGENT_LEASE: 27, OTHER_LEASE: 3}
    return {row.key: row for row in build_rows(actual, ttls, MINE, config)}


class TestBuildRows:
    """Who holds each key, how long it has left, and which of them are this node's."""

    def test_own_key_on_the_agent_lease(self, config: Config) -> None:
        """This node's value: its node and container name; the lease's seconds left."""
        row = rows_for(config, {"/test/apache-8001": KeyState("10.0.0.5:8001", AGENT_LEASE, 4)})[
            "/test/apache-8001"
        ]
        assert (row.node, row.container, row.ttl, row.this_node) == ("node1", "web-1", 27, True)
        assert (row.owner, row.seconds_left) == ("lease 694d (node1)", "27s")

    def test_same_lease_is_the_same_node(self, config: Config) -> None:
        """A key on the lease that holds one of this node's keys is this node's too."""
        rows = rows_for(
            config,
            {
                "/test/apache-8001": KeyState("10.0.0.5:8001", AGENT_LEASE, 4),
                "/test/gone-9000": KeyState("10.0.0.5:9000", AGENT_LEASE, 5),
            },
        )
        assert (rows["/test/gone-9000"].node, rows["/test/gone-9000"].container) == ("node1", None)

    def test_foreign_and_plain_keys(self, config: Config) -> None:
        """Another value is not this node's; a plain key has no TTL."""
        rows = rows_for(
            config,
            {
                "/test/apache-8001": KeyState("192.0.2.9:8001", OTHER_LEASE, 4),
                "/test/static-80": KeyState("192.0.2.1:80", 0, 2),
            },
        )
        foreign, plain = rows["/test/apache-8001"], rows["/test/static-80"]
        assert (foreign.this_node, foreign.owner, foreign.seconds_left) == (
            False,
            "lease beef",
            "3s",
        )
        assert (plain.owner, plain.ttl, plain.seconds_left) == ("plain", None, "-")

    def test_lease_gone_between_reads(self, config: Config) -> None:
        """A lease that expired between the two reads shows as expired."""
        rows = build_rows({"/test/x-1": KeyState("v", 0x123, 1)}, {}, {}, config)
        assert rows[0].seconds_left == "expired"

    def test_sorted_by_key(self, config: Config) -> None:
        """Rows come sorted by key."""
        actual = {k: KeyState("v", 0, 1) for k in ("/test/b", "/test/a", "/test/c")}
        assert [r.key for r in build_rows(actual, {}, {}, config)] == [
            "/test/a",
            "/test/b",
            "/test/c",
        ]


class TestNodeFromKey:
    """With {node} in the key template the node is read back out of any key."""

    def test_reads_the_node(self) -> None:
        """{prefix}/{node}/{service}-{port} gives the node segment."""
        read = node_from_key("{prefix}/{node}/{service}-{port}", "/lb")
        assert read("/lb/n-2/web-80") == "n-2"
        assert read("/elsewhere/n-2/web-80") is None

    def test_without_node_in_the_template(self) -> None:
        """The default template has no {node}: nothing can be read."""
        assert node_from_key("{prefix}/{service}-{port}", "/test")("/test/web-80") is None

    def test_repeated_field(self) -> None:
        """A field used twice must match the same text both times."""
        read = node_from_key("{prefix}/{node}/{port}/{port}", "/p")
        assert (read("/p/n1/80/80"), read("/p/n1/80/81")) == ("n1", None)

    def test_rows_use_it_for_other_nodes(self) -> None:
        """Other nodes' keys show their node when the template has {node}."""
        config = Config(node="node1", key_template="{prefix}/{node}/{service}-{port}")
        rows = build_rows({"/test/node2/web-80": KeyState("v", 5, 1)}, {5: 9}, {}, config)
        assert rows[0].owner == "lease 5 (node2)"


class TestSelection:
    """--this-node, --by-node and --service: what is read and what is shown."""

    def test_key_fields(self) -> None:
        """Every field is read back; a service or node may hold dashes, a port is digits."""
        read = key_fields("{prefix}/{service}-{port}", "/test")
        assert read("/test/web-api-8080") == {"service": "web-api", "port": "8080"}
        assert read("/test/web-api") is None
        assert key_fields(NODE_TEMPLATE, "/lb")("/lb/n7-web-80") == {
            "node": "n7",
            "service": "web",
            "port": "80",
        }

    def test_range_prefix(self) -> None:
        """The longest start the known fields give; the prefix alone when the first field is
        unknown."""
        assert range_prefix(NODE_TEMPLATE, "/lb", {"node": "n7"}) == "/lb/n7-"
        assert range_prefix(NODE_TEMPLATE, "/lb", {"service": "web"}) == "/lb/"
        assert range_prefix(NODE_TEMPLATE, "/lb", {"node": "n7", "service": "web"}) == (
            "/lb/n7-web-"
        )
        assert range_prefix("{prefix}/{service}-{port}", "/t", {"service": "web"}) == "/t/web-"
        assert range_prefix("{prefix}/{node}/{service}", "/t", {}) == "/t/"

    def test_select_by_node_and_service(self) -> None:
        """Exact names: web is not web2, n1 is not n10."""
        config = Config(prefix="/lb", node="lb", key_template=NODE_TEMPLATE)
        actual = {
            k: KeyState("v", 5, 1)
            for k in ("/lb/n1-web-80", "/lb/n1-web2-80", "/lb/n10-web-80", "/lb/n2-db-5432")
        }
        rows = build_rows(actual, {5: 9}, {}, config)
        by_node = select(rows, Selection(node="n1"), config)
        assert [r.key for r in by_node] == ["/lb/n1-web-80", "/lb/n1-web2-80"]
        by_service = select(rows, Selection(service="web"), config)
        assert [r.key for r in by_service] == ["/lb/n1-web-80", "/lb/n10-web-80"]
        both = select(rows, Selection(node="n1", service="web2"), config)
        assert [r.key for r in both] == ["/lb/n1-web2-80"]

    def test_check_selection(self) -> None:
        """--by-node of this node is --this-node; a field the template lacks is refused."""
        config = Config(node="node1")
        assert check_selection(Selection(node="node1"), config) == Selection(this_node=True)
        with pytest.raises(ConfigError, match=r"^--by-node: the key template .* has no \{node\}"):
            check_selection(Selection(node="node2"), config)
        bare = Config(node="node1", key_template="{prefix}/{node}-{port}")
        with pytest.raises(ConfigError, match=r"^--service: the key template .* has no"):
            check_selection(Selection(service="web"), bare)
        with pytest.raises(ConfigError, match=r"^--by-node: node2 is not this node"):
            check_selection(Selection(this_node=True, node="node2"), bare)

    def test_agent_lease_marks_this_node(self, config: Config) -> None:
        """A key on this node's agent lease is this node's even without a container for it."""
        actual = {"/test/old-1": KeyState("10.0.0.5:1", AGENT_LEASE, 3)}
        [row] = build_rows(actual, {}, {}, config, agent_lease=AGENT_LEASE)
        assert (row.this_node, row.node) == (True, "node1")

    def test_summary(self) -> None:
        """Keys, owners (leases and plain keys), nodes, and the keys of no known node."""
        rows = [
            Row("/t/a", "v", 1, "n1", 5, None, False),
            Row("/t/b", "v", 1, "n1", 5, None, False),
            Row("/t/c", "v", 2, "n2", 5, None, False),
            Row("/t/d", "v", 0, None, None, None, False),
        ]
        summary = summarize(rows)
        assert (summary.keys, summary.leases, summary.plain, summary.owners) == (4, 2, 1, 3)
        assert (summary.nodes, summary.unknown_node) == (2, 1)
        assert summary.line() == (
            "4 keys; 3 owners (2 leases, 1 plain key); 2 nodes (1 key of no known node)"
        )


class TestRender:
    """Aligned and coloured on a terminal, the same without colour when piped, JSON for scripts."""

    ROWS = (
        Row("/test/apache-8001", "10.0.0.5:8001", AGENT_LEASE, "node1", 27, "web-1", True),
        Row("/test/static-80", "192.0.2.1:80", 0, None, None, None, False),
    )

    def test_plain_table_is_aligned(self) -> None:
        """A header and one line per key; every column starts at the same offset; no escapes."""
        lines = render_table(self.ROWS).splitlines()
        assert lines[0].split() == ["KEY", "VALUE", "OWNER", "TTL", "CONTAINER"]
        assert "\033" not in "".join(lines)
        words = ["VALUE", "10.0.0.5", "192.0"]
        starts = [line.index(word) for line, word in zip(lines, words, strict=True)]
        assert len(set(starts)) == 1
        assert lines[2].split() == ["/test/static-80", "192.0.2.1:80", "plain", "-", "-"]

    def test_colour_table(self) -> None:
        """With colour, escapes are added and the text is otherwise the same."""
        plain, coloured = render_table(self.ROWS), render_table(self.ROWS, color=True)
        assert "\033[32m/test/apache-8001" in coloured
        stripped = coloured
        for code in ("\033[1m", "\033[2m", "\033[32m", "\033[33m", "\033[36m", "\033[0m"):
            stripped = stripped.replace(code, "")
        assert stripped == plain

    def test_json(self, config: Config) -> None:
        """One document: prefix, node, and each key with its lease in hex (null when plain)."""
        document = json.loads(render_json(self.ROWS, config))
        assert (document["prefix"], document["node"]) == ("/test", "node1")
        assert document["summary"] == {
            "keys": 2,
            "owners": 2,
            "leases": 1,
            "plain": 1,
            "nodes": 1,
            "unknown_node": 1,
        }
        first, second = document["registrations"]
        assert first == {
            "key": "/test/apache-8001",
            "value": "10.0.0.5:8001",
            "lease": "694d",
            "node": "node1",
            "ttl": 27,
            "container": "web-1",
            "this_node": True,
        }
        assert (second["lease"], second["ttl"], second["this_node"]) == (None, None, False)
