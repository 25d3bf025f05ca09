"""`./bench/run --resync-cost`: what one resync costs the agent with 0, 20,000 and 100,000 keys
of other nodes under its prefix.

A real `sidekick run` (resync every 2 s) announces 20 busybox containers through a
byte-counting TCP proxy in front of etcd's client port. After K resyncs with the prefix
holding only its own keys, other "nodes" put 20,000 keys under the same prefix (400 leases of
50 keys, transactions of 128 puts), then 80,000 more (100,000 on 2,000 leases), and K
resyncs are measured again at each size. Per resync: agent CPU seconds (utime + stime from
/proc/PID/stat), bytes the agent read from etcd (the proxy), the bytes etcd's gRPC server
sent (its own counter), and etcd requests by method (grpc_server_started_total).
"""

from __future__ import annotations

import base64
import io
import os
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from bench import report
from bench.common import (
    CLK_TCK,
    ROOT,
    ByteCounter,
    cpu_ticks,
    diff_counts,
    etcd_requests,
    etcd_sent_bytes,
)
from tests.conftest import AgentProcess

if TYPE_CHECKING:
    from bench.harness import Bench

TXN_OPS = 128  # etcd's default --max-txn-ops
KEEPALIVE_PATH = "/v3/lease/keepalive"
RATIO_LIMIT = 1.2  # issue #10: cost with 100,000 foreign keys / cost with none


@dataclass(frozen=True)
class ResyncPlan:
    """How the resync cost is measured."""

    containers: int = 20
    resync: float = 2.0  # the agent's --resync
    resyncs: int = 60  # K: resyncs measured at each size
    sizes: tuple[int, ...] = (0, 20_000, 100_000)
    keys_per_node: int = 50
    ttl: int = 30  # the agent's; the foreign leases live FOREIGN_TTL
    foreign_ttl: int = 3600


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- other nodes' keys --------------------------------------------------------------------


def _post(url: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{url}/v3/{path}", json=payload, timeout=30)
    answer.raise_for_status()
    return dict(answer.json())


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def foreign_puts(
    url: str, prefix: str, nodes: range, per_node: int, ttl: int
) -> list[tuple[str, str, int]]:
    """One lease per node (granted here), and (key, value, lease) for its keys."""
    with ThreadPoolExecutor(4) as pool:
        leases = list(
            pool.map(lambda _n: int(_post(url, "lease/grant", {"TTL": ttl})["ID"]), nodes)
        )
    return [
        (f"{prefix}/node{node:05d}-svc{j:02d}-{30000 + j}", f"127.0.0.1:{30000 + j}", lease)
        for node, lease in zip(nodes, leases, strict=True)
        for j in range(per_node)
    ]


def put_all(url: str, puts: Sequence[tuple[str, str, int]]) -> None:
    """The puts, in transactions of TXN_OPS, four at a time."""

    def txn(batch: Sequence[tuple[str, str, int]]) -> None:
        success = [
            {"request_put": {"key": _b64(k), "value": _b64(v), "lease": str(lease)}}
            for k, v, lease in batch
        ]
        _post(url, "kv/txn", {"success": success})

    batches = [puts[i : i + TXN_OPS] for i in range(0, len(puts), TXN_OPS)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(txn, batches))


def count_keys(url: str, prefix: str) -> int:
    end = bytearray(prefix.encode())
    end[-1] += 1
    answer = _post(
        url,
        "kv/range",
        {"key": _b64(prefix), "range_end": base64.b64encode(end).decode(), "count_only": True},
    )
    return int(answer.get("count", 0))


# -- one size -----------------------------------------------------------------------------


def reconciles(agent: AgentProcess) -> list[dict[str, Any]]:
    return agent.events("reconciled")


def wait_reconciles(agent: AgentProcess, count: int, timeout: float) -> None:
    """Until the agent has logged `count` reconciles (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while len(reconciles(agent)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent did not reconcile {count} times: {agent.log_path}")
        time.sleep(0.01)


def snapshot(etcd_url: str, pid: int, counter: ByteCounter) -> dict[str, Any]:
    return {
        "ticks": cpu_ticks(pid),
        "requests": etcd_requests(etcd_url),
        "grpc_sent": etcd_sent_bytes(etcd_url),
        "proxy": counter.snapshot(),
        "t": time.monotonic(),
    }


def measure(
    agent: AgentProcess, etcd_url: str, counter: ByteCounter, plan: ResyncPlan
) -> dict[str, Any]:
    """K resyncs, from just after one "reconciled" line to just after the K-th next one."""
    assert agent.process is not None
    pid = agent.process.pid
    start = len(reconciles(agent)) + 1
    wait_reconciles(agent, start, plan.resync * 3 + 10)
    before = snapshot(etcd_url, pid, counter)
    wait_reconciles(agent, start + plan.resyncs, plan.resync * (plan.resyncs + 3) + 30)
    after = snapshot(etcd_url, pid, counter)
    k = plan.resyncs
    requests_made = diff_counts(after["requests"], before["requests"])
    keepalives = requests_made.pop("LeaseKeepAlive", 0)
    answers = diff_counts(after["proxy"]["answer_bytes"], before["proxy"]["answer_bytes"])
    keepalive_bytes = answers.pop(KEEPALIVE_PATH, 0)
    to_client = after["proxy"]["to_client"] - before["proxy"]["to_client"]
    to_server = after["proxy"]["to_server"] - before["proxy"]["to_server"]
    seconds = [float(e.get("seconds", 0.0)) for e in reconciles(agent)[start : start + k]]
    return {
        "resyncs": k,
        "window_seconds": after["t"] - before["t"],
        "cpu_seconds_per_resync": (after["ticks"] - before["ticks"]) / CLK_TCK / k,
        "bytes_read_per_resync": (to_client - keepalive_bytes) / k,
        "bytes_sent_per_resync": to_server / k,
        "bytes_read_by_path_per_resync": {p: n / k for p, n in sorted(answers.items())},
        "etcd_grpc_bytes_per_resync": (after["grpc_sent"] - before["grpc_sent"]) / k,
        "requests_per_resync": sum(requests_made.values()) / k,
        "requests_by_method_per_resync": {m: n / k for m, n in sorted(requests_made.items())},
        "keepalives_in_window": keepalives,
        "keepalive_bytes_in_window": keepalive_bytes,
        "reconcile_seconds_median": statistics.median(seconds) if seconds else None,
    }


# -- the agent at HEAD --------------------------------------------------------------------


class AgentAt(AgentProcess):
    """`sidekick run` started in `cwd`: `python -m` imports the sidekick package found there
    before the editable install's."""

    cwd: Path

    def start(self) -> AgentAt:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidekick", "run", *self.args],
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=self.cwd,
            )
        return self


def export_commit(commit: str, into: Path) -> Path:
    """The commit's sidekick package, unpacked in `into` (others may be editing the working
    tree: the figures are those of the commit they name)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "sidekick"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def agent_at(cwd: Path) -> Callable[[list[str], Path, dict[str, str]], AgentProcess]:
    def make(args: list[str], log_path: Path, env: dict[str, str]) -> AgentProcess:
        agent = AgentAt(args, log_path, env)
        agent.cwd = cwd
        return agent

    return make


# -- the whole mode -----------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def run(bench: Bench, plan: ResyncPlan) -> dict[str, Any]:
    """Every size in plan.sizes, one agent throughout; the results."""
    results: dict[str, Any] = {
        "plan": asdict(plan),
        "run_id": bench.run_id,
        "machine": report.machine(bench.client, bench.etcd.url),
        "commit": git("rev-parse", "--short", "HEAD"),
    }
    source = export_commit(results["commit"], bench.workdir / "agent-src")
    etcd_url, prefix = bench.etcd.url, f"{bench.base}/resync"
    counter = ByteCounter(bench.etcd.client_port).start()
    try:
        log(f"resync cost: {plan.containers} containers, --resync {plan.resync:g}")
        bench.fleet.start_many("resync", plan.containers)
        agent = bench.start_agent(
            "resync",
            prefix,
            "resync",
            ttl=plan.ttl,
            etcd_url=counter.url,
            extra=("--resync", f"{plan.resync:g}"),
            make=agent_at(source),
        )
        wait_reconciles(agent, 3, plan.resync * 5 + 30)  # past start-up
        rows, nodes_done = [], 0
        for size in plan.sizes:
            nodes = size // plan.keys_per_node
            if nodes > nodes_done:
                began = time.monotonic()
                puts = foreign_puts(
                    etcd_url,
                    prefix,
                    range(nodes_done, nodes),
                    plan.keys_per_node,
                    plan.foreign_ttl,
                )
                put_all(etcd_url, puts)
                nodes_done = nodes
                log(f"{len(puts)} more keys of other nodes in {time.monotonic() - began:.1f} s")
                wait_reconciles(agent, len(reconciles(agent)) + 2, plan.resync * 4 + 30)
            under = count_keys(etcd_url, prefix + "/")
            row = {
                "foreign_keys": size,
                "keys_under_prefix": under,
                **measure(agent, etcd_url, counter, plan),
            }
            rows.append(row)
            log(
                f"{size} foreign keys ({under} under the prefix): "
                f"cpu {row['cpu_seconds_per_resync'] * 1000:.1f} ms, "
                f"{row['bytes_read_per_resync']:.0f} bytes read, "
                f"{row['requests_per_resync']:.2f} requests per resync"
            )
        bench.stop_agent(agent)
    finally:
        counter.stop()
    results["rows"] = rows
    results["ratios"] = ratios(rows)
    results["machine"]["load_end"] = os.getloadavg()[0]
    return results


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Largest size : none, for CPU, bytes read and requests."""
    none, most = rows[0], rows[-1]
    return {
        "foreign_keys": most["foreign_keys"],
        "cpu": most["cpu_seconds_per_resync"] / none["cpu_seconds_per_resync"],
        "bytes_read": most["bytes_read_per_resync"] / none["bytes_read_per_resync"],
        "etcd_grpc_bytes": most["etcd_grpc_bytes_per_resync"] / none["etcd_grpc_bytes_per_resync"],
        "requests": most["requests_per_resync"] / none["requests_per_resync"],
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of the last stdout line."""
    line: dict[str, Any] = {}
    for row in results["rows"]:
        n = row["foreign_keys"]
        line[f"resync_cpu_ms_{n}"] = round(row["cpu_seconds_per_resync"] * 1000, 2)
        line[f"resync_bytes_read_{n}"] = round(row["bytes_read_per_resync"])
        line[f"resync_etcd_requests_{n}"] = round(row["requests_per_resync"], 2)
    r = results["ratios"]
    line.update(
        {
            "resync_cpu_ratio": round(r["cpu"], 3),
            "resync_bytes_ratio": round(r["bytes_read"], 3),
            "resync_ratio_limit": RATIO_LIMIT,
            "resync_ratio_met": r["cpu"] <= RATIO_LIMIT and r["bytes_read"] <= RATIO_LIMIT,
            "commit": results["commit"],
            "date": results["machine"]["date"],
        }
    )
    return line
