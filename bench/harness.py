"""The benchmark: sidekick against a real Docker engine and a real etcd, with the seed's ways
measured in the same run. Started by ./bench/run (which installs what is missing).

    python -m bench.harness [--quick] [--profile DIR] [--keep]
    python -m bench.harness --latency-only | --realistic [--quick]   (one phase; prints, no docs)
    python -m bench.harness --resync-cost [--resyncs K]   (bench/resync.py only)
    python -m bench.harness --fleet [--nodes M] [--quick]   (bench/fleet.py only)
    python -m bench.harness --render-scale [--quick]      (bench/render_scale.py only)
    python -m bench.harness --reliability [--quick] [--chaos-seconds N] [--seed S]
                                  (bench/reliability.py: the reliability tests, docs/reliability.md)

Phases (all loopback, all bounded, everything labelled and removed at the end):
  1. the fast path's registration / deregistration latency (fixed ports, no healthcheck,
     containers that exit by themselves), one after another and in bursts of 20;
     baseline: one `etcdctl put`/`del` per start/die event (bench/seed-follow.sh)
  1b. the realistic workloads (bench/realistic.py): `-p 80` ports Docker picks, a HEALTHCHECK,
     `docker stop` with SIGTERM and with an image STOPSIGNAL, containers already running at the
     agent's start, bursts; beside them, containers announced by their own address on a bridge
     network of the run (`sidekick.address=container`); the agent's idle PSS and the
     import-only floor; baseline: a minimal Go registrar (bench/goregistrar, built with the
     machine's Go) in sidekick's place on the same host-port rounds, after them
  2. cold start with N = 50, 100, 200 running containers, and etcd requests made;
     baseline: one `etcdctl put` per running container (bench/seed-coldstart.sh)
  3. steady state with 100 registrations: etcd writes per minute, agent CPU and PSS;
     baselines: one CoreOS TTL loop per registration (bench/ttl-loop.sh, a grant and a put a
     round) and one v3 loop that keeps its lease (bench/ttl-loop-keepalive.sh)
  4. recovery after an etcd outage of 2 x ttl (baseline: the TTL loops through the same
     outage) and after the Docker socket is cut (no baseline)
The last line on stdout is one JSON object with the headline figures; docs/benchmarks.md and
docs/benchmarks-latency.png are written from the same numbers.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import requests

from bench import fleet, realistic, reliability, report, resync
from bench import render_scale as render_scale_mode
from bench.common import (
    CLK_TCK,
    GROUP_LABEL,
    ROOT,
    DockerEvents,
    EtcdProbe,
    Fleet,
    Member,
    Watch,
    cpu_ticks,
    diff_counts,
    etcd_disk_histograms,
    etcd_requests,
    group_pss_kb,
    histogram_quantile,
    pss_kb,
    rss_kb,
    stop_process,
    summary,
    wait_until,
    writes,
)
from tests.conftest import (
    AgentProcess,
    DockerSocketProxy,
    EtcdServer,
    build_busybox_image,
)

BENCH = Path(__file__).resolve().parent
BURST = 20
PROBE_INTERVAL_MS = 10.0
CHURN = 5  # containers that die and as many that start while a peer is away (recovery)
# Not passed to the agent: its own settings, and PYTHONDONTWRITEBYTECODE (set in some dev
# shells; a pip-installed agent has its bytecode compiled, so start-up is timed that way).
AGENT_ENV_DROP = frozenset({"COREOS_PRIVATE_IPV4", "DOCKER_HOST", "PYTHONDONTWRITEBYTECODE"})


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run."""

    quick: bool
    sequential: int  # containers started one after another
    bursts: int  # bursts of BURST containers started at once
    burst: int
    probe_interval_ms: float  # bench/probe.py's put interval
    cold_sizes: tuple[int, ...]
    cold_repeats: int
    steady_registrations: int
    steady_ttl: int
    steady_seconds: float
    ttl_loop_period: int
    ttl_loop_ttl: int
    ttl_loop_seconds: float
    recovery_ttl: int
    recovery_containers: int
    recovery_repeats: int
    recovery_baseline_repeats: int  # repeats in which the TTL loops' repair is timed too
    docker_cut_seconds: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(
            quick=quick,
            sequential=40 if quick else 200,
            bursts=2 if quick else 10,
            burst=BURST,
            probe_interval_ms=PROBE_INTERVAL_MS,
            cold_sizes=(50, 100, 200),
            cold_repeats=1 if quick else 3,
            steady_registrations=100,
            steady_ttl=30,
            steady_seconds=60 if quick else 300,
            ttl_loop_period=45,
            ttl_loop_ttl=60,
            ttl_loop_seconds=45 if quick else 135,  # whole periods: every loop runs k rounds
            recovery_ttl=6 if quick else 30,
            recovery_containers=20,
            recovery_repeats=3,
            recovery_baseline_repeats=1 if quick else 3,
            docker_cut_seconds=10,
        )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, plan: Plan, workdir: Path, profile_dir: Path | None) -> None:
        self.plan = plan
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.run_id = "b" + uuid.uuid4().hex[:8]
        self.base = f"/bench-{self.run_id}"
        self.client = docker.from_env(timeout=120)
        self.client.ping()
        self.image = build_busybox_image(self.client)
        self.fleet = Fleet(self.client, self.image, self.run_id)
        self.etcd = EtcdServer(workdir / "etcd-data")
        self.etcdctl = str(Path(sys.executable).parent / "etcdctl")
        self.events: DockerEvents | None = None
        self.watch: Watch | None = None
        self.agents: list[AgentProcess] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.proxy: DockerSocketProxy | None = None
        self.results: dict[str, Any] = {
            "plan": plan.__dict__,
            "run_id": self.run_id,
            "targets": report.TARGETS,
        }
        help_text = subprocess.run(
            [sys.executable, "-m", "sidekick", "run", "--help"],
            capture_output=True,
            text=True,
            check=False,
            env={
                **{k: v for k, v in os.environ.items() if k not in AGENT_ENV_DROP},
                "COLUMNS": "200",
            },
        ).stdout
        self.has_lease_file = "--lease-file" in help_text
        self.has_force_host_ip = "--force-host-ip" in help_text  # loopback refused without it

    # -- set-up and clean-up -------------------------------------------------------------

    def setup(self, watchers: bool = True, start_etcd: bool = True) -> None:
        """The run's network and etcd; with `watchers`, the Docker events reader and the etcd
        watcher the latency phase times against. start_etcd=False: self.etcd is already
        running (a member of the fleet's cluster)."""
        orphans = self.fleet.remove_orphans()
        if orphans:
            log(f"removed {orphans} containers left by an earlier, dead bench run")
        self.fleet.create_network()
        if start_etcd:
            self.etcd.start()
        if not watchers:
            log(f"etcd {self.etcd.url} (data {self.etcd.data_dir}); run id {self.run_id}")
            return
        self.events = DockerEvents(self.run_id, self.workdir / "events.log")
        self.watch = Watch(self.etcd.url, self.base + "/", self.workdir / "watch.log")
        log(f"etcd {self.etcd.url} (data {self.etcd.data_dir}); run id {self.run_id}")

    def cleanup(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.stop()
        for process in self.processes:
            with contextlib.suppress(Exception):
                stop_process(process, group=True)
        if self.watch is not None:
            self.watch.close()
        if self.events is not None:
            self.events.close()
        if self.proxy is not None:
            self.proxy.stop()
        with contextlib.suppress(Exception):
            removed = self.fleet.remove_run()
            log(f"removed {removed} containers")
        self.fleet.remove_network()
        with contextlib.suppress(Exception):
            self.etcd.stop()
        logs = ROOT / ".tmp" / "bench-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for path in self.workdir.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(path, logs / path.name)

    # -- helpers --------------------------------------------------------------------------

    def start_agent(
        self,
        name: str,
        prefix: str,
        group: str,
        *,
        ttl: int = 30,
        docker_url: str | None = None,
        wait_ready: bool = True,
        extra_filter: str | None = None,
        etcd_url: str | None = None,
        extra: tuple[str, ...] = (),
        make: Callable[[list[str], Path, dict[str, str]], AgentProcess] = AgentProcess,
    ) -> AgentProcess:
        args = [
            "--etcd-endpoints",
            etcd_url or self.etcd.url,
            "--prefix",
            prefix,
            "--filter",
            extra_filter or f"label={GROUP_LABEL}={self.run_id}-{group}",
            "--ttl",
            str(ttl),
            "--host-ip",
            "127.0.0.1",
            "--log-format",
            "json",
            "--environment-file",
            str(self.workdir / "environment"),
        ]
        if self.has_force_host_ip:  # every container publishes on 127.0.0.1 only
            args.append("--force-host-ip")
        if self.has_lease_file:  # one per agent, as on separate nodes
            args += ["--lease-file", str(self.workdir / f"lease-{name}")]
        if docker_url:
            args += ["--docker-url", docker_url]
        args += extra
        (self.workdir / "environment").touch()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SIDEKICK_") and k not in AGENT_ENV_DROP
        }
        agent = make(args, self.workdir / f"agent-{name}.log", env).start()
        self.agents.append(agent)
        if wait_ready:
            agent.wait_log("reconciled", timeout=60)
        return agent

    def stop_agent(self, agent: AgentProcess) -> None:
        agent.stop()
        with contextlib.suppress(ValueError):
            self.agents.remove(agent)

    def spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log_name).open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def reap(self, process: subprocess.Popen[Any]) -> None:
        stop_process(process, group=True)
        with contextlib.suppress(ValueError):
            self.processes.remove(process)

    # -- 1. latency ------------------------------------------------------------------------

    def latency_round(self, tag: str, prefix: str, group: str) -> dict[str, Any]:
        """Sequential then bursts; per container: start -> PUT seen, die -> DELETE seen."""
        assert self.watch is not None and self.events is not None
        watch, fleet, plan = self.watch, self.fleet, self.plan

        def full(m: Member) -> str:
            return f"{prefix}/{m.key}"

        # one warm-up container, not counted: first connections, first imports on the path
        warm = fleet.start(group)
        watch.wait_seen([full(warm)], "PUT", 15)
        fleet.crash(warm)
        watch.wait_seen([full(warm)], "DELETE", 15)
        fleet.remove([warm])

        # what one etcd write costs meanwhile: etcd's part of any agent's latency
        probe = EtcdProbe(
            self.etcd.url,
            f"/sidekick-bench-probe/{tag}",
            self.workdir / "probe.log",
            interval_ms=plan.probe_interval_ms,
        )
        windows: dict[str, list[tuple[int, int]]] = {"sequential": [], "burst": []}
        disk = {"start": etcd_disk_histograms(self.etcd.url)}
        log(f"{tag}: {plan.sequential} containers one after another")
        sequential: list[Member] = []
        began = time.time_ns()
        for _ in range(plan.sequential):
            member = fleet.start(group)
            watch.wait_seen([full(member)], "PUT", 10)
            sequential.append(member)
            time.sleep(0.02)
        for member in sequential:
            fleet.crash(member)
            watch.wait_seen([full(member)], "DELETE", 10)
            time.sleep(0.02)
        windows["sequential"].append((began, time.time_ns()))
        disk["sequential"] = etcd_disk_histograms(self.etcd.url)
        fleet.remove(sequential)

        log(f"{tag}: {plan.bursts} bursts of {BURST} at once")
        bursts: list[Member] = []
        with ThreadPoolExecutor(BURST) as pool:
            for _ in range(plan.bursts):
                began = time.time_ns()
                members = list(pool.map(lambda _i: fleet.start(group), range(BURST)))
                watch.wait_seen([full(m) for m in members], "PUT", 20)
                list(pool.map(fleet.crash, members))
                watch.wait_seen([full(m) for m in members], "DELETE", 20)
                windows["burst"].append((began, time.time_ns()))
                fleet.remove(members)
                bursts.extend(members)
                time.sleep(0.2)

        probe.close()
        disk["burst"] = etcd_disk_histograms(self.etcd.url)
        out: dict[str, Any] = {}
        for mode, members in (("sequential", sequential), ("burst", bursts)):
            reg, dereg, reg_missing, dereg_missing = [], [], 0, 0
            after_delivery: dict[str, list[float]] = {"register": [], "deregister": []}
            for m in members:
                started = self.events.time_of(m.id, "start")
                died = self.events.time_of(m.id, "die")
                put = watch.first(full(m), "PUT")
                gone = watch.first(full(m), "DELETE")
                if started and put:
                    reg.append((put - started) / 1e6)
                    if (late := self.events.delivery_ms(m.id, "start")) is not None:
                        after_delivery["register"].append((put - started) / 1e6 - late)
                else:
                    reg_missing += 1
                if died and gone:
                    dereg.append((gone - died) / 1e6)
                    if (late := self.events.delivery_ms(m.id, "die")) is not None:
                        after_delivery["deregister"].append((gone - died) / 1e6 - late)
                else:
                    dereg_missing += 1
            delivery = {
                action: [
                    d for m in members if (d := self.events.delivery_ms(m.id, action)) is not None
                ]
                for action in ("start", "die")
            }
            out[mode] = {
                "register_ms": reg,
                "deregister_ms": dereg,
                "docker_delivery": {a: summary(v) for a, v in delivery.items()},
                "after_delivery": {k: summary(v) for k, v in after_delivery.items()},
                "register": summary(reg, reg_missing),
                "deregister": summary(dereg, dereg_missing),
                "etcd_put": summary(probe.within(windows[mode])),
                "etcd_disk_p99_ms": {  # the bucket bound: "at most"
                    name: histogram_quantile(
                        disk[mode].get(name, {}),
                        disk["start" if mode == "sequential" else "sequential"].get(name, {}),
                        0.99,
                    )[0]
                    for name in disk[mode]
                },
            }
        every_reg = out["sequential"]["register_ms"] + out["burst"]["register_ms"]
        every_dereg = out["sequential"]["deregister_ms"] + out["burst"]["deregister_ms"]
        out["all"] = {
            "register": summary(
                every_reg,
                out["sequential"]["register"]["missing"] + out["burst"]["register"]["missing"],
            ),
            "deregister": summary(
                every_dereg,
                out["sequential"]["deregister"]["missing"] + out["burst"]["deregister"]["missing"],
            ),
        }
        return out

    def phase_latency(self, baseline: bool = True) -> None:
        log("phase 1: registration latency (sidekick)")
        prefix = f"{self.base}/lat"
        agent = self.start_agent("latency", prefix, "lat")
        profiler = None
        if self.profile_dir is not None:
            profiler = self.start_profiler(agent, "latency")
        assert agent.process is not None
        ticks = cpu_ticks(agent.process.pid)
        try:
            self.results["latency"] = self.latency_round("sidekick", prefix, "lat")
            events = 2 * (self.results["latency"]["all"]["register"]["n"] + 1)  # + warm-up
            self.results["latency"]["agent_cpu_ms_per_event"] = (
                (cpu_ticks(agent.process.pid) - ticks) / CLK_TCK * 1000 / events
            )
        finally:
            if profiler is not None:
                self.stop_profiler(profiler)
            self.stop_agent(agent)
        if not baseline:
            return

        log("phase 1: registration latency (baseline: etcdctl per event)")
        prefix = f"{self.base}/seed"
        follower = self.spawn(
            [
                str(BENCH / "seed-follow.sh"),
                self.etcdctl,
                self.etcd.url,
                prefix,
                f"{GROUP_LABEL}={self.run_id}-seed",
                "3600",
            ],
            "seed-follow.log",
        )
        time.sleep(1.0)  # `docker events` connects; the warm-up container checks it did
        try:
            self.results["latency_seed"] = self.latency_round("seed", prefix, "seed")
        finally:
            self.reap(follower)

    # -- 2. cold start ---------------------------------------------------------------------

    def phase_coldstart(self) -> list[Member]:
        plan = self.plan
        biggest = max(plan.cold_sizes)
        log(f"phase 2: cold start; starting {biggest} containers")

        def labels(index: int) -> dict[str, str]:
            return {f"sidekick.bench.first{n}": self.run_id for n in plan.cold_sizes if index < n}

        members = self.fleet.start_many("cold", biggest, labels)
        assert self.watch is not None
        out: dict[str, Any] = {}
        for n in plan.cold_sizes:
            label = f"label=sidekick.bench.first{n}={self.run_id}"
            keys_of = members[:n]
            runs: list[dict[str, Any]] = []
            seed_runs: list[dict[str, Any]] = []
            for repeat in range(plan.cold_repeats):
                time.sleep(1.0)
                prefix = f"{self.base}/cold{n}r{repeat}"
                keys = [f"{prefix}/{m.key}" for m in keys_of]
                before = etcd_requests(self.etcd.url)
                t0 = time.time_ns()
                agent = self.start_agent(
                    f"cold{n}r{repeat}", prefix, "cold", wait_ready=False, extra_filter=label
                )
                complete = self.watch.wait_seen(keys, "PUT", 60)
                arrivals = [self.watch.first(k, "PUT") or 0 for k in keys]
                time.sleep(0.5)
                counts = diff_counts(etcd_requests(self.etcd.url), before)
                reconciled = [e.get("seconds") for e in agent.events("reconciled")]
                self.stop_agent(agent)
                runs.append(
                    {
                        "seconds": (max(arrivals) - t0) / 1e9 if complete else math.nan,
                        "first_key_seconds": (min(arrivals) - t0) / 1e9 if complete else math.nan,
                        "requests": sum(counts.values()),
                        "by_method": counts,
                        "reconcile_seconds": reconciled[0] if reconciled else None,
                    }
                )
                # baseline: one etcdctl put per running container
                prefix = f"{self.base}/seedcold{n}r{repeat}"
                keys = [f"{prefix}/{m.key}" for m in keys_of]
                before = etcd_requests(self.etcd.url)
                t0 = time.time_ns()
                script = self.spawn(
                    [
                        str(BENCH / "seed-coldstart.sh"),
                        self.etcdctl,
                        self.etcd.url,
                        prefix,
                        label.removeprefix("label="),
                    ],
                    "seed-coldstart.log",
                )
                complete = self.watch.wait_seen(keys, "PUT", 120)
                arrivals = [self.watch.first(k, "PUT") or 0 for k in keys]
                script.wait(60)
                self.reap(script)
                counts = diff_counts(etcd_requests(self.etcd.url), before)
                seed_runs.append(
                    {
                        "seconds": (max(arrivals) - t0) / 1e9 if complete else math.nan,
                        "requests": sum(counts.values()),
                        "by_method": counts,
                    }
                )
            out[str(n)] = {
                "runs": runs,
                "seed_runs": seed_runs,
                "seconds": _median([r["seconds"] for r in runs]),
                "requests": _median([r["requests"] for r in runs]),
                "seed_seconds": _median([r["seconds"] for r in seed_runs]),
                "seed_requests": _median([r["requests"] for r in seed_runs]),
            }
            log(
                f"cold start {n}: {out[str(n)]['seconds']:.3f} s, "
                f"{out[str(n)]['requests']} etcd requests "
                f"(seed: {out[str(n)]['seed_seconds']:.3f} s, {out[str(n)]['seed_requests']})"
            )
        if self.profile_dir is not None:
            self.profile_coldstart(members, max(plan.cold_sizes))
        self.results["coldstart"] = out
        return members

    # -- 3. steady state -------------------------------------------------------------------

    def sample_writes(
        self, seconds: float, sample: Callable[[], None] | None = None
    ) -> tuple[dict[str, int], float, float]:
        """etcd's requests over `seconds`, polled every 0.5 s (calling `sample` each time):
        (requests by method, elapsed, writes/min). One formula for every side of the steady
        state: `_interval_rate` over the times the write count went up."""
        before = etcd_requests(self.etcd.url)
        t0 = time.monotonic()
        marks: list[tuple[float, int]] = []
        last = 0
        while time.monotonic() - t0 < seconds:
            if sample is not None:
                sample()
            time.sleep(0.5)
            now_writes = writes(diff_counts(etcd_requests(self.etcd.url), before))
            if now_writes != last:
                marks.append((time.monotonic(), now_writes))
                last = now_writes
        elapsed = time.monotonic() - t0
        counts = diff_counts(etcd_requests(self.etcd.url), before)
        return counts, elapsed, _interval_rate(marks, writes(counts), elapsed)

    def phase_steady(self, members: list[Member]) -> None:
        plan = self.plan
        n = plan.steady_registrations
        assert self.watch is not None
        log(
            f"phase 3: steady state, {n} registrations, {plan.steady_seconds:.0f} s, "
            f"ttl {plan.steady_ttl}"
        )
        prefix = f"{self.base}/steady"
        label = f"label=sidekick.bench.first{n}={self.run_id}"
        agent = self.start_agent("steady", prefix, "cold", ttl=plan.steady_ttl, extra_filter=label)
        assert agent.process is not None
        pid = agent.process.pid
        keys = [f"{prefix}/{m.key}" for m in members[:n]]
        self.watch.wait_seen(keys, "PUT", 30)
        time.sleep(3)  # let start-up settle; the window starts idle
        rss_start, pss_start = rss_kb(pid), pss_kb(pid)
        ticks = cpu_ticks(pid)
        rss: list[int] = []
        pss: list[int] = []

        def sample() -> None:
            rss.append(rss_kb(pid))
            pss.append(pss_kb(pid))

        counts, elapsed, rate = self.sample_writes(plan.steady_seconds, sample)
        cpu = (cpu_ticks(pid) - ticks) / CLK_TCK
        present = sum(1 for k in keys if self.watch.present.get(k))
        self.stop_agent(agent)
        steady = {
            "registrations": n,
            "ttl": plan.steady_ttl,
            "present_at_end": present,
            "seconds": elapsed,
            "writes_per_min": rate,
            "writes_in_window_per_min": writes(counts) / elapsed * 60,
            "requests_per_min": sum(counts.values()) / elapsed * 60,
            "by_method": counts,
            "cpu_percent": cpu / elapsed * 100,
            "rss_mb_start": rss_start / 1024,
            "rss_mb_mean": sum(rss) / len(rss) / 1024,
            "rss_mb_max": max(rss) / 1024,
            "pss_mb_start": pss_start / 1024,
            "pss_mb_mean": sum(pss) / len(pss) / 1024,
            "pss_mb_max": max(pss) / 1024,
        }
        log(
            f"steady: {steady['writes_per_min']:.1f} writes/min, "
            f"cpu {steady['cpu_percent']:.2f} %, pss {steady['pss_mb_max']:.1f} MB "
            f"(rss {steady['rss_mb_max']:.1f} MB)"
        )
        self.results["steady"] = steady
        self.results["steady_ttl_loop"] = self.ttl_loops("ttl-loop.sh", "ttlloop", members[:n])
        self.results["steady_ttl_keepalive"] = self.ttl_loops(
            "ttl-loop-keepalive.sh", "ttlkeep", members[:n]
        )

    def ttl_loops(self, script: str, tag: str, members: list[Member]) -> dict[str, Any]:
        """One `script` loop per registration, at random phases, for ttl_loop_seconds after
        one period of warm-up (the first rounds): its etcd writes (the same formula as the
        agent's), CPU and PSS (every process of the loops' process groups: the shells and the
        etcdctl each runs at that moment)."""
        plan, n = self.plan, len(members)
        log(
            f"phase 3: baseline, {n} x {script} (period {plan.ttl_loop_period} s, ttl "
            f"{plan.ttl_loop_ttl}), {plan.ttl_loop_seconds:.0f} s"
        )
        prefix = f"{self.base}/{tag}"
        rng = random.Random(7)
        spawned = time.monotonic()
        loops = [
            self.spawn(
                [
                    str(BENCH / script),
                    self.etcdctl,
                    self.etcd.url,
                    f"{prefix}/{m.key}",
                    m.value,
                    str(plan.ttl_loop_period),
                    str(plan.ttl_loop_ttl),
                    f"{rng.uniform(0, plan.ttl_loop_period - 1):.2f}",
                    str(int(plan.ttl_loop_seconds + 2 * plan.ttl_loop_period + 30)),
                ],
                f"{tag}.log",
            )
            for m in members
        ]
        # every loop's first round (a grant and a put on both kinds) falls within one period
        # of the spawn: the window starts after it, so it holds their steady rounds only
        time.sleep(max(0.0, spawned + plan.ttl_loop_period + 1 - time.monotonic()))

        def ticks() -> int:
            total = 0
            for p in loops:
                with contextlib.suppress(OSError):
                    total += cpu_ticks(p.pid, children=True)
            return total

        ticks_before = ticks()
        pss: list[int] = []
        rss: list[int] = []

        def sample() -> None:
            pss.append(group_pss_kb(p.pid for p in loops))
            with contextlib.suppress(OSError):
                rss.append(sum(rss_kb(p.pid) for p in loops))

        counts, elapsed, rate = self.sample_writes(plan.ttl_loop_seconds, sample)
        loop_ticks = ticks() - ticks_before
        for p in loops:
            self.reap(p)
        out = {
            "script": script,
            "registrations": n,
            "period": plan.ttl_loop_period,
            "ttl": plan.ttl_loop_ttl,
            "seconds": elapsed,
            "writes_per_min": rate,
            "writes_in_window_per_min": writes(counts) / elapsed * 60,
            "puts_per_min": counts.get("Put", 0) / elapsed * 60,
            "by_method": counts,
            "cpu_percent": loop_ticks / CLK_TCK / elapsed * 100,
            "pss_mb_mean": (sum(pss) / len(pss) / 1024) if pss else math.nan,
            "pss_mb_max": (max(pss) / 1024) if pss else math.nan,
            "rss_sum_mb_mean": (sum(rss) / len(rss) / 1024) if rss else math.nan,
        }
        log(f"{script}: {rate:.1f} writes/min, pss {out['pss_mb_mean']:.1f} MB")
        return out

    # -- 4. recovery -----------------------------------------------------------------------

    def right(self, prefix: str, members: list[Member], session: requests.Session) -> bool:
        """etcd holds exactly the keys of these containers under prefix."""
        want = {f"{prefix}/{m.key}": m.value for m in members}
        try:
            have = _range(session, self.etcd.url, prefix + "/")
        except (requests.RequestException, ValueError):
            return False
        return have == want

    def churn(self, alive: list[Member], group: str, count: int = CHURN) -> list[Member]:
        """While a peer is away: `count` containers die and `count` new ones start."""
        gone, kept = alive[:count], alive[count:]
        for m in gone:
            self.fleet.crash(m)
        wait_until(lambda: all(not self._running(m) for m in gone), 15, 0.05)
        return kept + [self.fleet.start(group) for _ in range(count)]

    def _running(self, member: Member) -> bool:
        try:
            return bool(self.client.api.inspect_container(member.id)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def phase_recovery(self) -> None:
        """Each peer goes away `recovery_repeats` times, with churn while it is away."""
        plan = self.plan
        ttl = plan.recovery_ttl
        session = requests.Session()
        alive = [self.fleet.start("rec") for _ in range(plan.recovery_containers)]

        log(
            f"phase 4: recovery from an etcd outage of {2 * ttl} s (ttl {ttl}), "
            f"{plan.recovery_repeats} times"
        )
        prefix = f"{self.base}/recetcd"
        agent = self.start_agent("recovery-etcd", prefix, "rec", ttl=ttl)
        if self.watch is not None:  # its stream ends with etcd; the later phases need none
            self.watch.close()
            self.watch = None
        # the baseline through the same outages: the seed's TTL loop (bench/ttl-loop.sh), one
        # per running container, stopped when its container dies (as its unit would be)
        loop_prefix = f"{self.base}/recttl"
        loops = {m.id: self._recovery_loop(loop_prefix, m) for m in alive}
        etcd_runs = []
        for repeat in range(plan.recovery_repeats):
            baseline = repeat < plan.recovery_baseline_repeats
            wait_until(functools.partial(self.right, prefix, alive, session), 30, 0.05)
            if baseline:
                wait_until(functools.partial(self.right, loop_prefix, alive, session), 60, 0.05)
            time.sleep(1.0)
            self.etcd.stop()
            down = time.monotonic()
            before = {m.id for m in alive}
            alive = self.churn(alive, "rec")
            for gone in before - {m.id for m in alive}:
                self.reap(loops.pop(gone))
            for m in alive:
                if m.id not in loops:
                    loops[m.id] = self._recovery_loop(loop_prefix, m)
            time.sleep(max(0.0, down + 2 * ttl - time.monotonic()))
            back, fixed = self._restart_etcd_and_time(prefix, alive, session)
            run: dict[str, Any] = {
                "seconds": fixed - back["healthy"] if fixed else math.nan,
                "etcd_boot_seconds": back["boot"],
            }
            log(f"recovery from etcd: {run['seconds']:.3f} s after it answered")
            if baseline:
                limit = plan.ttl_loop_ttl + plan.ttl_loop_period + 30
                loop_fixed = None
                while time.monotonic() < back["healthy"] + limit:
                    if self.right(loop_prefix, alive, session):
                        loop_fixed = time.monotonic()
                        break
                    time.sleep(0.05)
                run["ttl_loop_seconds"] = loop_fixed - back["healthy"] if loop_fixed else math.nan
                run["ttl_loop_limit_seconds"] = limit
                log(f"recovery, TTL loops: {run['ttl_loop_seconds']:.3f} s after etcd answered")
            etcd_runs.append(run)
        for process in loops.values():
            self.reap(process)
        retries = len(agent.events("retry scheduled"))
        self.stop_agent(agent)
        loop_runs = [r["ttl_loop_seconds"] for r in etcd_runs if "ttl_loop_seconds" in r]
        etcd_result = {
            "ttl_loop_seconds": max(loop_runs) if loop_runs else math.nan,
            "ttl_loop_runs": len(loop_runs),
            "churn": CHURN,
            "containers": plan.recovery_containers,
            "ttl": ttl,
            "outage_seconds": 2 * ttl,
            "runs": etcd_runs,
            "seconds": max(r["seconds"] for r in etcd_runs),
            "median_seconds": _median([r["seconds"] for r in etcd_runs]),
            "etcd_boot_seconds": _median([r["etcd_boot_seconds"] for r in etcd_runs]),
            "retries_logged": retries,
        }

        log(
            f"phase 4: recovery from a Docker socket cut of {plan.docker_cut_seconds:.0f} s, "
            f"{plan.recovery_repeats} times"
        )
        self.proxy = DockerSocketProxy(self.workdir / "docker.sock")  # removed with workdir
        self.proxy.start()
        prefix = f"{self.base}/recdocker"
        agent = self.start_agent(
            "recovery-docker", prefix, "rec", ttl=ttl, docker_url=self.proxy.url
        )
        docker_runs = []
        for _ in range(plan.recovery_repeats):
            wait_until(functools.partial(self.right, prefix, alive, session), 30, 0.05)
            time.sleep(1.0)
            self.proxy.stop()
            cut = time.monotonic()
            alive = self.churn(alive, "rec")
            time.sleep(max(0.0, cut + plan.docker_cut_seconds - time.monotonic()))
            self.proxy.start()
            restored = time.monotonic()
            fixed_at = None
            while time.monotonic() < restored + 60:
                if self.right(prefix, alive, session):
                    fixed_at = time.monotonic()
                    break
                time.sleep(0.005)
            docker_runs.append({"seconds": fixed_at - restored if fixed_at else math.nan})
            log(f"recovery from docker: {docker_runs[-1]['seconds']:.3f} s after it returned")
        retries = len(agent.events("retry scheduled"))
        self.stop_agent(agent)
        docker_result = {
            "cut_seconds": plan.docker_cut_seconds,
            "runs": docker_runs,
            "seconds": max(r["seconds"] for r in docker_runs),
            "median_seconds": _median([r["seconds"] for r in docker_runs]),
            "retries_logged": retries,
        }
        self.results["recovery"] = {"etcd": etcd_result, "docker": docker_result}

    def _recovery_loop(self, prefix: str, member: Member) -> subprocess.Popen[bytes]:
        """The seed's TTL loop for one container, its first round within a second."""
        plan = self.plan
        return self.spawn(
            [
                str(BENCH / "ttl-loop.sh"),
                self.etcdctl,
                self.etcd.url,
                f"{prefix}/{member.key}",
                member.value,
                str(plan.ttl_loop_period),
                str(plan.ttl_loop_ttl),
                f"{random.uniform(0, 1):.2f}",
                "3600",
            ],
            "recovery-ttl-loop.log",
        )

    def _restart_etcd_and_time(
        self, prefix: str, alive: list[Member], session: requests.Session
    ) -> tuple[dict[str, float], float | None]:
        """Start etcd again; poll every 5 ms for healthy, then for right."""
        spawned = time.monotonic()
        starter = threading.Thread(target=self.etcd.start, daemon=True)
        starter.start()
        healthy = None
        deadline = spawned + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException, ValueError):
                answer = session.get(self.etcd.url + "/health", timeout=0.5).json()
                if answer.get("health") == "true":
                    healthy = time.monotonic()
                    break
            time.sleep(0.005)
        if healthy is None:
            raise RuntimeError("etcd did not come back")
        fixed = None
        while time.monotonic() < deadline:
            if self.right(prefix, alive, session):
                fixed = time.monotonic()
                break
            time.sleep(0.005)
        starter.join(30)
        return {"healthy": healthy, "boot": healthy - spawned}, fixed

    # -- profiling (optional) --------------------------------------------------------------

    def start_profiler(self, agent: AgentProcess, name: str) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists() or agent.process is None or self.profile_dir is None:
            log("py-spy not found; no profile")
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        argv = [spy, "record", "--pid", str(agent.process.pid), "--rate", "200", "--nonblocking"]
        argv += ["--format"]
        argv += ["raw", "--output", str(self.profile_dir / f"{name}.txt"), "--threads"]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_profiler(self, profiler: subprocess.Popen[bytes]) -> None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()

    def profile_coldstart(self, members: list[Member], n: int) -> None:
        """One more cold start of n under py-spy (not counted: the sampler slows it)."""
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists() or self.profile_dir is None:
            return
        assert self.watch is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.base}/coldprof"
        label = f"label=sidekick.bench.first{n}={self.run_id}"
        agent = self.start_agent("coldprof", prefix, "cold", wait_ready=False, extra_filter=label)
        assert agent.process is not None
        profiler = subprocess.Popen(
            [
                *(str(spy), "record", "--pid", str(agent.process.pid), "--rate", "500"),
                "--nonblocking",
                *("--format", "raw", "--output", str(self.profile_dir / "coldstart.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.watch.wait_seen([f"{prefix}/{m.key}" for m in members[:n]], "PUT", 60)
        self.stop_profiler(profiler)
        self.stop_agent(agent)

    # -- the whole run ---------------------------------------------------------------------

    def phase_realistic(self) -> None:
        log("phase 1b: the realistic workloads (sidekick, then the Go registrar in its place)")
        plan = realistic.RealisticPlan.make(self.plan.quick)
        self.results["realistic"] = realistic.run(self, plan)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.results["machine"] = report.machine(self.client, self.etcd.url)
        self.results["agent_settings"] = agent_settings()
        self.phase_latency()
        self.phase_realistic()
        members = self.phase_coldstart()
        self.phase_steady(members)
        self.fleet.remove(members)
        self.phase_recovery()
        self.results["duration_seconds"] = time.monotonic() - started
        self.results["machine"]["load_end"] = os.getloadavg()[0]
        return self.results


def _interval_rate(marks: list[tuple[float, int]], total: int, elapsed: float) -> float:
    """Writes per minute from the times the count went up (0.5 s resolution).

    A 60 s window holds 6 or 7 keepalives sent every 10 s depending on where it starts; the
    writes after the first change, over the time from the first change to the last, do not
    depend on that phase. Falls back to count / window with fewer than 3 changes.
    """
    if len(marks) < 3:
        return total / elapsed * 60
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    return (n_last - n_first) / (t_last - t_first) * 60


def _median(values: list[float]) -> float:
    clean = sorted(v for v in values if not (isinstance(v, float) and math.isnan(v)))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def _range(session: requests.Session, url: str, prefix: str) -> dict[str, str]:
    end = bytearray(prefix.encode())
    end[-1] += 1
    answer = session.post(
        f"{url}/v3/kv/range",
        json={
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(bytes(end)).decode(),
        },
        timeout=1,
    )
    answer.raise_for_status()
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in answer.json().get("kvs", [])
    }


def agent_settings() -> dict[str, Any]:
    """The agent's retry backoff at the run's commit, read from its code (for the report's
    prose: nothing about the agent is typed into report.py)."""
    from sidekick import lease  # noqa: PLC0415 (the harness's own copy of the package)

    return {
        "retry_longest_s": getattr(lease, "RETRY_LONGEST", None),
        "retry_jitter_s": getattr(lease, "RETRY_JITTER", None),
    }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _bare_headline(bare: dict[str, Any] | None) -> dict[str, Any]:
    """The bare registrar's figures in the headline, apart from sidekick's (bare_*)."""
    if bare is None:  # a run before bench/bareregistrar.py
        return {}
    if not bare.get("measured"):
        return {"bare_registrar_measured": False}
    every = bare["sequential"]["all"]
    return {
        "bare_registrar_measured": True,
        **{
            f"bare_register_{kind}_p50_ms": _r(row["register"]["p50"])
            for kind, row in bare["sequential"].items()
        },
        "bare_register_sequential_p99_ms": _r(every["register"]["p99"]),
        "bare_cpu_ms_per_event": _r(bare["agent_cpu_ms_per_event_sequential"], 3),
        "bare_wrong": every["wrong_values"],
        "bare_missing": every["register"]["missing"] + every["deregister_from_kill"]["missing"],
    }


def realistic_headline(real: dict[str, Any]) -> dict[str, Any]:
    """The realistic mix's figures: the headline's register/deregister figures; then the
    container-address kind's own (not in the mix's "all"), when the run has it; then the Go
    registrar's on the same rounds (go_*), when the run has its round."""
    return _sidekick_headline(real) | go_headline(real)


def go_headline(real: dict[str, Any]) -> dict[str, Any]:
    """The Go registrar's figures (bench/goregistrar), named as sidekick's with go_ before
    them; only go_registrar_measured: false when it could not be built."""
    go = real.get("go_registrar")
    if go is None:  # a run before the Go round
        return {}
    if not go.get("measured"):
        return {"go_registrar_measured": False}
    a, seq, burst = go["all"], go["sequential"]["all"], go["burst"]["all"]
    run = go["running"]
    return {
        "go_registrar_measured": True,
        "go_register_p50_ms": _r(a["register"]["p50"]),
        "go_register_p99_ms": _r(a["register"]["p99"]),
        "go_register_sequential_p50_ms": _r(seq["register"]["p50"]),
        "go_register_sequential_p99_ms": _r(seq["register"]["p99"]),
        "go_register_burst_p99_ms": _r(burst["register"]["p99"]),
        "go_deregister_from_kill_p50_ms": _r(a["deregister_from_kill"]["p50"]),
        "go_deregister_from_kill_p99_ms": _r(a["deregister_from_kill"]["p99"]),
        "go_deregister_from_die_p50_ms": _r(a["deregister_from_die"]["p50"]),
        "go_agent_cpu_ms_per_event": _r(go["agent_cpu_ms_per_event"], 3),
        "go_running_at_start_s": _r(run["seconds"], 3),
        "go_idle_pss_mb": _r(run["idle_pss_mb"], 1),
        "go_samples": a["register"]["n"],
        "go_missing": a["register"]["missing"]
        + a["deregister_from_kill"]["missing"]
        + a["deregister_from_die"]["missing"],
        "go_wrong": seq["wrong_values"] + burst["wrong_values"] + run["wrong_values"],
    }


def _sidekick_headline(real: dict[str, Any]) -> dict[str, Any]:
    a, seq, burst = real["all"], real["sequential"]["all"], real["burst"]["all"]
    put_p99 = real["burst"]["etcd_put"]["p99"]
    line = {
        "register_p50_ms": _r(a["register"]["p50"]),
        "register_p95_ms": _r(a["register"]["p95"]),
        "register_p99_ms": _r(a["register"]["p99"]),
        "register_max_ms": _r(a["register"]["max"]),
        "register_sequential_p50_ms": _r(seq["register"]["p50"]),
        "register_sequential_p99_ms": _r(seq["register"]["p99"]),
        "register_burst_p99_ms": _r(burst["register"]["p99"]),
        "burst_etcd_put_p99_ms": _r(put_p99),
        "burst_register_p99_limit_ms": _r(max(15.0, 1.5 * put_p99)),
        "deregister_from_kill_p50_ms": _r(a["deregister_from_kill"]["p50"]),
        "deregister_from_kill_p99_ms": _r(a["deregister_from_kill"]["p99"]),
        "deregister_from_die_p50_ms": _r(a["deregister_from_die"]["p50"]),
        "deregister_from_die_p99_ms": _r(a["deregister_from_die"]["p99"]),
        "register_health_p99_ms": _r(real["sequential"]["health"]["register"]["p99"]),
        "register_stopsignal_p99_ms": _r(real["sequential"]["stopsignal"]["register"]["p99"]),
        "agent_cpu_ms_per_event": _r(real["agent_cpu_ms_per_event"], 3),
        "running_at_start_n": real["running"]["containers"],
        "running_at_start_s": _r(real["running"]["seconds"], 3),
        "running_at_start_wrong": real["running"]["wrong_values"],
        "idle_pss_mb": _r(real["running"]["idle_pss_mb"], 1),
        "idle_pss_registrations": real["running"]["registrations"],
        "import_floor_pss_mb": _r(real["import_floor"]["pss_mb"], 1),
        **(
            {"register_sequential_floor_p50_ms": _r(real["floor"]["p50_sum"])}
            if "floor" in real
            else {}
        ),
        **({"wake_cpu_us": _r(real["wake_cpu_us"])} if "wake_cpu_us" in real else {}),
        **_bare_headline(real.get("bare_registrar")),
        "realistic_samples": a["register"]["n"],
        "realistic_missing": a["register"]["missing"]
        + a["deregister_from_kill"]["missing"]
        + a["deregister_from_die"]["missing"],
    }
    kind = real["plan"].get("address", {}).get("kind")
    if kind is None:  # a run before the container-address kind
        return line
    seq, burst = real["sequential"][kind], real["burst"][kind]
    return line | {
        "container_address_register_sequential_p50_ms": _r(seq["register"]["p50"]),
        "container_address_register_sequential_p99_ms": _r(seq["register"]["p99"]),
        "container_address_register_burst_p99_ms": _r(burst["register"]["p99"]),
        "container_address_deregister_from_kill_p99_ms": _r(seq["deregister_from_kill"]["p99"]),
        "container_address_samples": seq["register"]["n"] + burst["register"]["n"],
        "container_address_missing": sum(
            row[name]["missing"]
            for row in (seq, burst)
            for name in ("register", "deregister_from_kill", "deregister_from_die")
        ),
        "container_address_wrong": seq["wrong_values"] + burst["wrong_values"],
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of the last stdout line: register/deregister from the realistic mix (when
    the run has it), the fast path apart and labelled so."""
    lat, seed = results["latency"], results["latency_seed"]
    cold, steady = results["coldstart"], results["steady"]
    loop, rec = results["steady_ttl_loop"], results["recovery"]
    r = _r

    line: dict[str, Any] = {}
    if "realistic" in results:
        line.update(realistic_headline(results["realistic"]))
    line |= {
        "fast_path_register_p50_ms": r(lat["all"]["register"]["p50"]),
        "fast_path_register_p99_ms": r(lat["all"]["register"]["p99"]),
        "fast_path_deregister_p50_ms": r(lat["all"]["deregister"]["p50"]),
        "fast_path_deregister_p99_ms": r(lat["all"]["deregister"]["p99"]),
        "fast_path_register_sequential_p99_ms": r(lat["sequential"]["register"]["p99"]),
        "fast_path_register_burst_p99_ms": r(lat["burst"]["register"]["p99"]),
        "fast_path_burst_etcd_put_p99_ms": r(lat["burst"].get("etcd_put", {}).get("p99", math.nan)),
        "fast_path_samples": lat["all"]["register"]["n"],
        "fast_path_missing": lat["all"]["register"]["missing"]
        + lat["all"]["deregister"]["missing"],
    }
    for n in (50, 100, 200):
        if str(n) in cold:
            line[f"coldstart_{n}_s"] = r(cold[str(n)]["seconds"], 3)
            line[f"coldstart_{n}_etcd_requests"] = cold[str(n)]["requests"]
    line.update(
        {
            "steady_writes_per_min": r(steady["writes_per_min"]),
            "steady_pss_mb": r(steady.get("pss_mb_max", math.nan), 1),
            "steady_rss_mb": r(steady["rss_mb_max"], 1),
            "idle_cpu_percent": r(steady["cpu_percent"], 3),
            "recovery_etcd_s": r(rec["etcd"]["seconds"], 3),
            "recovery_docker_s": r(rec["docker"]["seconds"], 3),
            "baseline_register_p50_ms": r(seed["all"]["register"]["p50"]),
            "baseline_register_p99_ms": r(seed["all"]["register"]["p99"]),
            "baseline_deregister_p99_ms": r(seed["all"]["deregister"]["p99"]),
            "baseline_coldstart_200_s": r(cold.get("200", {}).get("seed_seconds", math.nan), 3),
            "baseline_coldstart_200_etcd_requests": cold.get("200", {}).get("seed_requests"),
            "baseline_steady_writes_per_min": r(loop["writes_per_min"]),
            "baseline_steady_keepalive_loop_writes_per_min": r(
                results.get("steady_ttl_keepalive", {}).get("writes_per_min", math.nan)
            ),
            "baseline_steady_pss_mb": r(loop.get("pss_mb_mean", math.nan), 1),
            "baseline_recovery_etcd_s": r(rec["etcd"].get("ttl_loop_seconds", math.nan), 3),
            "quick": results["plan"]["quick"],
        }
    )
    return line


def _print_latency(latency: dict[str, Any]) -> int:
    """--latency-only: one line per mode, then the figures as JSON."""
    for mode in ("sequential", "burst", "all"):
        for what in ("register", "deregister"):
            figures = latency[mode][what]
            shown = " ".join(f"{k}={v:.1f}" for k, v in figures.items() if isinstance(v, float))
            log(f"{mode:10} {what:10} n={figures['n']} {shown}")
        if mode != "all":
            docker_share = latency[mode]["docker_delivery"]
            after = latency[mode]["after_delivery"]
            log(
                f"{mode:10} etcd put p50={latency[mode]['etcd_put']['p50']:.1f} "
                f"p99={latency[mode]['etcd_put']['p99']:.1f} "
                f"disk p99<={latency[mode]['etcd_disk_p99_ms']}; "
                f"docker start p99={docker_share['start']['p99']:.1f} "
                f"die p99={docker_share['die']['p99']:.1f}; after it: register "
                f"p99={after['register']['p99']:.1f} "
                f"deregister p99={after['deregister']['p99']:.1f}"
            )
    print(
        json.dumps(
            {
                m: {w: latency[m][w] for w in ("register", "deregister")}
                for m in latency
                if isinstance(latency[m], dict) and "register" in latency[m]
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer containers, 1-minute steady")
    parser.add_argument("--profile", type=Path, help="also record py-spy profiles into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, etcd)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks*")
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only phase 1 for sidekick, no baseline; prints its figures, writes no docs",
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="only the realistic workloads for sidekick (`-p 80`, HEALTHCHECK, docker stop with "
        "SIGTERM and STOPSIGNAL, already running, bursts; beside them, container addresses), idle "
        "PSS and the import floor; then the Go registrar (bench/goregistrar) on the same "
        "rounds; prints its figures, writes no docs (with --quick: fewer containers)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="run nothing: write docs/ and the JSON line from a saved .tmp/bench-results.json",
    )
    parser.add_argument(
        "--resync-cost",
        action="store_true",
        help="only the cost of one resync with 0, 20,000 and 100,000 keys of other nodes "
        "under the prefix; writes its section of docs/benchmarks.md",
    )
    parser.add_argument(
        "--render-scale",
        action="store_true",
        help="only `sidekick render` and `sidekick ls` with 100,000 keys under the prefix "
        "(with --quick: shorter); writes its section of docs/benchmarks.md",
    )
    parser.add_argument(
        "--resyncs",
        type=int,
        default=resync.ResyncPlan.resyncs,
        metavar="K",
        help="with --resync-cost: resyncs measured at each size",
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="only the fleet simulator: M simulated nodes (sidekick's own lease and sync code) "
        "on a three-member etcd cluster, a real agent beside them, faults; writes its section "
        "of docs/benchmarks.md and the figures of docs/scale.md (with --quick: 200 nodes, "
        "correctness only, no docs)",
    )
    fleet.add_arguments(parser)
    parser.add_argument(
        "--reliability",
        action="store_true",
        help="only the reliability tests (properties, core, lease hand-over, etcd cluster, "
        "the chaos soak: 300 s, --quick 60 s), each a pytest run; writes docs/reliability.md "
        "from that run (refused on a working tree with uncommitted changes)",
    )
    reliability.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.from_results is not None:
        results = json.loads(args.from_results.read_text())
        if results.get("mode") == "reliability":  # a --reliability run (.tmp/reliability/)
            return reliability.finish(results, no_docs=args.no_docs)
        if results.get("mode") == "fleet":  # a --fleet run (.tmp/bench-fleet-results.json)
            line = fleet.headline(results)
            report.write_fleet(
                results, line, results.get("command", "./bench/run --fleet"), ROOT / "docs"
            )
            print(json.dumps(line))
            return 0
        if "rows" in results:  # a --resync-cost run (.tmp/bench-resync-results.json)
            line = resync.headline(results)
            report.write_resync(results, line, "./bench/run --resync-cost", ROOT / "docs")
            print(json.dumps(line))
            return 0
        line = headline(results)
        quick = " --quick" if results["plan"]["quick"] else ""
        report.write(results, line, "./bench/run" + quick, ROOT / "docs")
        print(json.dumps(line))
        return 0

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if args.resync_cost:
        return resync_cost(args)
    if args.fleet:
        return fleet_mode(args)
    if args.render_scale:
        return render_scale(args)
    if args.reliability:
        return reliability.execute(args)
    plan = Plan.make(args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-bench-"))
    bench = Bench(plan, workdir, args.profile)
    ok = False
    try:
        bench.setup()
        if args.latency_only:
            bench.phase_latency(baseline=False)
            ok = True
            return _print_latency(bench.results["latency"])
        if args.realistic:
            bench.phase_realistic()
            ok = True
            realistic.print_summary(bench.results["realistic"])
            (ROOT / ".tmp").mkdir(exist_ok=True)
            (ROOT / ".tmp" / "bench-realistic.json").write_text(
                json.dumps(bench.results["realistic"], indent=1, default=str)
            )
            print(json.dumps(realistic_headline(bench.results["realistic"])))
            return 0
        results = bench.run()
        ok = True
    finally:
        bench.cleanup()
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    line = headline(results)
    command = "./bench/run" + (" --quick" if args.quick else "")
    (ROOT / ".tmp").mkdir(exist_ok=True)
    (ROOT / ".tmp" / "bench-results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.profile is not None and not args.no_docs:
        log("--profile: the sampler perturbs the figures, so docs/ is left as it is")
    elif not args.no_docs:
        report.write(results, line, command, ROOT / "docs")
        log("wrote docs/benchmarks.md and docs/benchmarks-latency.png")
    print(json.dumps(line))
    return 0


def fleet_mode(args: argparse.Namespace) -> int:
    """--fleet: bench/fleet.py's run; its section of docs/benchmarks.md, docs/scale.md's
    figures, its JSON."""
    plan = fleet.FleetPlan.make(args.nodes, args.quick, args.stages)
    if args.extra is not None:
        plan = replace(plan, extra_stages=args.extra)
    return fleet.execute(
        plan,
        keep=args.keep,
        no_docs=args.no_docs,
        command=fleet.command_line(args, "./bench/run --fleet"),
    )


def resync_cost(args: argparse.Namespace) -> int:
    """--resync-cost: bench/resync.py's run; its section of docs/benchmarks.md, its JSON."""
    plan = resync.ResyncPlan(resyncs=args.resyncs)
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-bench-"))
    bench = Bench(Plan.make(quick=True), workdir, None)
    ok = False
    try:
        bench.setup(watchers=False)
        results = resync.run(bench, plan)
        ok = True
    finally:
        bench.cleanup()
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    line = resync.headline(results)
    results["headline"] = line
    command = "./bench/run --resync-cost" + (
        f" --resyncs {args.resyncs}" if args.resyncs != resync.ResyncPlan.resyncs else ""
    )
    (ROOT / ".tmp").mkdir(exist_ok=True)
    (ROOT / ".tmp" / "bench-resync-results.json").write_text(json.dumps(results, indent=1))
    if not args.no_docs:
        report.write_resync(results, line, command, ROOT / "docs")
        log("wrote the resync-cost section of docs/benchmarks.md")
    print(json.dumps(line))
    return 0


def render_scale(args: argparse.Namespace) -> int:
    """--render-scale: bench/render_scale.py's run; its section of docs/benchmarks.md, its JSON."""
    plan = render_scale_mode.ScalePlan.make(args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-bench-"))
    bench = Bench(Plan.make(quick=True), workdir, None)
    ok = False
    try:
        bench.setup(watchers=False)
        results = render_scale_mode.run(bench, plan)
        ok = True
    finally:
        bench.cleanup()
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    line = render_scale_mode.headline(results)
    results["headline"] = line
    command = "./bench/run --render-scale" + (" --quick" if args.quick else "")
    (ROOT / ".tmp").mkdir(exist_ok=True)
    (ROOT / ".tmp" / "bench-render-scale.json").write_text(json.dumps(results, indent=1))
    if not args.no_docs:
        render_scale_mode.write_docs(results, command, ROOT / "docs")
        log("wrote the render-scale section of docs/benchmarks.md")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
