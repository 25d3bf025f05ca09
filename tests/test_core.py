"""The agent's core against the real Docker engine and a real etcd: stop signals, the lease
file's lock, a stalled Docker engine, own-key reads, a lost lease, dead helper threads,
signals and permanent etcd errors.

Where a test must control a race, the Agent runs in-process (its run() on a thread, its logs
as JSON lines in a file); elsewhere `sidekick run` runs as a subprocess. Every wait is on the
thing itself (a key, a log line, a metric, an answer from etcd); a claim that something never
happened during a window is checked throughout that window.
"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
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
from sidekick.reconcile import SETTLE_AFTER
from sidekick.store import Store
from tests.conftest import (
    TEST_LABEL,
    Containers,
    DockerSocketProxy,
    EtcdServer,
    JsonLog,
    free_port,
    metric,
    wait_for,
)
from tests.test_security import _auth_etcd, _pki, _tls_etcd  # noqa: F401 - fixtures

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
    """`docker stop` withdraws the keys at the stop signal, before the drain ends."""

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
        signals = running.agent.lookup.knowledge.stop_signals
        assert container.id not in signals  # known from a listing
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

        def kill_received_and_unchanged() -> bool:
            unchanged()
            return sample(running.agent, "sidekick_docker_events_total", {"action": "kill"}) > kills

        wait_for(kill_received_and_unchanged, message="the agent received the kill event")
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

    def open_events(self, networks: bool = True) -> Iterator[DockerEvent]:
        self.plan["calls"] += 1
        if self.plan["fail"] > 0:
            self.plan["fail"] -= 1
            raise RuntimeError("injected: the events reader broke")
        return super().open_events(networks)


class TestDeadThreads:
    """A dead helper thread is restarted and counted; one that keeps dying ends the agent."""

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


# -- 2. one lease file, one agent -----------------------------------------------------------


class TestLeaseFileLock:
    """One lease file, one live agent: a second is refused; after kill -9 one resumes."""

    def test_second_agent_on_the_same_file_exits_2(
        self, agent_factory, containers: Containers, live_etcd: EtcdServer, scope, tmp_path
    ) -> None:
        """Exit 2 at once, one line naming the file and the remedy; the first agent's
        keys are untouched (same value, lease and revision) and it keeps serving."""
        first = agent_factory(lease_file="shared")
        lease = int(first.events("lease granted")[0]["lease"], 16)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ("", 0))[1] == lease)
        before = live_etcd.entries(f"/{scope}/")
        second = agent_factory(lease_file="shared", wait_ready=False)
        assert second.wait(60) == 2  # no retries: the lock is refused at once (no timing here)
        lines = second.log_path.read_text().splitlines()
        assert len(lines) == 1, lines
        assert str(tmp_path / "shared") in lines[0]
        assert "give each agent its own --lease-file" in lines[0]
        assert live_etcd.entries(f"/{scope}/") == before
        assert lease_ttl(live_etcd, lease) > 0
        assert first.process is not None and first.process.poll() is None

    def test_kill_9_then_a_new_agent_resumes_the_lease(
        self, agent_factory, containers: Containers, live_etcd: EtcdServer, scope
    ) -> None:
        """The kernel drops the lock of a killed agent: the next one on the file logs "lease
        resumed" with the same lease, and the key stays as it was (no rewrite)."""
        first = agent_factory(lease_file="shared", ttl=10)
        lease = int(first.events("lease granted")[0]["lease"], 16)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ("", 0))[1] == lease)
        entry = live_etcd.entries(f"/{scope}/")[key]
        first.signal(signal.SIGKILL)
        first.wait()
        after = agent_factory(lease_file="shared", ttl=10)
        assert [int(line["lease"], 16) for line in after.events("lease resumed")] == [lease]
        assert after.events("lease granted") == []
        assert live_etcd.entries(f"/{scope}/")[key] == entry
        assert lease_ttl(live_etcd, lease) > 0


# -- 3. a stalled Docker engine ---------------------------------------------------------------


class TestDockerStall:
    """A Docker engine that answers nothing never lets the lease lapse."""

    def test_lease_outlives_a_stalled_docker(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        docker_proxy: DockerSocketProxy,
        scope: str,
    ) -> None:
        """ttl 3, Docker stalled for 3 x ttl with a resync waiting on it: etcd holds the key on
        a live lease throughout, health says "docker stalled" (never "no live lease"), and a
        container started during the stall is announced after it."""
        running = inprocess.start(docker_url=docker_proxy.url, ttl=3)
        agent, lease = running.agent, running.lease
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wanted = (f"127.0.0.1:{port}", lease)
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ())[:2] == wanted, message=key)
        window = 3 * agent.config.ttl
        reasons: list[str] = []
        docker_proxy.stall()
        try:
            stalled_at = time.monotonic()
            asked = len(docker_proxy.requests)
            agent.request_resync()
            wait_for(lambda: len(docker_proxy.requests) > asked, message="the resync asks Docker")
            late_port = free_port()
            containers.run(ports=published(late_port), labels={"sidekick.service": "late"})

            def lease_holds() -> None:
                assert live_etcd.entries(f"/{scope}/").get(key, ())[:2] == wanted
                assert lease_ttl(live_etcd, lease) > 0
                ok, reason = agent.health()
                assert "no live lease" not in reason
                if "docker stalled" in reason:
                    assert not ok
                    reasons.append(reason)

            runs = hold_for(window - (time.monotonic() - stalled_at), lease_holds)
            assert runs > window * 5  # etcd was really read throughout
            assert reasons, "health never said docker stalled"
        finally:
            docker_proxy.resume()
        late = f"/{scope}/late-{late_port}"
        wait_for(lambda: late in live_etcd.keys(f"/{scope}/"), timeout=15, message=late)
        assert live_etcd.entries(f"/{scope}/")[key][:2] == wanted
        wait_for(lambda: agent.health() == (True, "ok"), message="healthy again")


# -- 4. only this node's keys are read -------------------------------------------------------


class RecordingStore(Store):
    """A Store that notes every request it sends (shared by its clones)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def _post(self, path: str, payload: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.posts.append((path, payload))
        return super()._post(path, payload, *args, **kwargs)


def put_many(etcd: EtcdServer, entries: dict[str, tuple[str, int]]) -> None:
    """Put key -> (value, lease) in transactions of 128."""
    items = sorted(entries.items())
    for start in range(0, len(items), 128):
        success = []
        for key, (value, lease) in items[start : start + 128]:
            put = {"key": _b64(key), "value": _b64(value)}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        etcd.post("kv/txn", {"success": success})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class TestOwnKeys:
    """A resync reads only this node's keys, and keeps ownership rules."""

    def test_resync_reads_no_prefix(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        scope: str,
    ) -> None:
        """5,000 keys of other leases under the prefix; three resyncs: etcd counts no Range
        request (reads are a LeaseTimeToLive and Txns of single-key ranges)."""
        others = [live_etcd.grant(60) for _ in range(5)]
        try:
            put_many(
                live_etcd,
                {
                    f"/{scope}/other-{i}": (f"10.1.{i // 250}.{i % 250}:80", others[i % 5])
                    for i in range(5000)
                },
            )
            port = free_port()
            containers.run(ports=published(port), labels={"sidekick.service": "web"})
            running = inprocess.start(store_cls=RecordingStore)
            agent = running.agent
            key = f"/{scope}/web-{port}"
            wait_for(lambda: key in live_etcd.keys(f"/{scope}/web-"), message=key)
            store = agent.store
            assert isinstance(store, RecordingStore)
            # the reconcile SETTLE_AFTER the stream connected, first: none may be in flight
            # when the counts are taken (its Txn before them, its end after)
            wait_for(
                lambda: sample(agent, "sidekick_reconcile_duration_seconds_count") >= 2,
                timeout=SETTLE_AFTER + 20,
                message="the settle reconcile",
            )
            reconciles = sample(agent, "sidekick_reconcile_duration_seconds_count")
            sent = len(store.posts)
            before = etcd_requests(live_etcd)
            for done in range(1, 4):  # no request of the test's own to etcd meanwhile
                agent.request_resync()

                def resynced(n: int = done) -> bool:
                    count = sample(agent, "sidekick_reconcile_duration_seconds_count")
                    return count >= reconciles + n

                wait_for(resynced, message=f"resync {done}")
            after = etcd_requests(live_etcd)
            grew = {method: after[method] - before.get(method, 0) for method in after}
            assert grew.get("Range", 0) == 0, grew
            assert grew.get("Txn", 0) >= 3, grew
            assert grew.get("LeaseTimeToLive", 0) >= 3, grew
            posts = store.posts[sent:]
            assert [path for path, _ in posts if path.endswith("/kv/range")] == []
            ranges = [
                op["request_range"]
                for path, payload in posts
                if path.endswith("/kv/txn")
                for op in payload.get("success", [])
                if "request_range" in op
            ]
            assert ranges, "the resyncs read no key at all"
            assert all("range_end" not in r for r in ranges), ranges
            assert {base64.b64decode(r["key"]).decode() for r in ranges} == {key}
        finally:
            for lease in others:
                live_etcd.revoke(lease)

    def test_own_key_deleted_behind_its_back_comes_back_at_resync(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        scope: str,
    ) -> None:
        """etcdctl del of a key the node holds: no event says so; the next resync puts it back
        on the node's lease."""
        running = inprocess.start()
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wanted = (f"127.0.0.1:{port}", running.lease)
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ())[:2] == wanted, message=key)
        live_etcd.delete(key)
        assert key not in live_etcd.keys(f"/{scope}/")
        reconciles = sample(running.agent, "sidekick_reconcile_duration_seconds_count")
        running.agent.request_resync()
        wait_for(
            lambda: live_etcd.entries(f"/{scope}/").get(key, ())[:2] == wanted,
            timeout=5,
            message=f"{key} back",
        )
        assert sample(running.agent, "sidekick_reconcile_duration_seconds_count") > reconciles

    def test_plain_key_adopted_and_foreign_value_left_alone(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        agent_log: AgentLog,
        scope: str,
    ) -> None:
        """A plain key holding our value goes onto our lease, its value unchanged; a key on
        another lease with another value is a clash: logged once, counted, never written."""
        adopt_port, clash_port = free_port(), free_port()
        containers.run(ports=published(adopt_port), labels={"sidekick.service": "adopt"})
        containers.run(ports=published(clash_port), labels={"sidekick.service": "clash"})
        adopt, clash = f"/{scope}/adopt-{adopt_port}", f"/{scope}/clash-{clash_port}"
        live_etcd.put(adopt, f"127.0.0.1:{adopt_port}")
        other = live_etcd.grant(60)
        try:
            live_etcd.put(clash, "192.0.2.99:80", lease=other)
            held = live_etcd.entries(f"/{scope}/")[clash]
            running = inprocess.start()
            wait_for(
                lambda: (
                    live_etcd.entries(f"/{scope}/").get(adopt, ())[:2]
                    == (f"127.0.0.1:{adopt_port}", running.lease)
                ),
                message=f"{adopt} adopted",
            )
            reconciles = sample(running.agent, "sidekick_reconcile_duration_seconds_count")
            running.agent.request_resync()
            wait_for(
                lambda: (
                    sample(running.agent, "sidekick_reconcile_duration_seconds_count") > reconciles
                ),
                message="a resync",
            )
            assert live_etcd.entries(f"/{scope}/")[clash] == held
            assert sample(running.agent, "sidekick_clashes_total") == 1
            assert [
                line["key"] for line in agent_log.events("key held by another owner; left as it is")
            ] == [clash]
        finally:
            live_etcd.revoke(other)


# -- 5. a lost lease ---------------------------------------------------------------------------


class TestLeaseLost:
    """A revoked lease is re-granted with the keys put back, without Docker."""

    def test_revoked_lease_regranted_with_keys_while_docker_is_stalled(
        self,
        inprocess: InProcess,
        containers: Containers,
        live_etcd: EtcdServer,
        docker_proxy: DockerSocketProxy,
        agent_log: AgentLog,
        scope: str,
    ) -> None:
        """Docker stalled, the lease revoked: the key comes back on a new live lease while no
        Docker request can be answered; sidekick_lease_regrants_total is 1."""
        running = inprocess.start(docker_url=docker_proxy.url, ttl=3)
        agent, old = running.agent, running.lease
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        value = f"127.0.0.1:{port}"
        wait_for(lambda: live_etcd.entries(f"/{scope}/").get(key, ())[:2] == (value, old))
        reconciles = len(agent_log.events("reconciled"))
        docker_proxy.stall()
        try:
            live_etcd.revoke(old)
            entry = wait_for(
                lambda: (
                    (e := live_etcd.entries(f"/{scope}/").get(key)) and e[1] not in {0, old} and e
                ),
                timeout=2 * agent.config.ttl,
                message=f"{key} on a new lease",
            )
            assert entry[0] == value
            assert entry[1] == agent.keeper.lease
            assert lease_ttl(live_etcd, entry[1]) > 0
            assert sample(agent, "sidekick_lease_regrants_total") == 1
            assert agent_log.events("keys put back on the new lease")[0]["keys"] == 1
            # the loop's reconcile for the new lease waits on Docker; the key stood before it
            wait_for(lambda: agent.docker.stalled() > 0.5, message="the loop waiting on Docker")
            assert len(agent_log.events("reconciled")) == reconciles
            assert live_etcd.entries(f"/{scope}/")[key] == entry
        finally:
            docker_proxy.resume()
        agent_log.wait_log("reconciled", reconciles + 1)  # the new lease's reconcile, Docker back
        assert live_etcd.entries(f"/{scope}/")[key][:2] == (value, entry[1])
        assert sample(agent, "sidekick_lease_regrants_total") == 1


# -- 7. signals --------------------------------------------------------------------------------


class TestSignals:
    """SIGTERM ends the agent promptly, lease revoked; SIGHUP reconciles."""

    def test_sigterm_during_a_stalled_docker_call(
        self,
        agent_factory,
        containers: Containers,
        live_etcd: EtcdServer,
        docker_proxy: DockerSocketProxy,
        scope,
    ) -> None:
        """--docker-timeout 3, a resync hanging on Docker: SIGTERM -> exit 0 within the Docker
        timeout + 3 s, the lease (ttl 20) revoked so the key is gone at once."""
        agent = agent_factory("--docker-url", docker_proxy.url, "--docker-timeout", "3", ttl=20)
        lease = int(agent.events("lease granted")[0]["lease"], 16)
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=key)
        docker_proxy.stall()
        try:
            asked = len(docker_proxy.requests)
            agent.signal(signal.SIGHUP)
            wait_for(
                lambda: any("/containers/json" in r for r in docker_proxy.requests[asked:]),
                message="the resync's listing in flight",
            )
            started = time.monotonic()
            agent.signal(signal.SIGTERM)
            assert agent.wait(3 + 10) == 0
            took = time.monotonic() - started
        finally:
            docker_proxy.resume()
        assert took < 3 + 3, f"SIGTERM took {took:.1f}s"
        assert live_etcd.keys(f"/{scope}/") == {}
        assert lease_ttl(live_etcd, lease) == -1
        assert agent.events("lease revoked; keys removed")

    def test_sighup_reconciles_and_keeps_running(
        self, agent_factory, containers: Containers, live_etcd: EtcdServer, scope
    ) -> None:
        """SIGHUP: one more "reconciled" line, the process alive, its key still there."""
        agent = agent_factory()
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message=key)
        count = len(agent.events("reconciled"))
        agent.signal(signal.SIGHUP)
        agent.wait_log("reconciled", count + 1)
        assert len(agent.events("reconciled")) == count + 1
        assert agent.process is not None and agent.process.poll() is None
        assert key in live_etcd.keys(f"/{scope}/")


# -- 8. etcd errors: permanent ones at start-up, an ordinary outage -----------------------------


class TestEtcdErrors:
    """etcd refusing the agent at start-up exits 2; an outage is logged once."""

    @staticmethod
    def error_lines(agent: Any) -> list[str]:
        text = agent.log_path.read_text()
        return [line for line in text.splitlines() if line.startswith("sidekick: error:")]

    def test_tls_without_client_certificate_exits_2(self, agent_factory, tls_etcd, pki) -> None:
        """A TLS etcd demanding client certificates, none given: exit 2, one line naming the
        certificate settings."""
        agent = agent_factory(
            "--etcd-ca", str(pki / "ca.pem"), etcd_endpoints=tls_etcd.url, wait_ready=False
        )
        assert agent.wait(30) == 2
        lines = self.error_lines(agent)
        assert len(lines) == 1, agent.log_path.read_text()
        assert "client certificate: none" in lines[0]
        assert str(pki / "ca.pem") in lines[0]
        assert agent.events("reconciled") == []

    def test_wrong_password_exits_2(self, agent_factory, auth_etcd) -> None:
        """Auth enabled, a wrong password: exit 2, one line naming the user, never the
        password."""
        agent = agent_factory(
            "--etcd-user",
            "agent",
            etcd_endpoints=auth_etcd.url,
            env={"SIDEKICK_ETCD_PASSWORD": "Not-The-Password-7"},
            wait_ready=False,
        )
        assert agent.wait(30) == 2
        lines = self.error_lines(agent)
        assert len(lines) == 1, agent.log_path.read_text()
        assert "user agent" in lines[0]
        assert "Not-The-Password-7" not in agent.log_path.read_text()

    def test_outage_logged_once(
        self, agent_factory, containers: Containers, live_etcd: EtcdServer, scope
    ) -> None:
        """etcd stopped for 5 s while a container starts: exactly one "etcd unavailable" line
        and one "etcd is back", no per-attempt retry lines; the container is announced."""
        agent = agent_factory()
        if agent.events("etcd unavailable; retrying with backoff"):  # a start-up race's own
            agent.wait_log("etcd is back")
        seen = len(agent.logs())  # start-up is not this test's business
        live_etcd.stop()
        stopped = time.monotonic()
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        agent.wait_log("etcd unavailable; retrying with backoff")
        time.sleep(max(0.0, 5 - (time.monotonic() - stopped)))  # the outage itself
        live_etcd.start()
        key = f"/{scope}/web-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), timeout=15, message=key)
        agent.wait_log("etcd is back")
        events = [line.get("event", "") for line in agent.logs()[seen:]]
        assert events.count("etcd unavailable; retrying with backoff") == 1, events
        assert events.count("etcd is back") == 1, events
        assert not [
            e for e in events if "retry scheduled" in e or ("retrying" in e and "etcd" not in e)
        ]


class TestListingLag:
    """dockerd lists a container as running for a while after its `die`: a reconcile in that
    moment must not announce it again (it inspects what an event ended moments ago)."""

    def test_reconcile_right_after_die(self, agent_factory, containers, live_etcd, scope):
        agent = agent_factory(ttl=30)
        port = free_port()
        # httpd daemonises; the shell, PID 1, exits two seconds later: the container dies
        # by itself, as a crash would, with no `docker stop` and no kill event first
        container = containers.run(
            ports=published(port),
            labels={"sidekick.service": "brief"},
            command="sh -c 'httpd -p 80; sleep 2'",
        )
        key = f"/{scope}/brief-{port}"
        wait_for(lambda: key in live_etcd.keys(f"/{scope}/"), message="announced")
        wait_for(lambda: key not in live_etcd.keys(f"/{scope}/"), message="withdrawn on die")
        reconciled = len(agent.events("reconciled"))
        agent.signal(signal.SIGHUP)  # a reconcile at once, while the listing may still lag
        agent.wait_log("reconciled", count=reconciled + 1)
        assert key not in live_etcd.keys(f"/{scope}/")
        container.reload()
        assert container.status == "exited"
        assert not [e for e in agent.events("registered") if e["key"] == key][1:]

    def test_one_more_reconcile_after_the_stream_connects(self, inprocess: InProcess) -> None:
        """Events missed while the stream was down may include a `die` the listing still
        hides: SETTLE_AFTER the stream (re)connects, the agent reconciles once more by
        itself (--resync is 60 s here, so no periodic resync comes first)."""
        agent = inprocess.start().agent
        first = sample(agent, "sidekick_reconcile_duration_seconds_count")
        wait_for(
            lambda: sample(agent, "sidekick_reconcile_duration_seconds_count") > first,
            timeout=SETTLE_AFTER + 20,
            message="the reconcile SETTLE_AFTER the stream connected",
        )


class TestClashForgotten:
    """A key another owner held, no longer wanted, is not remembered: when the container comes
    back after that owner's lease ended, it is announced at once, with no false clash."""

    def test_comes_back_at_once(self, agent_factory, containers, live_etcd, scope):
        address = f"127.0.0.1:{free_port()}"
        # ttl 30: the foreign-key re-check runs every 10 s, too late for this test's 5 s
        agent = agent_factory("--metrics-address", address, ttl=30)
        url = f"http://{address}/metrics"
        port = free_port()
        key = f"/{scope}/web-{port}"
        other = live_etcd.grant(60)
        live_etcd.put(key, f"192.0.2.9:{port}", lease=other)
        container = containers.run(ports=published(port), labels={"sidekick.service": "web"})
        agent.wait_log("key held by another owner; left as it is")
        container.stop(timeout=1)
        wait_for(  # the agent has taken the stop in (its key was never ours: nothing to log)
            lambda: metric(url, "sidekick_docker_events_total", 'action="die"') >= 1,
            message="the container's die handled",
        )
        live_etcd.revoke(other)
        container.start()
        wait_for(
            lambda: live_etcd.keys(f"/{scope}/").get(key) == f"127.0.0.1:{port}",
            timeout=5,  # well inside the 10 s a stale memory of the clash would cost
            message="announced as soon as it starts again",
        )
        assert len(agent.events("key held by another owner; left as it is")) == 1
