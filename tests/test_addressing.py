"""Unit tests for issue 14's decisions: container addresses on a network, UDP ports, labels in
templates and the JSON value, the options that set them, and network events.

Pure functions only: no Docker, no etcd.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sidekick.config import Config, ConfigError, load_config
from sidekick.docker_parse import container_from_inspect, container_from_summary
from sidekick.docker_source import event_from_raw
from sidekick.model import (
    LABEL_ADDRESS,
    LABEL_ENABLE,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_SERVICE,
    Announcement,
    NetworkAddress,
    announce,
    merge,
)
from sidekick.oneshot import duplicate_text
from sidekick.render_template import RenderError, load_template, render_text
from sidekick.templating import JSON_FIELDS

CID = "0123456789ab" + "c" * 52


def doc(
    labels: dict[str, str] | None = None,
    *,
    networks: dict[str, tuple[str, str]] | None = None,
    ports: dict[str, list[tuple[str, int]]] | None = None,
    exposed: tuple[str, ...] = ("80/tcp",),
    network_mode: str = "overlay",
) -> dict[str, Any]:
    """An inspect document: networks name -> (IPv4, IPv6), ports spec -> [(HostIp, HostPort)]."""
    attached = {"overlay": ("10.2.0.9", "")} if networks is None else networks
    return {
        "Id": CID,
        "Name": "/web",
        "Config": {
            "Image": "dash/apache:latest",
            "Labels": {LABEL_ENABLE: "true", **(labels or {})},
            "ExposedPorts": {spec: {} for spec in exposed},
        },
        "State": {"Running": True},
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {
            "Ports": {
                spec: [{"HostIp": ip, "HostPort": str(port)} for ip, port in hosts]
                for spec, hosts in (ports or {}).items()
            },
            "Networks": {
                name: {"IPAddress": v4, "GlobalIPv6Address": v6, "NetworkID": "n" + name}
                for name, (v4, v6) in attached.items()
            },
        },
    }


def result(config: Config, *args: Any, **kwargs: Any) -> Announcement:
    return announce(container_from_inspect(doc(*args, **kwargs)), config)


def keys(config: Config, *args: Any, **kwargs: Any) -> dict[str, str]:
    """key -> value; fails on a problem."""
    found = result(config, *args, **kwargs)
    assert found.problem is None, found.problem
    return {r.key: r.value for r in found.registrations}


def problem(config: Config, *args: Any, **kwargs: Any) -> str:
    found = result(config, *args, **kwargs)
    assert found.registrations == ()
    assert found.problem is not None
    return found.problem


@pytest.fixture(name="host")
def fixture_host() -> Config:
    return Config(prefix="/test", host_ip="10.0.0.5", node="node1")


@pytest.fixture(name="container")
def fixture_container() -> Config:
    return Config(prefix="/test", host_ip="10.0.0.5", node="node1", address="container")


class TestContainerAddress:
    """--address container / sidekick.address=container: the container's own IP and port."""

    def test_one_network_is_the_one(self, container: Config) -> None:
        """On one network, its address and the exposed port; nothing needs publishing."""
        assert keys(container) == {"/test/apache-80": "10.2.0.9:80"}

    def test_label_switches_one_container(self, host: Config) -> None:
        """sidekick.address=container under --address host (and the other way round)."""
        assert keys(host, {LABEL_ADDRESS: "container"}) == {"/test/apache-80": "10.2.0.9:80"}
        both = {"80/tcp": [("127.0.0.1", 8001)]}
        assert keys(host, ports=both) == {"/test/apache-8001": "127.0.0.1:8001"}
        under_container = Config(prefix="/test", address="container", host_ip="10.0.0.5")
        assert keys(under_container, {LABEL_ADDRESS: " Host "}, ports=both) == {
            "/test/apache-8001": "127.0.0.1:8001"
        }

    def test_port_label_selects_container_ports(self, container: Config) -> None:
        """sidekick.port names the container's own ports, TCP or UDP, exposed or not."""
        found = keys(container, {LABEL_PORT: "8080,53/udp"}, exposed=("80/tcp", "8080/tcp"))
        assert found == {"/test/apache-8080": "10.2.0.9:8080", "/test/apache-53": "10.2.0.9:53"}

    def test_several_networks_need_a_name(self, container: Config) -> None:
        """Two networks and no --network nor label: skipped, saying which networks it has."""
        networks = {"front": ("10.1.0.2", ""), "overlay": ("10.2.0.9", "")}
        assert problem(container, networks=networks) == (
            "is on 2 networks (front, overlay): name one with --network or label sidekick.network"
        )
        named = Config(prefix="/test", address="container", network="front")
        assert keys(named, networks=networks) == {"/test/apache-80": "10.1.0.2:80"}
        assert keys(named, {LABEL_NETWORK: "overlay"}, networks=networks) == {
            "/test/apache-80": "10.2.0.9:80"
        }

    def test_no_address_on_the_named_network(self) -> None:
        """The one warning names the network and the networks the container has."""
        config = Config(prefix="/test", address="container", network="overlay")
        networks = {"bridge": ("172.17.0.3", ""), "front": ("10.1.0.2", "")}
        assert problem(config, networks=networks) == (
            "has no address on network overlay (its networks: bridge, front)"
        )
        empty = {"overlay": ("", "")}  # attached, but not started yet or no IPAM
        assert problem(config, networks=empty) == (
            "has no address on network overlay (its networks: overlay)"
        )
        assert problem(config, networks={}) == (
            "has no address on network overlay (its networks: none)"
        )

    def test_ipv6(self, container: Config) -> None:
        """An IPv6 address is bracketed as today; a dual-stack port keeps IPv4 on the key."""
        v6 = {"overlay": ("", "fd00::9")}
        assert keys(container, networks=v6) == {"/test/apache-80": "[fd00::9]:80"}
        dual = {"overlay": ("10.2.0.9", "fd00::9")}
        assert keys(container, networks=dual) == {"/test/apache-80": "10.2.0.9:80"}
        by_ip = Config(prefix="/test", address="container", key_template="{prefix}/{ip}-{port}")
        assert keys(by_ip, networks=dual) == {
            "/test/10.2.0.9-80": "10.2.0.9:80",
            "/test/[fd00::9]-80": "[fd00::9]:80",
        }

    def test_host_network_keeps_the_node_address(self, container: Config) -> None:
        """A host-network container has no address of its own: the node's, as today."""
        found = keys(container, network_mode="host", networks={"host": ("", "")})
        assert found == {"/test/apache-80": "10.0.0.5:80"}
        assert not result(container, network_mode="host").by_network

    @pytest.mark.parametrize(
        ("labels", "expected"),
        [
            (
                {LABEL_ADDRESS: "overlay"},
                "label sidekick.address='overlay' is not host or container",
            ),
            ({LABEL_NETWORK: "a b"}, "label sidekick.network='a b' is not a Docker network name"),
            (
                {LABEL_PORT: "53/sctp"},
                "label sidekick.port='53/sctp' is not a list of ports 1-65535",
            ),
        ],
    )
    def test_bad_labels(self, container: Config, labels: dict[str, str], expected: str) -> None:
        assert problem(container, labels) == expected

    def test_nothing_exposed(self, container: Config) -> None:
        """Opted in by label, no port exposed or labelled: said so."""
        assert problem(container, exposed=()) == "opted in but exposes no TCP port"

    def test_by_network_marks_what_a_connect_can_change(self, container: Config) -> None:
        """by_network is set for a container announced, or skipped, by a network address."""
        assert result(container).by_network
        assert result(container, networks={}).by_network  # a connect may bring it
        host = Config(prefix="/test", host_ip="10.0.0.5")
        assert not result(host, ports={"80/tcp": [("127.0.0.1", 8001)]}).by_network
        stopped = doc()
        stopped["State"] = {"Running": False}
        assert not announce(container_from_inspect(stopped), container).by_network

    def test_listing_has_the_networks(self, container: Config) -> None:
        """A `docker ps` entry gives the same addresses and exposed ports as inspect."""
        summary = {
            "Id": CID,
            "Names": ["/web"],
            "Image": "dash/apache",
            "Labels": {LABEL_ENABLE: "true"},
            "State": "running",
            "Status": "Up 1 second",
            "Ports": [{"PrivatePort": 80, "Type": "tcp"}],
            "HostConfig": {"NetworkMode": "overlay"},
            "NetworkSettings": {
                "Networks": {"overlay": {"IPAddress": "10.2.0.9", "GlobalIPv6Address": ""}}
            },
        }
        listed = container_from_summary(summary)
        assert listed is not None
        assert listed.networks == (NetworkAddress("overlay", "10.2.0.9", ""),)
        assert [(r.key, r.value) for r in announce(listed, container).registrations] == [
            ("/test/apache-80", "10.2.0.9:80")
        ]


class TestUdp:
    """sidekick.port=53/udp: published UDP ports are announced when listed, never otherwise."""

    PORTS: dict[str, list[tuple[str, int]]] = {  # noqa: RUF012 - read only
        "80/tcp": [("127.0.0.1", 8001)],
        "53/udp": [("127.0.0.1", 5353)],
    }

    def test_udp_only_when_listed(self, host: Config) -> None:
        assert keys(host, ports=self.PORTS) == {"/test/apache-8001": "127.0.0.1:8001"}
        assert keys(host, {LABEL_PORT: "53/udp, 80/tcp"}, ports=self.PORTS) == {
            "/test/apache-8001": "127.0.0.1:8001",
            "/test/apache-5353": "127.0.0.1:5353",
        }
        assert problem(host, {LABEL_PORT: "80/udp"}, ports=self.PORTS) == (
            "label sidekick.port names port 80/udp, which is not published"
        )

    def test_proto_placeholder(self) -> None:
        config = Config(prefix="/test", key_template="{prefix}/{service}-{port}-{proto}")
        assert keys(config, {LABEL_PORT: "53/udp,80"}, ports=self.PORTS) == {
            "/test/apache-8001-tcp": "127.0.0.1:8001",
            "/test/apache-5353-udp": "127.0.0.1:5353",
        }

    def test_udp_and_tcp_on_one_key_is_a_duplicate(self, host: Config) -> None:
        """TCP and UDP on the same host port give one default key: both are kept in the
        announcement, merge() reports the UDP one, the TCP one keeps the key."""
        ports = {"53/tcp": [("127.0.0.1", 5353)], "53/udp": [("127.0.0.1", 5353)]}
        found = result(host, {LABEL_PORT: "53/udp,53"}, ports=ports)
        assert [(r.key, r.proto) for r in found.registrations] == [
            ("/test/apache-5353", "tcp"),
            ("/test/apache-5353", "udp"),
        ]
        desired = merge([found.registrations])
        assert list(desired.registrations) == ["/test/apache-5353"]
        ((kept, dropped),) = desired.duplicates
        assert (kept.proto, dropped.proto) == ("tcp", "udp")
        assert duplicate_text(kept, dropped) == (
            "/test/apache-5353: container web gives it to a TCP and a UDP port; the TCP port "
            "keeps it (put {proto} in --key-template to announce both)"
        )


class TestLabelsInTemplates:
    """{label:NAME} in keys and values; {json:NAMES} as the value."""

    def test_label_in_key_and_value(self) -> None:
        config = Config(
            prefix="/test",
            host_ip="10.0.0.5",
            key_template="{prefix}/{label:zone}/{service}-{port}",
            value_template="{ip}:{port} weight={label:weight}",
        )
        labels = {"zone": "eu-1", "weight": "5"}
        found = keys(config, labels, ports={"80/tcp": [("127.0.0.1", 8001)]})
        assert found == {"/test/eu-1/apache-8001": "127.0.0.1:8001 weight=5"}

    @pytest.mark.parametrize(
        ("zone", "expected"),
        [
            ("..", "key '/test/../apache-8001' would fall outside /test/"),
            ("a/../..", "key '/test/a/../../apache-8001' would fall outside /test/"),
            ("", "key '/test//apache-8001' would fall outside /test/"),
            ("a;b", "label zone='a;b' has characters a template cannot take"),
            ("a\nserver evil", "label zone='a\\\\nserver evil' has characters a template"),
        ],
    )
    def test_hostile_label_values_are_refused(self, zone: str, expected: str) -> None:
        """Refused like a hostile service name: the container is skipped with one line."""
        config = Config(prefix="/test", key_template="{prefix}/{label:zone}/{service}-{port}")
        found = problem(config, {"zone": zone}, ports={"80/tcp": [("127.0.0.1", 8001)]})
        assert found.startswith(expected)
        assert "\n" not in found

    def test_missing_label(self, container: Config) -> None:
        config = Config(prefix="/test", address="container", key_template="{prefix}/{label:zone}")
        assert problem(config) == "the templates use label zone, which the container does not have"

    def test_json_value(self) -> None:
        """{json:NAMES}: one JSON object with the facts and the named labels present."""
        config = Config(
            prefix="/test",
            node="node1",
            address="container",
            value_template="{json:weight,zone}",
        )
        labels = {"weight": "5", "other": "x", LABEL_SERVICE: "web"}
        ((value,),) = [keys(config, labels, networks={"overlay": ("", "fd00::9")}).values()]
        assert json.loads(value) == {
            "address": "[fd00::9]:80",
            "host": "fd00::9",
            "port": 80,
            "proto": "tcp",
            "service": "web",
            "node": "node1",
            "container": "web",
            "container_id": CID[:12],
            "labels": {"weight": "5"},
        }
        assert tuple(json.loads(value)) == tuple(sorted(JSON_FIELDS))  # sorted: stable bytes
        hostile = keys(config, {"weight": '"}\n{"'}).popitem()[1]
        assert json.loads(hostile)["labels"] == {"weight": '"}\n{"'}
        assert "\n" not in hostile


class TestOptions:
    """--address, --network and the template grammar, each error naming its option."""

    def test_address_and_network(self) -> None:
        config = load_config({"address": "Container", "network": "overlay"}, environ={})
        assert (config.address, config.network) == ("container", "overlay")
        from_env = load_config({}, environ={"SIDEKICK_ADDRESS": "container"})
        assert from_env.address == "container"

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            ({"address": "overlay"}, "--address: must be host or container, got 'overlay'"),
            ({"network": "a b"}, "--network: not a Docker network name"),
            ({"key_template": "{prefix}/{label:Zone}"}, "--key-template: {label:Zone}: a label"),
            ({"key_template": "{prefix}/{label:a..b}"}, "--key-template: {label:a..b}: a label"),
            ({"key_template": "{prefix}/{label}"}, "--key-template: {label:}: a label name"),
            ({"key_template": "{prefix}/{json}"}, "--key-template: {json} belongs in the value"),
            ({"value_template": "{json:a b}"}, "--value-template: {json:a b}: 'a b' is not"),
            ({"value_template": "{port:d}"}, "--value-template: placeholders take no :format"),
            ({"value_template": "{labels}"}, "--value-template: unknown placeholder {labels}"),
        ],
    )
    def test_bad_options(self, flags: dict[str, str], message: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_config(flags, environ={})
        assert str(caught.value).startswith(message), str(caught.value)
        assert "\n" not in str(caught.value)

    def test_good_templates(self) -> None:
        config = load_config(
            {
                "key_template": "{prefix}/{label:com.example.zone}/{service}-{port}-{proto}",
                "value_template": "{json:weight,com.example.zone}",
            },
            environ={},
        )
        assert config.value_template == "{json:weight,com.example.zone}"


class TestNetworkEvents:
    """type=network connect/disconnect become events of the container they name."""

    def test_connect(self) -> None:
        event = event_from_raw(
            {
                "Type": "network",
                "Action": "connect",
                "Actor": {
                    "ID": "net1",
                    "Attributes": {"container": CID, "name": "overlay", "type": "bridge"},
                },
            }
        )
        assert event is not None
        assert (event.kind, event.action, event.container_id, event.detail, event.name) == (
            "network",
            "connect",
            CID,
            "overlay",
            "",
        )

    @pytest.mark.parametrize(
        "raw",
        [
            {"Type": "network", "Action": "create", "Actor": {"ID": "n", "Attributes": {}}},
            {"Type": "network", "Action": "connect", "Actor": {"ID": "n", "Attributes": {}}},
            {"Type": "network", "Action": "destroy", "Actor": {"ID": "n"}},
        ],
    )
    def test_other_network_events_are_dropped(self, raw: dict[str, Any]) -> None:
        assert event_from_raw(raw) is None


WEIGHTED = Path(__file__).resolve().parent.parent / "docs" / "examples" / "nginx-weighted.conf.j2"


class TestWeightedNginxExample:
    """docs/examples/nginx-weighted.conf.j2 reads the {json:weight} values the agent writes."""

    def test_weights_from_labels(self) -> None:
        config = Config(prefix="/test", address="container", value_template="{json:weight}")
        kv: dict[str, str] = {}
        for name, ip, labels in [
            ("a", "10.2.0.9", {"weight": "5"}),
            ("b", "10.2.0.10", {}),
            ("c", "10.2.0.11", {"weight": "many"}),
        ]:
            kv.update(keys(config, {**labels, LABEL_SERVICE: name}, networks={"overlay": (ip, "")}))
        text = render_text(load_template(WEIGHTED), "/test", kv, {})
        assert re.findall(r"^\s+server (\S+) weight=(\d+);$", text, re.M) == [
            ("10.2.0.10:80", "1"),
            ("10.2.0.11:80", "1"),
            ("10.2.0.9:80", "5"),
        ]

    def test_a_value_that_is_not_json_fails_the_render(self) -> None:
        with pytest.raises(RenderError, match=re.escape("fromjson: not JSON: '10.0.0.1:80'")):
            render_text(load_template(WEIGHTED), "/test", {"/test/a-80": "10.0.0.1:80"}, {})
