"""Issue 14 against the real engine and a real etcd: container addresses on a user-defined
bridge network (standing in for an overlay), `docker network connect` / `disconnect`, a
UDP-published container and labels in the templates, in the agent and the one-shot commands.

No traffic goes to a container: the check is the value etcd holds against what `docker
inspect` reports. Published ports are on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import TEST_LABEL, Containers, EtcdServer, free_port, metric, wait_for
from tests.lb import Nginx, clean_env
from tests.test_commands import HOST_IP, _sidekick  # noqa: F401 - the sidekick fixture

pytestmark = pytest.mark.integration


def address_on(container: Any, network: str) -> str:
    """The container's IPv4 address on the network, as `docker inspect` reports it now."""
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert address, container.attrs["NetworkSettings"]["Networks"]
    return str(address)


@pytest.fixture(name="second_network")
def _second_network(
    docker_client: docker.DockerClient, containers: Containers, own_network: str, scope: str
) -> Iterator[Any]:
    """Another user-defined bridge, for connect and disconnect."""
    network = docker_client.networks.create(
        f"sk2-{scope}", driver="bridge", labels={TEST_LABEL: scope}
    )
    yield network
    containers.remove_all()
    with contextlib.suppress(docker.errors.APIError):
        network.remove()


class TestAgentContainerAddress:
    """`sidekick run --address container`: the container's own IP and port, nothing published."""

    def test_value_is_the_address_docker_reports(
        self, agent_factory, containers: Containers, etcd: EtcdServer, scope, own_network
    ):
        """The key holds the container's IP on the network (from inspect) and its own port;
        a `docker stop` withdraws it. No node address is needed for that."""
        agent = agent_factory("--address", "container", "--network", own_network, host_ip=None)
        web = containers.run(network=own_network, labels={"sidekick.service": "web"})
        ip = address_on(web, own_network)
        wait_for(
            lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/web-80": f"{ip}:80"},
            message=f"/{scope}/web-80 = {ip}:80",
        )
        web.stop(timeout=1)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="key withdrawn")
        # network events followed from the start: no second stream for them
        assert not agent.events("docker events: following network connections from now on")

    def test_connect_and_disconnect(
        self,
        agent_factory,
        containers: Containers,
        etcd: EtcdServer,
        scope,
        own_network,
        second_network,
    ):
        """Not on the labelled network: one warning naming it, the network and the networks
        it has. `docker network connect` announces it, `disconnect` withdraws it (three times
        over: the agent looks again shortly after, as dockerd's listing lags the event); a
        container announced by its host port meanwhile is served throughout."""
        agent = agent_factory("--address", "host")
        port = free_port()
        other = containers.run(
            network=own_network,
            ports={"80/tcp": ("127.0.0.1", port)},
            labels={"sidekick.service": "other"},
        )
        web = containers.run(
            network=own_network,
            labels={
                "sidekick.service": "web",
                "sidekick.address": "container",
                "sidekick.network": second_network.name,
            },
        )
        reason = f"has no address on network {second_network.name} (its networks: {own_network})"
        (warning,) = agent.wait_log("container skipped")
        assert (warning["container"], warning["reason"]) == (web.name, reason)
        wait_for(lambda: f"/{scope}/other-{port}" in etcd.keys(f"/{scope}/"))

        def holds(value: str) -> bool:
            return etcd.keys(f"/{scope}/").get(f"/{scope}/web-80") == value

        for cycle in range(1, 4):  # dockerd lists the change a little after its event
            second_network.connect(web)
            ip = address_on(web, second_network.name)
            wait_for(
                functools.partial(holds, f"{ip}:80"),
                message=f"/{scope}/web-80 = {ip}:80 after connect {cycle}",
            )
            second_network.disconnect(web)
            wait_for(
                lambda: f"/{scope}/web-80" not in etcd.keys(f"/{scope}/"),
                message=f"withdrawn after disconnect {cycle}",
            )
        warnings = agent.wait_log("container skipped", count=4)
        assert [w["reason"] for w in warnings] == [reason] * 4
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/other-{port}": f"127.0.0.1:{port}"}
        assert other.status in {"created", "running"}

    def test_network_events_followed_once_they_matter(
        self,
        agent_factory,
        containers: Containers,
        etcd: EtcdServer,
        scope,
        own_network,
        second_network,
    ):
        """A node whose containers are announced by their host ports does not read Docker's
        network events (two a container: its connect at start, its disconnect at exit). The
        first container announced (or skipped) by a network address makes the agent follow
        them from then on, once; that container's `docker network connect` announces it."""
        address = f"127.0.0.1:{free_port()}"
        agent = agent_factory("--address", "host", "--metrics-address", address)
        url = f"http://{address}/metrics"
        port = free_port()
        containers.run(
            network=own_network,
            ports={"80/tcp": ("127.0.0.1", port)},
            labels={"sidekick.service": "other"},
        )
        wait_for(lambda: f"/{scope}/other-{port}" in etcd.keys(f"/{scope}/"))
        assert metric(url, "sidekick_docker_events_total", 'action="start"') >= 1
        assert metric(url, "sidekick_docker_events_total", 'action="connect"') == 0
        web = containers.run(
            network=own_network,
            labels={
                "sidekick.service": "web",
                "sidekick.address": "container",
                "sidekick.network": second_network.name,
            },
        )
        agent.wait_log("docker events: following network connections from now on")
        agent.wait_log("container skipped")

        def reconciled_since_reopened() -> bool:
            lines = [line["event"] for line in agent.logs()]
            reopened = lines.index("docker events: following network connections from now on")
            return "reconciled" in lines[reopened:]

        wait_for(reconciled_since_reopened, message="the reopened stream's reconcile")
        second_network.connect(web)
        ip = address_on(web, second_network.name)
        wait_for(
            lambda: etcd.keys(f"/{scope}/").get(f"/{scope}/web-80") == f"{ip}:80",
            message=f"/{scope}/web-80 = {ip}:80 after the connect",
        )
        assert metric(url, "sidekick_docker_events_total", 'action="connect"') >= 1
        assert len(agent.events("docker events: following network connections from now on")) == 1
        assert not agent.events("docker event stream ended; reconnecting")

    def test_udp_published(self, agent_factory, containers, etcd, scope, own_network):
        """A UDP port published on 127.0.0.1 is announced when listed; with {proto} in the
        key, TCP and UDP of one number are two keys; without, a duplicate is reported."""
        agent = agent_factory("--key-template", "{prefix}/{service}-{port}-{proto}")
        port = free_port()
        containers.run(
            network=own_network,
            ports={"53/udp": ("127.0.0.1", port), "53/tcp": ("127.0.0.1", port)},
            labels={"sidekick.service": "dns", "sidekick.port": "53/udp,53/tcp"},
        )
        wait_for(
            lambda: (
                etcd.keys(f"/{scope}/")
                == {
                    f"/{scope}/dns-{port}-tcp": f"127.0.0.1:{port}",
                    f"/{scope}/dns-{port}-udp": f"127.0.0.1:{port}",
                }
            ),
        )
        agent.stop()
        plain = agent_factory()  # the default key: one number, two protocols
        (duplicate,) = plain.wait_log("duplicate key; first container keeps it")
        assert (duplicate["key"], duplicate["proto"]) == (f"/{scope}/dns-{port}", "udp")
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/dns-{port}": f"127.0.0.1:{port}"})

    def test_labels_in_templates(self, agent_factory, containers, etcd, scope, own_network):
        """{label:zone} in the key and {json:weight} as the value; a hostile zone is skipped
        with one line while the rest is served."""
        agent = agent_factory(
            "--address",
            "container",
            "--key-template",
            "{prefix}/{label:zone}/{service}-{container}-{port}",
            "--value-template",
            "{json:weight}",
            "--node",
            "node-a",
        )
        web = containers.run(
            network=own_network,
            labels={"sidekick.service": "web", "zone": "eu-1", "weight": "5"},
        )
        bad = containers.run(
            network=own_network, labels={"sidekick.service": "bad", "zone": "../../etc"}
        )
        key = f"/{scope}/eu-1/web-{web.name}-80"
        value = wait_for(lambda: etcd.keys(f"/{scope}/").get(key), message=key)
        ip = address_on(web, own_network)
        assert json.loads(value) == {
            "address": f"{ip}:80",
            "host": ip,
            "port": 80,
            "proto": "tcp",
            "service": "web",
            "node": "node-a",
            "container": web.name,
            "container_id": web.id[:12],
            "labels": {"weight": "5"},
        }
        (warning,) = agent.wait_log("container skipped")
        assert warning["container"] == bad.name
        assert warning["reason"] == (
            f"key '/{scope}/../../etc/bad-{bad.name}-80' would fall outside /{scope}/"
        )
        assert list(etcd.keys(f"/{scope}/")) == [key]


WEIGHTED = Path(__file__).resolve().parent.parent / "docs" / "examples" / "nginx-weighted.conf.j2"


class TestWeightedRender:
    """The README's JSON layout end to end: agents write {json:weight}, `sidekick render`
    with docs/examples/nginx-weighted.conf.j2 gives weighted servers, and nginx -t accepts it."""

    def test_render_weights(
        self, agent_factory, containers, etcd: EtcdServer, scope, own_network, tmp_path
    ):
        agent_factory(
            "--address",
            "container",
            "--key-template",
            "{prefix}/{service}-{container}-{port}",
            "--value-template",
            "{json:weight}",
        )
        heavy = containers.run(
            network=own_network, labels={"sidekick.service": "web", "weight": "5"}
        )
        light = containers.run(network=own_network, labels={"sidekick.service": "web"})
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2, message="two keys")
        nginx = Nginx(tmp_path / "nginx", free_port())
        dest = tmp_path / "nginx" / "nginx.conf"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "render",
                "--once",
                "--etcd-endpoints",
                etcd.url,
                "--prefix",
                f"/{scope}",
                "--dest",
                str(dest),
                "--template",
                str(WEIGHTED),
                "--check-cmd",
                nginx.check_cmd(),
                *nginx.template_vars,
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        servers = sorted(
            line.strip() for line in dest.read_text().splitlines() if "weight=" in line
        )
        assert servers == sorted(
            [
                f"server {address_on(heavy, own_network)}:80 weight=5;",
                f"server {address_on(light, own_network)}:80 weight=1;",
            ]
        )


class TestCommandsContainerAddress:
    """register / deregister / ls / --dry-run take the same options and say the same."""

    def test_register_ls_deregister(self, sidekick, containers, etcd, scope, own_network):
        web = containers.run(network=own_network, labels={"sidekick.service": "web"})
        ip = address_on(web, own_network)
        options = ("--address", "container", "--network", own_network)
        dry = sidekick("register", "--dry-run", *options, web.name)
        assert dry.code == 0, dry
        assert f"dry-run: would put /{scope}/web-80 = {ip}:80 (plain key" in dry.out
        assert etcd.keys(f"/{scope}/") == {}
        done = sidekick("register", *options, web.name)
        assert done.code == 0, done
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/web-80": f"{ip}:80"}
        listed = sidekick("ls", "--json", *options)
        assert listed.code == 0, listed
        (entry,) = json.loads(listed.out)["registrations"]
        assert (entry["key"], entry["value"], entry["container"]) == (
            f"/{scope}/web-80",
            f"{ip}:80",
            web.name,
        )
        gone = sidekick("deregister", *options, web.name)
        assert gone.code == 0, gone
        assert etcd.keys(f"/{scope}/") == {}

    def test_register_names_the_network_it_lacks(
        self, sidekick, containers, etcd, scope, own_network
    ):
        """A container not on --network: exit 1, one line naming it, the network and its own."""
        web = containers.run(network=own_network, labels={"sidekick.service": "web"})
        result = sidekick("register", "--address", "container", "--network", "nowhere", web.name)
        assert result.code == 1, result
        assert (
            f"container {web.name} has nothing to announce: has no address on network "
            f"nowhere (its networks: {own_network})" in result.err
        )
        assert etcd.keys(f"/{scope}/") == {}

    def test_bad_option_is_one_line(self, sidekick):
        result = sidekick("register", "--address", "overlay")
        assert result.code == 2, result
        assert result.err_lines == [
            "sidekick: error: --address: must be host or container, got 'overlay'"
        ]

    def test_udp_register(self, sidekick, containers, etcd, scope, own_network):
        port = free_port()
        dns = containers.run(
            network=own_network,
            ports={"53/udp": ("127.0.0.1", port)},
            labels={"sidekick.service": "dns", "sidekick.port": "53/udp"},
        )
        result = sidekick("register", dns.name)
        assert result.code == 0, result
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/dns-{port}": f"127.0.0.1:{port}"}
        assert HOST_IP not in result.out
