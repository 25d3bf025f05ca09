"""Where the agent's CPU and memory go, for the realistic section's explanation of its figures.

profile_round(): one more round one after another, of the host-port kinds, with the agent run
under bench/agentprofile.py (each thread's CPU clock, each stage's CPU time around its entry
point): the CPU per container by thread, by stage and call, and the calls each container
costs. import_floor_by_package(): the PSS each dependency adds to a fresh interpreter,
imported in the agent's own order.

Runs on: the bench's main thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, cpu_ticks
from tests.conftest import AgentProcess

# (row, modules): imported in this order, each row the PSS its imports add to the rows above.
# The libraries are imported as sidekick/__init__.py imports them (its order, and without
# what it leaves out: the same stand-ins, below); then sidekick's own modules.
IMPORT_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the interpreter (python -c pass)", ()),
    (
        "standard library the agent uses",
        ("json", "threading", "queue", "socket", "ssl", "http.client", "logging"),
    ),
    ("structlog", ("structlog",)),
    ("requests (urllib3, idna, certifi)", ("requests",)),
    ("docker (docker-py)", ("docker",)),
    ("etcd3gw (futurist, pbr, debtcollector, wrapt)", ("etcd3gw.client",)),
    ("tenacity", ("tenacity",)),
    ("typer (click)", ("typer",)),
    ("sidekick's own modules (sidekick.cli and what it imports)", ("sidekick.cli",)),
)

_MEASURE = """
import importlib, json, sys, types, warnings
groups = json.loads(sys.argv[1])
class Stand_in(types.ModuleType):  # as sidekick/__init__.py's, but raises if touched
    pass
left_out = {"rich": None, "asyncio": Stand_in("asyncio"), "charset_normalizer": None,
            "chardet": None}
sys.modules.update(left_out)
warnings.simplefilter("ignore")
def pss():
    with open('/proc/self/smaps_rollup') as smaps:
        for line in smaps:
            if line.startswith('Pss:'):
                return int(line.split()[1])
rows = []
for name, modules in groups:
    if any(module.startswith("sidekick") for module in modules):
        for left in left_out:
            del sys.modules[left]
    for module in modules:
        importlib.import_module(module)
    rows.append([name, pss(), len(sys.modules)])
print(json.dumps({"rows": rows, "modules": sorted(sys.modules)}))
"""


def _measure_import_groups() -> dict[str, Any]:
    """{rows: [[group, total PSS kB, total modules]], modules: every module loaded at the end}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(IMPORT_GROUPS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    measured: dict[str, Any] = json.loads(done.stdout)
    return measured


class ProfiledAgent(AgentProcess):
    """`sidekick run` under bench/agentprofile.py, which writes its profile to profile_path."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        super().__init__(args, log_path, env)
        self.profile_path = log_path.with_suffix(".profile.json")

    def start(self) -> ProfiledAgent:
        profiler = [sys.executable, "-m", "bench.agentprofile", str(self.profile_path)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*profiler, "run", *self.args],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        return self


def import_floor_by_package() -> list[dict[str, Any]]:
    """[{group, pss_mb (added), modules (added), total_mb}] in IMPORT_GROUPS order."""
    rows, out, pss, modules = _measure_import_groups()["rows"], [], 0, 0
    for name, total_kb, total_modules in rows:
        out.append(
            {
                "group": name,
                "pss_mb": (total_kb - pss) / 1024,
                "modules": total_modules - modules,
                "total_mb": total_kb / 1024,
            }
        )
        pss, modules = total_kb, total_modules
    return out


def per_container(groups: dict[str, dict[str, Any]], containers: int) -> dict[str, Any]:
    """The window per container: each thread group's CPU (ms), each of its stages' CPU (ms)
    and calls by call, and the rest (its CPU under no stage)."""
    threads = {}
    for name, group in sorted(groups.items(), key=lambda item: -item[1]["cpu_s"]):
        cpu = group["cpu_s"] * 1000 / containers
        stages = {
            stage: {
                call: {"cpu_ms": seconds * 1000 / containers, "calls": calls / containers}
                for call, (seconds, calls) in sorted(by_call.items())
            }
            for stage, by_call in sorted(group["stages"].items())
        }
        staged = sum(c["cpu_ms"] for by_call in stages.values() for c in by_call.values())
        threads[name] = {"cpu_ms": cpu, "stages": stages, "rest_ms": max(0.0, cpu - staged)}
    return {
        "containers": containers,
        "cpu_ms": sum(t["cpu_ms"] for t in threads.values()),
        "threads": threads,
    }


def profile_round(agent: ProfiledAgent, run_round: Callable[[], int]) -> dict[str, Any]:
    """Mark the window around run_round() (which returns its containers) and read what the
    agent wrote of it."""
    assert agent.process is not None
    pid, out_path = agent.process.pid, agent.profile_path
    ticks = cpu_ticks(pid)
    os.kill(pid, signal.SIGUSR2)
    containers = run_round()
    os.kill(pid, signal.SIGUSR2)
    ticks = cpu_ticks(pid) - ticks
    deadline = time.monotonic() + 30
    while not out_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    out = per_container(json.loads(out_path.read_text()), containers)
    out["process_cpu_ms"] = ticks / CLK_TCK * 1000 / containers  # utime + stime, all threads
    return out
