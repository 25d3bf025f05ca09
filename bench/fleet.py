"""`./bench/run --fleet` and `python -m bench.fleet`: M simulated sidekick nodes on a real
three-member etcd cluster on 127.0.0.1, and one real `sidekick run` beside them.

    python -m bench.fleet [--nodes M | --stages 500,1000,2000] [--extra 4000|none] [--quick]
                          [--ttl S] [--resync S] [--rest S] [--outage S] [--skip PHASES]
                          [--no-agent] [--no-docs] [--keep] [--results JSON]

This module is the only place where a simulated container source may exist, and it is
nowhere else: a simulated node (SimNode) has no Docker; its containers are a fixed list of
--services Registrations made here (`registrations()`). Everything else a node does is
sidekick's own code, wired as sidekick/agent.py wires it: a Store of its own, a LeaseKeeper
on its own thread (grant, keepalive every ttl/3, re-grant with the keys put back, the lease
retry's backoff with sidekick.lease.RETRY_JITTER) on a clone of that Store, and a Sync whose
refresh() + write() runs as the agent's reconcile does: at start, on a new lease, and every
--resync seconds after the last one succeeded, retried with the agent's backoff
(retry.delay, longest min(1, ttl/3), jitter LOOP_JITTER as agent.py's backoff). Nodes start at
random moments over the ramp (FleetPlan.start_rate nodes/s on average), as a fleet being
deployed would; node i lists the three client URLs starting at member i % 3.

Processes and threads, as measured on this 2-core machine:
  - The nodes run in FleetPlan.processes spawned simulator processes (node i in process
    i % processes), at nice FleetPlan.nice; the parent controls etcd and measures, and reads
    each node's figures from shared memory, so a busy simulator never holds up a measurement.
  - One LeaseKeeper thread per node. The loops' reconciles run on a small pool of resync
    workers (FleetPlan.workers a process) fed by one scheduler thread, not on a second thread
    per node: 4,000 idle threads cost 96 MB and 2.7 % of a core, 2,000 cost 53 MB and 1.5 %,
    so that many would fit; the pool is there so that when every node is due at once (after
    an outage) the loops cannot crowd the lease threads off the interpreter lock.
  - The simulator processes' GIL switch interval is 50 ms (SWITCH_INTERVAL): at the default
    5 ms a thousand-thread process that has more work than a core collapses into a convoy of
    threads waking to ask for the lock (see SWITCH_INTERVAL).

Phases of a full run (loopback only; everything made is removed at the end):
  1. a real `sidekick run` (the commit's package, `git archive`) with busybox containers:
     registration latency (start event -> key seen by an etcd watcher), no fleet
  2. fleets of 500, 1,000, 2,000 nodes (--nodes M: stages up to M), each at rest for --rest
     seconds (whole resync periods): etcd requests/s by method, each member's CPU, RSS and db
     size, per-node cost at rest and per resync
  3. the same latency with the largest fleet running
  4. a node killed without revoking (its lease thread and loop stop, just after a keepalive):
     seconds until its keys are gone
  5. the leader killed (SIGKILL): seconds until writes succeed again, leases lapsed, keys lost
  6. all three members killed, down for --outage seconds, started again: the reconnect storm's
     requests/s and seconds until every node's keys are right, once with the retry jitter
     and once without (sidekick.lease.RETRY_JITTER and LOOP_JITTER set to 0 in the simulator
     processes only, for the contrast; restored after)
  7. larger fleets (--extra, default 4,000) at rest only, while the machine holds them
--quick (the CI test, tests/test_fleet.py): one fleet, ttl 10, no real agent, no no-jitter
round, short windows: the correctness figures only. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

import sidekick.lease
from bench import report
from bench.common import ROOT, cpu_ticks, diff_counts, etcd_requests, rss_kb, summary
from sidekick.config import Config, Endpoint
from sidekick.lease import LeaseKeeper
from sidekick.leasefile import LeaseFile
from sidekick.metrics import Metrics
from sidekick.model import Put, Registration
from sidekick.retry import delay
from sidekick.store import EtcdError, Store
from sidekick.sync import Sync
from tests.etcd_cluster import EtcdCluster, EtcdMember

if TYPE_CHECKING:
    from bench.harness import Bench

LOOP_JITTER = 0.25  # agent.py: retry_wait = backoff(min(1.0, ttl / 3), jitter=0.25)
LAPSED = "lease expired; granting a new one and putting the keys back"  # LeaseKeeper's warning
PORT_BASE = 30000
PAGE = 20_000  # keys per range request when reading the whole prefix
CLK_TCK = os.sysconf("SC_CLK_TCK")
RATIO_LIMIT = 1.2  # issue 11: per-node cost at the largest fleet / at the smallest


def log(message: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FleetPlan:
    """How big, how long."""

    stages: tuple[int, ...] = (500, 1000, 2000)
    extra_stages: tuple[int, ...] = (4000,)  # at rest only, after the faults, if it holds
    services: int = 50
    ttl: int = 30
    resync: float = 60.0  # the agent's default --resync
    rest_seconds: float = 60.0
    settle_seconds: float = 15.0
    start_rate: float = 50.0  # nodes started per second, at random moments
    outage_seconds: float = 60.0
    workers: int = 16  # resync workers in each simulator process
    processes: int = 2  # simulator processes (node i in process i % processes)
    nice: int = 10  # their priority: the nodes stand for other machines
    agent: bool = True  # the real `sidekick run` and its latency, with and without the fleet
    no_jitter_round: bool = True
    quick: bool = False
    sequential: int = 100  # the real agent's latency: containers one after another
    bursts: int = 5  # ... and bursts of 20
    converge_timeout: float = 180.0
    skip: tuple[str, ...] = ()  # phases left out: latency, dead, leader, outage, nojitter

    @classmethod
    def make(
        cls, nodes: int | None = None, quick: bool = False, stages: Sequence[int] | None = None
    ) -> FleetPlan:
        if quick:
            largest = nodes or 200
            return cls(
                stages=tuple(stages or (largest,)),
                extra_stages=(),
                ttl=10,
                resync=10.0,
                rest_seconds=10.0,
                settle_seconds=3.0,
                outage_seconds=20.0,
                agent=False,
                no_jitter_round=False,
                quick=True,
                converge_timeout=90.0,
            )
        if stages:
            return cls(stages=tuple(sorted(stages)), extra_stages=())
        if nodes:
            below = tuple(s for s in cls.stages if s < nodes)
            return cls(stages=(*below, nodes), extra_stages=())
        return cls()

    @property
    def nodes(self) -> int:
        return max((*self.stages, *self.extra_stages))


# -- what a simulated node announces ----------------------------------------------------------


def registrations(prefix: str, node: str, services: int) -> list[Registration]:
    """The simulated container source: `services` containers, one port each, on this node."""
    return [
        Registration(
            f"{prefix}/{node}-svc{j:02d}-{PORT_BASE + j}",
            f"127.0.0.1:{PORT_BASE + j}",
            f"sim-{node}-{j:02d}",
            f"{node}-svc{j:02d}",
        )
        for j in range(services)
    ]


# A node's figures, in memory shared with the parent (int64 each), so that the parent reads
# them without asking a host that may be busy: its row in its host's array.
ALIVE, LEASE, RECONCILED, LAPSED_N, RESYNCS, REQUESTS, BYTES_IN, BYTES_OUT, FIRST_MS = range(9)
ROW = 9
# A host's figures: failed etcd requests, its worst scheduling delay (ms) since the parent
# last reset it (the simulator's own starvation: every thread late by that much), threads.
ERRORS, LATE_MS, THREADS = range(3)
HOST_ROW = 3
LATE_PROBE = 0.1  # seconds the probe sleeps between looks
# The simulator processes' GIL switch interval. At CPython's default (5 ms) every thread
# waiting for the GIL wakes each 5 ms to ask for it: with a thousand lease threads in one
# interpreter and more work than one core, the process collapses into that convoy (measured
# here: 1,000 threads asking for 150 % of a core got 5 % of their work done, at 145 % system
# CPU; at 50 ms, 63 %, at 7 %). A real agent has a handful of threads and never meets it.
SWITCH_INTERVAL = 0.05


class Row:
    """One node's slots in a shared array."""

    def __init__(self, array: Any, slot: int) -> None:
        self.array = array
        self.base = slot * ROW

    def set(self, field: int, value: int) -> None:
        self.array[self.base + field] = value

    def add(self, field: int, value: int = 1) -> None:
        self.array[self.base + field] += value


class NodeLog:
    """A structlog stand-in for one node: counts events by name, prints nothing; a lapsed
    lease (LeaseKeeper's warning) is also counted in the node's shared row."""

    def __init__(self, row: Row | None = None) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.row = row

    def _count(self, event: str, *_args: Any, **_fields: Any) -> None:
        self.counts[event] += 1
        if event == LAPSED and self.row is not None:
            self.row.add(LAPSED_N)

    debug = info = warning = error = exception = _count


class CountingStore(Store):
    """sidekick's Store, counting the answered HTTP requests it makes and their bytes both
    ways (headers included), as the client sees them, by request path."""

    def __init__(self, endpoints: Sequence[Endpoint], timeout: float) -> None:
        self.by_path: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, in, out
        super().__init__(endpoints, timeout)

    def _client(self, endpoint: Endpoint) -> Any:
        client = super()._client(endpoint)
        client.session.hooks["response"].append(self._count)
        return client

    def clone(self) -> CountingStore:
        twin = super().clone()
        assert isinstance(twin, CountingStore)
        twin.by_path = defaultdict(lambda: [0, 0, 0])  # its clients' hooks count on the twin
        return twin

    def _count(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        request = response.request
        body = request.body or b""
        sent = len(body.encode() if isinstance(body, str) else body)
        sent += len(f"{request.method} {request.path_url} HTTP/1.1\r\n\r\n")
        sent += sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        received = len(response.content) + 17 + 2
        received += sum(len(k) + len(v) + 4 for k, v in response.headers.items())
        row = self.by_path[(request.path_url or "?").removeprefix("/v3")]
        row[0] += 1
        row[1] += received
        row[2] += sent

    def totals(self) -> tuple[int, int, int]:
        """(requests, bytes received, bytes sent) so far."""
        rows = list(self.by_path.values())
        return sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows)


class SimNode:
    """One simulated node: sidekick's Store, LeaseKeeper and Sync, fed a fixed list."""

    def __init__(  # noqa: PLR0917 - collaborators, as the agent's parts take them
        self,
        index: int,
        plan: FleetPlan,
        prefix: str,
        endpoints: Sequence[Endpoint],
        metrics: Metrics,
        on_due: Callable[[SimNode, float], None],
        row: Row,
    ) -> None:
        self.index = index
        self.name = node_name(index)
        self.row = row
        self.config = Config(
            prefix=prefix,
            etcd_endpoints=tuple(endpoints),
            ttl=plan.ttl,
            keepalive_interval=plan.ttl / 3,
            resync=plan.resync,
            node=self.name,
        )
        self.log = NodeLog(row)
        self.store = CountingStore(self.config.etcd_endpoints, self.config.etcd_timeout)
        self.on_due = on_due
        self.keeper = LeaseKeeper(
            self.config,
            self.store.clone(),  # a connection of its own, as the agent gives it
            LeaseFile(None),
            metrics,
            self.log,
            on_new_lease=self._on_new_lease,
        )
        self.sync = Sync(
            self.config,
            self.store,
            metrics,
            self.log,
            lambda: self.keeper.lease,
            self.keeper.publish,
        )
        self.registrations = registrations(prefix, self.name, plan.services)
        for registration in self.registrations:
            self.sync.set(registration.container_id, (registration,))
        self.alive = False
        # the scheduler's: the earliest time a reconcile is wanted; one is running; wanted again
        self.next_due = math.inf
        self.busy = False
        self.again = False
        self.failures = 0
        self.reconciled_once = False
        self.last_ok = 0.0  # monotonic time of the last reconcile that succeeded
        self.started_at = 0.0
        self.first_ok = 0.0  # monotonic time of the first reconcile that succeeded
        self.resyncs = 0  # reconciles that succeeded
        self.resync_cost = [0, 0, 0]  # their requests, bytes received, bytes sent

    def _on_new_lease(self) -> None:
        """From the lease thread, as the agent's: reconcile now (the agent queues NEW_LEASE)."""
        self.row.set(LEASE, self.keeper.lease)
        self.on_due(self, time.monotonic())

    def start(self) -> None:
        self.alive = True
        self.row.set(ALIVE, 1)
        self.started_at = time.monotonic()
        self.keeper.start()

    def kill(self) -> None:
        """As kill -9: the lease thread and the loop stop; nothing is revoked."""
        self.alive = False
        self.row.set(ALIVE, 0)
        self.keeper.stop()

    def reconcile(self) -> float:
        """The agent's reconcile for this node (its containers are the fixed list): read this
        node's keys, write the difference; seconds until the next one (the resync, or the
        retry's backoff after a failure)."""
        if not self.alive:
            return math.inf
        if self.keeper.lease == 0:
            return self._retry()  # the agent's WaitingForLease: the keeper grants, then calls
        before = self.store.totals()
        try:
            if not self.reconciled_once:
                self.store.check_write(self.config.prefix)  # as the agent's first reconcile
            self.sync.refresh()
            written = self.sync.write()
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self.keeper.check_now()
            return self._retry()
        if not written:
            return self._retry()
        after = self.store.totals()
        self.reconciled_once = True
        self.failures = 0
        self.last_ok = time.monotonic()
        if not self.first_ok:
            self.first_ok = self.last_ok
            self.row.set(FIRST_MS, round((self.first_ok - self.started_at) * 1000))
        self.resyncs += 1
        for i in range(3):
            self.resync_cost[i] += after[i] - before[i]
        row = self.row
        row.set(RECONCILED, 1)
        row.set(LEASE, self.keeper.lease)
        row.add(RESYNCS)
        row.add(REQUESTS, after[0] - before[0])
        row.add(BYTES_IN, after[1] - before[1])
        row.add(BYTES_OUT, after[2] - before[2])
        return self.config.resync

    def _retry(self) -> float:
        self.failures += 1
        return delay(self.failures, min(1.0, self.config.ttl / 3), LOOP_JITTER)

    def expected(self) -> dict[str, tuple[str, int]]:
        lease = self.keeper.lease
        return {r.key: (r.value, lease) for r in self.registrations}

    def lapsed(self) -> int:
        return self.log.counts.get(LAPSED, 0)


class Scheduler:
    """The nodes' loops: one thread hands each node's due reconcile to a small worker pool.

    A node has at most one reconcile running; a reconcile asked for while one runs (a new
    lease) runs right after it, as the agent's needs_reconcile does.
    """

    def __init__(self, workers: int) -> None:
        self._heap: list[tuple[float, int, SimNode]] = []
        self._cond = threading.Condition()
        self._serial = itertools.count()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="resync")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def at(self, node: SimNode, when: float) -> None:
        """Reconcile `node` at `when` (monotonic), or earlier if already asked for earlier."""
        with self._cond:
            if when < node.next_due:
                node.next_due = when
                heapq.heappush(self._heap, (when, next(self._serial), node))
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._heap or self._heap[0][0] > time.monotonic()
                ):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                when, _, node = heapq.heappop(self._heap)
                if when != node.next_due or not node.alive:
                    continue  # superseded by an earlier request, or the node is dead
                if node.busy:
                    node.again = True
                    node.next_due = math.inf
                    continue
                node.next_due = math.inf
                node.busy = True
            self._pool.submit(self._reconcile, node)

    def _reconcile(self, node: SimNode) -> None:
        wait = math.inf
        try:
            wait = node.reconcile()
        except Exception as exc:  # a bug here must not silence a node for the rest of the run
            log(f"{node.name}: reconcile raised {exc!r}")
            wait = 1.0
        finally:
            with self._cond:
                node.busy = False
                if node.again:
                    node.again = False
                    wait = 0.0
            if math.isfinite(wait):
                self.at(node, time.monotonic() + wait)

    def due_times(self, nodes: Iterable[SimNode]) -> list[float]:
        with self._cond:
            return [n.next_due for n in nodes if math.isfinite(n.next_due)]

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- etcd, read from outside ------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


def read_prefix(url: str, prefix: str, timeout: float = 30) -> dict[str, tuple[str, int, int]]:
    """key -> (value, lease, create_revision) under `prefix`, in pages of PAGE keys read at
    one revision (the first page's)."""
    found: dict[str, tuple[str, int, int]] = {}
    start, revision = _b64(prefix), 0
    with requests.Session() as session:
        while True:
            payload: dict[str, Any] = {"key": start, "range_end": _range_end(prefix), "limit": PAGE}
            if revision:
                payload["revision"] = str(revision)
            answer = session.post(f"{url}/v3/kv/range", json=payload, timeout=timeout)
            answer.raise_for_status()
            body = answer.json()
            revision = revision or int(body.get("header", {}).get("revision", 0))
            kvs = body.get("kvs", [])
            for kv in kvs:
                key = base64.b64decode(kv["key"]).decode()
                value = base64.b64decode(kv.get("value", "")).decode()
                found[key] = (value, int(kv.get("lease", 0)), int(kv.get("create_revision", 0)))
            if not body.get("more") or not kvs:
                return found
            start = base64.b64encode(base64.b64decode(kvs[-1]["key"]) + b"\0").decode()


def count_prefix(url: str, prefix: str, timeout: float = 5) -> int:
    answer = requests.post(
        f"{url}/v3/kv/range",
        json={"key": _b64(prefix), "range_end": _range_end(prefix), "count_only": True},
        timeout=timeout,
    )
    answer.raise_for_status()
    return int(answer.json().get("count", 0))


_GAUGE = re.compile(r"^([a-z_]+)(?:\{[^}]*\})?\s+(\S+)$")


def metric_values(url: str, names: Iterable[str]) -> dict[str, float]:
    """The values of the named unlabelled metrics on a member's /metrics."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        match = _GAUGE.match(line) if line.startswith(tuple(wanted)) else None
        if match and match.group(1) in wanted:
            out[match.group(1)] = float(match.group(2))
    return out


class RequestRates:
    """etcd's requests by method (grpc_server_started_total, Watch left out), summed over the
    live members, sampled every `interval` seconds on a thread of its own. A member started
    again counts from zero: its counts are taken from its new process's start."""

    def __init__(self, cluster: EtcdCluster, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []  # (time, running totals)
        self._last: dict[str, tuple[int, dict[str, int]]] = {}  # member -> (pid, counts)
        self._totals: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rates", daemon=True)

    def start(self) -> RequestRates:
        self._tick()
        self._thread.start()
        return self

    def _tick(self) -> None:
        def one(member: EtcdMember) -> tuple[EtcdMember, dict[str, int] | None]:
            process = member.process
            if process is None:
                return member, None
            try:
                return member, etcd_requests(member.url)
            except (requests.RequestException, ValueError):
                return member, None

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(one, self.cluster.members))
        now = time.monotonic()
        for member, counts in got:
            if counts is None or member.process is None:
                continue
            pid = member.process.pid
            last_pid, last = self._last.get(member.name, (pid, {}))
            if last_pid != pid:
                last = {}
            for method, value in counts.items():
                self._totals[method] += max(0, value - last.get(method, 0))
            self._last[member.name] = (pid, counts)
        self.samples.append((now, dict(self._totals)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def per_second(self, since: float = -math.inf) -> list[tuple[float, float]]:
        """(seconds since `since`, requests/s) for each interval after `since`."""
        out = []
        for (t0, a), (t1, b) in itertools.pairwise(self.samples):
            if t0 >= since and t1 > t0:
                out.append((t1 - since, (sum(b.values()) - sum(a.values())) / (t1 - t0)))
        return out


# -- the fleet ----------------------------------------------------------------------------------


@dataclass
class Check:
    """etcd against what the live nodes announce."""

    right: bool
    keys: int
    missing: int
    wrong: int  # another value, or on another lease
    extra: int  # under the prefix and announced by no live node
    read_seconds: float


class NodeHost:
    """A share of the fleet in a process of its own, driven by the parent's commands; each
    node's figures in the shared `rows`, the process's in `host`.

    The simulated nodes stand for other machines. With the parent (which controls etcd and
    measures) in another process, a thousand lease threads retrying against a dead cluster
    (about 2 ms of CPU per failed attempt on three endpoints, measured) cannot hold up the
    measurements, and their figures stay readable whatever the host is doing.
    """

    def __init__(
        self, plan: FleetPlan, prefix: str, ports: Sequence[int], rows: Any, host: Any
    ) -> None:
        self.plan = plan
        self.prefix = prefix
        self.ports = list(ports)
        self.rows = rows
        self.host = host
        self.metrics = Metrics()  # one registry for the process: the parts only count
        self.scheduler = Scheduler(plan.workers)
        self.nodes: dict[int, SimNode] = {}
        threading.Thread(target=self._report, name="report", daemon=True).start()

    def _report(self) -> None:
        """Every LATE_PROBE s: how late this thread woke (the process's scheduling delay,
        GIL and CPU), the failed etcd requests, the threads."""
        while True:
            began = time.monotonic()
            time.sleep(LATE_PROBE)
            late = round((time.monotonic() - began - LATE_PROBE) * 1000)
            self.host[LATE_MS] = max(self.host[LATE_MS], late)
            errors = sum(
                value
                for _, labels, value in self.metrics.errors.samples()
                if labels["peer"] == "etcd"
            )
            self.host[ERRORS] = int(errors)
            self.host[THREADS] = threading.active_count()

    def endpoints_for(self, index: int) -> list[Endpoint]:
        k = index % len(self.ports)
        return [Endpoint("http", "127.0.0.1", p) for p in self.ports[k:] + self.ports[:k]]

    def grow(self, starts: Sequence[tuple[int, float]]) -> int:
        """Make the nodes, then start each at its moment (monotonic: one clock for every
        process of the machine)."""
        processes = self.plan.processes
        new = [
            (
                SimNode(
                    index,
                    self.plan,
                    self.prefix,
                    self.endpoints_for(index),
                    self.metrics,
                    self.scheduler.at,
                    Row(self.rows, index // processes),
                ),
                at,
            )
            for index, at in starts
        ]
        for node, at in sorted(new, key=lambda pair: pair[1]):
            self.nodes[node.index] = node
            time.sleep(max(0.0, at - time.monotonic()))
            node.start()
        return len(new)

    def kill(self, index: int) -> dict[str, float]:
        """Kill a node just after a keepalive (its lease's longest life), without revoking."""
        node = self.nodes[index]
        renewed = node.keeper.last_renewal
        deadline = time.monotonic() + self.plan.ttl
        while node.keeper.last_renewal == renewed and time.monotonic() < deadline:
            time.sleep(0.001)
        last = node.keeper.last_renewal
        node.kill()
        return {"last_keepalive": last, "killed": time.monotonic()}

    def jitter(self, retry: float, loop: float) -> None:
        """The contrast round: sidekick.lease.RETRY_JITTER and LOOP_JITTER, in this process."""
        global LOOP_JITTER  # noqa: PLW0603 - in this simulator process only
        sidekick.lease.RETRY_JITTER = retry
        LOOP_JITTER = loop

    def due(self) -> list[float]:
        return self.scheduler.due_times(n for n in self.nodes.values() if n.alive)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.alive = False
        self.scheduler.stop()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(lambda n: n.keeper.stop(), self.nodes.values()))


def host_main(  # noqa: PLR0917 - what a spawned process is given
    conn: Connection, plan: FleetPlan, prefix: str, ports: list[int], rows: Any, host: Any
) -> None:
    """A child process: a NodeHost answering (command, args) from the parent until "stop"."""
    os.nice(plan.nice)
    sys.setswitchinterval(SWITCH_INTERVAL)
    node_host = NodeHost(plan, prefix, ports, rows, host)
    while True:
        try:
            command, args = conn.recv()
        except EOFError:  # the parent is gone
            node_host.stop()
            return
        try:
            conn.send(("ok", getattr(node_host, command)(*args)))
        except Exception as exc:  # the parent raises it
            conn.send(("error", f"{command}: {exc!r}"))
        if command == "stop":
            return


@dataclass
class Status:
    """Every node's row, and the hosts' figures, as read from the shared memory."""

    nodes: dict[int, tuple[int, ...]]
    errors: int
    late_ms: int  # the worst host's scheduling delay since the last reset
    threads: int

    def live(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n[ALIVE])

    def leases(self) -> dict[int, int]:
        return {i: n[LEASE] for i, n in self.nodes.items() if n[ALIVE]}

    def unreconciled(self) -> int:
        return sum(1 for n in self.nodes.values() if n[ALIVE] and not n[RECONCILED])

    def lapsed(self) -> int:
        return sum(n[LAPSED_N] for n in self.nodes.values())

    def resync_totals(self) -> tuple[int, int, int, int]:
        """(reconciles, their requests, bytes received, bytes sent) over all nodes."""
        rows = list(self.nodes.values())
        return (
            sum(n[RESYNCS] for n in rows),
            sum(n[REQUESTS] for n in rows),
            sum(n[BYTES_IN] for n in rows),
            sum(n[BYTES_OUT] for n in rows),
        )

    def first_reconcile(self, indices: Iterable[int]) -> dict[str, float | int]:
        """Seconds from a node's start to its first reconcile's end, over `indices`."""
        return summary([self.nodes[i][FIRST_MS] / 1000 for i in indices if self.nodes[i][FIRST_MS]])


class Fleet:
    """The parent's handle on the simulated nodes, spread over FleetPlan.processes hosts
    (node i on host i % processes, in its row i // processes)."""

    def __init__(self, plan: FleetPlan, cluster: EtcdCluster, prefix: str) -> None:
        self.plan = plan
        self.cluster = cluster
        self.prefix = prefix
        self.size = 0
        self.random = random.Random(11)
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        ports = [m.client_port for m in cluster.members]
        slots = -(-plan.nodes // plan.processes)
        self.hosts: list[tuple[BaseProcess, Connection, Any, Any]] = []
        for k in range(plan.processes):
            rows = context.RawArray("q", slots * ROW)
            host = context.RawArray("q", HOST_ROW)
            mine, theirs = context.Pipe()
            process = context.Process(
                target=host_main,
                args=(theirs, plan, prefix, ports, rows, host),
                name=f"fleet-{k}",
            )
            process.daemon = True
            process.start()
            self.hosts.append((process, mine, rows, host))

    def _call(self, commands: Sequence[tuple[str, tuple[Any, ...]]], timeout: float) -> list[Any]:
        """One command to each host (all sent, then all answered)."""
        for (_, conn, _, _), command in zip(self.hosts, commands, strict=True):
            conn.send(command)
        answers = []
        deadline = time.monotonic() + timeout
        for process, conn, _, _ in self.hosts:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{process.name} did not answer {commands[0][0]} in time")
            kind, value = conn.recv()
            if kind == "error":
                raise RuntimeError(f"{process.name}: {value}")
            answers.append(value)
        return answers

    def _all(self, command: str, *args: Any, timeout: float = 120) -> list[Any]:
        return self._call([(command, args)] * len(self.hosts), timeout)

    def grow(self, count: int) -> float:
        """`count` more nodes, started at random moments over count / start_rate seconds
        (a node's moment drawn uniformly); the ramp's length."""
        ramp = max(1.0, count / self.plan.start_rate)
        began = time.monotonic() + 1.0  # the hosts make their nodes first
        starts: list[list[tuple[int, float]]] = [[] for _ in self.hosts]
        for index in range(self.size, self.size + count):
            starts[index % len(self.hosts)].append((index, began + self.random.uniform(0, ramp)))
        self._call([("grow", (s,)) for s in starts], timeout=ramp + 120)
        self.size += count
        return ramp

    def status(self) -> Status:
        """Every node's figures, from the shared memory (no question to the hosts)."""
        processes = len(self.hosts)
        nodes: dict[int, tuple[int, ...]] = {}
        for index in range(self.size):
            rows = self.hosts[index % processes][2]
            base = (index // processes) * ROW
            nodes[index] = tuple(rows[base : base + ROW])
        hosts = [h[3] for h in self.hosts]
        return Status(
            nodes,
            sum(h[ERRORS] for h in hosts),
            max(h[LATE_MS] for h in hosts),
            sum(h[THREADS] for h in hosts),
        )

    def reset_late(self) -> None:
        """Start a new window for the hosts' worst scheduling delay."""
        for host in self.hosts:
            host[3][LATE_MS] = 0

    def wait_reconciled(self, timeout: float) -> float:
        """Until every live node has reconciled once (its own view); seconds waited."""
        began = time.monotonic()
        while (late := self.status().unreconciled()) > 0:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"{late} nodes never reconciled in {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - began

    def expected(self, leases: dict[int, int]) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for index, lease in leases.items():
            for r in registrations(self.prefix, node_name(index), self.plan.services):
                out[r.key] = (r.value, lease)
        return out

    def read(self) -> tuple[dict[str, tuple[str, int, int]], float]:
        """The whole prefix, read from a live member, and how long the read took."""
        began = time.monotonic()
        found = read_prefix(self.cluster.any_live().url, self.prefix + "/")
        return found, time.monotonic() - began

    def check(self, leases: dict[int, int] | None = None) -> Check:
        """Read the whole prefix; compare with the live nodes' keys on their leases (as the
        hosts' rows say, or `leases`)."""
        found, took = self.read()
        return self.compare(found, took, leases)

    def compare(
        self,
        found: dict[str, tuple[str, int, int]],
        took: float,
        leases: dict[int, int] | None = None,
    ) -> Check:
        if leases is None:
            leases = self.status().leases()
        expected = self.expected(leases)
        missing = sum(1 for k in expected if k not in found)
        wrong = sum(
            1 for k, (v, lease) in expected.items() if k in found and found[k][:2] != (v, lease)
        )
        extra = sum(1 for k in found if k not in expected)
        return Check(not (missing or wrong or extra), len(found), missing, wrong, extra, took)

    def kill(self, index: int) -> dict[str, float]:
        process, conn, _, _ = self.hosts[index % len(self.hosts)]
        conn.send(("kill", (index,)))
        if not conn.poll(self.plan.ttl + 60):
            raise RuntimeError(f"{process.name} did not kill node {index}")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(value)
        return dict(value)

    def set_jitter(self, retry: float, loop: float) -> None:
        self._all("jitter", retry, loop)

    def due_times(self) -> list[float]:
        return sorted(t for answer in self._all("due") for t in answer)

    def cpu_seconds(self) -> float:
        """The simulator processes' CPU, read from /proc (no question to a busy host)."""
        return sum(cpu_ticks(h[0].pid) for h in self.hosts if h[0].pid is not None) / CLK_TCK

    def rss_kb(self) -> int:
        return sum(rss_kb(h[0].pid) for h in self.hosts if h[0].pid is not None)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._all("stop", timeout=60)
        for process, conn, _, _ in self.hosts:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
            conn.close()


def node_name(index: int) -> str:
    return f"node{index:05d}"


def wait_right(
    fleet: Fleet, timeout: float, interval: float = 0.5, leases: dict[int, int] | None = None
) -> tuple[float | None, Check]:
    """Poll until etcd is right; (monotonic start of the first right read, or None; last).

    With `leases`, each read is compared with those first (no question to the hosts, which
    may be busy); a read that does not match them is compared with the hosts' current ones.
    """
    deadline = time.monotonic() + timeout
    last = Check(False, 0, 0, 0, 0, 0.0)
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            found, took = fleet.read()
            last = fleet.compare(found, took, leases)
            if not last.right and leases is not None:
                last = fleet.compare(found, took)
        except (requests.RequestException, ValueError, IndexError):
            time.sleep(interval)
            continue
        if last.right:
            return began, last
        time.sleep(interval)
    return None, last


def process_cpu() -> float:
    """This process's CPU seconds so far (every thread)."""
    times = os.times()
    return times.user + times.system


# -- phases -----------------------------------------------------------------------------------


class FleetRun:
    """One run: the cluster, the fleet, the optional real agent; results as a dict."""

    def __init__(self, plan: FleetPlan, workdir: Path, bench: Bench | None) -> None:
        self.plan = plan
        self.workdir = workdir
        self.bench = bench
        self.run_id = bench.run_id if bench is not None else "f" + uuid.uuid4().hex[:8]
        self.cluster = EtcdCluster(workdir / "cluster")
        for member in self.cluster.members:
            member.extra_args = ["--log-level", "warn"]  # its log says why, if it is slow
        self.prefix = f"/fleet-{self.run_id}"
        self.fleet = Fleet(plan, self.cluster, self.prefix)
        self.results: dict[str, Any] = {
            "mode": "fleet",
            "plan": asdict(plan),
            "run_id": self.run_id,
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty_sidekick": git("status", "--porcelain", "--", "sidekick").splitlines(),
        }
        self.agent_source: Path | None = None

    # -- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        client = self.bench.client if self.bench is not None else None
        self.results["machine"] = report.machine(client, self.cluster.members[0].url)
        if self.bench is not None:
            self.bench.etcd = self.cluster.members[0]  # the latency round's put probe
            self.bench.setup(watchers=True, start_etcd=False)
            source = self.workdir / "agent-src"
            self.agent_source = export_commit(self.results["commit"], source)
        log(
            f"etcd cluster {self.cluster.endpoints}; prefix {self.prefix}; "
            f"{self.plan.services} services a node; ttl {self.plan.ttl}, resync "
            f"{self.plan.resync:g} s; {self.plan.workers} resync workers"
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.bench is not None:
            self.bench.cleanup()
        self.cluster.stop()

    # -- 1 and 3: the real agent ----------------------------------------------------------

    def latency(self, tag: str) -> None:
        bench = self.bench
        if bench is None or self.agent_source is None:
            return
        from bench.resync import agent_at  # noqa: PLC0415 - bench.resync imports the harness

        log(f"latency of a real `sidekick run` ({tag})")
        prefix = f"{bench.base}/{tag}"
        agent = bench.start_agent(
            tag,
            prefix,
            "lat",
            ttl=self.plan.ttl,
            etcd_url=self.cluster.endpoints,
            make=agent_at(self.agent_source),
        )
        try:
            round_ = bench.latency_round(tag, prefix, "lat")
        finally:
            bench.stop_agent(agent)
        self.results.setdefault("latency", {})[tag] = {
            mode: {k: v for k, v in figures.items() if not k.endswith("_ms")}
            for mode, figures in round_.items()
        }
        reg = round_["all"]["register"]
        log(f"{tag}: register p50 {reg['p50']:.1f} ms, p99 {reg['p99']:.1f} ms (n={reg['n']})")

    # -- 2: fleets at rest ----------------------------------------------------------------

    def stage(self, size: int) -> dict[str, Any]:
        first, more = self.fleet.size, size - self.fleet.size
        log(f"fleet of {size}: starting {more} more nodes")
        began = time.monotonic()
        ramp = self.fleet.grow(more)
        self.fleet.wait_reconciled(self.plan.converge_timeout)
        up = time.monotonic() - began
        start_up = self.fleet.status().first_reconcile(range(first, size))
        right_at, check = wait_right(self.fleet, self.plan.converge_timeout)
        if right_at is None:
            raise RuntimeError(f"fleet of {size}: etcd never right ({check})")
        log(
            f"fleet of {size}: every node reconciled {up:.1f} s after the ramp began "
            f"(ramp {ramp:.1f} s; start to first reconcile p50 {start_up['p50']:.2f} s, "
            f"max {start_up['max']:.2f} s); {check.keys} keys right "
            f"(read in {check.read_seconds:.2f} s)"
        )
        time.sleep(self.plan.settle_seconds)
        row = self.at_rest(size)
        row.update(
            {"ramp_seconds": ramp, "all_reconciled_seconds": up, "first_reconcile": start_up}
        )
        log(
            f"fleet of {size} at rest: {row['requests_per_second']:.1f} requests/s "
            f"({_methods(row['by_method_per_second'])}); "
            f"{row['node_requests_per_minute']:.2f}/min a node; leader CPU "
            f"{row['leader_cpu_percent']:.1f} %; simulator CPU {row['simulator_cpu_percent']:.0f} %"
        )
        return row

    def at_rest(self, size: int) -> dict[str, Any]:
        members, plan = self.cluster.members, self.plan
        leader = self.cluster.leader()
        requests_before = {m.name: etcd_requests(m.url) for m in members}
        ticks_before = {m.name: cpu_ticks(_pid(m)) for m in members}
        self.fleet.reset_late()
        status_before = self.fleet.status()
        cost_before = status_before.resync_totals()
        cpu_before, t0 = self.fleet.cpu_seconds(), time.monotonic()
        time.sleep(plan.rest_seconds)
        elapsed = time.monotonic() - t0
        cpu_after = self.fleet.cpu_seconds()
        ticks_after = {m.name: cpu_ticks(_pid(m)) for m in members}
        requests_after = {m.name: etcd_requests(m.url) for m in members}
        status_after = self.fleet.status()
        cost_after = status_after.resync_totals()
        live = len(status_after.live())  # a node killed in an earlier phase is not counted
        leader_after = self.cluster.leader()
        by_method: dict[str, int] = defaultdict(int)
        per_member: dict[str, dict[str, Any]] = {}
        for m in members:
            counts = diff_counts(requests_after[m.name], requests_before[m.name])
            for method, n in counts.items():
                by_method[method] += n
            gauges = metric_values(
                m.url,
                [
                    "etcd_mvcc_db_total_size_in_bytes",
                    "etcd_mvcc_db_total_size_in_use_in_bytes",
                    "etcd_debugging_mvcc_keys_total",
                ],
            )
            per_member[m.name] = {
                "leader": m is leader,
                "requests_per_second": sum(counts.values()) / elapsed,
                "cpu_percent": (ticks_after[m.name] - ticks_before[m.name])
                / CLK_TCK
                / elapsed
                * 100,
                "rss_mb": rss_kb(_pid(m)) / 1024,
                "db_bytes": gauges.get("etcd_mvcc_db_total_size_in_bytes", math.nan),
                "db_in_use_bytes": gauges.get("etcd_mvcc_db_total_size_in_use_in_bytes", math.nan),
                "keys_total": gauges.get("etcd_debugging_mvcc_keys_total", math.nan),
            }
        total = sum(by_method.values())
        resyncs = cost_after[0] - cost_before[0]
        keepalives = by_method.get("LeaseKeepAlive", 0)
        return {
            "nodes": size,
            "live_nodes": live,
            "keys": live * plan.services,
            "window_seconds": elapsed,
            "leader": leader.name,
            "leader_changed": leader_after is not leader,
            "requests_per_second": total / elapsed,
            "by_method_per_second": {k: v / elapsed for k, v in sorted(by_method.items())},
            "keepalives_per_second": keepalives / elapsed,
            "keepalives_expected_per_second": live / (plan.ttl / 3),
            "node_requests_per_minute": total / elapsed * 60 / live,
            "resyncs": resyncs,
            "resyncs_expected": live * elapsed / plan.resync,
            "resync_requests": (cost_after[1] - cost_before[1]) / resyncs if resyncs else math.nan,
            "resync_bytes_received": (cost_after[2] - cost_before[2]) / resyncs
            if resyncs
            else math.nan,
            "resync_bytes_sent": (cost_after[3] - cost_before[3]) / resyncs
            if resyncs
            else math.nan,
            "resync_etcd_requests": (total - keepalives) / resyncs if resyncs else math.nan,
            "leader_cpu_percent": per_member[leader.name]["cpu_percent"],
            "members": per_member,
            "simulator_cpu_percent": (cpu_after - cpu_before) / elapsed * 100,
            "simulator_rss_mb": self.fleet.rss_kb() / 1024,
            "simulator_late_ms_max": status_after.late_ms,
            "simulator_threads": status_after.threads,
            "simulator_processes": plan.processes,
            "lapsed": status_after.lapsed() - status_before.lapsed(),
        }

    # -- 4: a node killed -------------------------------------------------------------------

    def dead_node(self) -> dict[str, Any]:
        index = self.fleet.status().live()[-1]
        name = node_name(index)
        url = self.cluster.members[(index + 1) % 3].url
        keys_prefix = f"{self.prefix}/{name}-"
        before = count_prefix(url, keys_prefix)
        moments = self.fleet.kill(index)  # just after a keepalive: the lease's longest life
        last_keepalive, killed = moments["last_keepalive"], moments["killed"]
        log(f"{name} killed (no revoke) {killed - last_keepalive:.3f} s after a keepalive")
        gone_at = None
        while time.monotonic() < killed + self.plan.ttl * 3:
            with contextlib.suppress(requests.RequestException, ValueError):
                if count_prefix(url, keys_prefix, timeout=1) == 0:
                    gone_at = time.monotonic()
                    break
            time.sleep(0.05)
        gone = gone_at - last_keepalive if gone_at else None
        log(f"its {before} keys gone {gone} s after its last keepalive")
        return {
            "node": name,
            "keys": before,
            "seconds_after_kill": gone_at - killed if gone_at else None,
            "seconds_after_last_keepalive": gone,
            "goal_seconds": self.plan.ttl + 1,
            "met": gone is not None and gone <= self.plan.ttl + 1,
        }

    # -- 5: the leader killed ---------------------------------------------------------------

    def leader_kill(self) -> dict[str, Any]:
        cluster, fleet, ttl = self.cluster, self.fleet, self.plan.ttl
        leader = cluster.leader()
        follower = next(m for m in cluster.members if m is not leader)
        before = read_prefix(follower.url, self.prefix + "/")
        status_before = fleet.status()
        leases_before = status_before.leases()
        probes = [
            WriteProbe([leader, *(m for m in cluster.members if m is not leader)], "via-leader"),
            WriteProbe(
                [follower, *(m for m in cluster.members if m is not follower)], "via-follower"
            ),
        ]
        for probe in probes:
            probe.start()
        time.sleep(1.0)
        rates = RequestRates(cluster, 1.0).start()
        fleet.reset_late()
        log(f"killing the leader {leader.name}")
        leader.kill()
        killed = time.monotonic()
        time.sleep(ttl + 5)  # every lease must live through a whole ttl on the others
        gaps = {p.name: p.back_after(killed) for p in probes}
        for probe in probes:
            probe.stop()
        new_leader = cluster.leader()
        status_after = fleet.status()
        lapsed = status_after.lapsed() - status_before.lapsed()
        leases_after = status_after.leases()
        changed = sum(1 for n, lease in leases_before.items() if leases_after.get(n) != lease)
        leader.launch()
        started = time.monotonic()
        while not leader.healthy():
            if time.monotonic() - started > 60:
                raise RuntimeError(f"{leader.name} did not rejoin")
            time.sleep(0.1)
        rates.stop()
        after = read_prefix(follower.url, self.prefix + "/")
        expected = fleet.expected(leases_after)
        missing = sum(1 for key in expected if key not in after)
        recreated = sum(  # deleted and put again meanwhile: a new create_revision
            1
            for key in expected
            if key in after and key in before and after[key][2] != before[key][2]
        )
        check = fleet.check(leases_after)
        back = [g for g in gaps.values() if g is not None]
        result = {
            "leader": leader.name,
            "new_leader": new_leader.name,
            "write_gap_seconds": gaps,
            "writes_back_seconds": max(back) if len(back) == len(gaps) else None,
            "lapsed": lapsed,
            "leases_changed": changed,
            "keys_lost": missing + recreated,
            "keys_missing": missing,
            "keys_recreated": recreated,
            "keys_checked": len(expected),
            "simulator_late_ms_max": status_after.late_ms,
            "right_after": check.right,
            "check": asdict(check),
            "peak_requests_per_second": max((r for _, r in rates.per_second(killed)), default=0),
            "rejoin_seconds": time.monotonic() - started,
        }
        log(
            f"leader kill: writes back after {gaps}; {lapsed} leases lapsed, {changed} changed, "
            f"{missing} keys missing, {recreated} put again; new leader {new_leader.name}; "
            f"simulator late by up to {status_after.late_ms} ms"
        )
        return result

    # -- 6: every member down -------------------------------------------------------------

    def outage(self, jitter: bool) -> dict[str, Any]:
        cluster, fleet, plan = self.cluster, self.fleet, self.plan
        if not jitter:  # the contrast: in the simulator processes only, restored after
            fleet.set_jitter(0.0, 0.0)
        try:
            status = fleet.status()
            leases = status.leases()
            right_at, check = wait_right(fleet, 60, leases=leases)
            if right_at is None:
                raise RuntimeError(f"etcd not right before the outage: {check}")
            log(f"all three members down for {plan.outage_seconds:g} s (jitter {jitter})")
            for member in cluster.members:
                member.kill()
            down = time.monotonic()
            cpu_before = fleet.cpu_seconds()
            fleet.reset_late()
            time.sleep(plan.outage_seconds)
            cpu_down = (fleet.cpu_seconds() - cpu_before) / (time.monotonic() - down) * 100
            rates = RequestRates(cluster, 1.0)
            for member in cluster.members:
                member.launch()
            launched = time.monotonic()
            rates.start()
            outage = launched - down
            healthy_at = None
            while time.monotonic() - launched < 60:
                if all(m.healthy() for m in cluster.members):
                    healthy_at = time.monotonic()
                    break
                time.sleep(0.05)
            log(f"members healthy {healthy_at - launched if healthy_at else None} s after start")
            cpu_before = fleet.cpu_seconds()
            right_at, check = wait_right(fleet, plan.converge_timeout, 0.2, leases)
            log(f"etcd right {right_at - launched if right_at else None} s after start: {check}")
            # the storm and the keepalives after it: a whole keepalive period past right
            settle_until = max(launched + plan.ttl, (right_at or launched) + plan.ttl / 3 + 2)
            time.sleep(max(0.0, settle_until - time.monotonic()))
            cpu_up = (fleet.cpu_seconds() - cpu_before) / (
                time.monotonic() - (healthy_at or launched)
            )
            rates.stop()
            for member in cluster.members:
                member.status()  # member ids for leader()
            series = rates.per_second(launched)
            peak = max(series, key=lambda s: s[1], default=(0.0, 0.0))
            after = fleet.status()
            try:
                due = fleet.due_times()
            except RuntimeError as exc:  # a host too busy to answer: the figure is left out
                log(f"no resync times: {exc}")
                due = []
            result = {
                "jitter": jitter,
                "outage_seconds": outage,
                "healthy_seconds": healthy_at - launched if healthy_at else None,
                "right_seconds": right_at - launched if right_at else None,
                "right_after_healthy_seconds": right_at - healthy_at
                if right_at and healthy_at
                else None,
                "check": asdict(check),
                "peak_requests_per_second": peak[1],
                "peak_at_seconds": peak[0],
                "series": [(round(t, 2), round(r, 1)) for t, r in series],
                "lapsed": after.lapsed() - status.lapsed(),
                "leases_changed": sum(
                    1 for i, lease in after.leases().items() if leases.get(i) != lease
                ),
                "failed_requests_during_outage": after.errors - status.errors,
                "simulator_cpu_percent_down": cpu_down,
                "simulator_cpu_percent_recovery": cpu_up * 100,
                "simulator_late_ms_max": after.late_ms,
                "next_resyncs_within_2s_share": _densest(due, 2.0) / max(1, len(due)),
            }
        finally:
            if not jitter:
                fleet.set_jitter(sidekick.lease.RETRY_JITTER, LOOP_JITTER)
        log(
            f"outage (jitter {jitter}): healthy after {result['healthy_seconds']} s, right after "
            f"{result['right_seconds']} s; peak {peak[1]:.0f} requests/s at +{peak[0]:.0f} s; "
            f"{result['lapsed']} lapsed; simulator CPU {cpu_down:.0f} % while down"
        )
        return result

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        plan = self.plan
        skip = set(plan.skip)
        if "latency" not in skip:
            self.latency("no-fleet")
        self.results["stages"] = [self.stage(size) for size in plan.stages]
        if "latency" not in skip:
            self.latency("fleet")
        if "dead" not in skip:
            self.results["dead_node"] = self.dead_node()
        if "leader" not in skip:
            self.results["leader_kill"] = self.leader_kill()
        self.results["outage"] = []
        if "outage" not in skip:
            self.results["outage"].append(self.outage(jitter=True))
        if plan.no_jitter_round and "nojitter" not in skip:
            self.results["outage"].append(self.outage(jitter=False))
        self.results["extra_stages"] = []
        for size in plan.extra_stages:  # more, at rest only, where this machine holds them
            try:
                self.results["extra_stages"].append(self.stage(size))
            except Exception as exc:  # the run's other figures stand; say why this one failed
                log(f"fleet of {size}: not measured: {exc!r}")
                self.results["extra_stages"].append({"nodes": size, "error": repr(exc)})
                break
        final = self.fleet.check()
        self.results["simulator"] = {"processes": plan.processes, "nice": plan.nice}
        self.results["final_check"] = asdict(final)
        self.results["duration_seconds"] = time.monotonic() - started
        self.results["machine"]["load_end"] = os.getloadavg()[0]
        return self.results


class WriteProbe:
    """A put of a new key every 20 ms through a Store (timeout 1 s) whose endpoints start at
    the given member: when each attempt started, and whether it succeeded."""

    def __init__(self, members: Sequence[EtcdMember], name: str) -> None:
        self.name = name
        self.store = Store([Endpoint("http", "127.0.0.1", m.client_port) for m in members], 1.0)
        self.attempts: list[tuple[float, float, bool]] = []  # (started, ended, ok)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for serial in itertools.count():
            if self._stop.is_set():
                return
            began = time.monotonic()
            try:
                ok, _ = self.store.txn([Put(f"/fleet-probe/{self.name}/{serial}", "x", 0)], 0)
            except EtcdError:
                ok = False
            self.attempts.append((began, time.monotonic(), ok))
            self._stop.wait(0.02)

    def back_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the end of the first write that started after it and
        succeeded."""
        for began, ended, ok in self.attempts:
            if began >= moment and ok:
                return ended - moment
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _pid(member: EtcdMember) -> int:
    assert member.process is not None, f"{member.name} is not running"
    return member.process.pid


def _densest(times: Sequence[float], width: float) -> int:
    """The most of `times` (sorted) inside any window of `width` seconds."""
    best, low = 0, 0
    for high, t in enumerate(times):
        while t - times[low] > width:
            low += 1
        best = max(best, high - low + 1)
    return best


def _methods(by_method: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:.1f}" for m, v in sorted(by_method.items()))


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def export_commit(commit: str, into: Path) -> Path:
    from bench.resync import export_commit as export  # noqa: PLC0415

    return export(commit, into)


# -- figures ----------------------------------------------------------------------------------


def ratios(stages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-node cost at the largest fleet : at the smallest."""
    small, large = stages[0], stages[-1]

    def r(name: str) -> float:
        a, b = small[name], large[name]
        return b / a if a and not math.isnan(a) and not math.isnan(b) else math.nan

    return {
        "nodes": [small["nodes"], large["nodes"]],
        "node_requests_per_minute": r("node_requests_per_minute"),
        "resync_requests": r("resync_requests"),
        "resync_bytes": r("resync_bytes_received"),
        "limit": RATIO_LIMIT,
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of the last stdout line."""

    def rd(value: Any, digits: int = 2) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return round(value, digits) if isinstance(value, float) else value

    line: dict[str, Any] = {"fleet_nodes": results["plan"]["stages"][-1]}
    line["fleet_keys"] = line["fleet_nodes"] * results["plan"]["services"]
    extra = [row for row in results.get("extra_stages", []) if "error" not in row]
    line["fleet_nodes_at_rest_max"] = max(row["nodes"] for row in [*results["stages"], *extra])
    for row in [*results["stages"], *extra]:
        n = row["nodes"]
        line[f"fleet_{n}_requests_per_s"] = rd(row["requests_per_second"], 1)
        line[f"fleet_{n}_keepalives_per_s"] = rd(row["keepalives_per_second"], 1)
        line[f"fleet_{n}_leader_cpu_percent"] = rd(row["leader_cpu_percent"], 1)
        line[f"fleet_{n}_member_rss_mb_max"] = rd(
            max(m["rss_mb"] for m in row["members"].values()), 1
        )
        line[f"fleet_{n}_db_mb_max"] = rd(
            max(m["db_bytes"] for m in row["members"].values()) / 1e6, 1
        )
        line[f"fleet_{n}_node_requests_per_min"] = rd(row["node_requests_per_minute"], 3)
        line[f"fleet_{n}_resync_requests"] = rd(row["resync_requests"], 2)
        line[f"fleet_{n}_resync_bytes"] = rd(row["resync_bytes_received"], 0)
        line[f"fleet_{n}_held"] = report.held(row)
    r = results["ratios"]
    line["fleet_node_cost_ratio"] = rd(r["node_requests_per_minute"], 3)
    line["fleet_resync_requests_ratio"] = rd(r["resync_requests"], 3)
    line["fleet_resync_bytes_ratio"] = rd(r["resync_bytes"], 3)
    line["fleet_ratio_limit"] = RATIO_LIMIT
    line["fleet_ratio_met"] = all(
        (v := r[k]) is not None and not math.isnan(v) and v <= RATIO_LIMIT
        for k in ("node_requests_per_minute", "resync_requests", "resync_bytes")
    )
    lat = results.get("latency", {})
    if "no-fleet" in lat and "fleet" in lat:
        without, with_ = lat["no-fleet"]["all"]["register"], lat["fleet"]["all"]["register"]
        line["agent_register_p50_ms"] = rd(without["p50"], 1)
        line["agent_register_p99_ms"] = rd(without["p99"], 1)
        line["agent_register_p50_ms_fleet"] = rd(with_["p50"], 1)
        line["agent_register_p99_ms_fleet"] = rd(with_["p99"], 1)
        line["agent_register_p99_ratio"] = rd(with_["p99"] / without["p99"], 2)
        seq = (lat["no-fleet"]["sequential"]["register"], lat["fleet"]["sequential"]["register"])
        line["agent_register_sequential_p99_ms"] = rd(seq[0]["p99"], 1)
        line["agent_register_sequential_p99_ms_fleet"] = rd(seq[1]["p99"], 1)
    if (dead := results.get("dead_node")) is not None:
        line["dead_node_keys_gone_s"] = rd(dead["seconds_after_last_keepalive"], 2)
        line["dead_node_goal_s"] = dead["goal_seconds"]
        line["dead_node_met"] = dead["met"]
    lapsed = [stage["lapsed"] for stage in results["stages"]]
    if (kill := results.get("leader_kill")) is not None:
        line["leader_kill_writes_back_s"] = rd(kill["writes_back_seconds"], 2)
        line["leader_kill_lapsed"] = kill["lapsed"]
        line["leader_kill_keys_lost"] = kill["keys_lost"]
        lapsed.append(kill["lapsed"])
    for outage in results.get("outage", []):
        tag = "outage" if outage["jitter"] else "outage_nojitter"
        line[f"{tag}_peak_requests_per_s"] = rd(outage["peak_requests_per_second"], 0)
        line[f"{tag}_healthy_s"] = rd(outage["healthy_seconds"], 2)
        line[f"{tag}_right_s"] = rd(outage["right_seconds"], 2)
        line[f"{tag}_lapsed"] = outage["lapsed"]
        line[f"{tag}_all_right"] = outage["check"]["right"]
        lapsed.append(outage["lapsed"])
    line["lapsed_total"] = sum(lapsed)
    line["ttl"] = results["plan"]["ttl"]
    line["quick"] = results["plan"]["quick"]
    line["commit"] = results["commit"]
    line["date"] = results["machine"]["date"]
    return line


# -- entry points -----------------------------------------------------------------------------


def execute(
    plan: FleetPlan, *, keep: bool, no_docs: bool, command: str, results_path: Path | None = None
) -> int:
    """Run the plan; save the results, write the docs (full runs), print the JSON line."""
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-fleet-"))
    bench = None
    if plan.agent:
        from bench.harness import Bench, Plan  # noqa: PLC0415 - the harness imports this module

        latency_plan = replace(
            Plan.make(quick=True), sequential=plan.sequential, bursts=plan.bursts
        )
        bench = Bench(latency_plan, workdir, None)
    run = FleetRun(plan, workdir, bench)
    ok = False
    try:
        run.start()
        results = run.run()
        ok = True
    finally:
        run.stop()
        if not ok:  # what was measured before the failure, for the post-mortem
            failed = workdir / "partial-results.json"
            failed.write_text(json.dumps(run.results, indent=1, default=str))
            log(f"partial results: {failed}")
        if keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"] = ratios(results["stages"])
    line = headline(results)
    results["headline"] = line
    results["command"] = command
    if results_path is None:
        name = "bench-fleet-quick-results.json" if plan.quick else "bench-fleet-results.json"
        results_path = ROOT / ".tmp" / name
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1, default=str))
    if not no_docs and not plan.quick:
        report.write_fleet(results, line, command, ROOT / "docs")
        log("wrote the fleet section of docs/benchmarks.md and the figures in docs/scale.md")
    print(json.dumps(line))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--nodes and --stages (and, for `python -m bench.fleet`, the rest)."""
    parser.add_argument(
        "--nodes",
        type=int,
        metavar="M",
        help="the largest fleet (default 2,000; stages at 500, 1,000, 2,000 below it)",
    )
    parser.add_argument(
        "--stages",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        metavar="M1,M2,...",
        help="fleet sizes measured at rest, ascending",
    )
    parser.add_argument(
        "--extra",
        type=lambda s: () if s == "none" else tuple(int(x) for x in s.split(",")),
        metavar="M1,...|none",
        help="larger fleets measured at rest only, after the faults, while this machine "
        "holds them (default 4,000 with the default stages)",
    )


def command_line(args: argparse.Namespace, base: str) -> str:
    parts = [base]
    if args.nodes:
        parts.append(f"--nodes {args.nodes}")
    if args.stages:
        parts.append("--stages " + ",".join(str(s) for s in args.stages))
    if args.extra is not None:
        parts.append("--extra " + (",".join(str(s) for s in args.extra) or "none"))
    if args.quick:
        parts.append("--quick")
    for name in ("ttl", "resync", "rest", "outage", "workers", "processes", "services"):
        if (value := getattr(args, name, None)) is not None:
            parts.append(f"--{name} {value:g}")
    if getattr(args, "no_agent", False):
        parts.append("--no-agent")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="CI: one small fleet, ttl 10")
    parser.add_argument("--no-agent", action="store_true", help="no real sidekick run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--no-docs", action="store_true", help="write no docs")
    parser.add_argument("--results", type=Path, metavar="JSON", help="where to save results")
    for name, kind, what in (
        ("ttl", int, "the nodes' lease TTL (s)"),
        ("resync", float, "the nodes' --resync (s)"),
        ("rest", float, "seconds each fleet is measured at rest"),
        ("outage", float, "seconds all three members stay down"),
        ("workers", int, "resync worker threads in each simulator process"),
        ("processes", int, "simulator processes"),
        ("services", int, "registrations a node"),
    ):
        parser.add_argument(f"--{name}", type=kind, help=what)
    parser.add_argument("--no-jitter-round", choices=("yes", "no"), help="the contrast round")
    parser.add_argument(
        "--skip",
        type=lambda s: tuple(s.split(",")),
        default=(),
        metavar="PHASES",
        help="leave out phases: latency, dead, leader, outage, nojitter",
    )
    args = parser.parse_args(argv)
    plan = FleetPlan.make(args.nodes, args.quick, args.stages)
    if args.extra is not None:
        plan = replace(plan, extra_stages=args.extra)
    changes: dict[str, Any] = {
        field: value
        for field, value in (
            ("ttl", args.ttl),
            ("resync", args.resync),
            ("rest_seconds", args.rest),
            ("outage_seconds", args.outage),
            ("workers", args.workers),
            ("processes", args.processes),
            ("services", args.services),
        )
        if value is not None
    }
    if args.no_agent:
        changes["agent"] = False
    if args.no_jitter_round is not None:
        changes["no_jitter_round"] = args.no_jitter_round == "yes"
    if args.skip:
        changes["skip"] = args.skip
    plan = replace(plan, **changes)
    periods = max(1, round(plan.rest_seconds / plan.resync))
    plan = replace(plan, rest_seconds=periods * plan.resync)  # each node resyncs k times in it
    return execute(
        plan,
        keep=args.keep,
        no_docs=args.no_docs,
        command=command_line(args, "python -m bench.fleet"),
        results_path=args.results,
    )


def on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    import importlib
    import signal

    this = importlib.import_module("bench.fleet")  # pickles name bench.fleet, not __main__
    signal.signal(signal.SIGTERM, on_term)
    sys.exit(this.main())
