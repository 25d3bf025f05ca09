"""Unit tests for the pure parts of sidekick.doctor: marks, the exit code, container lines."""

from __future__ import annotations

import io

import pytest

from sidekick.config import Config
from sidekick.doctor import (
    FAIL,
    INFO,
    OK,
    WARN,
    Check,
    can_encode,
    container_checks,
    exit_code,
    render,
)
from sidekick.model import LABEL_ENABLE, LABEL_SERVICE, Container, KeyState, PortBinding


def container(name: str, labels: dict[str, str] | None = None, **changes: object) -> Container:
    base = Container(
        id=name * 4,
        name=name,
        image="dash/apache",
        labels={LABEL_ENABLE: "true"} if labels is None else labels,
        running=True,
        paused=False,
        health=None,
        host_network=False,
        bindings=(PortBinding(80, "127.0.0.1", 8001),),
        exposed_ports=(80,),
    )
    return base._replace(**changes)


@pytest.fixture(name="config")
def _config() -> Config:
    return Config(prefix="/test", host_ip="10.0.0.5", node="node1")


class TestExitCode:
    """Only a failed check fails the run."""

    @pytest.mark.parametrize(
        ("statuses", "code"), [([OK, OK], 0), ([OK, WARN, INFO], 0), ([OK, FAIL, OK], 1), ([], 0)]
    )
    def test_exit_code(self, statuses: list[str], code: int) -> None:
        """0 unless some check failed; warnings and notes do not count."""
        assert exit_code([Check(s, "x") for s in statuses]) == code


class TestRender:
    """One line per check with a clear mark."""

    @pytest.mark.parametrize(
        ("status", "mark", "ascii_mark"),
        [(OK, "✓", "[ok]"), (FAIL, "✗", "[FAIL]"), (WARN, "!", "[warn]"), (INFO, "·", "[info]")],
    )
    def test_marks(self, status: str, mark: str, ascii_mark: str) -> None:
        """Unicode marks where the stream takes them, ASCII ones otherwise."""
        assert render(Check(status, "etcd")) == f"{mark} etcd"
        assert render(Check(status, "etcd"), unicode=False) == f"{ascii_mark} etcd"

    def test_colour_wraps_the_mark_only(self) -> None:
        """On a terminal the mark is coloured and the text left alone."""
        assert render(Check(FAIL, "etcd"), color=True) == "\033[31m✗\033[0m etcd"

    def test_can_encode(self) -> None:
        """A UTF-8 stream takes the marks, an ASCII one does not."""
        utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        ascii_only = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        assert (can_encode(utf8), can_encode(ascii_only)) == (True, False)


class TestContainerChecks:
    """What each container in scope would announce, or why it is skipped."""

    def test_none_in_scope(self, config: Config) -> None:
        """No container: one note saying what opts a container in."""
        checks = container_checks([], config, {})
        assert [c.status for c in checks] == [INFO]
        assert "sidekick.enable=true" in checks[0].text

    def test_would_be_announced(self, config: Config) -> None:
        """A good container: its key and value, ok."""
        checks = container_checks([container("web")], config, {})
        assert checks == [
            Check(OK, "container web would be announced: /test/apache-8001 = 127.0.0.1:8001")
        ]

    def test_bad_label_fails(self, config: Config) -> None:
        """Labels the agent cannot honour fail the check, with the reason."""
        checks = container_checks(
            [container("evil", {LABEL_ENABLE: "true", LABEL_SERVICE: "../x"})], config, {}
        )
        assert checks[0].status == FAIL
        assert "evil skipped" in checks[0].text and "service name" in checks[0].text

    def test_not_healthy_yet_warns(self, config: Config) -> None:
        """A container whose health check has not passed is a warning, not a failure."""
        checks = container_checks([container("slow", health="starting")], config, {})
        assert checks == [Check(WARN, "container slow skipped: health is starting")]

    def test_clash_fails(self, config: Config) -> None:
        """A key another owner holds with another value is named with its holder."""
        actual = {"/test/apache-8001": KeyState("192.0.2.9:8001", 0xBEEF, 3)}
        checks = container_checks([container("web")], config, actual)
        assert checks[0].status == FAIL
        assert "lease beef" in checks[0].text and "192.0.2.9:8001" in checks[0].text

    def test_same_value_elsewhere_is_fine(self, config: Config) -> None:
        """A key that already holds the same value (the running agent's) is ok."""
        actual = {"/test/apache-8001": KeyState("127.0.0.1:8001", 0xBEEF, 3)}
        assert container_checks([container("web")], config, actual)[0].status == OK

    def test_sorted_by_name(self, config: Config) -> None:
        """Containers are listed by name."""
        checks = container_checks([container("b"), container("a", health="starting")], config, None)
        assert [c.text.split()[1] for c in checks] == ["a", "b"]
