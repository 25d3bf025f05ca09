"""Keys left on a lease in its last second, or on a lapsing foreign lease (found by the chaos test).

Against the real Docker engine and etcd: a container is running before the agent starts, and
its key already stands on an old lease of 2 s, as a killed run leaves it.
"""

from __future__ import annotations

import pytest

from sidekick.config import Endpoint
from sidekick.store import Store
from tests.conftest import Containers, EtcdServer, free_port, wait_for

pytestmark = pytest.mark.integration


def ttl_reported(etcd: EtcdServer, lease: int) -> bool:
    """False once the lease has under a second left: the JSON gateway omits "TTL": 0."""
    return "TTL" in etcd.post("lease/timetolive", {"ID": lease})


class TestLeaseHandover:
    """A restarted agent keeps or takes back its keys without a gap nobody repairs."""

    def test_a_lease_in_its_last_second_is_resumed_by_keepalive(self, live_etcd: EtcdServer):
        """In its last second a lease reads as gone through time_to_live, yet a keepalive
        renews it: the agent resumes its old lease with a keepalive for that reason."""
        store = Store((Endpoint("http", "127.0.0.1", live_etcd.client_port),), timeout=2)
        old = live_etcd.grant(2)
        wait_for(lambda: not ttl_reported(live_etcd, old), message="under a second left")
        assert store.time_to_live(old) == -1  # the JSON gateway leaves "TTL": 0 out
        assert store.keepalive(old) == 2  # alive after all, and renewed to its full ttl
        assert ttl_reported(live_etcd, old)
        live_etcd.revoke(old)

    def test_key_on_a_lapsing_foreign_lease_comes_back(
        self, agent_factory, containers: Containers, live_etcd: EtcdServer, scope
    ):
        """Our value on another lease (its lease file lost) is ours again once that lease ends."""
        port = free_port()
        containers.run(ports={"80/tcp": ("127.0.0.1", port)}, labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        old = live_etcd.grant(2)
        live_etcd.put(key, f"127.0.0.1:{port}", lease=old)
        agent = agent_factory(ttl=3)  # a fresh lease file: the old lease is not its own
        assert live_etcd.entries(f"/{scope}/")[key][1] == old  # left to its holder meanwhile
        lease = int(agent.events("lease granted")[0]["lease"], 16)  # logged as etcdctl shows it
        # the old lease ends within 2 s; the next keepalive (every ttl/3 = 1 s) re-reads
        wait_for(
            lambda: (
                live_etcd.entries(f"/{scope}/").get(key, ("", 0, 0))[:2]
                == (f"127.0.0.1:{port}", lease)
            ),
            timeout=2 + 1 + 2,
            message=f"{key} on the agent's lease",
        )
