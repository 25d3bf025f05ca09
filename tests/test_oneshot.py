"""Unit tests for the pure half of sidekick.oneshot: targets, assessments and the two plans.

No Docker, no etcd: the I/O half is covered by tests/test_commands.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidekick.config import Config
from sidekick.model import (
    LABEL_ENABLE,
    LABEL_PORT,
    LABEL_SERVICE,
    Clash,
    Container,
    Delete,
    KeyState,
    PortBinding,
    Put,
    matches_filters,
)
from sidekick.oneshot import (
    Present,
    Target,
    UsageError,
    assess,
    batches,
    brief,
    check_target,
    holder,
    plan_deregister,
    plan_register,
    registrations_while_up,
    service_registration,
)

HOST_IP = "10.0.0.5"
KEY, VALUE = "/test/apache-8001", "10.0.0.5:8001"


def container(
    *,
    labels: dict[str, str] | None = None,
    running: bool = True,
    paused: bool = False,
    health: str | None = None,
    bindings: tuple[PortBinding, ...] = (PortBinding(80, "0.0.0.0", 8001),),
) -> Container:
    return Container(
        id="0123456789ab" + "c" * 52,
        name="apache-8001",
        image="dash/apache:latest",
        labels={LABEL_ENABLE: "true"} if labels is None else labels,
        running=running,
        paused=paused,
        health=health,
        host_network=False,
        bindings=bindings,
        exposed_ports=(80,),
    )


@pytest.fixture(name="config")
def _config() -> Config:
    return Config(prefix="/test", host_ip=HOST_IP, node="node1")


class TestCheckTarget:
    """The command line names containers or one --service/--port backend, never both."""

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            (Target(("web",), "apache", 80), "not both"),
            (Target(service="apache"), "go together"),
            (Target(port=80), "go together"),
            (Target(("web",), ip="10.0.0.1"), "--ip goes with"),
            (Target(service="apache", port=0), "--port"),
            (Target(service="apache", port=70000), "--port"),
            (Target(service="../etc", port=80), "--service"),
            (Target(service="a" * 129, port=80), "--service"),
        ],
    )
    def test_bad_targets_are_usage_errors(self, target: Target, message: str) -> None:
        """Each impossible combination is a UsageError whose message names the option."""
        with pytest.raises(UsageError, match=message):
            check_target(target)

    @pytest.mark.parametrize(
        ("good", "one_change_off"),
        [
            (Target(("a", "b")), Target(("a", "b"), ip="10.0.0.1")),
            (Target(), Target(port=80)),
            (Target(service="apache", port=1, ip="::1"), Target(service="apache", ip="::1")),
            (Target(service="a" * 128, port=65535), Target(service="a" * 129, port=65535)),
        ],
        ids=["names", "nothing", "service-port-ip", "longest-service-highest-port"],
    )
    def test_good_targets_pass(self, good: Target, one_change_off: Target) -> None:
        """Names alone, nothing at all, a full --service/--port/--ip and the longest service
        name with the highest port are accepted, while the same target one field off is
        refused: the check looks at what it accepts."""
        try:
            check_target(good)
        except UsageError as exc:
            pytest.fail(f"{good} refused: {exc}")
        with pytest.raises(UsageError):
            check_target(one_change_off)


class TestServiceRegistration:
    """--service/--port gives exactly the key and value the agent would write."""

    def test_seed_key_with_the_host_ip(self, config: Config) -> None:
        """apache on 8001 with host IP 10.0.0.5 is /test/apache-8001 = 10.0.0.5:8001."""
        registration = service_registration(Target(service="apache", port=8001), config)
        assert (registration.key, registration.value) == (KEY, VALUE)
        assert registration.container_id == ""

    def test_ip_overrides_the_host_ip(self, config: Config) -> None:
        """--ip wins over the node's address; IPv6 is written in brackets."""
        four = service_registration(Target(service="a", port=80, ip="192.0.2.1"), config)
        six = service_registration(Target(service="a", port=80, ip="fd00::1"), config)
        assert (four.value, six.value) == ("192.0.2.1:80", "[fd00::1]:80")

    def test_no_address_at_all(self) -> None:
        """Without --ip and without a host IP it refuses, naming both ways to give one."""
        with pytest.raises(UsageError, match=r"--host-ip.*--ip"):
            service_registration(Target(service="a", port=80), Config(node="n"))

    @pytest.mark.parametrize("ip", ["not-an-ip", "0.0.0.0", "::", "fe80::1%eth0"])
    def test_unusable_ip(self, config: Config, ip: str) -> None:
        """An --ip that other nodes cannot reach is refused."""
        with pytest.raises(UsageError, match="--ip"):
            service_registration(Target(service="a", port=80, ip=ip), config)

    def test_templates_apply(self) -> None:
        """The key and value templates apply; {container} is the service name."""
        config = Config(
            host_ip=HOST_IP,
            node="n1",
            key_template="{prefix}/{node}/{container}/{port}",
            value_template="http://{ip}:{port}/",
        )
        registration = service_registration(Target(service="api", port=9000), config)
        assert (registration.key, registration.value) == (
            "/test/n1/api/9000",
            "http://10.0.0.5:9000/",
        )


class TestAssess:
    """A container's registrations now, or the reason it has none."""

    def test_opted_in_and_running(self, config: Config) -> None:
        """An opted-in running container gives its key, with the node's address."""
        assessment = assess(container(), config)
        assert [(r.key, r.value) for r in assessment.registrations] == [(KEY, VALUE)]
        assert assessment.reason == ""

    @pytest.mark.parametrize(
        ("labels", "reason", "problem"),
        [
            ({}, "not opted in", False),
            ({LABEL_ENABLE: "false"}, "opted out", False),
            ({LABEL_ENABLE: "maybe"}, "not true or false", True),
            ({LABEL_ENABLE: "true", LABEL_SERVICE: "../x"}, "service name", True),
            ({LABEL_ENABLE: "true", LABEL_PORT: "81"}, "not published", True),
        ],
    )
    def test_permanent_reasons(
        self, config: Config, labels: dict[str, str], reason: str, problem: bool
    ) -> None:
        """Label reasons are permanent; the ones the agent warns about are problems."""
        assessment = assess(container(labels=labels), config)
        assert assessment.registrations == ()
        assert reason in assessment.reason
        assert (assessment.problem, assessment.transient) == (problem, False)

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"running": False}, "not running"),
            ({"paused": True}, "paused"),
            ({"health": "starting"}, "health is starting"),
            ({"health": "unhealthy"}, "health is unhealthy"),
        ],
    )
    def test_transient_reasons(self, config: Config, changes: dict[str, Any], reason: str) -> None:
        """Not running, paused and not healthy may change by themselves: worth waiting for."""
        assessment = assess(container(**changes), config)
        assert (assessment.reason, assessment.transient) == (reason, True)

    def test_no_published_port(self, config: Config) -> None:
        """An opted-in container without a published TCP port has nothing to announce."""
        assessment = assess(container(bindings=()), config)
        assert assessment.registrations == ()
        assert "no TCP port" in assessment.reason

    def test_outside_the_filter(self) -> None:
        """A container outside --filter is not this agent's, even when named."""
        config = Config(host_ip=HOST_IP, node="n", filters=(("label", "team=web"),))
        assessment = assess(container(), config)
        assert "--filter label=team=web" in assessment.reason
        assert assessment.registrations == ()

    def test_all_opts_in_unlabelled(self) -> None:
        """With --all an unlabelled container is announced."""
        config = Config(host_ip=HOST_IP, node="n", all_containers=True)
        assert assess(container(labels={}), config).registrations


class TestRegistrationsWhileUp:
    """deregister works out the keys a container has while it serves."""

    @pytest.mark.parametrize("changes", [{"paused": True}, {"health": "unhealthy"}])
    def test_paused_or_unhealthy_still_has_keys(
        self, config: Config, changes: dict[str, Any]
    ) -> None:
        """A paused or unhealthy container's keys can still be withdrawn."""
        assessment = registrations_while_up(container(**changes), config)
        assert [r.key for r in assessment.registrations] == [KEY]

    def test_stopped_container_is_refused_with_a_hint(self, config: Config) -> None:
        """A stopped container's ports are unknown: the reason points to --service/--port."""
        assessment = registrations_while_up(container(running=False), config)
        assert assessment.registrations == ()
        assert "--service and --port" in assessment.reason


class TestMatchesFilters:
    """--filter label=K[=V] as Docker applies it."""

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ([], True),
            (["team"], True),
            (["team=web"], True),
            (["team=db"], False),
            (["zone"], False),
            (["team", "tier=1"], False),
            (["team=web", "tier=1=x"], True),
        ],
    )
    def test_filters(self, filters: list[str], expected: bool) -> None:
        """Every filter must hold: a bare key needs the label, K=V needs that value."""
        assert matches_filters({"team": "web", "tier": "1=x"}, filters) is expected


class TestPlanRegister:
    """register writes only absent keys and never takes a key from another owner."""

    def test_absent_key_is_written_guarded(self) -> None:
        """A key that does not exist is put, guarded so that it must still not exist."""
        todo = plan_register({KEY: VALUE}, {}, leased=False)
        assert todo.puts == (Put(KEY, VALUE, 0),)
        assert (todo.present, todo.refused) == ((), ())

    @pytest.mark.parametrize("leased", [False, True])
    def test_same_value_on_a_lease_is_left_on_it(self, leased: bool) -> None:
        """The agent's key (same value, its lease) is never detached or moved: already announced."""
        todo = plan_register({KEY: VALUE}, {KEY: KeyState(VALUE, 77, 5)}, leased=leased)
        assert todo.puts == ()
        assert todo.present == (Present(KEY, VALUE, 77),)

    def test_same_value_plain_is_left_when_plain(self) -> None:
        """A plain key that already holds the value is not written again."""
        todo = plan_register({KEY: VALUE}, {KEY: KeyState(VALUE, 0, 5)}, leased=False)
        assert (todo.puts, todo.present) == ((), (Present(KEY, VALUE, 0),))

    def test_same_value_plain_moves_onto_the_new_lease(self) -> None:
        """With --ttl a plain key of the same value goes onto the lease, guarded by its revision."""
        todo = plan_register({KEY: VALUE}, {KEY: KeyState(VALUE, 0, 5)}, leased=True)
        assert todo.puts == (Put(KEY, VALUE, 5),)

    @pytest.mark.parametrize("lease", [0, 77])
    def test_other_value_is_refused(self, lease: int) -> None:
        """Another value, on a lease or plain, is refused and left as it is."""
        todo = plan_register({KEY: VALUE}, {KEY: KeyState("192.0.2.9:8001", lease, 5)}, False)
        assert todo.puts == ()
        assert todo.refused == (Clash(KEY, VALUE, "192.0.2.9:8001", lease),)

    def test_keys_outside_the_wanted_set_are_untouched(self) -> None:
        """Other keys under the prefix are neither written nor reported."""
        todo = plan_register({}, {"/test/other-1": KeyState("x", 0, 3)}, leased=False)
        assert todo == plan_register({}, {}, leased=False)


class TestPlanDeregister:
    """deregister deletes only a key that holds this node's value."""

    @pytest.mark.parametrize("lease", [0, 77])
    def test_own_value_is_deleted_guarded(self, lease: int) -> None:
        """This node's value, plain or on a lease, is deleted guarded by its mod_revision."""
        state = KeyState(VALUE, lease, 9)
        todo = plan_deregister({KEY: VALUE}, {KEY: state})
        assert todo.deletes == ((Delete(KEY, 9), state),)

    def test_absent_key(self) -> None:
        """A key that is not there is reported as absent, not as an error."""
        assert plan_deregister({KEY: VALUE}, {}).absent == (KEY,)

    @pytest.mark.parametrize("lease", [0, 77])
    def test_other_value_is_refused(self, lease: int) -> None:
        """Another node's value is never deleted."""
        todo = plan_deregister({KEY: VALUE}, {KEY: KeyState("192.0.2.9:8001", lease, 9)})
        assert todo.deletes == ()
        assert todo.refused == (Clash(KEY, VALUE, "192.0.2.9:8001", lease),)


class TestHelpers:
    """Small pieces of the report."""

    def test_holder(self) -> None:
        """A lease is named in hex, as etcdctl shows it; no lease is a plain key."""
        assert (holder(0x694D), holder(0)) == ("lease 694d", "a plain key")

    def test_batches(self) -> None:
        """Operations go in transactions of at most the given size, in order."""
        assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
        assert batches([], 2) == []

    @pytest.mark.parametrize(
        ("message", "expected"),
        [
            (
                "no etcd endpoint answered (http://127.0.0.1:1): HTTPConnectionPool(host='127.0.0"
                ".1', port=1): Max retries exceeded (Caused by NewConnectionError(\"[Errno 111] "
                'Connection refused"))',
                "no etcd endpoint answered (http://127.0.0.1:1): connection refused",
            ),
            (
                "Docker at unix:///x.sock: ('Connection aborted.', FileNotFoundError(2, 'No such "
                "file or directory'))",
                "Docker at unix:///x.sock: no such socket",
            ),
            (
                "etcd at http://e:2379: Read timed out. (read timeout=5)",
                "etcd at http://e:2379: timed out",
            ),
            ("permission denied for key /x", "permission denied for key /x"),
            ("x" * 400, "x" * 297 + "..."),
        ],
    )
    def test_brief(self, message: str, expected: str) -> None:
        """Connection failures shrink to their cause after the peer's name; others stay."""
        assert brief(RuntimeError(message)) == expected
