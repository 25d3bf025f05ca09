"""Chaos with an invariant: random faults, then etcd must say exactly what Docker says.

A bounded soak draws operations from random.Random(seed): containers created, stopped,
killed, removed, paused and unpaused, restarted, started again, crash-looping under a
restart policy, health flipped by a file that the HEALTHCHECK tests; and faults around them:
the agent killed with SIGKILL and restarted on the same lease file, etcd restarted or stopped
for a while (up to ttl + 2 s), the Docker event stream cut, Docker stalled for 2 x ttl (the
socket proxy accepts and answers nothing; the keys of running containers must never vanish
meanwhile), a second agent on the same node for a few seconds (its own lease file; a filter
that matches nothing, or the same filter with the same or another value template; SIGTERM
must leave the first agent's keys as they were; one more on the first agent's lease file must
exit 2 at once). After every round, in a quiet period, the checker compares etcd with
`docker inspect` by a rule of its own (not the agent's model):

    the keys under the prefix are exactly {prefix}/{service}-{host port} = 127.0.0.1:{host port}
    for every container that is running, not paused, not restarting, healthy or without a
    healthcheck, and labelled sidekick.enable=true; and they all sit on the agent's lease.

It waits up to CONVERGE_WITHIN seconds for that to hold on a snapshot that Docker did not
change while etcd was read, records how long it took, and counts a divergence otherwise.

Run it longer with `--chaos-seconds N` or SIDEKICK_CHAOS_SECONDS=N; replay a run with
SIDEKICK_CHAOS_SEED=<the printed seed> (the draws repeat; Docker's and etcd's timing do not).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.conftest import (
    AgentProcess,
    Containers,
    DockerSocketProxy,
    EtcdServer,
    free_port,
)

pytestmark = pytest.mark.integration

DEFAULT_SECONDS = 100.0
CONVERGE_WITHIN = 5.0  # seconds a quiet period may take before it counts as a divergence
LATE_LIMIT = 30.0  # after a divergence, how long to wait for it to heal before moving on
MAX_CONTAINERS = 8
TTL = 4  # short, so etcd outages and agent deaths longer than the ttl happen in CI time
RESYNC = 60.0  # the agent's periodic reconcile: long, so it cannot hide a missed event
AGENT_DEAD_SECONDS = (0.0, TTL + 2.0)  # past the ttl the lease expires
ETCD_OUTAGE_SECONDS = (0.5, TTL + 2.0)
STREAM_CUT_SECONDS = (0.2, 3.0)
SERVICES = ("web", "api", "shop")
HEALTHCHECK = {
    "test": ["CMD", "test", "-e", "/tmp/ok"],
    "interval": 500_000_000,  # ns
    "timeout": 2_000_000_000,
    "retries": 1,
    "start_period": 0,
}
# kind -> (weight, command, extra run arguments)
KINDS: dict[str, tuple[float, str, dict[str, Any]]] = {
    "web": (3, "httpd -f -p 80", {}),
    "health": (2, "sh -c 'touch /tmp/ok; exec httpd -f -p 80'", {"healthcheck": HEALTHCHECK}),
    "crashloop": (1, "sh -c 'sleep 1; exit 3'", {"restart_policy": {"Name": "always"}}),
    "optout": (1, "httpd -f -p 80", {}),  # sidekick.enable=false: never announced
}
CONTAINER_OPS = {  # op -> weight
    "create": 3.0,
    "stop": 2.0,
    "kill": 2.0,
    "remove": 1.0,
    "pause": 1.5,
    "unpause": 1.5,
    "restart": 1.0,
    "start": 1.5,
    "health_flip": 3.0,
    "hup": 0.5,
}
# op -> the container states it applies to (None: any); "remove" and "restart" take any
OP_STATES: dict[str, set[str] | None] = {
    "stop": {"running", "paused", "restarting"},
    "kill": {"running", "paused"},
    "pause": {"running"},
    "unpause": {"paused"},
    "start": {"created", "exited"},
    "hup": {"running"},
    "health_flip": {"running"},
}
FAULTS = {  # fault -> weight
    "agent_sigkill": 1.0,
    "etcd_restart": 1.0,
    "etcd_outage": 1.0,
    "docker_stream_cut": 1.0,
    "docker_stalled": 1.0,  # lasts 2 x ttl: as long as the two etcd faults at their longest
    "second_agent": 1.0,
}
STALL_SECONDS = 2 * TTL
STALL_POLL = 0.1  # seconds between two reads of etcd during a stall
SECOND_AGENT_SECONDS = (2.0, 5.0)  # how long the second agent runs
# The second agent's variants: the filter or value it adds to the first agent's settings.
SECOND_AGENTS: dict[str, tuple[str, ...]] = {
    "other filter": ("--filter", "label=sidekick.chaos.second-agent=none"),  # matches nothing
    "same filter": (),  # wants the same keys, same values: they are announced already
    "same filter, other value": ("--value-template", "{ip}:{port}/second"),  # every one clashes
}
# Seconds for an agent on a held lease file to exit: "at once" is judged by what it did (its
# last line names the file, it logged none of STARTED_EVENTS, the lease file is untouched);
# the time is mostly the interpreter's start, seconds on a loaded machine.
REFUSED_WITHIN = 30.0
STARTED_EVENTS = {"agent starting", "lease granted", "lease resumed", "registered", "reconciled"}
FAULT_CHANCE = 0.5  # of a round having one fault around its container operations
Entry = tuple[str, int, int]  # an etcd key's value, lease and mod_revision


@dataclass
class Backend:
    name: str
    kind: str
    container_id: str


@dataclass
class Divergence:
    round: int
    what: str
    expected: dict[str, str]
    actual: dict[str, Entry]
    lease: int | None
    docker: tuple[Any, ...]
    healed_after: float | None = None
    reason: str = ""  # set for a broken promise other than the round's invariant

    def describe(self) -> str:
        if self.reason:
            return f"round {self.round} ({self.what}): {self.reason}"
        missing = sorted(set(self.expected) - set(self.actual))
        extra = sorted(set(self.actual) - set(self.expected))
        wrong = sorted(
            k
            for k in set(self.expected) & set(self.actual)
            if self.expected[k] != self.actual[k][0]
        )
        healed = (
            f"healed after {self.healed_after:.1f}s"
            if self.healed_after is not None
            else f"not healed within {LATE_LIMIT:.0f}s"
        )
        return (
            f"round {self.round} ({self.what}): missing {missing}, stale {extra}, "
            f"wrong value {wrong}, leases {sorted({v[1] for v in self.actual.values()})} "
            f"(agent's {self.lease}); {healed}; docker: {self.docker}"
        )


@dataclass
class Chaos:
    rng: random.Random
    client: docker.DockerClient
    containers: Containers
    network: str
    prefix: str
    etcd: EtcdServer
    proxy: DockerSocketProxy
    start_agent: Callable[..., AgentProcess]  # (*extra args, lease_file=, wait_ready=)
    lease_path: Path
    log: Callable[[str], None]
    backends: list[Backend] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)  # faults survived, by kind
    applied: Counter[str] = field(default_factory=Counter)  # container operations done
    refused: Counter[str] = field(default_factory=Counter)  # refused by Docker in that state
    agent_restarts: list[float] = field(default_factory=list)  # exec to first reconcile
    convergence: list[tuple[float, int, str, str]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    stall_polls: int = 0  # reads of etcd made during stalls
    stall_keys: list[int] = field(default_factory=list)  # keys watched, per stall
    clashes_logged: int = 0  # "key held by another owner" lines of second agents
    refusals: list[float] = field(default_factory=list)  # same lease file: seconds to exit 2
    serial: int = 0
    rounds: int = 0
    agent: AgentProcess | None = None

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # -- container operations ------------------------------------------------------------

    def container_op(self) -> str:
        op = self.rng.choices(list(CONTAINER_OPS), weights=list(CONTAINER_OPS.values()))[0]
        if op == "create" and len(self.backends) >= MAX_CONTAINERS:
            op = "remove"
        if op != "create" and not self.backends:
            op = "create"
        if op == "create":
            kind = self.rng.choices(list(KINDS), weights=[k[0] for k in KINDS.values()])[0]
            self._create(kind, self.rng.choice(SERVICES))
            return f"create {kind}"
        target = self.pick(op)
        healthy = self.rng.random() < 0.5  # drawn for every op, so the draws never shift
        if op == "health_flip" and target.kind != "health":
            return "health_flip (no health container)"
        actions: dict[str, Callable[[], Any]] = {
            "stop": lambda: self.api.stop(target.container_id, timeout=1),
            "kill": lambda: self.api.kill(target.container_id),
            "remove": lambda: self.api.remove_container(target.container_id, force=True),
            "pause": lambda: self.api.pause(target.container_id),
            "unpause": lambda: self.api.unpause(target.container_id),
            "restart": lambda: self.api.restart(target.container_id, timeout=1),
            "start": lambda: self.api.start(target.container_id),
            "hup": lambda: self.api.kill(target.container_id, signal="SIGHUP"),
            "health_flip": lambda: self._exec(target, healthy),
        }
        if self._docker(op, target, actions[op]) and op == "remove":
            self.backends.remove(target)
        if op == "health_flip":
            return f"health_flip {target.name} -> {'healthy' if healthy else 'unhealthy'}"
        return f"{op} {target.name}"

    def pick(self, op: str) -> Backend:
        """A target in a state the op applies to, when there is one.

        One draw whatever the pool, so a seed gives the same sequence of draws however
        Docker's timing shapes the pools.
        """
        draw = self.rng.random()
        states = OP_STATES.get(op)
        pool = [
            b
            for b in self.backends
            if (states is None or self._status(b) in states)
            and (op != "health_flip" or b.kind == "health")
        ]
        pool = pool or self.backends
        return pool[int(draw * len(pool))]

    def _status(self, backend: Backend) -> str | None:
        try:
            return str(self.api.inspect_container(backend.container_id)["State"]["Status"])
        except docker.errors.NotFound:
            return None

    def _create(self, kind: str, service: str) -> None:
        self.serial += 1
        _, command, extra = KINDS[kind]
        container = self.containers.run(
            name=f"{self.prefix.strip('/')}-{self.serial:03d}-{kind}",
            command=command,
            ports={"80/tcp": ("127.0.0.1", free_port())},
            labels={"sidekick.service": service},
            enable=kind != "optout",
            network=self.network,
            **extra,
        )
        self.backends.append(Backend(container.name, kind, container.id))
        self.applied["create " + kind] += 1

    def _exec(self, target: Backend, healthy: bool) -> None:
        command = "touch /tmp/ok" if healthy else "rm -f /tmp/ok"
        exec_id = self.api.exec_create(target.container_id, command)["Id"]
        self.api.exec_start(exec_id)

    def _docker(self, op: str, target: Backend, action: Callable[[], Any]) -> bool:
        try:
            action()
        except docker.errors.APIError:  # e.g. unpause of a running container: nothing happened
            self.refused[op] += 1
            return False
        self.applied[op] += 1
        return True

    def some_ops(self, low: int, high: int) -> list[str]:
        return [self.container_op() for _ in range(self.rng.randint(low, high))]

    # -- faults around the operations ----------------------------------------------------

    def fault(self, kind: str) -> list[str]:
        if kind == "agent_sigkill":
            assert self.agent is not None
            self.agent.signal(signal.SIGKILL)
            self.agent.wait()
            done = self.some_ops(0, 2)
            dead_for = self.rng.uniform(*AGENT_DEAD_SECONDS)
            time.sleep(dead_for)
            restarted = time.monotonic()
            self.agent = self.start_agent()
            self.agent_restarts.append(time.monotonic() - restarted)
            resumed = bool(self.agent.events("lease resumed"))
            self.faults[f"{kind} (lease {'resumed' if resumed else 'expired'})"] += 1
            return [f"agent SIGKILL, {dead_for:.1f}s dead", *done]
        if kind == "etcd_restart":
            self.etcd.stop()
            self.etcd.start()
            self.faults[kind] += 1
            return ["etcd restart", *self.some_ops(0, 2)]
        if kind == "etcd_outage":
            self.etcd.stop()
            done = self.some_ops(1, 3)
            down_for = self.rng.uniform(*ETCD_OUTAGE_SECONDS)
            time.sleep(down_for)
            self.etcd.start()
            self.faults[kind] += 1
            return [f"etcd down {down_for:.1f}s", *done]
        if kind == "docker_stream_cut":
            self.proxy.stop()
            done = self.some_ops(1, 3)
            cut_for = self.rng.uniform(*STREAM_CUT_SECONDS)
            time.sleep(cut_for)
            self.proxy.start()
            self.faults[kind] += 1
            return [f"docker stream cut {cut_for:.1f}s", *done]
        if kind == "docker_stalled":
            return self.docker_stalled()
        if kind == "second_agent":
            return self.second_agent()
        raise AssertionError(kind)

    def docker_stalled(self) -> list[str]:
        """Docker answers nothing for 2 x ttl while containers change; the keys of the
        containers that keep running must stay, on the agent's lease, the whole time."""
        lease = self.agent_lease()
        first = self.watchable()
        held = self.etcd.entries(self.prefix)
        watched = {k: v for k, v in self.steady_keys().items() if held.get(k, ())[:2] == (v, lease)}
        self.proxy.stall()
        began = time.monotonic()
        try:
            done = self.some_ops(0, 2)
            watched = {k: v for k, v in watched.items() if self.steady_keys().get(k) == v}
            self.stall_keys.append(len(watched))
            while time.monotonic() - began < STALL_SECONDS:
                self.stall_poll(watched, lease)
                time.sleep(STALL_POLL)
        finally:
            self.proxy.resume()
        self.faults["docker_stalled"] += 1
        return [*first, f"docker stalled {STALL_SECONDS}s", *done]

    def watchable(self) -> list[str]:
        """With no steady container running, start a web one (no draw: the seed's draws stay
        as they are) and give the agent time to announce it, so the stall has a key to watch."""
        if self.steady_keys() or len(self.backends) >= MAX_CONTAINERS:
            return []
        self._create("web", "web")
        deadline = time.monotonic() + CONVERGE_WITHIN
        while time.monotonic() < deadline and not self.holds()[0]:
            time.sleep(0.02)
        return [f"create web {self.backends[-1].name} (to watch through the stall)"]

    def steady_keys(self) -> dict[str, str]:
        """The expected keys of running containers that change only when the test changes
        them: plain web servers (a crash loop restarts by itself, and a healthcheck can time
        out on a loaded machine and flip the container's health)."""
        steady = [b for b in self.backends if b.kind == "web"]
        return self.docker_view(steady)[0]

    def stall_poll(self, watched: dict[str, str], lease: int | None) -> None:
        """One read of etcd during a stall: a watched key gone or moved is a divergence."""
        try:
            actual = self.etcd.entries(self.prefix)
        except requests.RequestException:
            return
        self.stall_polls += 1
        lost = {k for k, v in watched.items() if actual.get(k, ("", 0, 0))[:2] != (v, lease)}
        if lost:
            self.broken(
                "docker stall",
                f"keys of running containers vanished or left lease {lease} during the "
                f"stall: {sorted(lost)}; etcd: { {k: actual.get(k) for k in sorted(lost)} }",
            )
            watched.clear()  # counted once per stall

    def second_agent(self) -> list[str]:
        """Another agent on this node for a few seconds: its SIGTERM revokes its own lease
        only. One more on the first agent's lease file is refused at once."""
        self.same_lease_file_refused()
        variant = list(SECOND_AGENTS)[int(self.rng.random() * len(SECOND_AGENTS))]
        runs_for = self.rng.uniform(*SECOND_AGENT_SECONDS)
        before = self.etcd.entries(self.prefix)
        steady = self.steady_keys()
        second = self.start_agent(*SECOND_AGENTS[variant], lease_file="second.lease")
        time.sleep(runs_for)
        clashes = len(second.events("key held by another owner; left as it is"))
        self.clashes_logged += clashes
        second.signal(signal.SIGTERM)
        code = second.wait()
        after = self.etcd.entries(self.prefix)
        changed = sorted(k for k in steady if k in before and after.get(k) != before[k])
        if code != 0 or changed:
            self.broken(
                "second agent",
                f"exit {code} ({second.log_path}); first agent's keys changed: "
                f"{ {k: (before[k], after.get(k)) for k in changed} }",
            )
        self.faults[f"second_agent ({variant})"] += 1
        return [f"second agent ({variant}) for {runs_for:.1f}s, {clashes} clashes logged"]

    def same_lease_file_refused(self) -> None:
        """An agent started on the running agent's lease file exits 2 at once: its last line
        names the file, nothing started (no lease, no key), the lease id left in the file."""
        lease = self.agent_lease()
        began = time.monotonic()
        third = self.start_agent(lease_file=self.lease_path.name, wait_ready=False)
        try:
            code = third.wait(REFUSED_WITHIN)
        except subprocess.TimeoutExpired:
            third.stop()
            code = None
        took = time.monotonic() - began
        lines = third.log_path.read_text().splitlines() or [""]
        named = "held by another running agent" in lines[-1] and str(self.lease_path) in lines[-1]
        started = [e["event"] for e in third.logs() if e.get("event") in STARTED_EVENTS]
        if code != 2 or not named or started or self.agent_lease() != lease:
            self.broken(
                "same lease file",
                f"exit {code} after {took:.1f}s, last line names the file: {named}, did "
                f"{started}, lease file {lease} -> {self.agent_lease()}; log: {lines[-3:]!r}",
            )
        self.refusals.append(took)

    def broken(self, what: str, reason: str) -> None:
        """Count a broken promise made during a fault (not the round's invariant)."""
        divergence = Divergence(
            self.rounds, what, {}, {}, self.agent_lease(), (), healed_after=None, reason=reason
        )
        self.divergences.append(divergence)
        self.log(f"DIVERGENCE {divergence.describe()}")

    def round(self) -> tuple[str, list[str]]:
        """(the round's fault, or "container operations only"; what was done)."""
        if self.rng.random() < FAULT_CHANCE:
            kind = self.rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            return kind, self.fault(kind)
        return "container operations only", self.some_ops(1, 4)

    # -- the invariant ---------------------------------------------------------------------

    def docker_view(
        self, backends: list[Backend] | None = None
    ) -> tuple[dict[str, str], tuple[Any, ...]]:
        """Expected keys by the checker's own rule, and a signature of every container state
        (of these backends; default: all)."""
        expected: dict[str, str] = {}
        states = []
        for backend in self.backends if backends is None else backends:
            try:
                data = self.api.inspect_container(backend.container_id)
            except docker.errors.NotFound:
                continue
            state = data["State"]
            health = (state.get("Health") or {}).get("Status")
            states.append((backend.name, state["Status"], state["StartedAt"], state["Pid"], health))
            labels = data["Config"]["Labels"] or {}
            port = data["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"]
            if (
                state["Running"]
                and not state["Paused"]
                and not state["Restarting"]
                and health in {None, "healthy"}
                and labels.get("sidekick.enable") == "true"
            ):
                expected[f"{self.prefix}{labels['sidekick.service']}-{port}"] = f"127.0.0.1:{port}"
        return expected, tuple(states)

    def agent_lease(self) -> int | None:
        try:
            return int(self.lease_path.read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def holds(self) -> tuple[bool, dict[str, str], dict[str, Entry], tuple[Any, ...]]:
        before, states = self.docker_view()
        try:
            actual = self.etcd.entries(self.prefix)
        except requests.RequestException:
            return False, before, {}, states
        after, states_after = self.docker_view()
        lease = self.agent_lease()
        right = (
            states == states_after
            and before == after
            and {k: v[0] for k, v in actual.items()} == before
            and all(v[1] == lease for v in actual.values())
        )
        return right, before, actual, states

    def check(self, number: int, kind: str, what: str) -> None:
        assert self.agent is not None and self.agent.process is not None
        assert self.agent.process.poll() is None, f"the agent exited: {self.agent.log_path}"
        started = time.monotonic()
        while True:
            right, expected, actual, states = self.holds()
            took = time.monotonic() - started
            if right:
                self.convergence.append((took, number, kind, what))
                return
            if took > CONVERGE_WITHIN:
                break
            time.sleep(0.02)
        divergence = Divergence(number, what, expected, actual, self.agent_lease(), states)
        self.divergences.append(divergence)
        while time.monotonic() - started < CONVERGE_WITHIN + LATE_LIMIT:
            if self.holds()[0]:
                divergence.healed_after = time.monotonic() - started
                break
            time.sleep(0.1)
        self.log(f"DIVERGENCE {divergence.describe()}")


def chaos_seconds(config: pytest.Config) -> float:
    option = config.getoption("--chaos-seconds")
    if option is not None:
        return float(option)
    return float(os.environ.get("SIDEKICK_CHAOS_SECONDS") or DEFAULT_SECONDS)


def test_chaos_invariant(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    agent_factory: Callable[..., AgentProcess],
    containers: Containers,
    own_network: str,
    docker_client: docker.DockerClient,
    docker_proxy: DockerSocketProxy,
    scope: str,
    tmp_path: Path,
):
    """Random containers and faults; after each round etcd equals Docker's truth, or we count."""
    seconds = chaos_seconds(request.config)
    seed = int(os.environ.get("SIDEKICK_CHAOS_SEED") or random.SystemRandom().randrange(2**32))

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"\n[chaos] {line}", end="", flush=True)

    say(f"seed {seed} (SIDEKICK_CHAOS_SEED={seed} replays the draws), {seconds:.0f}s")
    etcd = EtcdServer(tmp_path / "chaos-etcd")  # our own: stopping it disturbs no other test
    etcd.start()
    lease_file = "chaos.lease"

    def start_agent(
        *extra: str, lease_file: str = lease_file, wait_ready: bool = True
    ) -> AgentProcess:
        """The chaos agent (through the socket proxy), or with a lease file of its own and
        no --docker-url, a second agent on the same node."""
        docker = ("--docker-url", docker_proxy.url) if lease_file == "chaos.lease" else ()
        return agent_factory(
            *docker,
            *extra,
            etcd_endpoints=etcd.url,
            ttl=TTL,
            resync=RESYNC,
            lease_file=lease_file,
            wait_ready=wait_ready,
        )

    chaos = Chaos(
        rng=random.Random(seed),
        client=docker_client,
        containers=containers,
        network=own_network,
        prefix=f"/{scope}/",
        etcd=etcd,
        proxy=docker_proxy,
        start_agent=start_agent,
        lease_path=tmp_path / lease_file,
        log=say,
    )
    number, soak = 0, 0.0
    load_start = os.getloadavg()[0]
    try:
        chaos.agent = start_agent()
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            number += 1
            chaos.rounds = number
            kind, done = chaos.round()
            chaos.check(number, kind, "; ".join(done))
        soak = time.monotonic() - began

        # The end: every container removed, then SIGTERM revokes the lease.
        for backend in list(chaos.backends):
            docker_client.api.remove_container(backend.container_id, force=True)
            chaos.backends.remove(backend)
        chaos.check(number + 1, "the end", "every container removed")
        chaos.agent.signal(signal.SIGTERM)
        assert chaos.agent.wait() == 0
        assert etcd.keys(chaos.prefix) == {}
    finally:
        etcd.stop()
        load = (load_start, os.getloadavg()[0])
        for line in summary(chaos, seed, seconds, number, soak, load):
            say(line)
        say("")
    assert not chaos.divergences, "\n".join(
        [f"seed {seed}", *(d.describe() for d in chaos.divergences)]
    )


def summary(
    chaos: Chaos, seed: int, seconds: float, rounds: int, soak: float, load: tuple[float, float]
) -> list[str]:
    """The figures, in words, then once more as one JSON line (`summary {...}`) that
    `./bench/run --reliability` (bench/reliability.py) reads into docs/reliability.md."""
    times = [c[0] for c in chaos.convergence]
    worst = max(chaos.convergence, default=(0.0, 0, "", "none"))
    by_kind: dict[str, float] = {}
    for took, _, kind, _ in chaos.convergence:
        by_kind[kind] = max(by_kind.get(kind, 0.0), took)
    restarts = max(chaos.agent_restarts, default=0.0)
    median = statistics.median(times) if times else 0.0
    record = {
        "seed": seed,
        "seconds": seconds,
        "soak_s": round(soak, 1),
        "rounds": rounds,
        "quiet_periods": len(times),
        "load": [round(load[0], 2), round(load[1], 2)],
        "faults": dict(sorted(chaos.faults.items())),
        "container_operations": dict(sorted(chaos.applied.items())),
        "refused_by_docker": dict(sorted(chaos.refused.items())),
        "divergences": [
            {
                "round": d.round,
                "check": "quiet period" if not d.reason else d.what,
                "healed_after_s": d.healed_after,
                "describe": d.describe(),
            }
            for d in chaos.divergences
        ],
        "convergence": {
            "worst_s": round(worst[0], 3),
            "worst_round": worst[1],
            "worst_what": worst[3],
            "median_s": round(median, 3),
            "worst_by_round_kind": {k: round(t, 3) for k, t in sorted(by_kind.items())},
        },
        "agent_restarts": len(chaos.agent_restarts),
        "agent_restart_worst_s": round(restarts, 3),
        "stalls": len(chaos.stall_keys),
        "stall_keys_watched": sum(chaos.stall_keys),
        "stall_reads": chaos.stall_polls,
        "clashes_logged": chaos.clashes_logged,
        "refusals": len(chaos.refusals),
        "refusal_worst_s": round(max(chaos.refusals, default=0.0), 3),
        "settings": {
            "ttl_s": TTL,
            "resync_s": RESYNC,
            "bound_s": CONVERGE_WITHIN,
            "late_limit_s": LATE_LIMIT,
            "max_containers": MAX_CONTAINERS,
            "fault_chance": FAULT_CHANCE,
            "faults": sorted(FAULTS),
            "agent_dead_s": list(AGENT_DEAD_SECONDS),
            "etcd_outage_s": list(ETCD_OUTAGE_SECONDS),
            "stream_cut_s": list(STREAM_CUT_SECONDS),
            "stall_s": STALL_SECONDS,
            "stall_poll_s": STALL_POLL,
            "second_agent_s": list(SECOND_AGENT_SECONDS),
            "second_agents": list(SECOND_AGENTS),
            "refused_within_s": REFUSED_WITHIN,
        },
    }
    return [
        f"seed {seed}; {rounds} rounds in {soak:.0f}s; {len(times)} quiet periods checked; "
        f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end",
        f"faults survived: {sum(chaos.faults.values())} -- "
        + ", ".join(f"{k} {n}" for k, n in sorted(chaos.faults.items())),
        f"container operations: {sum(chaos.applied.values())} -- "
        + ", ".join(f"{k} {n}" for k, n in sorted(chaos.applied.items())),
        "refused by Docker in that state (nothing changed): "
        + (", ".join(f"{k} {n}" for k, n in sorted(chaos.refused.items())) or "none"),
        f"divergences: {len(chaos.divergences)}",
        f"convergence: worst {worst[0]:.2f}s (round {worst[1]}: {worst[3]}), "
        f"median {median:.2f}s, bound {CONVERGE_WITHIN:.0f}s",
        "worst convergence by round: "
        + ", ".join(f"{k} {t:.2f}s" for k, t in sorted(by_kind.items())),
        f"agent restart (exec to its first reconcile): worst {restarts:.2f}s",
        f"docker stalls: {len(chaos.stall_keys)}, {sum(chaos.stall_keys)} keys watched, "
        f"{chaos.stall_polls} reads of etcd during them",
        f"second agents: {chaos.clashes_logged} 'key held by another owner' lines; same lease "
        f"file refused {len(chaos.refusals)} times, exit 2 after worst "
        f"{max(chaos.refusals, default=0.0):.2f}s",
        "summary " + json.dumps(record, sort_keys=True),
    ]
