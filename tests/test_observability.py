"""The agent seen from outside: Prometheus metrics, /healthz, systemd notify, dry runs."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from sidekick.reconcile import SETTLE_AFTER
from tests.conftest import free_port, metric, wait_for

pytestmark = pytest.mark.integration


def published(port: int) -> dict[str, tuple[str, int]]:
    return {"80/tcp": ("127.0.0.1", port)}


class TestMetrics:
    """--metrics-address serves numbers that follow the containers."""

    def test_numbers_follow_containers(self, agent_factory, containers, scope):
        """Starts and stops move registrations, events, writes and deletes."""
        address = f"127.0.0.1:{free_port()}"
        agent_factory("--metrics-address", address)
        url = f"http://{address}/metrics"
        assert metric(url, "sidekick_registrations") == 0
        a = containers.run(ports=published(free_port()), labels={"sidekick.service": "m"})
        containers.run(ports=published(free_port()), labels={"sidekick.service": "m"})
        wait_for(lambda: metric(url, "sidekick_registrations") == 2, message="2 registrations")
        assert metric(url, "sidekick_docker_events_total", 'action="start"') >= 2
        assert metric(url, "sidekick_etcd_writes_total", 'op="put"') == 2
        a.stop(timeout=1)
        wait_for(lambda: metric(url, "sidekick_registrations") == 1, message="1 registration")
        assert metric(url, "sidekick_etcd_writes_total", 'op="delete"') == 1
        assert metric(url, "sidekick_docker_events_total", 'action="die"') >= 1
        assert metric(url, "sidekick_reconcile_duration_seconds_count") >= 1
        wait_for(lambda: metric(url, "sidekick_keepalive_rtt_seconds_count") >= 1, timeout=5)
        assert abs(metric(url, "sidekick_last_keepalive_timestamp_seconds") - time.time()) < 10

    def test_request_times_and_event_lag(self, agent_factory, containers, etcd, scope):
        """Each Docker and etcd request is timed by call, each event's lag from dockerd's own
        time is observed, and a container's `die` after the `kill` that withdrew it costs no etcd
        request."""
        address = f"127.0.0.1:{free_port()}"
        agent_factory("--metrics-address", address, "--resync", "3600")
        url = f"http://{address}/metrics"
        wait_for(  # the reconcile SETTLE_AFTER the stream connected (its reads are Txns) first
            lambda: metric(url, "sidekick_reconcile_duration_seconds_count") >= 2,
            timeout=SETTLE_AFTER + 20,
            message="the settle reconcile",
        )
        port = free_port()
        container = containers.run(ports=published(port), labels={"sidekick.service": "t"})
        wait_for(lambda: metric(url, "sidekick_registrations") == 1, message="registered")
        assert metric(url, "sidekick_docker_request_seconds_count", 'call="list-running"') >= 1
        assert metric(url, "sidekick_etcd_request_seconds_count", 'call="kv/txn"') >= 1
        assert metric(url, "sidekick_etcd_request_seconds_count", 'call="lease/grant"') == 1
        lags = metric(url, "sidekick_docker_event_lag_seconds_count")
        assert lags >= 1  # the container's start at least
        assert 0 < metric(url, "sidekick_docker_event_lag_seconds_sum") < 5 * lags  # seconds
        container.stop(timeout=1)
        wait_for(lambda: metric(url, "sidekick_registrations") == 0, message="withdrawn")
        txns = metric(url, "sidekick_etcd_request_seconds_count", 'call="kv/txn"')
        container.remove()
        marker = free_port()  # handled after the die: events come in order
        containers.run(ports=published(marker), labels={"sidekick.service": "marker"})
        wait_for(lambda: f"/{scope}/marker-{marker}" in etcd.keys(f"/{scope}/"), message="marker")
        assert metric(url, "sidekick_etcd_request_seconds_count", 'call="kv/txn"') == txns + 1

    def test_healthz_follows_etcd(self, agent_factory, etcd):
        """/healthz: 200 while etcd answers, 503 with the reason when it stops, 200 again."""
        address = f"127.0.0.1:{free_port()}"
        agent_factory("--metrics-address", address, ttl=3)
        url, metrics = f"http://{address}/healthz", f"http://{address}/metrics"
        assert requests.get(url, timeout=5).status_code == 200
        assert metric(metrics, "sidekick_peer_up", 'peer="etcd"') == 1
        etcd.stop()
        reason = wait_for(
            lambda: (r := requests.get(url, timeout=5)).status_code == 503 and r.text,
            message="503 while etcd is down",
        )
        assert "etcd unreachable" in reason
        assert metric(metrics, "sidekick_peer_up", 'peer="etcd"') == 0
        etcd.start()
        wait_for(lambda: requests.get(url, timeout=5).status_code == 200, message="200 again")
        assert metric(metrics, "sidekick_peer_up", 'peer="etcd"') == 1

    def test_state_gauges_are_current_when_scraped(self, agent_factory, docker_proxy):
        """What the alerting rules read is current at every scrape, with no /healthz call in
        between: the lease's TTL, Docker's events stream up or down, the seconds a Docker
        request has waited, and each supervised thread's restarts counted from 0."""
        address = f"127.0.0.1:{free_port()}"
        agent = agent_factory("--metrics-address", address, "--docker-url", docker_proxy.url)
        url = f"http://{address}/metrics"
        assert metric(url, "sidekick_lease_ttl_seconds") == 6
        assert metric(url, "sidekick_peer_up", 'peer="etcd"') == 1
        wait_for(lambda: metric(url, "sidekick_peer_up", 'peer="docker"') == 1, message="docker")
        text = requests.get(url, timeout=5).text
        for thread in ("lease", "look-ahead", "docker-events"):
            assert f'sidekick_thread_restarts_total{{thread="{thread}"}} 0.0' in text, thread
        assert metric(url, "sidekick_docker_stalled_seconds") == 0
        docker_proxy.stall()
        try:
            agent.signal(signal.SIGHUP)  # a resync: a Docker request that gets no answer
            wait_for(
                lambda: metric(url, "sidekick_docker_stalled_seconds") >= 2,
                message="the stall in /metrics",
            )
        finally:
            docker_proxy.resume()
        wait_for(lambda: metric(url, "sidekick_docker_stalled_seconds") == 0, message="answered")
        docker_proxy.stop()
        wait_for(
            lambda: metric(url, "sidekick_peer_up", 'peer="docker"') == 0,
            message="the events stream down in /metrics",
        )
        docker_proxy.start()
        wait_for(
            lambda: metric(url, "sidekick_peer_up", 'peer="docker"') == 1,
            timeout=30,
            message="the events stream back",
        )

    def test_bad_metrics_address(self, agent_factory):
        """A malformed --metrics-address exits 2 naming the option."""
        agent = agent_factory("--metrics-address", "localhost", wait_ready=False)
        assert agent.wait() == 2
        assert "--metrics-address" in agent.log_path.read_text()


class TestSystemdNotify:
    """Under systemd the agent says READY, feeds the watchdog, and says STOPPING."""

    def test_ready_watchdog_stopping(self, agent_factory, tmp_path: Path):
        """READY=1 after the first reconcile, then WATCHDOG=1, then STOPPING=1 on SIGTERM."""
        path = tmp_path / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(10)
        agent = agent_factory(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []

        def receive_until(field: str) -> None:
            while not any(field in m.split("\n") for m in messages):
                messages.append(sock.recv(4096).decode())

        receive_until("READY=1")
        receive_until("WATCHDOG=1")
        agent.signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert agent.wait() == 0
        order = [
            next(i for i, m in enumerate(messages) if field in m.split("\n"))
            for field in ("READY=1", "WATCHDOG=1", "STOPPING=1")
        ]
        assert order == sorted(order)
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages)
        sock.close()


class TestReadyWithoutEtcd:
    """A node booting while etcd is down: READY=1 all the same, STATUS= says why nothing is
    announced, and the agent keeps trying (no start timeout, no restart loop)."""

    def test_ready_while_etcd_is_unreachable(self, agent_factory, tmp_path: Path):
        path = tmp_path / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(15)
        agent = agent_factory(
            "--etcd-timeout",
            "0.5",
            etcd_endpoints=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            env={"NOTIFY_SOCKET": str(path)},
            wait_ready=False,
        )
        message = ""
        while "READY=1" not in message.split("\n"):
            message = sock.recv(4096).decode()
        assert "etcd unreachable" in message
        assert agent.process is not None and agent.process.poll() is None
        assert agent.events("reconciled") == []
        sock.close()


class TestDryRun:
    """--dry-run prints what it would write and writes nothing."""

    def test_run_dry(self, agent_factory, containers, etcd, scope):
        """The agent in a dry run prints the put and the delete; etcd stays empty."""
        agent = agent_factory("--dry-run")
        port = free_port()
        container = containers.run(ports=published(port), labels={"sidekick.service": "d"})
        key = f"/{scope}/d-{port}"
        wait_for(lambda: f"would put {key} = 127.0.0.1:{port}" in agent.log_path.read_text())
        assert etcd.keys(f"/{scope}/") == {}
        container.stop(timeout=1)
        wait_for(lambda: f"would delete {key}" in agent.log_path.read_text())
        assert etcd.keys(f"/{scope}/") == {}
        # the log says what it would do, never that it did it
        assert agent.events("would register") and agent.events("would deregister")
        assert agent.events("would grant a lease")
        for done in ("registered", "deregistered", "lease granted", "lease revoked; keys removed"):
            assert not agent.events(done)
