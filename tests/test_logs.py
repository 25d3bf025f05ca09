"""Log lines: console on a terminal, JSON lines otherwise, level filtering."""

from __future__ import annotations

import io
import json

import structlog

from sidekick import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestLogFormat:
    """--log-format auto picks by the stream; --log-level filters."""

    def test_json_when_piped(self) -> None:
        """Not a terminal: one JSON object per line, with the event and its fields."""
        stream = io.StringIO()
        logs.configure("auto", "info", stream)
        structlog.get_logger().info("registered", key="/test/apache-8001")
        line = json.loads(stream.getvalue())
        assert (line["event"], line["key"], line["level"]) == (
            "registered",
            "/test/apache-8001",
            "info",
        )

    def test_console_on_a_terminal(self) -> None:
        """On a terminal: a readable line, not JSON."""
        stream = Terminal()
        logs.configure("auto", "info", stream)
        structlog.get_logger().info("registered", key="/test/apache-8001")
        text = stream.getvalue()
        assert "registered" in text and "/test/apache-8001" in text
        assert not text.lstrip().startswith("{")

    def test_level_filters(self) -> None:
        """Below the configured level nothing is written."""
        stream = io.StringIO()
        logs.configure("json", "warning", stream)
        structlog.get_logger().info("quiet")
        structlog.get_logger().warning("loud")
        assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]
