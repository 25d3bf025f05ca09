"""A key left on a dying lease must come back on the agent's own (found by tests/test_chaos.py).

The agent in-process against the real etcd, with a Docker source that holds one running
container and a silent events stream, so the timing around the old lease's last second is
ours to choose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.agent import Agent
from sidekick.config import Config, Endpoint
from sidekick.leasefile import LeaseFile
from sidekick.model import Container, PortBinding
from sidekick.store import Store
from tests.conftest import EtcdServer, wait_for

pytestmark = pytest.mark.integration

VALUE = "127.0.0.1:8001"


class StillDocker:
    """One running, opted-in container and an events stream on which nothing happens."""

    def __init__(self) -> None:
        self.container = Container(
            id="c" * 64,
            name="web",
            image="busybox",
            labels={"sidekick.enable": "true", "sidekick.service": "web"},
            running=True,
            paused=False,
            health=None,
            host_network=False,
            bindings=(PortBinding(80, "127.0.0.1", 8001),),
            exposed_ports=(),
        )
        self._closed = threading.Event()

    def running_containers(self) -> list[Container]:
        return [self.container]

    def inspect(self, container_id: str) -> Container | None:
        return self.container if container_id == self.container.id else None

    def open_events(self) -> Iterator[object]:
        self._closed.clear()

        def follow() -> Iterator[object]:
            self._closed.wait()
            yield from ()

        return follow()

    def close_events(self) -> None:
        self._closed.set()


@pytest.fixture(name="run_agent")
def _run_agent(live_etcd: EtcdServer, scope: str, tmp_path: Path) -> Iterator[object]:
    agents: list[tuple[Agent, threading.Thread]] = []

    def start(lease_file: Path) -> Agent:
        config = Config(
            prefix=f"/{scope}",
            etcd_endpoints=(Endpoint("http", "127.0.0.1", live_etcd.client_port),),
            etcd_timeout=1.0,
            ttl=3,
            keepalive_interval=1.0,
            resync=60,
            node="n1",
        )
        agent = Agent(
            config,
            Store(config.etcd_endpoints, config.etcd_timeout),
            StillDocker(),  # type: ignore[arg-type]
            lease_file=LeaseFile(lease_file),
        )
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        agents.append((agent, thread))
        assert agent.reconciled.wait(10), "no first reconcile"
        return agent

    yield start
    for agent, thread in agents:
        agent.stop()
        thread.join(10)


def ttl_reported(etcd: EtcdServer, lease: int) -> bool:
    """False once the lease has under a second left: the JSON gateway omits "TTL": 0."""
    return "TTL" in etcd.post("lease/timetolive", {"ID": lease})


def test_resumes_its_lease_in_the_last_second(run_agent, live_etcd: EtcdServer, scope, tmp_path):
    """Restarted with under a second left on its old lease, the agent resumes it: key intact."""
    key = f"/{scope}/web-8001"
    old = live_etcd.grant(2)
    live_etcd.put(key, VALUE, lease=old)  # what the killed run left, and its lease file
    LeaseFile(tmp_path / "lease").write(old)
    wait_for(lambda: not ttl_reported(live_etcd, old), message="under a second left")
    before = live_etcd.entries(f"/{scope}/")
    assert before[key][:2] == (VALUE, old)  # the lease and its key still stand
    agent = run_agent(tmp_path / "lease")
    time.sleep(1.5)  # past the old lease's end, had the agent not renewed it
    assert agent.lease == old, f"granted {agent.lease} although {old} was alive"
    assert live_etcd.entries(f"/{scope}/") == before  # never gone, never rewritten


def test_key_on_a_lapsing_foreign_lease_comes_back(
    run_agent, live_etcd: EtcdServer, scope, tmp_path
):
    """Our value on another lease (a run whose lease file is lost) is ours again once it lapses."""
    key = f"/{scope}/web-8001"
    old = live_etcd.grant(2)
    live_etcd.put(key, VALUE, lease=old)
    agent = run_agent(tmp_path / "fresh-lease")
    assert live_etcd.entries(f"/{scope}/")[key][:2] == (VALUE, old)  # left to its holder
    wait_for(lambda: key not in live_etcd.keys(f"/{scope}/"), timeout=4, message="old lease ends")
    gone = live_etcd.keys(f"/{scope}/")
    wait_for(
        lambda: live_etcd.entries(f"/{scope}/").get(key, ("", 0, 0))[:2] == (VALUE, agent.lease),
        timeout=agent.config.keepalive_interval + 2,
        message=f"{key} back on the agent's lease (gone: {gone})",
    )
