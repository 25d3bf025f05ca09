"""Unit tests for sidekick.model: Docker inspect data to registrations, merge and the plan.

Pure functions only: no Docker, no etcd.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from sidekick.config import Config
from sidekick.docker_parse import (
    container_as_started,
    container_from_inspect,
    container_from_summary,
)
from sidekick.model import (
    LABEL_ENABLE,
    LABEL_PORT,
    LABEL_SERVICE,
    Announcement,
    Clash,
    Container,
    Delete,
    KeyState,
    Plan,
    PortBinding,
    Put,
    Registration,
    announce,
    key_is_confined,
    merge,
    plan,
    service_name,
)

CID = "0123456789ab" + "c" * 52
ENABLED = {LABEL_ENABLE: "true"}
HOST_IP = "10.0.0.5"


def inspect_doc(
    *,
    image: str = "dash/apache:latest",
    labels: dict[str, str] | None = None,
    ports: dict[str, Any] | None = None,
    running: bool = True,
    paused: bool = False,
    restarting: bool = False,
    health: str | None = None,
    network_mode: str = "default",
    exposed: tuple[str, ...] = ("80/tcp",),
    name: str = "/web",
) -> dict[str, Any]:
    """A `docker inspect` document shaped like the real one (only the fields that matter)."""
    state: dict[str, Any] = {"Running": running, "Paused": paused, "Restarting": restarting}
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    return {
        "Id": CID,
        "Name": name,
        "Image": "sha256:" + "f" * 64,
        "Config": {
            "Image": image,
            "Labels": dict(labels if labels is not None else ENABLED),
            "ExposedPorts": {spec: {} for spec in exposed},
        },
        "State": state,
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Ports": ports if ports is not None else {}},
    }


def published(*bindings: tuple[str, str, int]) -> dict[str, list[dict[str, str]]]:
    """NetworkSettings.Ports for (container spec, HostIp, HostPort) triples."""
    ports: dict[str, list[dict[str, str]]] = {}
    for spec, ip, port in bindings:
        ports.setdefault(spec, []).append({"HostIp": ip, "HostPort": str(port)})
    return ports


SEED_PORTS = published(("80/tcp", "172.17.8.203", 8001))


def announcement(config: Config, **doc: Any) -> Announcement:
    return announce(container_from_inspect(inspect_doc(**doc)), config)


def announced(config: Config, **doc: Any) -> dict[str, str]:
    """Key -> value of what the container announces; fails on a problem."""
    result = announcement(config, **doc)
    assert result.problem is None, result.problem
    return {r.key: r.value for r in result.registrations}


def problem_of(config: Config, **doc: Any) -> str:
    """The problem the container is rejected with; fails if anything is registered."""
    result = announcement(config, **doc)
    assert result.registrations == ()
    assert result.problem is not None
    return result.problem


@pytest.fixture(name="config")
def fixture_config() -> Config:
    return Config(prefix="/test", host_ip=HOST_IP, node="node1")


@pytest.fixture(name="no_ip")
def fixture_no_ip() -> Config:
    return Config(prefix="/test", host_ip=None, node="node1")


@pytest.fixture(name="all_config")
def fixture_all_config() -> Config:
    return Config(prefix="/test", host_ip=HOST_IP, node="node1", all_containers=True)


class TestContainerFromInspect:
    def test_reads_the_facts(self) -> None:
        """A full inspect document gives every field of Container."""
        doc = inspect_doc(
            ports=published(("80/tcp", "172.17.8.203", 8001), ("443/tcp", "", 8443)),
            health="healthy",
            exposed=("443/tcp", "80/tcp", "53/udp"),
        )
        assert container_from_inspect(doc) == Container(
            id=CID,
            name="web",
            image="dash/apache:latest",
            labels={LABEL_ENABLE: "true"},
            running=True,
            paused=False,
            health="healthy",
            host_network=False,
            bindings=(PortBinding(80, "172.17.8.203", 8001), PortBinding(443, "", 8443)),
            exposed_ports=(80, 443),
            stop_signal=15,  # no StopSignal in Config: SIGTERM, what `docker stop` sends
        )

    def test_stop_signal_is_the_images_or_the_runs(self) -> None:
        """Config.StopSignal (the image's STOPSIGNAL or --stop-signal) is read as a number."""
        doc = inspect_doc()
        doc["Config"]["StopSignal"] = "SIGWINCH"
        assert container_from_inspect(doc).stop_signal == 28
        doc["Config"]["StopSignal"] = "SIGQUIT"
        assert container_from_inspect(doc).stop_signal == 3

    def test_short_id_is_twelve_characters(self) -> None:
        """short_id is the first 12 characters of the id, as docker ps shows it."""
        assert container_from_inspect(inspect_doc()).short_id == "0123456789ab"

    def test_empty_document_gets_defaults(self) -> None:
        """A document with no fields gives a stopped container with nothing published."""
        assert container_from_inspect({}) == Container(
            id="",
            name="",
            image="",
            labels={},
            running=False,
            paused=False,
            health=None,
            host_network=False,
            bindings=(),
            exposed_ports=(),
            stop_signal=15,
        )

    def test_wrongly_typed_sections_are_ignored(self) -> None:
        """Sections that are not mappings count as missing."""
        doc = {"Config": [], "State": "up", "HostConfig": 3, "NetworkSettings": None}
        container = container_from_inspect(doc)
        assert container.labels == {}
        assert container.running is False
        assert container.bindings == ()

    def test_unpublished_and_bad_ports_are_skipped(self) -> None:
        """Only TCP and UDP ports with a host port 1-65535 become bindings."""
        doc = inspect_doc(
            ports={
                "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "53"}],
                "443/tcp": None,
                "81/tcp": [{"HostIp": "", "HostPort": ""}],
                "82/tcp": [{"HostIp": "", "HostPort": "70000"}],
                "83/tcp": [{"HostIp": "", "HostPort": "0"}],
                "99999/tcp": [{"HostIp": "", "HostPort": "9000"}],
                "84/tcp": ["junk", {"HostIp": "", "HostPort": "8084"}],
            }
        )
        assert container_from_inspect(doc).bindings == (
            PortBinding(53, "0.0.0.0", 53, "udp"),
            PortBinding(84, "", 8084),
        )

    def test_restarting_is_not_running(self) -> None:
        """A container in a restart loop counts as not running."""
        assert container_from_inspect(inspect_doc(restarting=True)).running is False

    def test_image_falls_back_to_the_top_level_image(self) -> None:
        """Without Config.Image the top-level Image field is used."""
        doc = inspect_doc()
        del doc["Config"]["Image"]
        assert container_from_inspect(doc).image == "sha256:" + "f" * 64

    def test_host_network(self) -> None:
        """NetworkMode host marks a host-network container."""
        assert container_from_inspect(inspect_doc(network_mode="host")).host_network is True

    def test_label_values_become_strings(self) -> None:
        """Non-string label keys and values are turned into strings."""
        doc = inspect_doc()
        doc["Config"]["Labels"] = {"a": 1, 2: None}
        assert container_from_inspect(doc).labels == {"a": "1", "2": "None"}


class TestSeedExample:
    def test_seed_example(self, config: Config) -> None:
        """`-p 172.17.8.203:8001:80 --label sidekick.enable=true dash/apache` -> the seed's key."""
        result = announcement(config, ports=SEED_PORTS)
        assert result == Announcement(
            registrations=(Registration("/test/apache-8001", "172.17.8.203:8001", CID, "web"),)
        )

    def test_two_published_ports(self, config: Config) -> None:
        """Every published TCP port gets its own key, ordered by host port."""
        ports = published(("443/tcp", "172.17.8.203", 8443), ("80/tcp", "172.17.8.203", 8001))
        result = announcement(config, ports=ports)
        assert [(r.key, r.value) for r in result.registrations] == [
            ("/test/apache-8001", "172.17.8.203:8001"),
            ("/test/apache-8443", "172.17.8.203:8443"),
        ]

    def test_other_prefix(self) -> None:
        """The prefix comes from the config."""
        config = Config(prefix="/lb/web", host_ip=HOST_IP, node="n")
        assert announced(config, ports=SEED_PORTS) == {"/lb/web/apache-8001": "172.17.8.203:8001"}


class TestServiceName:
    def test_label_overrides_the_image(self, config: Config) -> None:
        """The sidekick.service label names the service."""
        labels = {**ENABLED, LABEL_SERVICE: "web.front_1-a"}
        assert announced(config, labels=labels, ports=SEED_PORTS) == {
            "/test/web.front_1-a-8001": "172.17.8.203:8001"
        }

    @pytest.mark.parametrize(
        ("image", "service"),
        [
            ("dash/apache:latest", "apache"),
            ("apache", "apache"),
            ("apache:2.4", "apache"),
            ("dash/apache", "apache"),
            ("reg:5000/team/apache:1.2", "apache"),
            ("reg:5000/team/apache", "apache"),
            ("localhost:5000/apache", "apache"),
            ("docker.io/library/nginx:1.25-alpine", "nginx"),
            ("dash/apache@sha256:" + "a" * 64, "apache"),
            ("reg:5000/team/apache:1.2@sha256:" + "a" * 64, "apache"),
            ("reg:5000/apache@sha256:" + "a" * 64, "apache"),
        ],
    )
    def test_image_basename(self, image: str, service: str) -> None:
        """Without the label the service is the repository basename: no registry, tag, digest."""
        container = container_from_inspect(inspect_doc(image=image, labels=ENABLED))
        assert service_name(container) == service

    def test_registry_with_port_end_to_end(self, config: Config) -> None:
        """An image from a registry with a port still gives /test/apache-8001."""
        assert announced(config, image="reg:5000/team/apache:1.2", ports=SEED_PORTS) == {
            "/test/apache-8001": "172.17.8.203:8001"
        }

    def test_longest_service_name_is_accepted(self, config: Config) -> None:
        """A 128-character service name is accepted."""
        labels = {**ENABLED, LABEL_SERVICE: "a" * 128}
        assert announced(config, labels=labels, ports=SEED_PORTS) == {
            f"/test/{'a' * 128}-8001": "172.17.8.203:8001"
        }

    @pytest.mark.parametrize(
        "service",
        [
            "../x",
            "a/b",
            "..",
            ".",
            ".hidden",
            "-x",
            "_x",
            "",
            " apache",
            "ap ache",
            "apaché",
            "ápache",
            "アパッチ",
            "a\x00b",
            "apache\x00",
            "apache\n",
            "a\tb",
            "a:b",
            "{prefix}",
            "a" * 129,
            "x" * 100_000,
        ],
    )
    def test_bad_service_label_is_refused(self, config: Config, service: str) -> None:
        """A service name outside [A-Za-z0-9][A-Za-z0-9._-]* (<= 128) is one-line refused."""
        labels = {**ENABLED, LABEL_SERVICE: service}
        problem = problem_of(config, labels=labels, ports=SEED_PORTS)
        assert problem.startswith("service name ")
        assert "from label sidekick.service" in problem
        assert "\n" not in problem
        assert "\x00" not in problem
        assert len(problem) < 250

    @pytest.mark.parametrize(
        "image", ["dash/ap ache", "dash/apache_!:1", "dash/-apache", "reg:5000/"]
    )
    def test_bad_image_name_is_refused(self, config: Config, image: str) -> None:
        """An image that gives no valid service name is refused, naming the image as origin."""
        problem = problem_of(config, image=image, ports=SEED_PORTS)
        assert problem.startswith("service name ")
        assert "from image name" in problem


class TestPortLabel:
    @pytest.fixture(name="two_ports")
    def fixture_two_ports(self) -> dict[str, Any]:
        return published(("80/tcp", "172.17.8.203", 8001), ("443/tcp", "172.17.8.203", 8443))

    def test_selects_one_port(self, config: Config, two_ports: dict[str, Any]) -> None:
        """sidekick.port=80 announces only the container port 80."""
        labels = {**ENABLED, LABEL_PORT: "80"}
        assert announced(config, labels=labels, ports=two_ports) == {
            "/test/apache-8001": "172.17.8.203:8001"
        }

    def test_selects_several_ports(self, config: Config, two_ports: dict[str, Any]) -> None:
        """sidekick.port=80,443 (spaces allowed) announces both."""
        labels = {**ENABLED, LABEL_PORT: " 443 , 80 "}
        assert announced(config, labels=labels, ports=two_ports) == {
            "/test/apache-8001": "172.17.8.203:8001",
            "/test/apache-8443": "172.17.8.203:8443",
        }

    def test_unpublished_port_is_refused(self, config: Config, two_ports: dict[str, Any]) -> None:
        """A port in the label that is not published rejects the container, naming the port."""
        labels = {**ENABLED, LABEL_PORT: "80,8080"}
        problem = problem_of(config, labels=labels, ports=two_ports)
        assert problem == "label sidekick.port names port 8080, which is not published"

    @pytest.mark.parametrize(
        "value",
        ["http", "0", "65536", "80,", ",80", "", "-80", "+80", "8 0", "80.0", "²", "80;443"],
    )
    def test_bad_port_label_is_refused(
        self, config: Config, two_ports: dict[str, Any], value: str
    ) -> None:
        """A sidekick.port value that is not a list of ports 1-65535 is refused."""
        labels = {**ENABLED, LABEL_PORT: value}
        problem = problem_of(config, labels=labels, ports=two_ports)
        assert problem.startswith("label sidekick.port=")
        assert problem.endswith("is not a list of ports 1-65535")


class TestAddresses:
    @pytest.mark.parametrize("host_ip", ["0.0.0.0", "", "::", "[::]"])
    def test_all_addresses_use_the_node_address(self, config: Config, host_ip: str) -> None:
        """A port published on 0.0.0.0 or :: is announced with config.host_ip."""
        ports = published(("80/tcp", host_ip, 8001))
        assert announced(config, ports=ports) == {"/test/apache-8001": "10.0.0.5:8001"}

    def test_all_addresses_without_host_ip_is_refused(self, no_ip: Config) -> None:
        """0.0.0.0 with no known host IP is refused, naming --host-ip."""
        problem = problem_of(no_ip, ports=published(("80/tcp", "0.0.0.0", 8001)))
        assert problem == "port published on all addresses, and no --host-ip is known"

    def test_specific_address_needs_no_host_ip(self, no_ip: Config) -> None:
        """A specific binding address is used as is, even with no host IP configured."""
        assert announced(no_ip, ports=SEED_PORTS) == {"/test/apache-8001": "172.17.8.203:8001"}

    def test_ipv6_node_address(self) -> None:
        """An IPv6 host IP is written in brackets."""
        config = Config(host_ip="fd00::5", node="n")
        ports = published(("80/tcp", "::", 8001))
        assert announced(config, ports=ports) == {"/test/apache-8001": "[fd00::5]:8001"}

    @pytest.mark.parametrize(
        ("host_ip", "value"),
        [
            ("::1", "[::1]:8001"),
            ("[::1]", "[::1]:8001"),
            ("2001:DB8:0:0::1", "[2001:db8::1]:8001"),
        ],
    )
    def test_ipv6_binding(self, config: Config, host_ip: str, value: str) -> None:
        """An IPv6 binding is announced as [addr]:port in canonical form."""
        ports = published(("80/tcp", host_ip, 8001))
        assert announced(config, ports=ports) == {"/test/apache-8001": value}

    @pytest.mark.parametrize(
        ("first", "second", "value"),
        [
            ("0.0.0.0", "::", "10.0.0.5:8001"),
            ("::", "0.0.0.0", "10.0.0.5:8001"),
            ("127.0.0.1", "::1", "127.0.0.1:8001"),
            ("::1", "127.0.0.1", "127.0.0.1:8001"),
        ],
    )
    def test_ipv4_and_ipv6_same_port_once(
        self, config: Config, first: str, second: str, value: str
    ) -> None:
        """IPv4 and IPv6 bindings of the same host port give one key, the IPv4 value."""
        ports = published(("80/tcp", first, 8001), ("80/tcp", second, 8001))
        result = announcement(config, ports=ports)
        assert result == Announcement(
            registrations=(Registration("/test/apache-8001", value, CID, "web"),)
        )

    @pytest.mark.parametrize("host_ip", ["not-an-ip", "999.1.1.1", "localhost", "1.2.3.4/24"])
    def test_binding_that_is_not_an_address_is_refused(self, config: Config, host_ip: str) -> None:
        """A HostIp that is not an IP address rejects the container."""
        problem = problem_of(config, ports=published(("80/tcp", host_ip, 8001)))
        assert problem.startswith("published on ")

    @pytest.mark.parametrize("host_ip", ["fe80::1%eth0", "fe80::1%x;\ninclude /etc/passwd;"])
    def test_scoped_ipv6_binding_is_refused(self, config: Config, host_ip: str) -> None:
        """A scoped IPv6 HostIp (fe80::1%zone) is refused: the zone would end up in the value."""
        problem = problem_of(config, ports=published(("80/tcp", host_ip, 8001)))
        assert problem.startswith("published on ")
        assert "\n" not in problem

    def test_unspecified_in_any_spelling(self, config: Config) -> None:
        """`0:0::0` is `::`: the node address is used, never `[::]`."""
        ports = published(("80/tcp", "0:0::0", 8001))
        assert announced(config, ports=ports) == {"/test/apache-8001": "10.0.0.5:8001"}


class TestHostNetwork:
    def test_exposed_ports_with_node_address(self, config: Config) -> None:
        """A host-network container announces its exposed TCP ports on the node address."""
        doc = {"network_mode": "host", "exposed": ("443/tcp", "80/tcp", "53/udp")}
        assert announced(config, **doc) == {
            "/test/apache-80": "10.0.0.5:80",
            "/test/apache-443": "10.0.0.5:443",
        }

    def test_port_label_names_host_ports(self, config: Config) -> None:
        """On the host network sidekick.port lists host ports, which replace ExposedPorts."""
        labels = {**ENABLED, LABEL_PORT: "8080"}
        assert announced(config, labels=labels, network_mode="host") == {
            "/test/apache-8080": "10.0.0.5:8080"
        }

    def test_needs_host_ip(self, no_ip: Config) -> None:
        """A host-network container with ports and no host IP is refused, naming --host-ip."""
        problem = problem_of(no_ip, network_mode="host")
        assert problem == "host-network container needs the node's address (--host-ip)"

    def test_no_ports(self, config: Config) -> None:
        """An opted-in host-network container with no exposed port says so."""
        problem = problem_of(config, network_mode="host", exposed=())
        assert problem == "opted in but publishes no TCP port"


class TestOptIn:
    def test_no_label_is_ignored(self, config: Config) -> None:
        """Without --all a container without the label announces nothing, silently."""
        assert announcement(config, labels={}, ports=SEED_PORTS) == Announcement()

    def test_all_mode_announces_unlabelled(self, all_config: Config) -> None:
        """With --all a container without the label is announced."""
        assert announced(all_config, labels={}, ports=SEED_PORTS) == {
            "/test/apache-8001": "172.17.8.203:8001"
        }

    def test_all_mode_honours_enable_false(self, all_config: Config) -> None:
        """With --all, sidekick.enable=false opts out."""
        labels = {LABEL_ENABLE: "false"}
        assert announcement(all_config, labels=labels, ports=SEED_PORTS) == Announcement()

    def test_all_mode_without_ports_is_silent(self, all_config: Config) -> None:
        """With --all an unlabelled container without ports gives neither keys nor problem."""
        assert announcement(all_config, labels={}) == Announcement()

    def test_labelled_without_ports_says_so(self, config: Config) -> None:
        """An opted-in container that publishes nothing gives one problem."""
        assert problem_of(config) == "opted in but publishes no TCP port"

    @pytest.mark.parametrize("value", ["true", "TRUE", "True", " yes ", "1", "on"])
    def test_true_values(self, config: Config, value: str) -> None:
        """Every spelling of true opts in."""
        labels = {LABEL_ENABLE: value}
        assert announced(config, labels=labels, ports=SEED_PORTS) == {
            "/test/apache-8001": "172.17.8.203:8001"
        }

    @pytest.mark.parametrize("value", ["false", "FALSE", "no", "0", "off"])
    def test_false_values(self, all_config: Config, value: str) -> None:
        """Every spelling of false opts out, even with --all."""
        labels = {LABEL_ENABLE: value}
        assert announcement(all_config, labels=labels, ports=SEED_PORTS) == Announcement()

    @pytest.mark.parametrize("value", ["maybe", "", "truee", "tru\x00e", "y" * 1000])
    def test_bad_enable_label(self, all_config: Config, value: str) -> None:
        """A non-boolean sidekick.enable is refused with a one-line problem naming the label."""
        labels = {LABEL_ENABLE: value}
        problem = problem_of(all_config, labels=labels, ports=SEED_PORTS)
        assert problem.startswith("label sidekick.enable=")
        assert problem.endswith("is not true or false")
        assert "\x00" not in problem
        assert len(problem) < 150


class TestRunState:
    @pytest.mark.parametrize(
        "state",
        [{"running": False}, {"paused": True}, {"restarting": True}],
        ids=["stopped", "paused", "restarting"],
    )
    def test_not_serving_announces_nothing(self, config: Config, state: dict[str, bool]) -> None:
        """A stopped, paused or restarting container announces nothing and is no problem."""
        assert announcement(config, ports=SEED_PORTS, **state) == Announcement()

    @pytest.mark.parametrize("health", ["starting", "unhealthy", "none"])
    def test_not_healthy_announces_nothing(self, config: Config, health: str) -> None:
        """A container with a health check is announced only while healthy."""
        assert announcement(config, ports=SEED_PORTS, health=health) == Announcement()

    def test_healthy_is_announced(self, config: Config) -> None:
        """A healthy container is announced."""
        assert announced(config, ports=SEED_PORTS, health="healthy") == {
            "/test/apache-8001": "172.17.8.203:8001"
        }


class TestTemplates:
    def test_every_placeholder(self) -> None:
        """Key and value templates fill prefix, service, port, ip, node, container, ids, ports."""
        config = Config(
            host_ip=HOST_IP,
            node="node1",
            key_template=(
                "{prefix}/{node}/{service}/{container}/{container_id}/{container_port}/{ip}/{port}"
            ),
            value_template=(
                "{prefix} {service} {port} {ip} {node} {container} {container_id} {container_port}"
            ),
        )
        assert announced(config, ports=SEED_PORTS) == {
            "/test/node1/apache/web/0123456789ab/80/172.17.8.203/8001": (
                "/test apache 8001 172.17.8.203 node1 web 0123456789ab 80"
            )
        }

    def test_ipv6_ip_placeholder_is_bracketed(self) -> None:
        """{ip} of an IPv6 address is bracketed in keys as in values."""
        config = Config(key_template="{prefix}/{ip}-{port}", host_ip=HOST_IP, node="n")
        ports = published(("80/tcp", "2001:db8::1", 8001))
        assert announced(config, ports=ports) == {"/test/[2001:db8::1]-8001": "[2001:db8::1]:8001"}

    @pytest.mark.parametrize("name", ["/..", "/.", "/a/../../etc", "/a b", "/a\nb"])
    def test_container_name_cannot_escape(self, name: str) -> None:
        """A template with {container} cannot be led outside the prefix by the name."""
        config = Config(key_template="{prefix}/{container}", host_ip=HOST_IP, node="n")
        problem = problem_of(config, ports=SEED_PORTS, name=name)
        assert problem.startswith("key ")
        assert problem.endswith("would fall outside /test/")

    def test_same_key_for_two_ports_is_kept_once(self) -> None:
        """When the template maps two ports to one key, the lowest host port wins."""
        config = Config(key_template="{prefix}/{service}", host_ip=HOST_IP, node="n")
        ports = published(("443/tcp", "172.17.8.203", 8443), ("80/tcp", "172.17.8.203", 8001))
        assert announced(config, ports=ports) == {"/test/apache": "172.17.8.203:8001"}

    def test_service_with_trailing_newline_is_refused(self) -> None:
        """A service label ending in a newline cannot slip into a key ending in the service."""
        config = Config(key_template="{prefix}/{port}-{service}", host_ip=HOST_IP, node="n")
        labels = {**ENABLED, LABEL_SERVICE: "apache\n"}
        assert problem_of(config, labels=labels, ports=SEED_PORTS).startswith("service name ")


class TestKeyIsConfined:
    @pytest.mark.parametrize(
        ("key", "prefix", "confined"),
        [
            ("/test/apache-8001", "/test", True),
            ("/test/apache-8001", "/test/", True),
            ("/test/a/b", "/test", True),
            ("/a/b/c", "/a/b", True),
            ("/test/[::1]:80", "/test", True),
            ("/test/user@host", "/test", True),
            ("/test/...", "/test", True),
            ("/test", "/test", False),
            ("/test/", "/test", False),
            ("/testing/a", "/test", False),
            ("/other/a", "/test", False),
            ("test/a", "/test", False),
            ("/test/..", "/test", False),
            ("/test/../x", "/test", False),
            ("/test/a/../../x", "/test", False),
            ("/test/./x", "/test", False),
            ("/test//x", "/test", False),
            ("/test/x/", "/test", False),
            ("/test/a b", "/test", False),
            ("/test/a\n", "/test", False),
            ("/test/a\nb", "/test", False),
            ("/test/a\x00", "/test", False),
            ("/test/ä", "/test", False),
            ("/test/a{b}", "/test", False),
            ("/test/a%2F..", "/test", False),
        ],
    )
    def test_confinement(self, key: str, prefix: str, confined: bool) -> None:
        """Only keys strictly under the prefix, of safe characters, no empty/./.. segment."""
        assert key_is_confined(key, prefix) is confined


def reg(key: str, value: str, container: str = "a") -> Registration:
    return Registration(key, value, container * 64, container)


class TestMerge:
    def test_merges_by_key(self) -> None:
        """Registrations of several containers are gathered by key."""
        a, b = reg("/test/x-1", "1.1.1.1:1", "a"), reg("/test/y-2", "1.1.1.1:2", "b")
        desired = merge([[a], [b], []])
        assert desired.registrations == {"/test/x-1": a, "/test/y-2": b}
        assert desired.duplicates == ()

    def test_duplicate_key_first_wins(self) -> None:
        """On a duplicate key the first container keeps it and the pair is reported."""
        first, second = reg("/test/x-1", "1.1.1.1:1", "a"), reg("/test/x-1", "2.2.2.2:1", "b")
        desired = merge([[first], [second]])
        assert desired.registrations == {"/test/x-1": first}
        assert desired.duplicates == ((first, second),)

    def test_empty(self) -> None:
        """Nothing announced gives nothing desired."""
        assert merge([]).registrations == {}


LEASE, OTHER = 7, 9
KEY, KEY2 = "/test/apache-8001", "/test/apache-8002"
VALUE, VALUE2 = "10.0.0.5:8001", "10.0.0.6:8001"


class TestPlan:
    def test_absent_key_is_created(self) -> None:
        """A wanted key that does not exist is put, expecting it still absent."""
        assert plan({KEY: VALUE}, {}, LEASE) == Plan(puts=(Put(KEY, VALUE, 0),))

    def test_right_key_is_left_alone(self) -> None:
        """A key with the wanted value on our lease needs no write at all."""
        result = plan({KEY: VALUE}, {KEY: KeyState(VALUE, LEASE, 40)}, LEASE)
        assert result == Plan()
        assert not result

    def test_our_key_with_another_value_is_updated(self) -> None:
        """Our key with a stale value is rewritten, expecting its mod_revision."""
        result = plan({KEY: VALUE}, {KEY: KeyState(VALUE2, LEASE, 40)}, LEASE)
        assert result == Plan(puts=(Put(KEY, VALUE, 40),))

    def test_same_value_plain_is_adopted(self) -> None:
        """A plain key with the wanted value is adopted onto our lease."""
        result = plan({KEY: VALUE}, {KEY: KeyState(VALUE, 0, 41)}, LEASE)
        assert result == Plan(puts=(Put(KEY, VALUE, 41),))
        assert result

    def test_same_value_on_another_lease_is_left_to_its_owner(self) -> None:
        """A key with the wanted value on another lease is neither written nor a clash."""
        result = plan({KEY: VALUE}, {KEY: KeyState(VALUE, OTHER, 41)}, LEASE)
        assert result == Plan()

    @pytest.mark.parametrize("lease", [OTHER, 0], ids=["other-lease", "no-lease"])
    def test_other_value_elsewhere_is_a_clash(self, lease: int) -> None:
        """A key with another value that we do not hold is a clash and is not written."""
        result = plan({KEY: VALUE}, {KEY: KeyState(VALUE2, lease, 42)}, LEASE)
        assert result == Plan(clashes=(Clash(KEY, VALUE, VALUE2, lease),))
        assert not result

    def test_our_unwanted_key_is_deleted(self) -> None:
        """A key on our lease that is no longer wanted is deleted, expecting its mod_revision."""
        result = plan({}, {KEY: KeyState(VALUE, LEASE, 43)}, LEASE)
        assert result == Plan(deletes=(Delete(KEY, 43),))

    @pytest.mark.parametrize("lease", [OTHER, 0], ids=["other-lease", "no-lease"])
    def test_others_keys_are_never_deleted(self, lease: int) -> None:
        """Keys of other leases (or none) that we do not want are left alone."""
        assert plan({}, {KEY: KeyState(VALUE, lease, 44)}, LEASE) == Plan()

    def test_mixed(self) -> None:
        """A full reconcile: puts sorted by key, one delete, one clash, the rest untouched."""
        desired = {
            "/test/c": "3",
            "/test/a": "1",
            "/test/b": "2",
            "/test/d": "4",
            "/test/e": "5",
        }
        actual = {
            "/test/b": KeyState("2", LEASE, 10),
            "/test/c": KeyState("old", LEASE, 11),
            "/test/d": KeyState("someone", OTHER, 12),
            "/test/e": KeyState("5", 0, 13),
            "/test/gone": KeyState("x", LEASE, 14),
            "/test/theirs": KeyState("y", OTHER, 15),
        }
        assert plan(desired, actual, LEASE) == Plan(
            puts=(Put("/test/a", "1", 0), Put("/test/c", "3", 11), Put("/test/e", "5", 13)),
            deletes=(Delete("/test/gone", 14),),
            clashes=(Clash("/test/d", "4", "someone", OTHER),),
        )


class TestContainerFromSummary:
    """`docker ps` entries become containers, or None where only inspect can tell."""

    SUMMARY: ClassVar[dict[str, Any]] = {
        "Id": CID,
        "Names": ["/web"],
        "Image": "dash/apache:latest",
        "Labels": ENABLED,
        "State": "running",
        "Status": "Up 3 minutes",
        "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 8001, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 81, "PublicPort": 8002, "Type": "tcp"},
            {"PrivatePort": 82, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
        ],
        "HostConfig": {"NetworkMode": "default"},
    }

    def test_published_tcp_ports(self, config: Config) -> None:
        """Published ports become bindings (UDP too: announced only when labelled); every
        listed TCP port is an exposed one."""
        container = container_from_summary(self.SUMMARY)
        assert container is not None
        assert (container.name, container.running) == ("web", True)
        assert container.bindings == (
            PortBinding(80, "127.0.0.1", 8001),
            PortBinding(81, "0.0.0.0", 8002),
            PortBinding(53, "0.0.0.0", 5353, "udp"),
        )
        assert container.exposed_ports == (80, 81, 82)
        assert [r.key for r in announce(container, config).registrations] == [
            "/test/apache-8001",
            "/test/apache-8002",
        ]

    @pytest.mark.parametrize(
        "change",
        [
            {"Status": "Up 3 minutes (healthy)"},
            {"Status": "Up 1 second (health: starting)"},
            {"HostConfig": {"NetworkMode": "host"}},
            {"State": "paused"},
        ],
    )
    def test_needs_inspect(self, change: dict[str, Any]) -> None:
        """Healthchecks, host networking and anything not running go to inspect."""
        assert container_from_summary({**self.SUMMARY, **change}) is None

    @pytest.mark.parametrize(
        ("status", "in_healthy_listing", "verdict"),
        [
            ("Up 3 minutes (healthy)", True, "healthy"),
            ("Up 1 second (health: starting)", False, "not healthy"),
            ("Up 3 minutes (unhealthy)", False, "not healthy"),
            ("Up 3 minutes", False, None),  # no healthcheck: no verdict to give
        ],
    )
    def test_verdict_from_a_healthy_listing(
        self, status: str, in_healthy_listing: bool, verdict: str | None
    ) -> None:
        """With the ids of a health=healthy listing, no inspect is needed for the verdict."""
        summary = {**self.SUMMARY, "Status": status}
        healthy = {summary["Id"]} if in_healthy_listing else set()
        container = container_from_summary(summary, healthy)
        assert container is not None and container.health == verdict

    @pytest.mark.parametrize("junk", [None, [], "x", {"Ports": "x", "State": "running"}])
    def test_junk(self, junk: Any) -> None:
        """Odd entries never raise."""
        result = container_from_summary(junk)
        assert result is None or result.bindings == ()


def created_doc(port_bindings: dict[str, Any] | None = None, **doc_changes: Any) -> dict[str, Any]:
    """An inspect document of a container just created: not running, no NetworkSettings.Ports,
    its published ports in HostConfig.PortBindings, on one network."""
    doc = inspect_doc(running=False, ports={}, **doc_changes)
    doc["HostConfig"]["PortBindings"] = port_bindings or {}
    doc["NetworkSettings"]["Networks"] = {"bridge": {"NetworkID": ""}}
    return doc


def bridge(**changes: Any) -> dict[str, Any]:
    """A `docker network inspect` document of a bridge network."""
    return {
        "Name": "bridge",
        "Driver": "bridge",
        "Internal": False,
        "Options": {"com.docker.network.bridge.host_binding_ipv4": "0.0.0.0"},
        **changes,
    }


class TestContainerAsStarted:
    """A created container's look-ahead: what its start will announce, when that is known."""

    def test_fixed_ports_announce_as_the_started_container(self, config: Config) -> None:
        """The seed's `-p 8001:80`, and a port on one address: the keys inspect would give."""
        bindings = {
            "80/tcp": [{"HostIp": "", "HostPort": "8001"}],
            "81/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8002"}],
        }
        container = container_as_started(created_doc(bindings), bridge())
        assert container is not None
        assert container.running
        started = container_from_inspect(
            inspect_doc(
                ports=published(
                    ("80/tcp", "0.0.0.0", 8001),
                    ("80/tcp", "::", 8001),
                    ("81/tcp", "127.0.0.1", 8002),
                )
            )
        )
        assert announce(container, config) == announce(started, config)
        assert {r.key: r.value for r in announce(container, config).registrations} == {
            "/test/apache-8001": f"{HOST_IP}:8001",
            "/test/apache-8002": "127.0.0.1:8002",
        }

    def test_network_default_binding_address(self, config: Config) -> None:
        """`-p 8001:80` on a network whose host_binding_ipv4 is 127.0.0.1 binds there."""
        network = bridge(Options={"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"})
        doc = created_doc({"80/tcp": [{"HostIp": "", "HostPort": "8001"}]})
        container = container_as_started(doc, network)
        assert container is not None
        assert [r.value for r in announce(container, config).registrations] == ["127.0.0.1:8001"]

    def test_host_network_uses_exposed_ports(self, config: Config) -> None:
        doc = created_doc(network_mode="host", exposed=("8080/tcp",))
        container = container_as_started(doc, None)
        assert container is not None
        assert [r.value for r in announce(container, config).registrations] == [f"{HOST_IP}:8080"]

    def test_no_ports_is_known_too(self, config: Config) -> None:
        """Nothing published: the start will announce nothing, and says why."""
        container = container_as_started(created_doc(), bridge())
        assert container is not None
        assert announce(container, config).problem == "opted in but publishes no TCP port"

    def test_healthcheck_disabled_is_no_healthcheck(self) -> None:
        doc = created_doc({"80/tcp": [{"HostIp": "", "HostPort": "8001"}]})
        doc["Config"]["Healthcheck"] = {"Test": ["NONE"]}
        assert container_as_started(doc, bridge()) is not None

    @pytest.mark.parametrize("host_port", ["", "0", "8000-8010", "x", None, "70000"], ids=repr)
    def test_ports_docker_picks_at_start(self, host_port: Any) -> None:
        """`-p 80`, `-p 0:80`, a range: only the started container knows its port."""
        doc = created_doc({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": host_port}]})
        assert container_as_started(doc, bridge()) is None

    def test_publish_all(self) -> None:
        doc = created_doc()
        doc["HostConfig"]["PublishAllPorts"] = True
        assert container_as_started(doc, bridge()) is None

    def test_healthcheck(self) -> None:
        """The start announces nothing until the check passes: health_status decides."""
        doc = created_doc({"80/tcp": [{"HostIp": "", "HostPort": "8001"}]})
        doc["Config"]["Healthcheck"] = {"Test": ["CMD-SHELL", "true"]}
        assert container_as_started(doc, bridge()) is None

    @pytest.mark.parametrize(
        "network",
        [None, bridge(Internal=True), bridge(Driver="overlay"), bridge(Driver="macvlan"), {}],
        ids=["none-or-borrowed", "internal", "overlay", "macvlan", "unknown"],
    )
    def test_networks_that_publish_otherwise(self, network: dict[str, Any] | None) -> None:
        """An internal network publishes nothing; other drivers, and `--network none` or
        `container:` (no network document), are left to the started container."""
        doc = created_doc({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8001"}]})
        assert container_as_started(doc, network) is None

    def test_two_networks(self) -> None:
        doc = created_doc({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8001"}]})
        doc["NetworkSettings"]["Networks"]["other"] = {"NetworkID": ""}
        assert container_as_started(doc, bridge()) is None

    @pytest.mark.parametrize(
        "junk", [{}, {"HostConfig": "x"}, {"HostConfig": {"PortBindings": {"80/tcp": "x"}}}]
    )
    def test_junk(self, junk: dict[str, Any]) -> None:
        """Odd documents never raise."""
        result = container_as_started(junk, bridge())
        assert result is None or result.bindings == ()


class TestResyncPeriod:
    """The resync period is --resync give or take a tenth, so a fleet does not stay in step."""

    def test_spread(self) -> None:
        from sidekick.loop import resync_period  # noqa: PLC0415

        periods = [resync_period(60.0) for _ in range(200)]
        assert all(54.0 <= p <= 66.0 for p in periods)
        assert max(periods) - min(periods) > 6.0  # spread, not one value
