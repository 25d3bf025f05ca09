"""The agent against a real three-member etcd cluster on loopback.

The agent gets all three client URLs. Killing the member it talks to, then the leader, must
not lose a key, leave one stale or let the lease lapse; losing quorum for longer than the ttl
must end, within seconds of quorum's return, with etcd holding exactly the registrations of
the running opted-in containers.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Containers, EtcdServer, free_port, wait_for

pytestmark = pytest.mark.integration

CONVERGE_WITHIN = 10.0  # seconds from a fault's end to etcd being right again


class EtcdMember(EtcdServer):
    """One member of a static loopback cluster: its own client and peer ports and data dir."""

    def __init__(self, name: str, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.name = name
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = ""  # set by EtcdCluster once every member has its ports
        self.member_id = ""  # etcd's id, a decimal string as the JSON gateway writes it

    def launch(self) -> None:
        """Start the process without waiting: a lone member of a cluster has no quorum."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--name",
                    self.name,
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    self.url,
                    "--advertise-client-urls",
                    self.url,
                    "--listen-peer-urls",
                    self.peer_url,
                    "--initial-advertise-peer-urls",
                    self.peer_url,
                    "--initial-cluster",
                    self.initial_cluster,
                    "--initial-cluster-state",
                    "new",  # ignored once the data dir holds a WAL, so a restart rejoins
                    "--initial-cluster-token",
                    "sidekick-test-cluster",
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        self.launch()
        wait_for(self.healthy, timeout=20, message=f"member {self.name} at {self.url}")

    def kill(self) -> None:
        """SIGKILL: the member vanishes mid-request, as on a crashed node."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None

    def status(self) -> dict[str, Any]:
        """POST /v3/maintenance/status: header.member_id, leader, raftTerm, ..."""
        answer = self.post("maintenance/status", {})
        self.member_id = str(answer["header"]["member_id"])
        return answer


class EtcdCluster:
    """Three members on loopback with distinct client and peer ports and their own data dirs."""

    def __init__(self, base: Path, size: int = 3) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(f"m{i}", base / f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> str:
        """The client URLs in member order, as --etcd-endpoints takes them."""
        return ",".join(m.url for m in self.members)

    def start(self) -> None:
        for member in self.members:
            if not member.alive:
                member.launch()
        for member in self.members:
            wait_for(member.healthy, timeout=30, message=f"member {member.name} healthy")
            member.status()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def live(self) -> list[EtcdMember]:
        return [m for m in self.members if m.alive]

    def any_live(self) -> EtcdMember:
        return self.live()[-1]

    def leader(self) -> EtcdMember:
        """The member whose id is the leader that a live member reports."""

        def find() -> EtcdMember | None:
            for member in self.live():
                with contextlib.suppress(Exception):  # no leader yet: 5xx or a timeout
                    leader = str(member.status().get("leader", ""))
                    for candidate in self.live():
                        if candidate.member_id == leader:
                            return candidate
            return None

        return wait_for(find, timeout=15, message="a leader among the live members")

    def keys(self, prefix: str) -> dict[str, str]:
        return self.any_live().keys(prefix)

    def entries(self, prefix: str) -> dict[str, tuple[str, int, int]]:
        return self.any_live().entries(prefix)

    def time_to_live(self, lease: int) -> int:
        return int(self.any_live().post("lease/timetolive", {"ID": lease}).get("TTL", -1))


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
