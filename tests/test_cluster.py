"""The agent against a real three-member etcd cluster on loopback.

The agent gets all three client URLs. Killing the member it talks to, then the leader, must
not lose a key, leave one stale or let the lease lapse; losing quorum for longer than the ttl
must end, within seconds of quorum's return, with etcd holding exactly the registrations of
the running opted-in containers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Containers, free_port, wait_for
from tests.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.integration

CONVERGE_WITHIN = 10.0  # seconds from a fault's end to etcd being right again


@pytest.fixture(name="etcd_cluster")
def _etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()


class Backends:
    """Opted-in web containers on the test's own network, each on its own loopback port."""

    def __init__(self, containers: Containers, network: str, prefix: str) -> None:
        self.containers = containers
        self.network = network
        self.prefix = prefix
        self.running: dict[str, Any] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> Any:
        self.ports[name] = free_port()
        self.running[name] = self.containers.run(
            ports={"80/tcp": ("127.0.0.1", self.ports[name])},
            labels={"sidekick.service": name},
            network=self.network,
        )
        return self.running[name]

    def stop(self, name: str) -> None:
        self.running.pop(name).stop(timeout=1)

    def kill(self, name: str) -> None:
        self.running.pop(name).kill()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}-{self.ports[name]}"

    def expected(self) -> dict[str, str]:
        return {self.key(n): f"127.0.0.1:{self.ports[n]}" for n in self.running}


def converge(
    cluster: EtcdCluster,
    prefix: str,
    expected: dict[str, str],
    what: str,
    fault_at: float | None = None,
) -> float:
    """Wait until a live member holds exactly `expected`; print and return how long it took.

    Timed from the call (the last container change); with fault_at, also from the fault.
    """
    started = time.monotonic()

    def right() -> bool:
        try:
            return cluster.keys(prefix) == expected
        except Exception:  # a member still electing answers 5xx
            return False

    wait_for(right, timeout=CONVERGE_WITHIN, interval=0.02, message=f"etcd right after {what}")
    now = time.monotonic()
    since_fault = f", {now - fault_at:.2f}s after the fault" if fault_at is not None else ""
    print(f"etcd right {now - started:.2f}s after the last change{since_fault}: {what}")
    return now - started


class TestCluster:
    def test_member_then_leader_killed(
        self, agent_factory, containers, own_network, etcd_cluster: EtcdCluster, scope
    ):
        """Kill the member in use, then the leader: writes and keepalives go on elsewhere."""
        ttl = 6
        print(f"ttl {ttl}s")
        agent = agent_factory(etcd_endpoints=etcd_cluster.endpoints, ttl=ttl)
        prefix = f"/{scope}/"
        web = Backends(containers, own_network, prefix)
        web.start("steady")
        web.start("a")
        converge(etcd_cluster, prefix, web.expected(), "start")
        steady = etcd_cluster.entries(prefix)[web.key("steady")]  # value, lease, mod_revision
        lease = steady[1]

        # 1. The member the agent talks to (the first of its endpoints) dies.
        first = etcd_cluster.members[0]
        print(f"{first.name} is in use; the leader is {etcd_cluster.leader().name}")
        first.kill()
        killed = time.monotonic()
        web.start("b")
        web.stop("a")
        converge(etcd_cluster, prefix, web.expected(), f"{first.name} (in use) killed", killed)
        time.sleep(ttl + 1)  # the lease lives on only if keepalives reach the others
        assert etcd_cluster.time_to_live(lease) > 0
        assert etcd_cluster.keys(prefix) == web.expected()
        first.start()

        # 2. The leader dies (with all three members up again).
        leader = etcd_cluster.leader()
        print(f"leader is {leader.name} ({leader.member_id})")
        leader.kill()
        killed = time.monotonic()
        web.start("c")
        web.kill("b")
        converge(etcd_cluster, prefix, web.expected(), f"{leader.name} (leader) killed", killed)
        new_leader = etcd_cluster.leader()
        assert new_leader is not leader
        time.sleep(ttl + 1)
        assert etcd_cluster.time_to_live(lease) > 0
        web.start("d")
        converge(etcd_cluster, prefix, web.expected(), "a start once the new leader settled")
        leader.start()

        # No key lost: the steady one was never deleted, rewritten or moved to another lease.
        entries = etcd_cluster.entries(prefix)
        assert entries[web.key("steady")] == steady
        assert {entry[1] for entry in entries.values()} == {lease}
        assert len(agent.events("lease granted")) == 1
        assert not agent.events("lease expired; granting a new one and putting the keys back")
        assert agent.process is not None and agent.process.poll() is None

    def test_quorum_lost_longer_than_ttl(
        self, agent_factory, containers, own_network, etcd_cluster: EtcdCluster, scope
    ):
        """Two of three down past the ttl while containers change: exact within seconds."""
        ttl = 4
        print(f"ttl {ttl}s")
        agent = agent_factory(etcd_endpoints=etcd_cluster.endpoints, ttl=ttl)
        prefix = f"/{scope}/"
        web = Backends(containers, own_network, prefix)
        web.start("keep")
        web.start("gone")
        converge(etcd_cluster, prefix, web.expected(), "start")
        survivor = etcd_cluster.members[2]
        down = etcd_cluster.members[:2]  # the member in use and one more: no quorum
        for member in down:
            member.kill()
        lost = time.monotonic()
        web.stop("gone")
        web.start("new")
        web.start("brief")
        time.sleep(1)
        web.stop("brief")  # started and stopped inside the outage
        time.sleep(max(0.0, ttl + 2 - (time.monotonic() - lost)))
        assert not survivor.healthy(), "one member of three must have no quorum"
        assert agent.process is not None and agent.process.poll() is None, "agent exited"
        outage = time.monotonic() - lost
        for member in down:
            member.launch()
        back = time.monotonic()
        took = converge(
            etcd_cluster, prefix, web.expected(), f"restart of two members ({outage:.1f}s down)"
        )
        assert took < CONVERGE_WITHIN
        wait_for(lambda: all(m.healthy() for m in etcd_cluster.members), timeout=20)
        print(f"all members healthy {time.monotonic() - back:.2f}s after their restart")

        # It stays right past another ttl (keepalives flow), and follows new events.
        time.sleep(ttl + 1)
        assert etcd_cluster.keys(prefix) == web.expected()
        web.start("late")
        web.stop("keep")
        converge(etcd_cluster, prefix, web.expected(), "changes after the outage")
        entries = etcd_cluster.entries(prefix)
        assert len({entry[1] for entry in entries.values()}) == 1  # every key on one lease
        assert etcd_cluster.time_to_live(next(iter(entries.values()))[1]) > 0
        assert len(agent.events("etcd unavailable; retrying with backoff")) >= 1
