"""Unit tests for the pure parts of sidekick.status (`sidekick ls`): rows, table and JSON."""

from __future__ import annotations

import json

import pytest

from sidekick.config import Config
from sidekick.model import KeyState, Registration
from sidekick.status import Row, build_rows, node_from_key, render_json, render_table

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
