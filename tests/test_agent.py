"""`sidekick run` against the real Docker engine and a real etcd."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from tests.conftest import (
    TEST_LABEL,
    Containers,
    EtcdServer,
    free_port,
    metric,
    wait_for,
)

pytestmark = pytest.mark.integration


def published(port: int, container_port: int = 80) -> dict[str, tuple[str, int]]:
    return {f"{container_port}/tcp": ("127.0.0.1", port)}


def events_seen(url: str, action: str) -> float:
    """How many Docker events of this action the agent at url (its /metrics) has received."""
    return metric(url, "sidekick_docker_events_total", f'action="{action}"')


def marker_announced(containers: Containers, etcd: EtcdServer, scope: str) -> str:
    """Start a marker container and wait for its key: the agent handles Docker's events one at
    a time in the order they come, so every event before the marker's start has been handled
    once its key is in etcd. Returns the key."""
    port = free_port()
    containers.run(ports=published(port), labels={"sidekick.service": "marker"})
    key = f"/{scope}/marker-{port}"
    wait_for(lambda: key in etcd.keys(f"/{scope}/"), message=f"the marker {key}")
    return key


class TestRegistration:
    """A container that opts in is announced as the seed's confd template expects."""

    def test_seed_layout(
        self, agent_factory, containers: Containers, etcd: EtcdServer, scope, images
    ):
        """dash/apache on host port P gives <prefix>/apache-P = 127.0.0.1:P, and it goes on stop."""
        agent_factory()
        port = free_port()
        container = containers.run(image=images["apache"], ports=published(port))
        key = f"/{scope}/apache-{port}"
        wait_for(lambda: etcd.keys(f"/{scope}/") == {key: f"127.0.0.1:{port}"}, message=key)
        container.stop(timeout=1)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="key removed")

    def test_service_label_and_port_label(self, agent_factory, containers, etcd, scope):
        """sidekick.service names the key; sidekick.port picks which published ports count."""
        agent_factory()
        web, admin = free_port(), free_port()
        containers.run(
            labels={"sidekick.service": "web", "sidekick.port": "80"},
            ports={"80/tcp": ("127.0.0.1", web), "81/tcp": ("127.0.0.1", admin)},
        )
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/web-{web}": f"127.0.0.1:{web}"})

    def test_not_opted_in(self, agent_factory, containers, etcd, scope):
        """Unlabelled: nothing written; with --all it is, unless sidekick.enable=false."""
        agent = agent_factory()
        plain = free_port()
        containers.run(enable=None, ports=published(plain), labels={"sidekick.service": "plain"})
        refused = free_port()
        containers.run(enable=False, ports=published(refused), labels={"sidekick.service": "no"})
        marker = free_port()
        containers.run(ports=published(marker), labels={"sidekick.service": "marker"})
        wait_for(lambda: f"/{scope}/marker-{marker}" in etcd.keys(f"/{scope}/"))
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/marker-{marker}": f"127.0.0.1:{marker}"}
        agent.stop()
        agent_factory("--all")
        wait_for(
            lambda: (
                set(etcd.keys(f"/{scope}/"))
                == {f"/{scope}/marker-{marker}", f"/{scope}/plain-{plain}"}
            )
        )

    def test_all_addresses_use_host_ip(self, agent_factory, containers, etcd, scope):
        """A port published on 0.0.0.0 is announced with the node's address from --host-ip."""
        agent_factory(host_ip="192.0.2.10")
        port = free_port()
        containers.run(ports={"80/tcp": port}, labels={"sidekick.service": "any"})
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/any-{port}": f"192.0.2.10:{port}"})

    def test_dynamic_host_port(self, agent_factory, containers, etcd, scope):
        """-p 127.0.0.1::80 (Docker picks the host port at start): the picked port is announced."""
        agent_factory()
        container = containers.run(
            ports={"80/tcp": ("127.0.0.1", None)}, labels={"sidekick.service": "dyn"}
        )
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/dyn-{port}": f"127.0.0.1:{port}"})

    def test_host_ip_from_environment_file(self, agent_factory, containers, etcd, scope, tmp_path):
        """COREOS_PRIVATE_IPV4 in the environment file is the node's address, as in the seed."""
        agent = agent_factory(host_ip=None, wait_ready=False)
        agent.stop()  # the factory made the (empty) environment file; fill it and start again
        (tmp_path / "environment").write_text(
            "COREOS_PUBLIC_IPV4=198.51.100.1\nCOREOS_PRIVATE_IPV4=198.51.100.2\n"
        )
        agent_factory(host_ip=None)
        port = free_port()
        containers.run(ports={"80/tcp": port}, labels={"sidekick.service": "envfile"})
        wait_for(
            lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/envfile-{port}": f"198.51.100.2:{port}"}
        )

    def test_templates(self, agent_factory, containers, etcd, scope):
        """--key-template and --value-template change the layout."""
        agent_factory(
            "--key-template",
            "{prefix}/{node}/{container}/{container_port}",
            "--value-template",
            "http://{ip}:{port}/",
            "--node",
            "n1",
        )
        port = free_port()
        container = containers.run(ports=published(port), labels={"sidekick.service": "x"})
        wait_for(
            lambda: (
                etcd.keys(f"/{scope}/")
                == {f"/{scope}/n1/{container.name}/80": f"http://127.0.0.1:{port}/"}
            )
        )

    def test_created_then_renamed_then_started(
        self, agent_factory, containers, etcd, scope, docker_proxy
    ):
        """`docker create`, `docker rename`, `docker start`: the key carries the name the
        container has when it starts (the agent reads containers ahead, at `create`), and a
        second start after a stop registers it again."""
        agent_factory(
            "--key-template", "{prefix}/{container}-{port}", "--docker-url", docker_proxy.url
        )
        port = free_port()
        container = containers.client.containers.create(
            containers.image,
            "httpd -f -p 80",
            labels={TEST_LABEL: scope, "sidekick.enable": "true"},
            ports=published(port),
            name=f"{scope}-before",
        )
        wait_for(  # the look-ahead at `create` has read it, under its first name
            lambda: any(f"/containers/{container.id}/json" in r for r in docker_proxy.requests),
            message="the look-ahead at create",
        )
        container.rename(f"{scope}-after")
        container.start()
        wanted = {f"/{scope}/{scope}-after-{port}": f"127.0.0.1:{port}"}
        wait_for(lambda: etcd.keys(f"/{scope}/") == wanted, message="registered on start")
        container.stop(timeout=1)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="withdrawn on stop")
        container.start()
        wait_for(lambda: etcd.keys(f"/{scope}/") == wanted, message="registered again")

    def test_start_of_created_container_asks_docker_nothing(
        self, agent_factory, containers, etcd, scope, docker_proxy
    ):
        """A container created while the agent runs is read at `create`: its start is written
        with no Docker request in between; its next start is looked up in the listing."""
        agent_factory("--docker-url", docker_proxy.url, "--resync", "3600")
        port = free_port()
        container = containers.client.containers.create(
            containers.image,
            "httpd -f -p 80",
            labels={TEST_LABEL: scope, "sidekick.enable": "true", "sidekick.service": "ahead"},
            ports=published(port),
        )

        def read_ahead() -> bool:  # the container's inspect, then its network's (first use)
            requests = list(docker_proxy.requests)
            inspected = [
                i for i, r in enumerate(requests) if f"/containers/{container.id}/json" in r
            ]
            return bool(inspected) and any("/networks/" in r for r in requests[inspected[0] :])

        wait_for(read_ahead, message="the look-ahead at create: the container and its network")
        before_start = len(docker_proxy.requests)
        container.start()
        wanted = {f"/{scope}/ahead-{port}": f"127.0.0.1:{port}"}
        wait_for(lambda: etcd.keys(f"/{scope}/") == wanted, message="registered on start")
        assert docker_proxy.requests[before_start:] == []
        wait_for(  # checked again a second later, with the other read-ahead starts
            lambda: any(
                container.id in r and "/containers/json?" in r for r in docker_proxy.requests
            ),
            message="the look-up that checks the read-ahead start",
        )
        container.stop(timeout=1)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="withdrawn on stop")
        container.start()
        wait_for(lambda: etcd.keys(f"/{scope}/") == wanted, message="registered again")
        assert any("/containers/json?" in r for r in docker_proxy.requests[before_start:])

    def test_network_changed_between_create_and_start(
        self, agent_factory, containers, etcd, scope, docker_proxy, docker_client
    ):
        """Moved to another network after the look-ahead read it: the address that network
        binds `-p P:80` to is in etcd within a couple of seconds, with no resync."""
        agent_factory("--docker-url", docker_proxy.url, "--resync", "3600")
        networks = [
            docker_client.networks.create(f"sk-{scope}-{name}", labels={TEST_LABEL: scope}, **kw)
            for name, kw in (
                ("a", {}),
                ("b", {"options": {"com.docker.network.bridge.host_binding_ipv4": "127.0.0.2"}}),
            )
        ]
        try:
            port = free_port()
            container = containers.client.containers.create(
                containers.image,
                "httpd -f -p 80",
                labels={TEST_LABEL: scope, "sidekick.enable": "true", "sidekick.service": "moved"},
                ports={"80/tcp": port},
                network=networks[0].name,
            )
            wait_for(
                lambda: any(f"/containers/{container.id}/json" in r for r in docker_proxy.requests),
                message="the look-ahead at create",
            )
            networks[0].disconnect(container)
            networks[1].connect(container)
            container.start()
            wanted = {f"/{scope}/moved-{port}": f"127.0.0.2:{port}"}
            wait_for(lambda: etcd.keys(f"/{scope}/") == wanted, timeout=5, message=str(wanted))
        finally:
            containers.remove_all()
            for network in networks:
                network.remove()

    def test_host_network(self, agent_factory, containers, etcd, scope):
        """A host-network container takes its ports from sidekick.port and the node's address."""
        agent_factory(host_ip="192.0.2.11")
        port = free_port()
        containers.run(
            command=f"httpd -f -p 127.0.0.1:{port}",
            network_mode="host",
            labels={"sidekick.service": "hostnet", "sidekick.port": str(port)},
        )
        wait_for(
            lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/hostnet-{port}": f"192.0.2.11:{port}"}
        )


class TestEvents:
    """Each Docker event moves the registration at once."""

    def test_pause_unpause(self, agent_factory, containers, etcd, scope):
        """pause deregisters, unpause registers again."""
        agent_factory()
        port = free_port()
        container = containers.run(ports=published(port), labels={"sidekick.service": "p"})
        key = f"/{scope}/p-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"))
        container.pause()
        wait_for(lambda: key not in etcd.keys(f"/{scope}/"), message="gone on pause")
        container.unpause()
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message="back on unpause")

    def test_hup_keeps_and_kill_removes(self, agent_factory, containers, etcd, scope):
        """docker kill -s HUP (an nginx reload) deregisters nothing; docker kill does."""
        address = f"127.0.0.1:{free_port()}"
        agent = agent_factory("--metrics-address", address)
        url = f"http://{address}/metrics"
        port = free_port()
        container = containers.run(ports=published(port), labels={"sidekick.service": "k"})
        key = f"/{scope}/k-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"))
        before = etcd.entries(f"/{scope}/")[key]
        kills = events_seen(url, "kill")
        container.kill(signal="SIGHUP")
        wait_for(lambda: events_seen(url, "kill") > kills, message="the HUP's kill event received")
        marker_announced(containers, etcd, scope)  # and handled: it came before the marker
        assert etcd.entries(f"/{scope}/")[key] == before  # same value, lease and revision
        assert agent.events("deregistered") == []
        container.kill()
        wait_for(lambda: key not in etcd.keys(f"/{scope}/"), message="gone on kill")

    def test_healthcheck(self, agent_factory, containers, etcd, scope):
        """A container with a HEALTHCHECK is announced only while healthy."""
        agent_factory()
        port = free_port()
        container = _healthy_while_ok(containers, port, "h")
        key = f"/{scope}/h-{port}"
        wait_for(
            lambda: (
                container.reload() or container.attrs["State"]["Health"]["Status"] != "starting"
            ),
            message="first health check",
        )
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message="announced once healthy")
        container.exec_run("rm /tmp/ok")
        wait_for(lambda: key not in etcd.keys(f"/{scope}/"), message="gone when unhealthy")
        container.exec_run("touch /tmp/ok")
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message="back when healthy")

    def test_health_verdicts_need_no_docker_request(
        self, agent_factory, containers, etcd, scope, docker_proxy
    ):
        """Once a health-checked container has been looked up, its healthcheck's verdicts
        come from their events alone: unhealthy withdraws it, healthy puts it back, and the
        agent asks Docker nothing for either."""
        agent_factory("--docker-url", docker_proxy.url, "--resync", "3600")
        port = free_port()
        container = _healthy_while_ok(containers, port, "v")
        key = f"/{scope}/v-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message="announced once healthy")
        looked_up = len(docker_proxy.requests)
        container.exec_run("rm /tmp/ok")
        wait_for(lambda: key not in etcd.keys(f"/{scope}/"), message="gone when unhealthy")
        container.exec_run("touch /tmp/ok")
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message="back when healthy")
        asked = [r for r in docker_proxy.requests[looked_up:] if "/events" not in r]
        assert asked == []

    def test_health_starting_not_announced(self, agent_factory, containers, etcd, scope):
        """While the first health check has not passed, nothing is announced."""
        agent_factory()
        port = free_port()
        slow = containers.run(
            ports=published(port),
            labels={"sidekick.service": "slow"},
            healthcheck={
                "test": ["CMD", "false"],
                "interval": 60_000_000_000,
                "start_period": 60_000_000_000,
            },
        )
        marker_announced(containers, etcd, scope)  # the slow one's start is handled by now
        assert f"/{scope}/slow-{port}" not in etcd.keys(f"/{scope}/")
        slow.reload()
        assert slow.attrs["State"]["Health"]["Status"] == "starting"  # still, as claimed

    def test_restart_loop_leaves_no_stale_key(
        self, agent_factory, containers, docker_client, etcd, scope
    ):
        """A crash-looping container ends with no key once it is stopped."""
        agent = agent_factory()
        port = free_port()
        container = containers.run(
            command="sh -c 'sleep 0.2; exit 1'",
            ports=published(port),
            labels={"sidekick.service": "loop"},
            restart_policy={"Name": "always"},
        )
        agent.wait_log("registered", count=2, timeout=20)
        container.stop(timeout=1)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="no key after the loop stops")
        marker = marker_announced(containers, etcd, scope)  # every event of the loop handled
        assert list(etcd.keys(f"/{scope}/")) == [marker]


class TestLease:
    """Keys live on one lease: the agent's death removes them, a revoke at shutdown at once."""

    def test_sigterm_revokes_at_once(self, agent_factory, containers, etcd, scope):
        """SIGTERM: every key disappears at once and the agent exits 0."""
        agent = agent_factory(ttl=30)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "t"})
        wait_for(lambda: etcd.keys(f"/{scope}/"))
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert etcd.keys(f"/{scope}/") == {}

    def test_keep_on_exit(self, agent_factory, containers, etcd, scope):
        """--keep-on-exit leaves the keys to expire with the lease."""
        agent = agent_factory("--keep-on-exit", ttl=3)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "t"})
        wait_for(lambda: etcd.keys(f"/{scope}/"))
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert etcd.keys(f"/{scope}/") != {}
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, timeout=6, message="expiry within ttl")

    def test_keepalive_outlives_ttl(self, agent_factory, containers, etcd, scope):
        """While the agent lives its keys outlast the ttl: the heartbeat renews the lease."""
        address = f"127.0.0.1:{free_port()}"
        agent_factory("--metrics-address", address, ttl=2)
        url = f"http://{address}/metrics"
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "t"})
        key = f"/{scope}/t-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"))
        before = etcd.entries(f"/{scope}/")[key]
        lease = etcd.post("lease/timetolive", {"ID": before[1]})
        assert int(lease["grantedTTL"]) == 2
        renewals = metric(url, "sidekick_keepalive_rtt_seconds_count")
        # The claim is about time passing, so time passes: 2.5 ttls, the key looked at every
        # 0.2 s (not once after a sleep), never gone and never rewritten.
        written = time.monotonic()
        while time.monotonic() - written < 5:
            assert etcd.entries(f"/{scope}/").get(key) == before  # same value, lease, revision
            time.sleep(0.2)
        assert metric(url, "sidekick_keepalive_rtt_seconds_count") >= renewals + 3

    def test_kill_9_keys_expire_within_ttl(self, agent_factory, containers, etcd, scope):
        """kill -9 of the agent: its keys vanish within the ttl, by the lease alone."""
        agent = agent_factory(ttl=3)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "t"})
        wait_for(lambda: etcd.keys(f"/{scope}/"))
        agent.signal(signal.SIGKILL)
        agent.wait()
        killed = time.monotonic()
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, timeout=6, message="expiry")
        assert time.monotonic() - killed <= 3 + 1.0

    def test_restarted_agent_resumes_its_lease(self, agent_factory, containers, etcd, scope):
        """After kill -9 the restarted agent resumes the lease: its keys are never rewritten."""
        agent = agent_factory(ttl=30)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "t"})
        key = f"/{scope}/t-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"))
        before = etcd.entries(f"/{scope}/")[key]
        agent.signal(signal.SIGKILL)
        agent.wait()
        restarted = agent_factory(ttl=30, lease_file="lease0")
        assert int(restarted.events("lease resumed")[0]["lease"], 16) == before[1]
        assert restarted.events("reconciled")[0]["registrations"] == 1  # it counts what it holds
        assert etcd.entries(f"/{scope}/")[key] == before  # same value, lease and revision
        container_port = free_port()
        containers.run(ports=published(container_port), labels={"sidekick.service": "t"})
        wait_for(lambda: f"/{scope}/t-{container_port}" in etcd.keys(f"/{scope}/"))
        assert etcd.entries(f"/{scope}/")[f"/{scope}/t-{container_port}"][1] == before[1]

    def test_sigusr1_restart_keeps_every_key(self, agent_factory, containers, etcd, scope):
        """SIGUSR1 (the units' RestartKillSignal): exit 0 with the lease kept; the next agent
        resumes it and the key is never rewritten, so a restart does not flap the backends."""
        agent = agent_factory(ttl=30)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "r"})
        key = f"/{scope}/r-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"))
        before = etcd.entries(f"/{scope}/")[key]
        agent.signal(signal.SIGUSR1)
        assert agent.wait() == 0
        assert agent.events("agent stopped for a restart; keys kept on the lease")
        assert etcd.entries(f"/{scope}/")[key] == before  # same value, lease and revision
        restarted = agent_factory(ttl=30, lease_file="lease0")
        assert int(restarted.events("lease resumed")[0]["lease"], 16) == before[1]
        assert etcd.entries(f"/{scope}/")[key] == before
        restarted.signal(signal.SIGTERM)
        assert restarted.wait() == 0
        assert etcd.keys(f"/{scope}/") == {}  # a stop still removes the keys at once

    def test_lost_lease_is_replaced(self, agent_factory, containers, etcd, scope):
        """A lease revoked behind the agent's back: a new one is granted, every key rewritten."""
        agent = agent_factory(ttl=3)
        ports = [free_port(), free_port()]
        for port in ports:
            containers.run(ports=published(port), labels={"sidekick.service": "t"})
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2)
        lease = next(iter(etcd.entries(f"/{scope}/").values()))[1]
        etcd.revoke(lease)
        assert etcd.keys(f"/{scope}/") == {}
        agent.wait_log("lease granted", count=2, timeout=5)
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2, message="rewritten")
        assert {v[1] for v in etcd.entries(f"/{scope}/").values()} != {lease}


class TestReconcile:
    """Periodic reconcile repairs drift and rewrites nothing that is right."""

    def test_repairs_drift_without_rewriting(self, agent_factory, containers, etcd, scope):
        """A deleted key comes back at the next resync; an intact key keeps its revision."""
        agent = agent_factory(resync=1)
        a, b = free_port(), free_port()
        containers.run(ports=published(a), labels={"sidekick.service": "a"})
        containers.run(ports=published(b), labels={"sidekick.service": "b"})
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2)
        revision = etcd.entries(f"/{scope}/")[f"/{scope}/a-{a}"][2]
        etcd.delete(f"/{scope}/b-{b}")
        wait_for(
            lambda: f"/{scope}/b-{b}" in etcd.keys(f"/{scope}/"), timeout=5, message="repaired"
        )
        count = len(agent.events("reconciled"))
        agent.wait_log("reconciled", count=count + 2, timeout=5)
        assert etcd.entries(f"/{scope}/")[f"/{scope}/a-{a}"][2] == revision

    def test_containers_running_before_start(self, agent_factory, containers, etcd, scope):
        """Containers running before the agent starts are announced in one transaction."""
        ports = [free_port() for _ in range(5)]
        for port in ports:
            containers.run(ports=published(port), labels={"sidekick.service": "early"})
        agent_factory()
        entries = etcd.entries(f"/{scope}/")
        assert {k: v[0] for k, v in entries.items()} == {
            f"/{scope}/early-{p}": f"127.0.0.1:{p}" for p in ports
        }
        assert len({revision for _, _, revision in entries.values()}) == 1


class TestOwnership:
    """Keys of other owners are never overwritten or deleted; labels cannot leave the prefix."""

    def test_foreign_lease_is_left_alone(self, agent_factory, containers, etcd, scope):
        """A key held by another lease with another value is logged as a clash and kept."""
        port = free_port()
        key = f"/{scope}/c-{port}"
        other = etcd.grant(60)
        etcd.put(key, f"192.0.2.99:{port}", lease=other)
        agent = agent_factory()
        containers.run(ports=published(port), labels={"sidekick.service": "c"})
        clash = agent.wait_log("key held by another owner; left as it is")[0]
        assert clash["key"] == key
        assert f"{other:x}" in clash["held_by"]
        assert etcd.entries(f"/{scope}/")[key][:2] == (f"192.0.2.99:{port}", other)
        etcd.revoke(other)

    def test_two_agents_same_key(self, agent_factory, containers, etcd, scope):
        """Two agents announcing the same key with different addresses: the first keeps it."""
        port = free_port()
        first = agent_factory("--all", host_ip="192.0.2.1")
        containers.run(ports={"80/tcp": port}, labels={"sidekick.service": "dup"})
        key = f"/{scope}/dup-{port}"
        wait_for(lambda: etcd.keys(f"/{scope}/").get(key) == f"192.0.2.1:{port}")
        second = agent_factory("--all", host_ip="192.0.2.2")
        second.wait_log("key held by another owner; left as it is")
        assert etcd.keys(f"/{scope}/") == {key: f"192.0.2.1:{port}"}
        assert first.events("key held by another owner; left as it is") == []

    def test_bad_labels_skip_one_container(self, agent_factory, containers, etcd, scope):
        """A container whose labels try to leave the prefix gets one warning; others carry on."""
        agent = agent_factory()
        evil = containers.run(
            ports=published(free_port()), labels={"sidekick.service": "../../etc/passwd"}
        )
        bad_port = containers.run(
            ports=published(free_port()),
            labels={"sidekick.service": "x", "sidekick.port": "80,http"},
        )
        good = free_port()
        containers.run(ports=published(good), labels={"sidekick.service": "good"})
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/good-{good}": f"127.0.0.1:{good}"})
        warnings = agent.wait_log("container skipped", count=2)
        assert sorted(w["container"] for w in warnings) == sorted([evil.name, bad_port.name])
        assert etcd.keys("/etc") == {}


class TestFaults:
    """The agent survives its peers going away and converges when they return."""

    def test_etcd_outage(self, agent_factory, containers, etcd, scope):
        """etcd stopped while containers start and stop, for longer than the ttl: right within
        seconds of its return. (etcd keeps the lease across its own restart, so the keys do
        not expire meanwhile: the stopped container's key is the agent's to remove.)"""
        address = f"127.0.0.1:{free_port()}"
        agent = agent_factory("--metrics-address", address, ttl=4)
        url = f"http://{address}/metrics"
        keep, gone = free_port(), free_port()
        doomed = containers.run(ports=published(gone), labels={"sidekick.service": "gone"})
        containers.run(ports=published(keep), labels={"sidekick.service": "keep"})
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2)
        etcd.stop()
        dies, starts = events_seen(url, "die"), events_seen(url, "start")
        doomed.stop(timeout=1)
        new = free_port()
        containers.run(ports=published(new), labels={"sidekick.service": "new"})
        wait_for(
            lambda: events_seen(url, "die") > dies and events_seen(url, "start") > starts,
            message="the stop and the start received while etcd is down",
        )
        agent.wait_log("etcd unavailable; retrying with backoff")
        wait_for(  # the agent's own word that a ttl went by with no renewal
            lambda: "no live lease" in requests.get(f"http://{address}/healthz", timeout=5).text,
            timeout=10,
            message="/healthz: no live lease (an outage longer than the ttl)",
        )
        assert agent.process is not None and agent.process.poll() is None, "agent exited"
        etcd.start()
        back = time.monotonic()
        expected = {
            f"/{scope}/keep-{keep}": f"127.0.0.1:{keep}",
            f"/{scope}/new-{new}": f"127.0.0.1:{new}",
        }
        wait_for(lambda: etcd.keys(f"/{scope}/") == expected, timeout=10, message="converged")
        print(f"converged {time.monotonic() - back:.2f}s after etcd returned")
        assert len([e for e in agent.events("etcd unavailable; retrying with backoff")]) == 1

    def test_endpoint_failover(self, agent_factory, containers, etcd, scope):
        """With a dead first endpoint the agent uses the next one."""
        dead = f"http://127.0.0.1:{free_port()}"
        agent_factory(etcd_endpoints=f"{dead},{etcd.url}")
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "f"})
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/f-{port}": f"127.0.0.1:{port}"})


class TestConfiguration:
    """Bad configuration exits 2 with one line naming the option."""

    @pytest.mark.parametrize(
        ("args", "env", "named"),
        [
            (["--ttl", "1"], {}, "--ttl"),
            (["--etcd-endpoints", "127.0.0.1:2379"], {}, "--etcd-endpoints"),
            (["--resync", "0"], {}, "--resync"),
            (["--keepalive-interval", "40"], {}, "--keepalive-interval"),
            (["--key-template", "/elsewhere/{service}"], {}, "--key-template"),
            ([], {"SIDEKICK_TTL": "abc"}, "SIDEKICK_TTL"),
            (["--host-ip", "not-an-ip"], {}, "--host-ip"),
        ],
    )
    def test_bad_option(self, args, env, named, tmp_path):
        """Each bad option: exit 2, one line on stderr that names it."""
        environ = {"PATH": "/usr/bin:/bin", "SIDEKICK_HOST_IP": "192.0.2.1", **env}
        (tmp_path / "none").touch()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "run",
                "--environment-file",
                str(tmp_path / "none"),
                *args,
            ],
            capture_output=True,
            text=True,
            env=environ,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], result.stderr

    def test_no_host_ip_refuses_to_start(self, tmp_path):
        """Without --host-ip, SIDEKICK_HOST_IP or COREOS_PRIVATE_IPV4 the agent will not guess."""
        (tmp_path / "environment").write_text("# nothing here\n")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "run",
                "--environment-file",
                str(tmp_path / "environment"),
            ],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert "--host-ip" in result.stderr and "COREOS_PRIVATE_IPV4" in result.stderr


class TestDockerFaults:
    """The Docker side going away never stops the agent; it reconnects and reconciles."""

    def test_docker_host_honoured(self, agent_factory, containers, etcd, scope, docker_proxy):
        """DOCKER_HOST in the environment picks the Docker engine when --docker-url is unset."""
        agent = agent_factory(env={"DOCKER_HOST": docker_proxy.url})
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "dh"})
        wait_for(lambda: etcd.keys(f"/{scope}/") == {f"/{scope}/dh-{port}": f"127.0.0.1:{port}"})
        docker_proxy.stop()  # the agent noticed the proxy's cut: it was using it
        agent.wait_log("docker event stream ended; reconnecting")

    def test_event_stream_cut(self, agent_factory, containers, etcd, scope, docker_proxy):
        """Stream cut and the socket gone while containers change: right soon after its return."""
        agent = agent_factory("--docker-url", docker_proxy.url)
        stays, goes = free_port(), free_port()
        containers.run(ports=published(stays), labels={"sidekick.service": "stays"})
        doomed = containers.run(ports=published(goes), labels={"sidekick.service": "goes"})
        wait_for(lambda: len(etcd.keys(f"/{scope}/")) == 2)
        docker_proxy.stop()
        doomed.stop(timeout=1)
        new = free_port()
        containers.run(ports=published(new), labels={"sidekick.service": "new"})
        agent.wait_log("docker unavailable; retrying with backoff")  # it tried, in vain
        assert agent.process is not None and agent.process.poll() is None, "agent exited"
        docker_proxy.start()
        back = time.monotonic()
        expected = {
            f"/{scope}/stays-{stays}": f"127.0.0.1:{stays}",
            f"/{scope}/new-{new}": f"127.0.0.1:{new}",
        }
        wait_for(lambda: etcd.keys(f"/{scope}/") == expected, timeout=10, message="converged")
        print(f"converged {time.monotonic() - back:.2f}s after Docker returned")
        assert agent.events("docker event stream ended; reconnecting")
        assert len(agent.events("docker unavailable; retrying with backoff")) == 1


def _healthy_while_ok(containers: Containers, port: int, service: str) -> Any:
    """A web container published on `port` whose healthcheck passes while /tmp/ok exists
    (it does at the start; `rm /tmp/ok` makes it unhealthy within a check)."""
    return containers.run(
        command="sh -c 'touch /tmp/ok; httpd -f -p 80'",
        ports=published(port),
        labels={"sidekick.service": service},
        healthcheck={
            "test": ["CMD", "test", "-e", "/tmp/ok"],
            "interval": 300_000_000,
            "timeout": 1_000_000_000,
            "retries": 1,
            "start_period": 0,
        },
    )
