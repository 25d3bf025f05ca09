"""The Docker adapter against the real engine: the listing agrees with inspect."""

from __future__ import annotations

from typing import Any

import pytest

from sidekick.config import Config
from sidekick.docker_parse import container_from_summary
from sidekick.docker_source import DockerSource
from sidekick.model import announce
from tests.conftest import TEST_LABEL, Containers, free_port, wait_for

pytestmark = pytest.mark.integration


class TestListing:
    """A reconcile built from `docker ps` announces exactly what inspect would."""

    def test_listing_matches_inspect(self, containers: Containers, scope: str, docker_client):
        """For every kind of container the listing-based snapshot gives inspect's keys."""
        containers.run(ports={"80/tcp": ("127.0.0.1", free_port())})
        containers.run(ports={"80/tcp": free_port(), "81/tcp": ("127.0.0.1", free_port())})
        containers.run(ports={"80/tcp": ("127.0.0.1", None)})
        containers.run(
            labels={"sidekick.service": "named", "sidekick.port": "80"},
            ports={"80/tcp": ("127.0.0.1", free_port()), "81/tcp": free_port()},
        )
        healthy = containers.run(
            ports={"80/tcp": ("127.0.0.1", free_port())},
            healthcheck={"test": ["CMD", "true"], "interval": 200_000_000},
        )
        host_port = free_port()
        containers.run(
            command=f"httpd -f -p 127.0.0.1:{host_port}",
            network_mode="host",
            labels={"sidekick.port": str(host_port)},
        )
        wait_for(
            lambda: healthy.reload() or healthy.attrs["State"]["Health"]["Status"] == "healthy"
        )
        source = DockerSource(
            None, timeout=10, label_filters=[f"{TEST_LABEL}={scope}"], opted_in_only=True
        )
        config = Config(prefix="/x", host_ip="192.0.2.5", node="n")
        listed = {c.id: announce(c, config) for c in source.running_containers()}
        inspected = {}
        for summary in docker_client.api.containers(filters={"label": f"{TEST_LABEL}={scope}"}):
            container = source.inspect(summary["Id"])
            assert container is not None
            inspected[container.id] = announce(container, config)
        assert listed == inspected
        assert len(listed) == 6
        assert all(a.registrations for a in listed.values())
        # most came from the listing alone; the healthy and the host-network ones were inspected
        summaries = docker_client.api.containers(filters={"label": f"{TEST_LABEL}={scope}"})
        assert sum(container_from_summary(s) is not None for s in summaries) == 4

    def test_listed_by_id_matches_inspect(self, containers: Containers, scope: str):
        """The agent's look-up of started containers: one listing by id, inspect's answer for
        each container it returns, and nothing for the ones only an inspect can tell."""
        plain = containers.run(ports={"80/tcp": ("127.0.0.1", free_port())})
        ephemeral = containers.run(ports={"80/tcp": ("127.0.0.1", None)})
        checked = containers.run(
            ports={"80/tcp": ("127.0.0.1", free_port())},
            healthcheck={"test": ["CMD", "true"], "interval": 200_000_000},
        )
        failing = containers.run(
            ports={"80/tcp": ("127.0.0.1", free_port())},
            healthcheck={"test": ["CMD", "false"], "interval": 200_000_000},
        )
        stopped = containers.run(ports={"80/tcp": ("127.0.0.1", free_port())})
        stopped.stop(timeout=0)
        source = DockerSource(
            None, timeout=10, label_filters=[f"{TEST_LABEL}={scope}"], opted_in_only=True
        )
        config = Config(prefix="/x", host_ip="192.0.2.5", node="n")

        def health(container: Any) -> str | None:
            inspected = source.inspect(container.id)
            return inspected.health if inspected else None

        wait_for(lambda: health(checked) == "healthy", message="the healthcheck passes")
        ids = [plain.id, ephemeral.id, checked.id, failing.id, stopped.id, "0" * 64]
        listed = source.listed(ids)
        assert set(listed) == {plain.id, ephemeral.id, checked.id, failing.id}  # no inspect
        assert listed[checked.id].health == "healthy"  # from a health=healthy listing
        assert listed[failing.id].health != "healthy"
        assert announce(listed[failing.id], config).registrations == ()
        for container_id in (plain.id, ephemeral.id, checked.id):
            inspected = source.inspect(container_id)
            assert inspected is not None
            assert announce(listed[container_id], config) == announce(inspected, config)
            assert announce(listed[container_id], config).registrations
        assert source.listed([]) == {}
        # Just started (their `start` event is the news): no verdict yet, whatever the
        # health=healthy listing would say, and announced only once the verdict's event comes.
        just_started = source.listed([plain.id, checked.id], starting={checked.id})
        assert just_started[checked.id].health == "not healthy"
        assert announce(just_started[checked.id], config).registrations == ()
        assert just_started[plain.id] == listed[plain.id]


class TestLookAhead:
    """What the agent reads right after `create` is what the started container announces."""

    def test_as_started_matches_the_started_container(
        self, containers: Containers, scope: str, docker_client
    ):
        def create(**kwargs: Any) -> Any:
            labels = {TEST_LABEL: scope, "sidekick.enable": "true", **kwargs.pop("labels", {})}
            return containers.client.containers.create(
                containers.image, kwargs.pop("command", "httpd -f -p 80"), labels=labels, **kwargs
            )

        def network(suffix: str, **kwargs: Any) -> str:
            made = docker_client.networks.create(
                f"sk-{scope}-{suffix}", driver="bridge", labels={TEST_LABEL: scope}, **kwargs
            )
            networks.append(made)
            return str(made.name)

        networks: list[Any] = []
        try:
            on_loopback = network(  # `-p P:80` binds 127.0.0.1 here, not every address
                "lo", options={"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"}
            )
            internal = network("internal", internal=True)
            host_port = free_port()
            known = [
                create(ports={"80/tcp": ("127.0.0.1", free_port())}),
                create(ports={"80/tcp": free_port(), "81/tcp": ("127.0.0.1", free_port())}),
                create(
                    labels={"sidekick.service": "named", "sidekick.port": "81"},
                    ports={"80/tcp": ("127.0.0.1", free_port()), "81/tcp": free_port()},
                ),
                create(
                    command=f"httpd -f -p 127.0.0.1:{host_port}",
                    network_mode="host",
                    labels={"sidekick.port": str(host_port)},
                ),
                create(network=on_loopback, ports={"80/tcp": free_port()}),
                create(ports={"80/tcp": ("::1", free_port())}),
            ]
            unknown = [
                create(ports={"80/tcp": ("127.0.0.1", None)}),
                create(
                    ports={"80/tcp": ("127.0.0.1", free_port())},
                    healthcheck={"test": ["CMD", "true"], "interval": 200_000_000},
                ),
                create(network_mode="none", ports={"80/tcp": ("127.0.0.1", free_port())}),
                create(network=internal, ports={"80/tcp": ("127.0.0.1", free_port())}),
            ]
            source = DockerSource(None, timeout=10, label_filters=[], opted_in_only=True)
            config = Config(prefix="/x", host_ip="192.0.2.5", node="n")
            ahead: dict[str, Any] = {c.id: source.as_started(c.id) for c in known + unknown}
            for container in known + unknown:
                container.start()
            for container in known + unknown:  # the stop signal is known either way
                created = ahead[container.id]
                assert created is not None
                inspected = source.inspect(container.id)
                assert inspected is not None and created.stop_signal == inspected.stop_signal
            for container in known:
                started = source.inspect(container.id)
                looked_ahead = ahead[container.id].container
                assert started is not None
                assert looked_ahead is not None, container.attrs["HostConfig"]
                assert announce(looked_ahead, config) == announce(started, config)
                assert announce(started, config).registrations
            assert [ahead[c.id].container for c in unknown] == [None] * len(unknown)
            assert source.as_started("0" * 64) is None
        finally:
            containers.remove_all()
            for made in networks:
                made.remove()
