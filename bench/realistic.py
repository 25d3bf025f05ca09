"""The realistic workloads: containers as they are run in production, not the fast path.

Three kinds, each built offline on the bench's busybox image, all published `-p 80` style on
127.0.0.1 (Docker picks the host port; the key is then read back from `docker port`), all
stopped with `docker stop`, PID 1 draining DRAIN seconds before it exits:

  port        no healthcheck; the image's default stop signal (SIGTERM)
  health      the image has a HEALTHCHECK that can pass READY seconds after the start
              (interval HEALTH_INTERVAL_MS: Docker runs the first check one interval after the
              start): registered from the `health_status: healthy` event
  stopsignal  the image says STOPSIGNAL SIGQUIT (what nginx's image says)

Rows: one after another (each waits for its key), bursts of BURST at once (kinds round-robin),
and containers of every kind already running when the agent starts. Withdrawal is timed from
the stop's first event (the `kill` with the stop signal) and from the `die` (negative: the key
was gone before the container died, i.e. during its drain).

Beside them, one kind announced by the container's own address (issue #14), with rows of its
own that stay out of "all" (see run_rounds):

  container   the port kind's image on a bridge network the run creates (ADDRESS_NETWORK),
              labels sidekick.address=container and sidekick.network=<it>, nothing published:
              the key is <service>-80 and its value <the IP `docker inspect` gives on it>:80

It runs after the host-port rounds with the same agent, one after another and in bursts of
BURST of its own kind only, timed as the port kind is. Every row counts the PUTs whose value
is not the one expected (the published host port on 127.0.0.1, or that IP and port 80).

Then a bare registrar in Python (bench/bareregistrar.py: the listing and the put at the moment
any registrar makes them, nothing else) on a one-after-another round as sidekick's; its rows go
under "bare_registrar" (or {"measured": false, "reason"} when it failed).

Then the Go registrar (bench/goregistrar, built by bench.gobaseline; issue 12's side-by-side)
takes sidekick's place: the same host-port rounds and already-running containers, with a
prefix and group of its own, after sidekick's rounds and never beside them; its rows go under
"go_registrar" (or {"measured": false, "reason"} when it could not be built).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from bench import cpuprofile, gobaseline, inside
from bench.common import (
    BENCH_LABEL,
    CLK_TCK,
    GROUP_LABEL,
    PID_LABEL,
    EtcdProbe,
    Member,
    cpu_ticks,
    host_busy_percent,
    host_cpu_ticks,
    idle_cpu_ms_per_s,
    pss_kb,
    rss_kb,
    summary,
    wait_until,
)
from bench.floor import Floor, wake_cpu_us
from bench.report import go_comparison
from tests.conftest import AgentProcess

if TYPE_CHECKING:
    from bench.harness import Bench

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("port", "health", "stopsignal")
ADDRESS_KIND = "container"  # not in KINDS: rows of its own, out of "all" (see run_rounds)
# The container kind's network, one per run as the run's own network is (other users' bench
# runs on the same engine never share it), named after it: skb-<run id>-addr.
ADDRESS_NETWORK = "{network}-addr"
BURST = 20
DRAIN = 0.3  # seconds PID 1 takes between the stop signal and its exit
READY = 0.3  # seconds after the start at which the healthcheck begins to pass
# Each healthcheck is an exec (dockerd, containerd and runc): bench/healthload.sh measures what
# they cost the host. At 100 ms, the health containers of a round kept a 2-CPU host saturated,
# and every timing measured that load; 5 s is a short interval as services set them.
# `host_busy_percent` in the results says how busy the host was in each round.
HEALTH_INTERVAL_MS = 5000
IDLE_SAMPLE = 10.0  # seconds the agent is left alone before the rounds: its idle CPU
STOP_TIMEOUT = 10  # docker stop -t: far above DRAIN, so no container is SIGKILLed
# PID 1 drains on TERM and QUIT, marks itself ready READY s after it starts, then waits.
COMMAND = [
    "sh",
    "-c",
    f'trap "sleep {DRAIN}; exit 0" TERM QUIT; '
    f"(sleep {READY}; echo ok > /tmp/ready) & sleep 3600 & wait",
]
HEALTHY = "health_status: healthy"


@dataclass(frozen=True)
class RealisticPlan:
    sequential: int  # containers one after another, kinds round-robin
    bursts: int  # bursts of BURST, kinds round-robin
    running_per_kind: int  # already running when the agent starts
    # the container-address kind: about as many as each host-port kind gets in the rounds above
    address_sequential: int
    address_bursts: int  # bursts of BURST of that kind alone
    profiled: int  # one after another, the host-port kinds, with the agent profiled

    @classmethod
    def make(cls, quick: bool) -> RealisticPlan:
        sequential, bursts = (30, 2) if quick else (150, 10)
        return cls(
            sequential=sequential,
            bursts=bursts,
            running_per_kind=10 if quick else 40,
            address_sequential=sequential // len(KINDS),
            address_bursts=max(1, bursts // len(KINDS)),
            profiled=30 if quick else 60,
        )


@dataclass(frozen=True)
class Registrar:
    """What the rounds run as the agent: sidekick, or the Go or the bare registrar in its
    place."""

    name: str  # in the log
    tag: str  # its keys under <base>/<tag> (rounds) and <base>/<tag>run (already running)
    start: Callable[[str, str, str, bool], AgentProcess]  # (log name, prefix, group, ready)
    full: bool  # sidekick: also the floor and the container-address rounds
    metrics: dict[str, str] = field(default_factory=dict)  # log name -> its /metrics base URL

    @classmethod
    def sidekick(cls, bench: Bench) -> Registrar:
        metrics: dict[str, str] = {}

        def start(name: str, prefix: str, group: str, wait_ready: bool) -> AgentProcess:
            address = f"127.0.0.1:{inside.free_port()}"
            metrics[name] = f"http://{address}"
            return bench.start_agent(
                name,
                prefix,
                group,
                wait_ready=wait_ready,
                extra=("--metrics-address", address),
            )

        return cls("sidekick", "real", start, full=True, metrics=metrics)

    @classmethod
    def go(cls, bench: Bench, built: gobaseline.Built) -> Registrar:
        assert built.binary is not None
        binary = built.binary

        def start(name: str, prefix: str, group: str, wait_ready: bool) -> AgentProcess:
            return gobaseline.start(
                bench, binary, f"go-{name}", prefix, group, wait_ready=wait_ready
            )

        return cls("go registrar", "goreal", start, full=False)

    @classmethod
    def bare(cls, bench: Bench) -> Registrar:
        def start(name: str, prefix: str, group: str, wait_ready: bool) -> AgentProcess:
            args = ["--etcd", bench.etcd.url, "--prefix", prefix, "--host-ip", "127.0.0.1"]
            args += ["--filter", f"label={GROUP_LABEL}={bench.run_id}-{group}"]
            agent = BareProcess(args, bench.workdir / f"agent-bare-{name}.log", dict(os.environ))
            bench.agents.append(agent.start())
            if wait_ready:
                agent.wait_log("reconciled", timeout=60)
            return agent

        return cls("bare registrar", "barereal", start, full=False)


class BareProcess(AgentProcess):
    """bench/bareregistrar.py in a subprocess (this interpreter), its JSON lines in log_path."""

    def start(self) -> BareProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.bareregistrar", *self.args],
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=REPOSITORY,
            )
        return self


class RegistrarDied(Exception):
    """The registrar under test exited in the middle of a round."""


@dataclass(frozen=True)
class Started:
    kind: str
    member: Member


def build_images(client: docker.DockerClient, base: str) -> dict[str, str]:
    """kind -> image tag; built from `base` with a Dockerfile (no registry: FROM a local tag)."""
    extra = {
        "port": "",
        "health": (
            f"HEALTHCHECK --interval={HEALTH_INTERVAL_MS}ms --timeout=2s --retries=3 "
            "CMD cat /tmp/ready\n"
        ),
        "stopsignal": "STOPSIGNAL SIGQUIT\n",
    }
    images = {}
    for kind, lines in extra.items():
        dockerfile = f"FROM {base}\n{lines}"
        tag = f"sidekick-bench/{kind}:{hashlib.sha256(dockerfile.encode()).hexdigest()[:12]}"
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        images[kind] = tag
    return images


class RealisticFleet:
    """Starts and stops the realistic containers of one run (labelled as bench.common.Fleet's)."""

    def __init__(self, bench: Bench, images: dict[str, str]) -> None:
        self.api: docker.APIClient = bench.client.api
        self.run_id = bench.run_id
        self.fleet = bench.fleet
        self.network = bench.fleet.network
        self.address_network = ADDRESS_NETWORK.format(network=bench.fleet.network)
        self.images = images
        self._serial = 0

    def create_address_network(self) -> None:
        """The container kind's bridge network, labelled as the run's own network is, so that
        a later run removes it if this one dies before removing it (Fleet.remove_orphans). One
        of that name already there is used as it is."""
        try:
            self.api.create_network(
                self.address_network,
                driver="bridge",
                check_duplicate=True,  # else dockerd makes a second network of the same name
                labels={BENCH_LABEL: self.run_id, PID_LABEL: str(os.getpid())},
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            bench_log(f"realistic: network {self.address_network} already there, used as it is")

    def remove_address_network(self) -> None:
        """The containers still on it (a round cut short), then the network. Never raises: it
        runs in a finally, and whatever it leaves the next run's Fleet.remove_orphans takes."""
        with contextlib.suppress(docker.errors.APIError):
            left = self.api.containers(
                all=True,
                filters={"network": self.address_network, "label": f"{BENCH_LABEL}={self.run_id}"},
            )
            for container in left:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_container(container["Id"], force=True)
        self.fleet.remove_network(self.address_network)

    def start(self, group: str, kind: str, labels: dict[str, str] | None = None) -> Started:
        self._serial += 1  # only the calling thread's uniqueness matters: names carry a uuid
        service = f"{group}{kind[0]}{self._serial:04d}{os.urandom(2).hex()}"
        name = f"skb-{self.run_id}-{service}"
        by_address = kind == ADDRESS_KIND
        created = self.api.create_container(
            self.images["port" if by_address else kind],
            command=COMMAND,
            labels={
                BENCH_LABEL: self.run_id,
                PID_LABEL: str(os.getpid()),
                GROUP_LABEL: f"{self.run_id}-{group}",
                "sidekick.enable": "true",
                "sidekick.service": service,
                **(
                    {"sidekick.address": "container", "sidekick.network": self.address_network}
                    if by_address
                    else {}
                ),
                **(labels or {}),
            },
            ports=[80],  # exposed (what the container kind announces); published by the others
            name=name,
            host_config=self.api.create_host_config(
                port_bindings=None if by_address else {80: ("127.0.0.1", None)},
                network_mode=self.address_network if by_address else self.network,
            ),
        )
        self.api.start(created["Id"])
        if by_address:
            networks = self.api.inspect_container(created["Id"])["NetworkSettings"]["Networks"]
            ip = (networks.get(self.address_network) or {}).get("IPAddress") or "(none)"
            return Started(kind, Member(created["Id"], name, service, 80, ip=ip))
        bound = self.api.port(created["Id"], 80) or []
        port = int(bound[0]["HostPort"])
        return Started(kind, Member(created["Id"], name, service, port))

    def stop(self, started: Started) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.api.stop(started.member.id, timeout=STOP_TIMEOUT)

    def healthy(self, started: Started) -> bool:
        state = self.api.inspect_container(started.member.id)["State"]
        return bool((state.get("Health") or {}).get("Status") == "healthy")

    def remove(self, items: list[Started]) -> None:
        def one(item: Started) -> None:
            with contextlib.suppress(docker.errors.APIError):
                self.api.remove_container(item.member.id, force=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, items))


def _registered_from(kind: str) -> str:
    return HEALTHY if kind == "health" else "start"


def _timings(
    bench: Bench, prefix: str, items: list[Started], kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    """Per kind and for all: register (from start, or from healthy), withdraw from kill and
    from die, the keys that were ever put with a value other than the member's; plus start ->
    healthy for the health kind."""
    assert bench.events is not None and bench.watch is not None
    events, watch = bench.events, bench.watch
    rows: dict[str, dict[str, list[float]]] = {
        k: {"register": [], "from_kill": [], "from_die": [], "start_to_healthy": []}
        for k in (*kinds, "all")
    }
    missing: dict[str, dict[str, int]] = {
        k: {"register": 0, "from_kill": 0, "from_die": 0} for k in (*kinds, "all")
    }
    wrong: dict[str, list[str]] = {k: [] for k in (*kinds, "all")}
    for item in items:
        key = f"{prefix}/{item.member.key}"
        put, gone = watch.first(key, "PUT"), watch.first(key, "DELETE")
        if any(value != item.member.value for value in watch.values(key)):
            for bucket in (item.kind, "all"):
                wrong[bucket].append(key)
        origin = events.time_of(item.member.id, _registered_from(item.kind), timeout=2)
        kill = events.time_of(item.member.id, "kill", timeout=2)
        die = events.time_of(item.member.id, "die", timeout=2)
        for bucket in (item.kind, "all"):
            for name, t0, t1 in (
                ("register", origin, put),
                ("from_kill", kill, gone),
                ("from_die", die, gone),
            ):
                if t0 and t1:
                    rows[bucket][name].append((t1 - t0) / 1e6)
                else:
                    missing[bucket][name] += 1
        if item.kind == "health":
            started = events.time_of(item.member.id, "start", timeout=0)
            if started and origin:
                rows["health"]["start_to_healthy"].append((origin - started) / 1e6)
    return {
        k: {
            "register": summary(v["register"], missing[k]["register"]),
            "deregister_from_kill": summary(v["from_kill"], missing[k]["from_kill"]),
            "deregister_from_die": summary(v["from_die"], missing[k]["from_die"]),
            "register_ms": v["register"],
            "deregister_from_kill_ms": v["from_kill"],
            "wrong_values": len(wrong[k]),
            "wrong_examples": wrong[k][:5],
            **({"start_to_healthy": summary(v["start_to_healthy"])} if k == "health" else {}),
        }
        for k, v in rows.items()
    }


def _wait_keys(bench: Bench, prefix: str, items: list[Started], kind: str, timeout: float) -> bool:
    assert bench.watch is not None
    return bench.watch.wait_seen([f"{prefix}/{i.member.key}" for i in items], kind, timeout)


def _warm_up(
    bench: Bench, prefix: str, group: str, rfleet: RealisticFleet, kinds: tuple[str, ...]
) -> None:
    """One container of each kind, started, stopped and removed; not counted."""
    warm = [rfleet.start(group, kind) for kind in kinds]
    _wait_keys(bench, prefix, warm, "PUT", 15)
    for item in warm:
        rfleet.stop(item)
    _wait_keys(bench, prefix, warm, "DELETE", 15)
    rfleet.remove(warm)


def _floor_summary(bench: Bench, floor: Floor, items: list[Started]) -> dict[str, Any]:
    """The floor of the sequential registrations: the event's delivery to a subscriber (the
    bench's own), the listing and the put (bench.floor), and the sum of their p50s."""
    assert bench.events is not None
    delivered = [
        ms
        for item in items
        if (ms := bench.events.delivery_ms(item.member.id, _registered_from(item.kind))) is not None
    ]
    parts = {
        "delivery": summary(delivered),
        "listing": summary(floor.listing_ms),
        "put": summary(floor.put_ms),
    }
    return {**parts, "p50_sum": sum(float(part["p50"]) for part in parts.values())}


def _one_after_another(
    bench: Bench,
    prefix: str,
    group: str,
    rfleet: RealisticFleet,
    *,
    kinds: tuple[str, ...],
    n: int,
    floor: Floor | None = None,
    alive: Callable[[], bool] = lambda: True,
) -> list[Started]:
    """n containers (kinds in turn), each waiting for its key (then, with a floor, the
    requests any registrar makes timed once); then stopped the same way. RegistrarDied
    (the containers removed) when a key does not come and `alive()` says why."""
    items: list[Started] = []
    try:
        for i in range(n):
            item = rfleet.start(group, kinds[i % len(kinds)])
            items.append(item)
            if _wait_keys(bench, prefix, [item], "PUT", 15):
                if floor is not None:
                    floor.sample(item.member.id)
            elif not alive():
                raise RegistrarDied(f"the registrar exited ({prefix})")
            time.sleep(0.02)
        for item in items:
            rfleet.stop(item)
            if not _wait_keys(bench, prefix, [item], "DELETE", 15) and not alive():
                raise RegistrarDied(f"the registrar exited ({prefix})")
            time.sleep(0.02)
    finally:
        rfleet.remove(items)
    return items


def _in_bursts(
    bench: Bench,
    prefix: str,
    group: str,
    rfleet: RealisticFleet,
    *,
    kinds: tuple[str, ...],
    bursts: int,
) -> tuple[list[Started], list[tuple[int, int]]]:
    """bursts of BURST (kinds in turn) started at once, then stopped at once; the containers
    and each burst's (start, end) ns window."""
    windows: list[tuple[int, int]] = []
    items: list[Started] = []
    with ThreadPoolExecutor(BURST) as pool:
        for _ in range(bursts):
            began = time.time_ns()
            members = list(
                pool.map(lambda i: rfleet.start(group, kinds[i % len(kinds)]), range(BURST))
            )
            _wait_keys(bench, prefix, members, "PUT", 30)
            list(pool.map(rfleet.stop, members))
            _wait_keys(bench, prefix, members, "DELETE", 30)
            windows.append((began, time.time_ns()))
            rfleet.remove(members)
            items.extend(members)
            time.sleep(0.2)
    return items, windows


def _cpu_ms_per_event(
    pid: int, ticks: int, began: float, idle_ms_per_s: float, containers: int
) -> float:
    """The agent's CPU since (ticks, began), less its idle rate over that time, per start or
    stop of `containers` containers."""
    spent = (cpu_ticks(pid) - ticks) / CLK_TCK * 1000
    idle = idle_ms_per_s * (time.monotonic() - began)
    return max(0.0, spent - idle) / (2 * containers)


def _address_rounds(
    bench: Bench,
    plan: RealisticPlan,
    rfleet: RealisticFleet,
    *,
    prefix: str,
    group: str,
    pid: int,
    out: dict[str, Any],
) -> tuple[list[Started], list[Started]]:
    """The container-address kind, after the mix, with the same agent (pid): one after
    another, then in bursts; its CPU per start or stop into out.

    Its rows sit beside the kinds' rows and are kept out of "all". "all" is the host-port mix
    the headline figures, issue 12's targets and the plot are taken from, comparable with the
    runs before this kind existed; mixing it in would also change the other kinds' share of
    the rounds."""
    bench_log(
        f"realistic: {ADDRESS_KIND} address on {rfleet.address_network}: "
        f"{plan.address_sequential} one after another, {plan.address_bursts} bursts of {BURST}"
    )
    only = (ADDRESS_KIND,)
    _warm_up(bench, prefix, group, rfleet, only)
    ticks, began = cpu_ticks(pid), time.monotonic()
    address_sequential = _one_after_another(
        bench, prefix, group, rfleet, kinds=only, n=plan.address_sequential
    )
    address_bursts, _ = _in_bursts(
        bench, prefix, group, rfleet, kinds=only, bursts=plan.address_bursts
    )
    out["address_agent_cpu_ms_per_event"] = _cpu_ms_per_event(
        pid, ticks, began, out["agent_idle_cpu_ms_per_s"], len(address_sequential + address_bursts)
    )
    return address_sequential, address_bursts


def run_rounds(
    bench: Bench, plan: RealisticPlan, rfleet: RealisticFleet, registrar: Registrar | None = None
) -> dict[str, Any]:
    """One agent; containers one after another, then bursts; each stopped with `docker stop`.
    Then, with the same agent, the container-address kind one after another and in bursts
    (sidekick only: with the Go registrar, the host-port rounds alone, and no floor)."""
    registrar = registrar or Registrar.sidekick(bench)
    prefix, group = f"{bench.base}/{registrar.tag}", registrar.tag
    agent = registrar.start("realistic", prefix, group, True)
    assert agent.process is not None
    out: dict[str, Any] = {}
    try:
        # one warm-up container of each kind, not counted
        _warm_up(bench, prefix, group, rfleet, KINDS)
        # what it spends doing nothing (keepalives, timers), taken out of its CPU per event:
        # the rounds wait seconds for each health container's first check
        idle = idle_cpu_ms_per_s(agent.process.pid, IDLE_SAMPLE)
        out["agent_idle_cpu_ms_per_s"] = idle

        ticks, began = cpu_ticks(agent.process.pid), time.monotonic()
        metrics_url = registrar.metrics.get("realistic")
        before = inside.scrape(metrics_url) if metrics_url else None
        bench_log(f"realistic, {registrar.name}: {plan.sequential} containers one after another")
        floor = (
            Floor(bench.etcd.url, "/sidekick-bench-floor/real", "/var/run/docker.sock")
            if registrar.full
            else None
        )
        host = host_cpu_ticks()
        try:
            sequential = _one_after_another(
                bench, prefix, group, rfleet, kinds=KINDS, n=plan.sequential, floor=floor
            )
        finally:
            if floor is not None:
                floor.close()
        out["host_busy_percent"] = {"sequential": host_busy_percent(host)}
        out["agent_cpu_ms_per_event_sequential"] = _cpu_ms_per_event(
            agent.process.pid, ticks, began, idle, len(sequential)
        )
        if metrics_url and before is not None:
            out["inside"] = inside.stages(before, inside.scrape(metrics_url))

        bench_log(f"realistic, {registrar.name}: {plan.bursts} bursts of {BURST} at once")
        probe = EtcdProbe(bench.etcd.url, "/sidekick-bench-probe/real", bench.workdir / "probe.log")
        host = host_cpu_ticks()
        before = inside.scrape(metrics_url) if metrics_url else None
        bursts, windows = _in_bursts(bench, prefix, group, rfleet, kinds=KINDS, bursts=plan.bursts)
        out["host_busy_percent"]["burst"] = host_busy_percent(host)
        if metrics_url and before is not None:
            out["inside_burst"] = inside.stages(before, inside.scrape(metrics_url))
        probe.close()
        containers = len(sequential) + len(bursts)
        out["agent_cpu_ms_per_event"] = _cpu_ms_per_event(
            agent.process.pid, ticks, began, idle, containers
        )
        if registrar.full:
            address_sequential, address_bursts = _address_rounds(
                bench, plan, rfleet, prefix=prefix, group=group, pid=agent.process.pid, out=out
            )

        out["sequential"] = _timings(bench, prefix, sequential)
        if floor is not None:
            out["floor"] = _floor_summary(bench, floor, sequential)
            out["wake_cpu_us"] = wake_cpu_us()  # the host quiet: the rounds are over
        out["burst"] = _timings(bench, prefix, bursts)
        out["burst"]["etcd_put"] = summary(probe.within(windows))
        out["all"] = _timings(bench, prefix, sequential + bursts)["all"]
        if registrar.full:
            only = (ADDRESS_KIND,)
            out["sequential"][ADDRESS_KIND] = _timings(bench, prefix, address_sequential, only)[
                ADDRESS_KIND
            ]
            out["burst"][ADDRESS_KIND] = _timings(bench, prefix, address_bursts, only)[ADDRESS_KIND]
    finally:
        bench.stop_agent(agent)
    return out


def run_running(
    bench: Bench, plan: RealisticPlan, rfleet: RealisticFleet, registrar: Registrar | None = None
) -> dict[str, Any]:
    """Containers of every kind already running (health ones healthy) when the agent starts:
    from the agent's spawn to every key present with the right value; then its idle PSS."""
    assert bench.watch is not None
    registrar = registrar or Registrar.sidekick(bench)
    group = f"{registrar.tag}run"
    items: list[Started] = []
    with ThreadPoolExecutor(8) as pool:
        items = list(
            pool.map(
                lambda i: rfleet.start(group, KINDS[i % len(KINDS)]),
                range(plan.running_per_kind * len(KINDS)),
            )
        )
    health = [i for i in items if i.kind == "health"]
    healthy = wait_until(lambda: all(rfleet.healthy(i) for i in health), 60, 0.1)
    prefix = f"{bench.base}/{group}"
    keys = {f"{prefix}/{i.member.key}": i for i in items}
    time.sleep(0.5)
    host = host_cpu_ticks()
    t0 = time.time_ns()
    agent = registrar.start("realrun", prefix, group, False)
    assert agent.process is not None
    try:
        complete = bench.watch.wait_seen(keys, "PUT", 60)
        busy = host_busy_percent(host) if complete else None  # else: the timeout's span
        arrivals = {k: bench.watch.first(k, "PUT") or 0 for k in keys}
        wrong = sorted(k for k, i in keys.items() if bench.watch.present.get(k) != i.member.value)
        by_kind = {
            kind: (max(t for k, t in arrivals.items() if keys[k].kind == kind) - t0) / 1e9
            if complete
            else math.nan
            for kind in KINDS
        }
        agent.wait_log("reconciled", timeout=30)
        time.sleep(3.0)  # idle: the start-up's garbage collected, no event in flight
        pid = agent.process.pid
        pss = [pss_kb(pid)]
        for _ in range(4):
            time.sleep(0.5)
            pss.append(pss_kb(pid))
        rss = rss_kb(pid)
    finally:
        bench.stop_agent(agent)
        rfleet.remove(items)
    return {
        "containers": len(items),
        "by_kind_count": {k: sum(1 for i in items if i.kind == k) for k in KINDS},
        "health_healthy_before_start": bool(healthy),
        "complete": complete,
        "seconds": (max(arrivals.values()) - t0) / 1e9 if complete else math.nan,
        "first_key_seconds": (min(arrivals.values()) - t0) / 1e9 if complete else math.nan,
        "seconds_by_kind": by_kind,
        "wrong_values": len(wrong),
        "wrong_examples": wrong[:5],
        "host_busy_percent": busy,
        "idle_pss_mb": max(pss) / 1024,
        "idle_rss_mb": rss / 1024,
        "registrations": len(items),
    }


def import_floor_pss_mb(bench: Bench) -> dict[str, float]:
    """PSS of `python -c 'import sidekick.cli'` kept alive: the floor of any `sidekick run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, sidekick.cli; print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        process.stdout.readline()
        time.sleep(0.5)
        pss, rss = pss_kb(process.pid), rss_kb(process.pid)
        process.stdin.close()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return {"pss_mb": pss / 1024, "rss_mb": rss / 1024}


def bench_log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(bench: Bench, plan: RealisticPlan) -> dict[str, Any]:
    """Every realistic row: rounds, already running, idle PSS and the import floor; then the
    Go registrar's rounds and already running in sidekick's place (after them, never beside
    them), or why it was not measured."""
    images = build_images(bench.client, bench.image)
    rfleet = RealisticFleet(bench, images)
    built = gobaseline.build(bench.workdir)  # before any round: the compiler's CPU is spent
    if built.binary is None:
        bench_log(f"realistic: the Go registrar baseline will NOT be measured: {built.reason}")
    bench_log(
        f"realistic: kinds {', '.join(KINDS)}; `-p 80` on 127.0.0.1, docker stop, drain {DRAIN} s"
    )
    out: dict[str, Any] = {
        "plan": {
            **plan.__dict__,
            "kinds": list(KINDS),
            "burst": BURST,
            "drain_seconds": DRAIN,
            "ready_seconds": READY,
            "health_interval_ms": HEALTH_INTERVAL_MS,
            "stop_timeout": STOP_TIMEOUT,
            "images": images,
            "address": {
                "kind": ADDRESS_KIND,
                "network": rfleet.address_network,
                "labels": {
                    "sidekick.address": "container",
                    "sidekick.network": rfleet.address_network,
                },
            },
        }
    }
    rfleet.create_address_network()
    try:
        out.update(run_rounds(bench, plan, rfleet))
    finally:
        rfleet.remove_address_network()
    bench_log(f"realistic: {plan.profiled} one after another, the agent profiled")
    out["cpu_profile"] = run_profiled(bench, plan, rfleet)
    bench_log(f"realistic: {plan.running_per_kind} of each kind already running")
    out["running"] = run_running(bench, plan, rfleet)
    out["import_floor"] = import_floor_pss_mb(bench)
    out["import_floor"]["by_package"] = cpuprofile.import_floor_by_package()
    bench_log(f"realistic: the bare registrar, {plan.sequential} one after another")
    out["bare_registrar"] = run_bare(bench, plan, rfleet)
    out["go_registrar"] = run_go(bench, plan, rfleet, built)
    return out


def run_bare(bench: Bench, plan: RealisticPlan, rfleet: RealisticFleet) -> dict[str, Any]:
    """bench/bareregistrar.py in sidekick's place on a one-after-another round as sidekick's
    (the same kinds in turn, each waiting for its key); its rows, the host's busy share and
    its CPU per start or stop less idle, measured as sidekick's; {"measured": False, "reason"}
    when it failed."""
    registrar = Registrar.bare(bench)
    prefix, group = f"{bench.base}/{registrar.tag}", registrar.tag
    try:
        agent = registrar.start("realistic", prefix, group, True)
    except Exception as exc:
        return {"measured": False, "reason": f"it did not start: {exc!r}"}
    process = agent.process
    assert process is not None
    try:
        _warm_up(bench, prefix, group, rfleet, KINDS)
        idle = idle_cpu_ms_per_s(process.pid, IDLE_SAMPLE)
        host, ticks, began = host_cpu_ticks(), cpu_ticks(process.pid), time.monotonic()
        items = _one_after_another(
            bench,
            prefix,
            group,
            rfleet,
            kinds=KINDS,
            n=plan.sequential,
            alive=lambda: process.poll() is None,
        )
        busy = host_busy_percent(host)
        cpu_ms = _cpu_ms_per_event(process.pid, ticks, began, idle, len(items))
    except RegistrarDied as exc:
        return {"measured": False, "reason": str(exc)}
    finally:
        bench.stop_agent(agent)
    return {  # the keys of run_rounds' results, for the same figures
        "measured": True,
        "source": "bench/bareregistrar.py",
        "agent_idle_cpu_ms_per_s": idle,
        "host_busy_percent": {"sequential": busy},
        "agent_cpu_ms_per_event_sequential": cpu_ms,
        "sequential": _timings(bench, prefix, items),
    }


def run_profiled(bench: Bench, plan: RealisticPlan, rfleet: RealisticFleet) -> dict[str, Any]:
    """The host-port kinds one after another with the agent under bench/agentprofile.py: where
    its CPU goes per container, by thread and stage (bench/cpuprofile.py). Not timed."""
    prefix, group = f"{bench.base}/profiled", "profiled"
    agent = bench.start_agent("profiled", prefix, group, make=cpuprofile.ProfiledAgent)
    assert isinstance(agent, cpuprofile.ProfiledAgent)
    try:
        _warm_up(bench, prefix, group, rfleet, KINDS)

        def one_after_another() -> int:
            items = _one_after_another(bench, prefix, group, rfleet, kinds=KINDS, n=plan.profiled)
            return len(items)

        return cpuprofile.profile_round(agent, one_after_another)
    finally:
        bench.stop_agent(agent)


def run_go(
    bench: Bench, plan: RealisticPlan, rfleet: RealisticFleet, built: gobaseline.Built
) -> dict[str, Any]:
    """The Go registrar (bench/goregistrar) on the same host-port rounds and already-running
    containers as sidekick, with its own prefix; {"measured": False, "reason"} without it."""
    if built.binary is None:
        return {"measured": False, "reason": built.reason}
    registrar = Registrar.go(bench, built)
    bench_log(f"realistic: the Go registrar in sidekick's place ({built.go_version})")
    out: dict[str, Any] = {
        "measured": True,
        "go_version": built.go_version,
        "source": "bench/goregistrar/main.go",
        "binary_bytes": built.binary.stat().st_size,
    }
    out.update(run_rounds(bench, plan, rfleet, registrar))
    bench_log(f"realistic, {registrar.name}: {plan.running_per_kind} of each kind already running")
    out["running"] = run_running(bench, plan, rfleet, registrar)
    return out


def print_summary(real: dict[str, Any]) -> None:
    """--realistic: one line per row on stderr."""

    def f(s: dict[str, Any]) -> str:
        return f"n={s['n']} miss={s['missing']} p50={s['p50']:.1f} p99={s['p99']:.1f}"

    for mode in ("sequential", "burst"):
        # the container-address row last, after the host-port mix's "all" it is not part of
        for kind in (*KINDS, "all", ADDRESS_KIND):
            row = real[mode][kind]
            bench_log(
                f"{mode:10} {kind:10} register {f(row['register'])} | withdraw from kill "
                f"{f(row['deregister_from_kill'])} | from die {f(row['deregister_from_die'])}"
                f" | wrong values {row['wrong_values']}"
            )
    bench_log(
        f"({ADDRESS_KIND}: sidekick.address=container on {real['plan']['address']['network']}, "
        "nothing published; not in all)"
    )
    bench_log(f"burst etcd put p99={real['burst']['etcd_put']['p99']:.1f} ms")
    if floor := real.get("floor"):
        bench_log(
            f"sequential floor p50: delivery {floor['delivery']['p50']:.1f} + docker ps "
            f"{floor['listing']['p50']:.1f} + etcd put {floor['put']['p50']:.1f} = "
            f"{floor['p50_sum']:.1f} ms (sidekick register p50 "
            f"{real['sequential']['all']['register']['p50']:.1f} ms)"
        )
    if (wake := real.get("wake_cpu_us")) is not None:
        bench_log(f"a thread woken from a socket read pays {wake:.0f} us of CPU on this host")
    if (bare := real.get("bare_registrar")) and not bare.get("measured"):
        bench_log(f"bare registrar: NOT measured ({bare.get('reason')})")
    elif bare:
        bench_log(
            "bare registrar, one after another: "
            + " | ".join(f"{kind} {f(bare['sequential'][kind]['register'])}" for kind in KINDS)
            + " | cpu per start or stop "
            + f"{bare['agent_cpu_ms_per_event_sequential']:.2f} ms less idle"
        )
    for key, rounds in inside.ROUNDS:
        if stages := real.get(key):
            bench_log(
                f"inside the agent, {rounds} (p50 / p99 / mean ms, n): "
                + " | ".join(
                    f"{stage} {v['p50_ms']:.1f} / {v.get('p99_ms', math.nan):.1f} / "
                    f"{v['mean_ms']:.1f} ({v['n']:.0f})"
                    for stage, v in stages.items()
                )
            )
    bench_log(f"agent cpu per start or stop: {real['agent_cpu_ms_per_event']:.2f} ms")
    bench_log(
        f"agent cpu per start or stop, {ADDRESS_KIND} address: "
        f"{real['address_agent_cpu_ms_per_event']:.2f} ms"
    )
    run_ = real["running"]
    bench_log(
        f"already running: {run_['containers']} in {run_['seconds']:.3f} s "
        f"(by kind {run_['seconds_by_kind']}), wrong values {run_['wrong_values']}; "
        f"idle PSS {run_['idle_pss_mb']:.1f} MB with {run_['registrations']} registrations; "
        f"import floor PSS {real['import_floor']['pss_mb']:.1f} MB"
    )
    _print_go(real, f)


def _print_go(real: dict[str, Any], f: Callable[[dict[str, Any]], str]) -> None:
    """The Go registrar's rows, then it and sidekick side by side; or why it was not measured."""
    go = real.get("go_registrar")
    if go is None:
        return
    if not go.get("measured"):
        bench_log(f"go registrar baseline: NOT measured ({go.get('reason')})")
        return
    for mode in ("sequential", "burst"):
        for kind in (*KINDS, "all"):
            row = go[mode][kind]
            bench_log(
                f"go {mode:10} {kind:10} register {f(row['register'])} | withdraw from kill "
                f"{f(row['deregister_from_kill'])} | from die {f(row['deregister_from_die'])}"
                f" | wrong values {row['wrong_values']}"
            )
    run_ = go["running"]
    bench_log(
        f"go already running: {run_['containers']} in {run_['seconds']:.3f} s, wrong values "
        f"{run_['wrong_values']}; idle PSS {run_['idle_pss_mb']:.1f} MB with "
        f"{run_['registrations']} registrations; cpu per start or stop "
        f"{go['agent_cpu_ms_per_event']:.2f} ms ({go['go_version']})"
    )
    bench_log("side by side:                                        sidekick | go registrar")
    for label, ours, theirs, digits in go_comparison(real):
        bench_log(f"  {label:60} {_num(ours, digits):>9} | {_num(theirs, digits):>9}")


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
