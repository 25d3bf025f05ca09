"""bench/reliability.py's pure part: pytest's JUnit XML, the soak's summary line, the
hypothesis statistics and the cluster test's lines read into the doc's rows, and the doc
rendered from the real template. No server, no clock."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from bench import reliability
from tests import test_chaos

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.5">
<testcase classname="tests.test_cluster.TestCluster" name="test_member_then_leader_killed"
 time="31.20"><system-out>------------------------- Captured Out -------------------------
ttl 6s
etcd right 0.02s after the last change: start
m0 is in use; the leader is m1
etcd right 0.40s after the last change, 1.90s after the fault: m0 (in use) killed
leader is m1 (1234)
etcd right 1.10s after the last change, 2.50s after the fault: m1 (leader) killed
</system-out></testcase>
<testcase classname="tests.test_cluster.TestCluster" name="test_quorum_lost_longer_than_ttl"
 time="25.00"><failure message="AssertionError: etcd right after restart">trace</failure>
<system-out>ttl 4s
etcd right 0.03s after the last change: start
etcd right 0.81s after the last change: restart of two members (6.1s down)
all members healthy 0.90s after their restart
</system-out></testcase>
<testcase classname="tests.test_cluster" name="test_module_level" time="0.01">
<skipped type="pytest.skip" message="no etcd binary">skipped</skipped></testcase>
<testcase classname="tests.test_cluster.TestCluster" name="test_plain" time="1.5"/>
</testsuite></testsuites>
"""

HYPOTHESIS = """
tests/test_properties.py::TestPlanProperties::test_plan_is_idempotent:

  - during reuse phase (0.01 seconds):
    - Typical runtimes: < 1ms, of which < 1ms in data generation
    - 2 passing, 0 failing, and 0 invalid test cases

  - during generate phase (0.69 seconds):
    - Typical runtimes: ~ 0-2 ms, of which ~ 0-1 ms in data generation
    - 298 passing, 0 failing, and 113 invalid test cases

  - Stopped because settings.max_examples=300


tests/test_properties.py::TestKeyConfinement::test_confined_keys_are_safe:

  - during generate phase (0.23 seconds):
    - 200 passing, 0 failing, and 22 invalid test cases

  - Stopped because settings.max_examples=200
"""


def soak_output() -> tuple[str, dict[str, Any]]:
    """What tests/test_chaos.py prints for a small made-up soak, by its own summary()."""
    chaos = test_chaos.Chaos(
        rng=random.Random(1),
        client=None,
        containers=cast(Any, None),
        network="net",
        prefix="/p/",
        etcd=cast(Any, None),
        proxy=cast(Any, None),
        start_agent=cast(Any, None),
        lease_path=Path("/nonexistent/chaos.lease"),
        log=print,
    )
    chaos.faults = Counter(
        {
            "agent_sigkill (lease resumed)": 2,
            "docker_stalled": 1,
            "second_agent (same filter)": 2,
            "second_agent (other filter)": 1,
        }
    )
    chaos.applied = Counter({"create web": 3, "kill": 2})
    chaos.convergence = [(0.05, 1, "docker_stalled", "stall"), (0.31, 2, "etcd_outage", "out")]
    chaos.agent_restarts = [1.2, 1.9]
    chaos.stall_keys = [2]
    chaos.stall_polls = 75
    chaos.refusals = [1.4, 2.0, 1.1]
    chaos.divergences = [
        test_chaos.Divergence(2, "second agent", {}, {}, 7, (), reason="exit 1"),
    ]
    lines = test_chaos.summary(chaos, 4242, 60.0, 3, 61.2, (1.5, 2.5))
    # as the test's say() prints them, pytest's progress dot after the last
    output = "tests/test_chaos.py " + "".join(f"\n[chaos] {line}" for line in [*lines, ""]) + "."
    return output, {"lines": lines}


def results_of(
    output: str, *, quick: bool = True, dirty: list[str] | None = None
) -> dict[str, Any]:
    cluster = reliability.parse_junit(JUNIT, "tests/test_cluster.py")
    props = [
        {"id": i, "outcome": "passed", "time_s": 0.5, "message": "", "stdout": ""}
        for i in reliability.parse_hypothesis(HYPOTHESIS)
    ]
    chaos_test = {
        "id": "tests/test_chaos.py::test_chaos_invariant",
        "outcome": "failed",
        "time_s": 70.0,
        "message": "AssertionError: seed 4242",
        "stdout": "",
    }
    plan = reliability.Plan.make(quick, None, None)

    def suite(name: str, path: str, tests: list[dict[str, Any]], code: int) -> dict[str, Any]:
        return {
            "name": name,
            "path": path,
            "command": f"pytest {path}",
            "exit": code,
            "wall_s": 12.0,
            "tests": tests,
        }

    return {
        "mode": "reliability",
        "command": plan.command(),
        "plan": {"quick": plan.quick, "chaos_seconds": plan.chaos_seconds, "seed": None},
        "machine": {
            "nproc": 2,
            "cpu": "a CPU",
            "memory_gib": 4.0,
            "os": "Debian",
            "kernel": "6.1",
            "docker": "20.10",
            "etcd": "3.5.1",
            "python": "3.11",
            "sidekick": "0.1.0 (abc1234)",
            "commit": "abc1234",
            "date": "2026-01-01 00:00 UTC",
            "load_start": 1.0,
            "load_end": 2.0,
        },
        "dirty": dirty or [],
        "wall_s": 300.0,
        "suites": [
            suite("properties", "tests/test_properties.py", props, 0),
            suite("cluster", "tests/test_cluster.py", cluster, 1),
            suite("chaos", "tests/test_chaos.py", [chaos_test], 1),
        ],
        "chaos": reliability.parse_chaos_summary(output),
        "chaos_lines": reliability.chaos_lines(output),
        "hypothesis": reliability.parse_hypothesis(HYPOTHESIS),
        "docker_timeout_s": 10.0,
    }


def test_junit_rows() -> None:
    rows = {r["id"]: r for r in reliability.parse_junit(JUNIT, "tests/test_cluster.py")}
    member = rows["tests/test_cluster.py::TestCluster::test_member_then_leader_killed"]
    assert member["outcome"] == "passed"
    assert member["time_s"] == 31.2
    assert "m0 (in use) killed" in member["stdout"]
    quorum = rows["tests/test_cluster.py::TestCluster::test_quorum_lost_longer_than_ttl"]
    assert (quorum["outcome"], quorum["message"]) == (
        "failed",
        "AssertionError: etcd right after restart",
    )
    skipped = rows["tests/test_cluster.py::test_module_level"]
    assert (skipped["outcome"], skipped["message"]) == ("skipped", "no etcd binary")
    assert rows["tests/test_cluster.py::TestCluster::test_plain"]["outcome"] == "passed"


def test_the_soaks_summary_line_is_read_back() -> None:
    output, _ = soak_output()
    summary = reliability.parse_chaos_summary(output)
    assert summary is not None
    assert summary["seed"] == 4242
    assert summary["faults"]["docker_stalled"] == 1
    assert summary["convergence"]["worst_s"] == 0.31
    assert summary["convergence"]["median_s"] == pytest.approx(0.18)
    assert summary["agent_restart_worst_s"] == 1.9
    assert summary["divergences"][0]["check"] == "second agent"
    assert summary["settings"]["ttl_s"] == test_chaos.TTL
    assert summary["settings"]["stall_s"] == test_chaos.STALL_SECONDS
    lines = reliability.chaos_lines(output)
    assert lines[0].startswith("[chaos] seed 4242; 3 rounds")
    assert not [line for line in lines if "summary" in line or line.strip() == "[chaos] ."]


def test_no_summary_line() -> None:
    assert reliability.parse_chaos_summary("[chaos] seed 1\nF\n") is None


def test_hypothesis_counts_summed_over_phases() -> None:
    stats = reliability.parse_hypothesis(HYPOTHESIS)
    idempotent = stats["tests/test_properties.py::TestPlanProperties::test_plan_is_idempotent"]
    assert idempotent == {
        "passing": 300,
        "failing": 0,
        "invalid": 113,
        "stopped": "settings.max_examples=300",
    }
    assert len(stats) == 2


def test_cluster_figures() -> None:
    rows = reliability.parse_junit(JUNIT, "tests/test_cluster.py")
    figures = reliability.cluster_figures(rows[0]["stdout"])
    assert figures["ttl_s"] == 6
    assert [c["after_fault_s"] for c in figures["converged"]] == [None, 1.9, 2.5]
    assert not [line for line in figures["lines"] if line.startswith("---")]


def test_claims_carry_this_runs_figures() -> None:
    output, _ = soak_output()
    rows = reliability.claim_rows(results_of(output))
    by_test = {test: result for _, test, result in rows}
    soak = by_test["`tests/test_chaos.py::test_chaos_invariant`"]
    assert soak.startswith("**failed**: **1 divergence** in a 61 s soak, seed 4242")
    assert by_test["the same soak (`docker_stalled`)"].startswith(
        "0 lost: 1 stall, 2 keys watched through it, 75 reads of etcd"
    )
    assert by_test["the same soak (`second_agent`)"].startswith("1 broken of 3 second agents")
    member = by_test["`tests/test_cluster.py::TestCluster::test_member_then_leader_killed`"]
    assert (
        member
        == "passed: etcd exact at most 1.10 s after the last container change, 2.50 s after a kill"
    )
    quorum = by_test["`tests/test_cluster.py::TestCluster::test_quorum_lost_longer_than_ttl`"]
    assert quorum.startswith("**failed**: exact 0.81 s after")
    assert "(6.1 s without quorum, ttl 4 s)" in quorum
    assert by_test["`tests/test_core.py`"] == "**not run**: 0 passed of 0"
    assert by_test["`tests/test_properties.py` (hypothesis)"].endswith("500 inputs, 0 failing")


def test_the_doc_is_filled_from_the_run() -> None:
    output, _ = soak_output()
    text = reliability.render(results_of(output), reliability.TEMPLATE.read_text())
    assert "{{" not in text
    assert "<!--" not in text.split("\n", 1)[0]
    assert text.startswith("# Reliability\n")
    assert "at commit `abc1234` on 2026-01-01 00:00 UTC" in text
    assert "**Quick run** (`--quick`): a 60 s soak." in text
    assert "./bench/run --reliability --quick" in text
    assert "| **divergences** | **1** |" in text
    assert "SIDEKICK_CHAOS_SEED=4242" in text
    assert f"ttl {test_chaos.TTL:g} s" in text
    assert (
        "`tests/test_cluster.py::TestCluster::test_quorum_lost_longer_than_ttl`: **failed**" in text
    )
    assert "uncommitted" not in text.split("## The agent under test")[0]


def test_a_dirty_tree_is_said_at_the_top() -> None:
    output, _ = soak_output()
    text = reliability.render(
        results_of(output, quick=False, dirty=["sidekick/loop.py"]),
        reliability.TEMPLATE.read_text(),
    )
    head = text.split("## The agent under test")[0]
    assert "**Run from a working tree with uncommitted changes** (`sidekick/loop.py`)" in head
    assert "Full run: a 300 s soak." in head


def test_an_unknown_placeholder_is_an_error() -> None:
    output, _ = soak_output()
    with pytest.raises(KeyError, match="nothing_like_this"):
        reliability.render(results_of(output), "# R\n{{nothing_like_this}}\n")


def test_command_names_what_differs_from_the_default() -> None:
    assert reliability.Plan.make(False, None, None).command() == "./bench/run --reliability"
    assert reliability.Plan.make(True, 90, 7).command() == (
        "./bench/run --reliability --quick --chaos-seconds 90 --seed 7"
    )
