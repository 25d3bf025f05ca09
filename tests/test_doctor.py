"""Unit tests for the pure parts of sidekick.doctor: marks, the exit code, container lines."""

from __future__ import annotations

import io
from typing import Any, ClassVar

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
from sidekick.hostaddr import Interface, judge, local_addresses
from sidekick.model import LABEL_ENABLE, LABEL_SERVICE, Container, KeyState, PortBinding


def container(name: str, labels: dict[str, str] | None = None, **changes: Any) -> Container:
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
    """A summary line, then every container skipped and every key not right, on a line each."""

    def test_none_in_scope(self, config: Config) -> None:
        """No container: one note saying what opts a container in."""
        checks = container_checks([], config, {})
        assert [c.status for c in checks] == [INFO]
        assert "sidekick.enable=true" in checks[0].text

    def test_announced_on_a_live_lease(self, config: Config) -> None:
        """The wanted key in etcd with this node's value on a live lease: the summary and ok."""
        actual = {"/test/apache-8001": KeyState("127.0.0.1:8001", 0xBEEF, 3)}
        checks = container_checks([container("web")], config, actual, {0xBEEF: 27})
        assert checks == [
            Check(INFO, "1 containers in scope: 1 to announce (1 keys), 0 skipped"),
            Check(OK, "1 keys in etcd on lease beef (27 s left)"),
        ]

    def test_missing_key_fails(self, config: Config) -> None:
        """A container that should be announced and is not: no agent is doing it."""
        checks = container_checks([container("web")], config, {})
        assert checks[-1].status == FAIL
        assert "1 of 1 keys are not in etcd (/test/apache-8001)" in checks[-1].text
        assert "is `sidekick run` running" in checks[-1].text

    def test_many_containers_one_summary(self, config: Config) -> None:
        """200 good containers give two lines, not 200."""
        many = [
            container(f"c{i:03}", bindings=(PortBinding(80, "127.0.0.1", 9000 + i),))
            for i in range(200)
        ]
        actual = {
            f"/test/apache-{9000 + i}": KeyState(f"127.0.0.1:{9000 + i}", 7, 1) for i in range(200)
        }
        checks = container_checks(many, config, actual, {7: 30})
        assert [c.status for c in checks] == [INFO, OK]
        assert checks[1].text == "200 keys in etcd on lease 7 (30 s left)"

    def test_gone_lease_fails_and_plain_keys_noted(self, config: Config) -> None:
        """Keys on a lease that is gone fail; plain keys are noted."""
        two = [container("a"), container("b", bindings=(PortBinding(80, "127.0.0.1", 8002),))]
        actual = {
            "/test/apache-8001": KeyState("127.0.0.1:8001", 0xDEAD, 3),
            "/test/apache-8002": KeyState("127.0.0.1:8002", 0, 4),
        }
        checks = container_checks(two, config, actual, {0xDEAD: -1})
        assert Check(INFO, "1 keys in etcd as plain keys: no lease keeps them") in checks
        assert Check(FAIL, "1 keys on lease dead, which is gone") in checks

    def test_bad_label_fails(self, config: Config) -> None:
        """Labels the agent cannot honour fail the check, with the reason."""
        checks = container_checks(
            [container("evil", {LABEL_ENABLE: "true", LABEL_SERVICE: "../x"})], config, {}
        )
        assert checks[1].status == FAIL
        assert "evil skipped" in checks[1].text and "service name" in checks[1].text

    def test_not_healthy_yet_warns(self, config: Config) -> None:
        """A container whose health check has not passed is a warning, not a failure."""
        checks = container_checks([container("slow", health="starting")], config, {})
        assert checks[1:] == [Check(WARN, "container slow skipped: health is starting")]

    def test_clash_fails(self, config: Config) -> None:
        """A key another owner holds with another value is named with its holder."""
        actual = {"/test/apache-8001": KeyState("192.0.2.9:8001", 0xBEEF, 3)}
        checks = container_checks([container("web")], config, actual)
        assert checks[1].status == FAIL
        assert "lease beef" in checks[1].text and "192.0.2.9:8001" in checks[1].text

    def test_etcd_unread_skips_key_checks(self, config: Config) -> None:
        """etcd could not be read: the summary only (its failure is on its own line)."""
        assert [c.status for c in container_checks([container("web")], config, None)] == [INFO]


class TestHostAddress:
    """judge(): loopback and bridge addresses are refused; one not on this host is doubtful."""

    ADDRESSES: ClassVar[dict[str, Interface]] = {
        "127.0.0.1": Interface("lo", bridge=False),
        "10.0.0.5": Interface("eth0", bridge=False),
        "172.17.0.1": Interface("docker0", bridge=True),
    }

    @pytest.mark.parametrize(
        ("ip", "refuse", "words"),
        [
            ("127.0.0.1", True, "loopback"),
            ("::1", True, "loopback"),
            ("172.17.0.1", True, "bridge docker0"),
            ("192.0.2.7", False, "not an address of this host"),
        ],
    )
    def test_judged(self, ip: str, refuse: bool, words: str) -> None:
        verdict = judge(ip, self.ADDRESSES)
        assert verdict is not None and verdict.refuse is refuse and words in verdict.text

    def test_own_address_is_fine(self) -> None:
        assert judge("10.0.0.5", self.ADDRESSES) is None

    def test_unknown_addresses_judge_only_loopback(self) -> None:
        """When the host's addresses cannot be read, only what is wrong for certain is said."""
        assert judge("192.0.2.7", {}) is None

    def test_this_hosts_loopback_is_read(self) -> None:
        """local_addresses() reads this host's interfaces (lo is always there)."""
        assert local_addresses()["127.0.0.1"].name == "lo"
