"""The agent's core against the real Docker engine and a real etcd: stop signals, the lease
file's lock, a stalled Docker engine, own-key reads, a lost lease, dead helper threads,
signals and permanent etcd errors.

Where a test must control a race, the Agent runs in-process (its run() on a thread, its logs
as JSON lines in a file); elsewhere `sidekick run` runs as a subprocess. Every wait is on the
thing itself (a key, a log line, a metric, an answer from etcd); a claim that something never
happened during a window is checked throughout that window.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import structlog

from sidekick import logs
from sidekick.agent import Agent, AgentFailed
from sidekick.config import Config, load_config
from sidekick.docker_source import DockerEvent, DockerSource
from sidekick.leasefile import LeaseFile
from sidekick.metrics import Metrics
from sidekick.store import Store
from tests.conftest import (
    TEST_LABEL,
    Containers,
    EtcdServer,
    JsonLog,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration

HOST_IP = "10.0.0.7"
DRAIN_SECONDS = 3  # the test images' processes drain this long after their stop signal


# -- helpers ------------------------------------------------------------------------------


def published(port: int) -> dict[str, tuple[str, int]]:
    return {"80/tcp": ("127.0.0.1", port)}


def lease_ttl(etcd: EtcdServer, lease: int) -> int:
    """Seconds etcd says are left on a lease; -1 when it is gone (or in its last second,
    where the JSON gateway leaves "TTL": 0 out)."""
    return int(etcd.post("lease/timetolive", {"ID": lease}).get("TTL", -1))


def hold_for(seconds: float, check: Callable[[], None], interval: float = 0.05) -> int:
    """Run `check` (which asserts) again and again for `seconds`; how many times it ran."""
    deadline = time.monotonic() + seconds
    runs = 0
    while True:
        check()
        runs += 1
        if time.monotonic() >= deadline:
            return runs
        time.sleep(interval)


def sample(agent: Agent, name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one of the agent's metrics (0 when never set)."""
    value = agent.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


def etcd_requests(etcd: EtcdServer) -> dict[str, float]:
    """gRPC requests etcd has started, by method, from etcd's own /metrics."""
    text = requests.get(etcd.url + "/metrics", timeout=5).text
    counts = {}
    for match in re.finditer(
        r'^grpc_server_started_total\{grpc_method="(\w+)",[^}]*\} (\S+)$', text, re.M
    ):
        counts[match.group(1)] = float(match.group(2))
    return counts


# -- images whose process drains after its stop signal --------------------------------------

DRAIN_COMMAND = (
    "trap 'echo draining; sleep {seconds}; exit 0' {signal}; trap 'echo reload' HUP; "
    "httpd -f -p 80 & while :; do wait; done"
)


def drain_command(stop_signal: str) -> list[str]:
    """sh as PID 1: serve, on the stop signal drain DRAIN_SECONDS and exit 0; HUP: reload."""
    return ["sh", "-c", DRAIN_COMMAND.format(seconds=DRAIN_SECONDS, signal=stop_signal)]


def build_drain_image(client: docker.DockerClient, base: str, stop_signal: str) -> str:
    """An image FROM the busybox test image with STOPSIGNAL SIG<stop_signal>, built offline."""
    dockerfile = (
        f"FROM {base}\nSTOPSIGNAL SIG{stop_signal}\nCMD {json.dumps(drain_command(stop_signal))}\n"
    ).encode()
    tag = f"sidekick-test/drain-{stop_signal.lower()}:{sha256(dockerfile).hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        context.seek(0)
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, pull=False)
    return tag


@pytest.fixture(name="drain_images", scope="module")
def _drain_images(docker_client: docker.DockerClient, images: dict[str, str]) -> dict[str, str]:
    return {
        name: build_drain_image(docker_client, images["busybox"], name)
        for name in ("WINCH", "QUIT")
    }


# -- the agent in-process -------------------------------------------------------------------


class AgentLog(JsonLog):
    """The in-process agents' JSON log lines, in a file of the test's own."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path


@pytest.fixture(name="agent_log")
def _agent_log(tmp_path: Path) -> Iterator[AgentLog]:
    path = tmp_path / "inprocess.log"
    stream = path.open("a", encoding="utf-8")
    logs.configure("json", "info", stream=stream)
    yield AgentLog(path)
    structlog.reset_defaults()
    stream.close()


class Running:
    """An in-process Agent whose run() goes on a thread; what run() raised, if anything."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="agent-run", daemon=True)

    def _run(self) -> None:
        try:
            self.agent.run()
        except BaseException as exc:  # the test looks at it
            self.error = exc

    def stop(self, timeout: float = 20) -> None:
        self.agent.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent.run() did not return after stop()"

    @property
    def lease(self) -> int:
        return self.agent.keeper.lease


class InProcess:
    """Builds Agents the way `sidekick run` does, with the test's scope and collaborators."""

    def __init__(self, etcd: EtcdServer, scope: str, tmp_path: Path) -> None:
        self.etcd = etcd
        self.scope = scope
        self.tmp_path = tmp_path
        self.running: list[Running] = []

    def config(self, **flags: Any) -> Config:
        environment = self.tmp_path / "environment"
        environment.touch()
        values: dict[str, Any] = {
            "etcd_endpoints": self.etcd.url,
            "prefix": f"/{self.scope}",
            "filters": [f"label={TEST_LABEL}={self.scope}"],
            "host_ip": HOST_IP,
            "ttl": 3,
            "environment_file": environment,
            "log_format": "json",
        }
        values.update(flags)
        return load_config(values, environ={})

    def start(
        self,
        *,
        docker_cls: type[DockerSource] = DockerSource,
        docker_kwargs: dict[str, Any] | None = None,
        store_cls: type[Store] = Store,
        lease_file: str = "lease",
        wait_ready: bool = True,
        **flags: Any,
    ) -> Running:
        config = self.config(**flags)
        source = docker_cls(
            config.docker_url,
            timeout=config.docker_timeout,
            label_filters=config.label_filters(),
            opted_in_only=not config.all_containers,
            **(docker_kwargs or {}),
        )
        agent = Agent(
            config,
            store_cls(config.etcd_endpoints, config.etcd_timeout, config.etcd_security),
            source,
            metrics=Metrics(),
            lease_file=LeaseFile(self.tmp_path / lease_file),
        )
        running = Running(agent)
        self.running.append(running)
        running.thread.start()
        if wait_ready:
            wait_for(
                lambda: agent.reconciled.is_set() or running.error,
                timeout=20,
                message="the agent's first reconcile",
            )
            assert running.error is None, running.error
        return running

    def stop_all(self) -> None:
        for running in self.running:
            if running.thread.is_alive():
                running.stop()


@pytest.fixture(name="inprocess")
def _inprocess(
    live_etcd: EtcdServer, scope: str, tmp_path: Path, agent_log: AgentLog
) -> Iterator[InProcess]:
    harness = InProcess(live_etcd, scope, tmp_path)
    yield harness
    harness.stop_all()


# -- 1. the stop signal ---------------------------------------------------------------------


class TestStopSignal:
    """`docker stop` withdraws a container's keys at its first step, the container's own stop
    signal, while the container still drains; a reload signal leaves them."""

    def stop_and_watch(
        self, etcd: EtcdServer, docker_client: docker.DockerClient, container: Any, key: str
    ) -> None:
        """docker stop; the key goes while Docker still reports the container running; the
        container then drains and exits 0 (its trap ran: it got its own stop signal)."""
        prefix = key.rsplit("/", 1)[0] + "/"
        stopper = threading.Thread(target=container.stop, kwargs={"timeout": 10})
        stopped_at = time.monotonic()
        stopper.start()
        wait_for(lambda: key not in etcd.keys(prefix), timeout=DRAIN_SECONDS + 5, interval=0.01)
        withdrawn_after = time.monotonic() - stopped_at
        state = docker_client.api.inspect_container(container.id)["State"]
        assert state["Running"], (
            f"the key went {withdrawn_after:.2f}s after docker stop, only once the container "
            f"had stopped: withdrawn at die, not at the stop signal (state {state})"
        )
        stopper.join(15)
        state = docker_client.api.inspect_container(container.id)["State"]
        assert not state["Running"]
        assert state["ExitCode"] == 0, f"not drained by its own trap: {state}"
        assert b"draining" in container.logs()

    @pytest.mark.parametrize("stop_signal", ["WINCH", "QUIT"])
    def test_own_stop_signal_withdraws_before_die(
        self,
        inprocess: InProcess,
        containers: Containers,
        drain_images: dict[str, str],
        live_etcd: EtcdServer,
        docker_client: docker.DockerClient,
        scope: str,
        stop_signal: str,
    ) -> None:
        """STOPSIGNAL SIGWINCH (httpd) or SIGQUIT (nginx): the key goes at the kill, not after
        the 3 s drain."""
        inprocess.start()
        port = free_port()
        container = containers.run(
            image=drain_images[stop_signal],
            command=drain_command(stop_signal),
            ports=published(port),
            labels={"sidekick.service": "web"},
        )
        key = f"/{scope}/web-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=key)
        self.stop_and_watch(live_etcd, docker_client, container, key)

    def test_stop_signal_learnt_at_the_kill(
        self,
        inprocess: InProcess,
        containers: Containers,
        drain_images: dict[str, str],
        live_etcd: EtcdServer,
        docker_client: docker.DockerClient,
        scope: str,
    ) -> None:
        """A container started before the agent (its stop signal unknown from the listing):
        the agent inspects it at the kill and withdraws before the drain ends."""
        port = free_port()
        container = containers.run(
            image=drain_images["WINCH"],
            command=drain_command("WINCH"),
            ports=published(port),
            labels={"sidekick.service": "early"},
        )
        running = inprocess.start()
        key = f"/{scope}/early-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=key)
        assert container.id not in running.agent.lookup.stop_signals  # known from a listing
        self.stop_and_watch(live_etcd, docker_client, container, key)

    def test_reload_signal_keeps_the_key(
        self,
        inprocess: InProcess,
        containers: Containers,
        drain_images: dict[str, str],
        live_etcd: EtcdServer,
        docker_client: docker.DockerClient,
        scope: str,
    ) -> None:
        """`docker kill -s HUP`: the agent sees the kill, and for 2 s after it the key stays
        and the container keeps running (it reloaded)."""
        running = inprocess.start()
        port = free_port()
        container = containers.run(
            image=drain_images["WINCH"],
            command=drain_command("WINCH"),
            ports=published(port),
            labels={"sidekick.service": "reload"},
        )
        key = f"/{scope}/reload-{port}"
        wanted = (f"127.0.0.1:{port}", running.lease)
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ())[:2] == wanted)
        revision = live_etcd.entries(f"/{scope}/")[key][2]
        kills = sample(running.agent, "sidekick_docker_events_total", {"action": "kill"})
        container.kill(signal="SIGHUP")

        def unchanged() -> None:
            assert live_etcd.entries(f"/{scope}/").get(key) == (*wanted, revision)
            assert docker_client.api.inspect_container(container.id)["State"]["Running"]

        wait_for(
            lambda: (
                unchanged() is None
                and sample(running.agent, "sidekick_docker_events_total", {"action": "kill"})
                > kills
            ),
            message="the agent received the kill event",
        )
        hold_for(2.0, unchanged)
        assert b"reload" in container.logs()


# -- 6. helper threads that die -------------------------------------------------------------


class FlakyEvents(DockerSource):
    """A Docker source whose open_events raises RuntimeError while `plan["fail"]` allows.

    The plan is one dict shared by every clone (clone() is a copy.copy), so the reader's
    clone and the test see the same counters.
    """

    def __init__(self, *args: Any, fail: float = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = {"fail": fail, "calls": 0}

    def open_events(self) -> Iterator[DockerEvent]:
        self.plan["calls"] += 1
        if self.plan["fail"] > 0:
            self.plan["fail"] -= 1
            raise RuntimeError("injected: the events reader broke")
        return super().open_events()


class TestDeadThreads:
    """A helper thread that dies of an unexpected exception is restarted and counted; one that
    keeps dying makes the agent give up with its lease kept."""

    def test_events_reader_restarted_once(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        agent_log: AgentLog,
        scope: str,
    ) -> None:
        """open_events raises RuntimeError once: the reader is restarted, counted once, and
        events flow afterwards (a container started later is announced)."""
        running = inprocess.start(docker_cls=FlakyEvents, docker_kwargs={"fail": 1})
        agent = running.agent
        restarts = {"thread": "docker-events"}
        assert sample(agent, "sidekick_thread_restarts_total", restarts) == 1
        assert isinstance(agent.reader.docker, FlakyEvents)
        assert agent.reader.docker.plan["calls"] == 2
        assert [line["thread"] for line in agent_log.events("thread died")] == ["docker-events"]
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "later"})
        key = f"/{scope}/later-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=f"{key} from an event")
        assert sample(agent, "sidekick_docker_events_total", {"action": "start"}) >= 1
        assert sample(agent, "sidekick_thread_restarts_total", restarts) == 1

    def test_reader_that_keeps_dying_ends_the_agent_with_the_lease_kept(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        agent_log: AgentLog,
        scope: str,
        tmp_path: Path,
    ) -> None:
        """The reader dies at every reconnect: run() raises AgentFailed, and the lease is not
        revoked (the keys stand, on a live lease, for a restarted agent to resume)."""
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "kept"})
        running = inprocess.start(docker_cls=FlakyEvents, ttl=6)
        key = f"/{scope}/kept-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=key)
        lease = running.lease
        source = running.agent.reader.docker
        assert isinstance(source, FlakyEvents)
        source.plan["fail"] = float("inf")
        source.close_events()  # the stream ends; every reconnect from now on dies
        running.thread.join(40)  # five restarts, 0.5 s doubling, then it gives up
        assert not running.thread.is_alive(), "the agent kept serving with a dead reader"
        assert isinstance(running.error, AgentFailed), running.error
        assert "docker-events" in str(running.error)
        assert (
            sample(running.agent, "sidekick_thread_restarts_total", {"thread": "docker-events"})
            >= 2
        )
        assert live_etcd.entries(f"/{scope}/")[key][:2] == (f"127.0.0.1:{port}", lease)
        assert lease_ttl(live_etcd, lease) > 0
        assert agent_log.events("lease revoked; keys removed") == []
        assert agent_log.events("agent stopped; keys left to expire with the lease")
        assert int((tmp_path / "lease").read_text(), 16) == lease  # to resume
