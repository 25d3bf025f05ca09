"""The shipped units under a real systemd, installed as units/README.md tells an operator.

A node is a container whose PID 1 is systemd 252 (Debian 12, made offline by
scripts/build-systemd-image and kept by a hash of what goes in). `--privileged` is refused on
these machines ("unable to apply caps"); without it, with /run and /run/lock on tmpfs and the
cgroup tree mounted read-only, systemd boots to `running` in about 2 s and runs the units with
their hardening (mount namespaces work; only ProtectHostname= is skipped, systemd says, as in
any container). The node shares the host's network, so the agent reaches the test's etcd on
127.0.0.1, and the host's Docker socket, so `apache@.service` starts real containers on the
host's engine with the docker CLI copied in.

One stand-in, said here: `docker.service`, which the units require, is a one-shot inside the
node that checks the host's engine answers through the socket; the engine is the host's.

sidekick is installed inside by the shell blocks of units/README.md marked `test_systemd`:
the wheel (built here from the checkout), the offline install into /opt/sidekick (the node
has no route to a package index of its own), the units, the second agent. The substitutions
made to them are listed in README_SUBSTITUTIONS; everything else runs verbatim, so the docs
cannot drift from what works. The watchdog is shortened to 6 s by a drop-in (the shipped 30 s
would only make the test slower).

The apache container is the test busybox image with an /usr/sbin/apache2ctl that runs httpd,
tagged dash/apache:latest as the unit expects. The container variant's agent runs on the
host's engine, so its `-v /run/sidekick:/run/sidekick` is the host's /run/sidekick (removed
afterwards when the test made it), and its image is sidekick's, tagged sidekick:latest for the
test (tests/test_image.py builds it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.conftest import APACHE_IMAGE, TEST_LABEL, EtcdServer, free_port, missing, wait_for
from tests.test_image import _image  # noqa: F401  (the `image` fixture: sidekick's image)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
UNITS_README = ROOT / "units" / "README.md"
README = ROOT / "README.md"
# Ubuntu's /etc/environment: a quoted PATH= line, which must not reach the agent's container.
UBUNTU_PATH = 'PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"'
HOST_LEASE_FILE = Path("/run/sidekick/lease")  # sidekick-docker.service's, on the host
# The load balancer's directory (template, rendered nginx.conf): the host's, mounted into the
# node at the same path, because nginx.service's `-v /etc/sidekick/nginx:...` and the check's
# `docker run -v` name it to the host's engine. Made by the test, removed afterwards.
HOST_SIDEKICK_ETC = Path("/etc/sidekick")
OURS = ".sidekick-test"  # the marker of a HOST_SIDEKICK_ETC this test made
BUILD_SCRIPT = ROOT / "scripts" / "build-systemd-image"
HOST_DOCKER_CLI = Path("/usr/bin/docker")  # what the build script copies in
WATCHDOG_SEC = 6
# The seed's `apache2ctl -D FOREGROUND`, served by busybox httpd (which ignores SIGTERM as PID 1).
APACHE2CTL = "#!/bin/sh\nexec httpd -f -p 80 -h /www\n"


# -- units/README.md's shell blocks -----------------------------------------------------------


def readme_block(name: str, readme: Path = UNITS_README) -> str:
    """The fenced block after `<!-- test_systemd: NAME -->` in units/README.md (or README.md)."""
    text = readme.read_text()
    match = re.search(rf"<!-- test_systemd: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"{readme.relative_to(ROOT)} has no block marked test_systemd: {name}"
    return match.group(1)


def substitute(block: str, replacements: dict[str, str]) -> str:
    """The block with each replacement made; each must apply, so a renamed value fails."""
    for old, new in replacements.items():
        assert old in block, f"{old!r} is no longer in the README block:\n{block}"
        block = block.replace(old, new)
    return block


# -- images -----------------------------------------------------------------------------------


def _systemd_image_tag() -> str:
    digest = hashlib.sha256()
    for path in (BUILD_SCRIPT, ROOT / "scripts" / "apt-mirror", HOST_DOCKER_CLI):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"sidekick-test/systemd:{digest.hexdigest()[:12]}"


@pytest.fixture(name="systemd_image", scope="module")
def _systemd_image(docker_client: docker.DockerClient) -> str:
    """The node image: built once per machine (about 1.5 to 2.5 min), kept by content hash;
    images of an older hash are removed."""
    if not HOST_DOCKER_CLI.exists():
        missing(f"no {HOST_DOCKER_CLI}: apt-get install docker.io")
    tag = _systemd_image_tag()
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        if os.geteuid() != 0:
            missing("scripts/build-systemd-image needs root (debootstrap)")
        started = time.monotonic()
        proc = subprocess.run(
            [str(BUILD_SCRIPT), tag], capture_output=True, text=True, timeout=900, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print(f"\nbuilt {tag} in {time.monotonic() - started:.0f} s")
    for image in docker_client.images.list("sidekick-test/systemd"):
        if tag not in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image.id)
    return tag


@pytest.fixture(name="apache_image", scope="module")
def _apache_image(docker_client: docker.DockerClient, images: dict[str, str]) -> Iterator[str]:
    """dash/apache as apache@.service runs it (`/usr/sbin/apache2ctl -D FOREGROUND`): the test
    busybox image plus an apache2ctl that runs busybox httpd. It is tagged dash/apache:latest
    for this module (a superset of the busybox image the other tests run as dash/apache), again
    before each `systemctl start apache@` (a test session starting meanwhile tags its own
    busybox image so), and the tag is given back afterwards. Yields the image's id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text, mode in (
            (
                "Dockerfile",
                f"FROM {images['busybox']}\nCOPY apache2ctl /usr/sbin/apache2ctl\n",
                0o644,
            ),
            ("apache2ctl", APACHE2CTL, 0o755),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    image, _ = docker_client.images.build(
        fileobj=buffer, custom_context=True, tag="sidekick-test/apache2ctl:latest", rm=True
    )
    previous = None
    with contextlib.suppress(docker.errors.ImageNotFound):
        previous = docker_client.images.get(APACHE_IMAGE)
    image.tag(APACHE_IMAGE)
    yield str(image.id)
    if previous is not None:
        previous.tag(APACHE_IMAGE)
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove("sidekick-test/apache2ctl:latest")


@pytest.fixture(name="wheelhouse", scope="module")
def _wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """units/README.md's wheel block, run on a copy of the checkout, then the wheelhouse it
    describes (`pip wheel -w wheelhouse dist/docker_etcd_sidekick-*.whl`)."""
    build = tmp_path_factory.mktemp("build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, build / name)
    shutil.copytree(
        ROOT / "sidekick", build / "sidekick", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = f"{sys.executable} -m pip"
    block = substitute(readme_block("wheel"), {"pip wheel": f"{pip} wheel"})
    house = f"{pip} wheel --quiet -w wheelhouse dist/docker_etcd_sidekick-*.whl"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block + house],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((build / "wheelhouse").glob("docker_etcd_sidekick-*.whl")), proc.stdout
    return build


# -- the node ---------------------------------------------------------------------------------


class Node:
    """A systemd container: run shell in it, ask systemctl, read etcd as the test."""

    def __init__(
        self, container: Any, etcd: EtcdServer, scope: str, port: int, apache_id: str
    ) -> None:
        self.container = container
        self.apache_id = apache_id
        self.etcd = etcd
        self.scope = scope
        self.prefix = f"/{scope}"
        self.port = port  # apache@PORT
        self.key = f"{self.prefix}/apache-{port}"
        self.figures: dict[str, float] = {}

    def sh(self, script: str, *, check: bool = True, workdir: str = "/") -> str:
        code, output = self.container.exec_run(
            ["bash", "-euo", "pipefail", "-c", script], workdir=workdir
        )
        text: str = output.decode(errors="replace")
        if check:
            assert code == 0, f"{script}\nexit {code}:\n{text}"
        return text

    def show(self, unit: str, *props: str) -> dict[str, str]:
        flags = " ".join(f"-p {p}" for p in props)
        out = self.sh(f"systemctl show {flags} {unit}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def start_apache(
        self, client: docker.DockerClient, *, check: bool = True, port: int | None = None
    ) -> str:
        """`systemctl start apache@PORT`, dash/apache:latest being the apache2ctl image."""
        client.images.get(self.apache_id).tag(APACHE_IMAGE)
        script = f"systemctl start apache@{port or self.port}.service"
        return self.sh(script if check else f"{script} 2>&1 || echo FAILED", check=check)

    def main_pid(self, unit: str = "sidekick.service") -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def active(self, unit: str = "sidekick.service") -> bool:
        return self.show(unit, "ActiveState")["ActiveState"] == "active"

    def put_dir(self, source: Path, target: str) -> None:
        """Copy a host directory into the node as `target`."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(source, arcname=Path(target).name)
        self.sh(f"mkdir -p {Path(target).parent}")
        assert self.container.put_archive(str(Path(target).parent), buffer.getvalue())

    def write(self, path: str, text: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = text.encode()
            info = tarfile.TarInfo(Path(path).name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        self.sh(f"mkdir -p {Path(path).parent}")
        assert self.container.put_archive(str(Path(path).parent), buffer.getvalue())

    def lease_file(self, name: str = "lease") -> str:
        return self.sh(f"cat /run/sidekick/{name} 2>/dev/null || true").strip()

    def journal(self, unit: str) -> str:
        return self.sh(f"journalctl -u {unit} --no-pager -o short-monotonic")

    def entries(self, prefix: str | None = None) -> dict[str, tuple[str, int, int]]:
        return self.etcd.entries((prefix or self.prefix) + "/")

    def lease_alive(self, lease: int) -> bool:
        answer = self.etcd.post("lease/timetolive", {"ID": lease})
        return int(answer.get("TTL", -1)) > 0

    def restarted(self, old_pid: int) -> bool:
        """The agent runs again under another PID, and systemd calls it active."""
        state = self.show("sidekick.service", "MainPID", "ActiveState")
        return state["ActiveState"] == "active" and int(state["MainPID"]) not in {0, old_pid}


def _apache_port(client: docker.DockerClient) -> int:
    """8001 as in the seed, unless this machine uses it; then any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8001))
        except OSError:
            return free_port()
    try:
        client.containers.get("apache-8001")
    except docker.errors.NotFound:
        return 8001
    return free_port()


@pytest.fixture(name="node", scope="module")
def _node(
    docker_client: docker.DockerClient,
    etcd: EtcdServer,
    systemd_image: str,
    apache_image: str,
    wheelhouse: Path,
) -> Iterator[Node]:
    """A booted node with sidekick and the units installed as units/README.md says."""
    scope = "t" + uuid.uuid4().hex[:10]
    if HOST_SIDEKICK_ETC.exists() and not (HOST_SIDEKICK_ETC / OURS).exists():
        assert not any(HOST_SIDEKICK_ETC.iterdir()), (
            f"{HOST_SIDEKICK_ETC} on this host holds files this test did not make; "
            "the node mounts it (see HOST_SIDEKICK_ETC)"
        )
    HOST_SIDEKICK_ETC.mkdir(exist_ok=True)
    (HOST_SIDEKICK_ETC / OURS).touch()
    container = docker_client.containers.run(
        systemd_image,
        ["/lib/systemd/systemd"],
        detach=True,
        name=f"sidekick-systemd-{scope}",
        labels={TEST_LABEL: scope},
        network_mode="host",
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(HOST_SIDEKICK_ETC): {"bind": str(HOST_SIDEKICK_ETC), "mode": "rw"},
        },
    )
    node = Node(container, etcd, scope, _apache_port(docker_client), apache_image)
    try:
        started = time.monotonic()
        wait_for(
            lambda: (
                node.sh("systemctl is-system-running || true").strip() in {"running", "degraded"}
            ),
            timeout=60,
            interval=0.2,
            message="systemd running in the node",
        )
        node.figures["boot"] = time.monotonic() - started
        state = node.sh("systemctl is-system-running || true").strip()
        assert state == "running", node.sh("systemctl --failed --no-pager")
        # The one stand-in: the host's engine, through the mounted socket.
        node.write(
            "/etc/systemd/system/docker.service",
            "[Unit]\nDescription=the host's Docker engine, through /var/run/docker.sock\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/docker version\n",
        )
        node.put_dir(wheelhouse / "wheelhouse", "/root/install/wheelhouse")
        node.put_dir(ROOT / "units", "/root/install/units")
        started = time.monotonic()
        out = node.sh(readme_block("install-offline"), workdir="/root/install")
        node.figures["install"] = time.monotonic() - started
        assert re.search(r"^sidekick \d+\.\d+", out, re.M), out
        node.sh(readme_block("units"), workdir="/root/install")
        # This node's address is loopback (traffic stays on this machine), which the agent
        # refuses unless forced; the prefix and the filter keep other tests' keys apart.
        node.sh("echo COREOS_PRIVATE_IPV4=127.0.0.1 >> /etc/environment")
        node.write(
            "/etc/default/sidekick",
            f"SIDEKICK_ETCD_ENDPOINTS={etcd.url}\n"
            f"SIDEKICK_PREFIX=/{scope}\n"
            "SIDEKICK_FILTERS=label=sidekick.service=apache\n"
            "SIDEKICK_FORCE_HOST_IP=true\n"
            "SIDEKICK_LOG_FORMAT=json\n",
        )
        node.write(
            "/etc/systemd/system/sidekick.service.d/test-watchdog.conf",
            f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\n",
        )
        node.sh("systemctl daemon-reload && systemctl enable sidekick.service")
        yield node
    finally:
        with contextlib.suppress(Exception):
            print("\n" + node.journal("sidekick.service")[-3000:])
        with contextlib.suppress(Exception):
            node.sh(f"systemctl stop apache@{node.port}.service", check=False)
        with contextlib.suppress(docker.errors.APIError):
            docker_client.containers.get(f"apache-{node.port}").remove(force=True)
        for leftover in docker_client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={scope}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                leftover.remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        shutil.rmtree(HOST_SIDEKICK_ETC, ignore_errors=True)
        print(
            "systemd test figures: " + ", ".join(f"{k} {v:.2f} s" for k, v in node.figures.items())
        )


def _start_backend(
    client: docker.DockerClient, scope: str, labels: dict[str, str]
) -> tuple[Any, int]:
    port = free_port()
    container = client.containers.run(
        APACHE_IMAGE,
        "httpd -f -p 80",
        detach=True,
        labels={TEST_LABEL: scope, "sidekick.enable": "true", **labels},
        ports={"80/tcp": ("127.0.0.1", port)},
    )
    return container, port


def _wait_removed(client: docker.DockerClient, name: str) -> None:
    """Until `docker run --rm`'s container is removed: a new one of the same name started
    while the daemon still removes it fails with a name conflict."""

    def removed() -> bool:
        try:
            client.containers.get(name)
        except docker.errors.NotFound:
            return True
        return False

    wait_for(removed, timeout=30, message=f"{name} removed")


NGINX = "nginx.service"  # the container nginx.service runs (`--name %n`)
RENDERED = HOST_SIDEKICK_ETC / "nginx" / "nginx.conf"


def _container_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        return False
    return True


def _port(value: str) -> int:
    tail = value.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _servers(node: Node, ports: set[int]) -> list[str]:
    """The `server ...;` lines of the rendered file for these ports, in order (a concurrent
    test session's apache containers carry the same label, so the agent may list them too)."""
    text = node.sh(f"cat {RENDERED} 2>/dev/null || true")
    return [v for v in re.findall(r"^\s*server (\S+);", text, re.M) if _port(v) in ports]


def _lb_answer(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
    except requests.RequestException:
        return 0


def _reload_settled(node: Node) -> bool:
    """The renderer reloaded nginx and owes no reload: every `reload failed` was followed by
    `reload succeeded`."""
    journal = node.journal("sidekick-render.service")
    failed, succeeded = journal.count('"reload failed"'), journal.count('"reload succeeded"')
    return '"event": "reloaded"' in journal and failed <= succeeded


def _nginx_workers(client: docker.DockerClient) -> set[str]:
    """The PIDs of nginx's worker processes in its container (`docker top`)."""
    top = client.api.top(NGINX)
    column = top["Titles"].index("CMD")
    pid = top["Titles"].index("PID")
    return {p[pid] for p in top["Processes"] if "worker process" in p[column]}


def _hups(client: docker.DockerClient, since: float) -> int:
    """SIGHUPs (Docker `kill` events with signal 1) sent to the nginx container since then."""
    events = client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"container": NGINX, "event": "kill"},
        decode=True,
    )
    return sum(
        1
        for e in events
        if e["Actor"]["Attributes"].get("signal") == "1" and e["timeNano"] >= since * 1e9
    )


def _wait_restart(node: Node, old_pid: int, timeout: float) -> float:
    """Seconds until systemd runs the agent again, active, under a new PID."""
    started = time.monotonic()
    wait_for(lambda: node.restarted(old_pid), timeout=timeout, interval=0.1, message="restart")
    return time.monotonic() - started


class TestUnitsUnderSystemd:
    """The README's install, then what each unit does, in the order an operator meets it."""

    def test_installed_as_the_readme_says(self, node: Node) -> None:
        """/usr/local/bin/sidekick links into the venv in /opt/sidekick, which holds the
        distribution docker-etcd-sidekick; the units load."""
        assert node.sh("readlink /usr/local/bin/sidekick").strip() == "/opt/sidekick/bin/sidekick"
        shown = node.sh("/opt/sidekick/bin/pip show docker-etcd-sidekick")
        assert "Name: docker-etcd-sidekick" in shown, shown
        for unit in ("sidekick.service", f"apache@{node.port}.service"):
            assert node.show(unit, "LoadState")["LoadState"] == "loaded", unit
        drop_ins = node.show("sidekick.service", "DropInPaths")["DropInPaths"]
        assert drop_ins == "/etc/systemd/system/sidekick.service.d/test-watchdog.conf", drop_ins
        boot, install = node.figures["boot"], node.figures["install"]
        print(f"\nnode running in {boot:.1f} s; install {install:.1f} s")

    def test_active_only_after_ready(self, node: Node, docker_client: docker.DockerClient) -> None:
        """`systemctl start sidekick` (Type=notify) leaves the unit `activating` until the
        agent's READY=1, which follows its first reconcile: a container that ran before the
        start is in etcd when the unit turns active. `systemctl status` shows STATUS=."""
        node.sh("systemctl stop sidekick.service")
        backend, port = _start_backend(docker_client, node.scope, {"sidekick.service": "apache"})
        key = f"{node.prefix}/apache-{port}"
        try:
            node.sh("systemctl start --no-block sidekick.service")
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 60
            while True:
                state = node.show("sidekick.service", "ActiveState", "SubState")
                pair = (state["ActiveState"], state["SubState"])
                if not seen or seen[-1] != pair:
                    seen.append(pair)
                if pair[0] == "active":
                    at_active = node.entries()
                    break
                assert pair[0] in {"inactive", "activating"}, seen
                assert time.monotonic() < deadline, seen
                time.sleep(0.02)
            assert ("activating", "start") in seen, seen
            assert at_active.get(key, ("",))[0] == f"127.0.0.1:{port}", at_active
            times = node.show(
                "sidekick.service",
                "ExecMainStartTimestampMonotonic",
                "ActiveEnterTimestampMonotonic",
            )
            to_active = (
                int(times["ActiveEnterTimestampMonotonic"])
                - int(times["ExecMainStartTimestampMonotonic"])
            ) / 1e6
            node.figures["start to active"] = to_active
            status = node.sh("systemctl status --no-pager sidekick.service")
            assert re.search(r'Status: "\d+ registrations?, lease [0-9a-f]+ renewed', status), (
                status
            )
            print(f"\nstates {seen}; exec to active {to_active:.2f} s")
        finally:
            backend.remove(force=True)
        wait_for(lambda: key not in node.entries(), message=f"{key} withdrawn")

    def test_apache_announced_and_withdrawn(
        self, node: Node, docker_client: docker.DockerClient
    ) -> None:
        """`systemctl start apache@PORT` is announced with COREOS_PRIVATE_IPV4 from
        /etc/environment; `systemctl stop apache@PORT` withdraws it while the container still
        runs (busybox httpd ignores SIGTERM, so `docker stop -t 3` has 3 s to go)."""
        node.sh("systemctl start sidekick.service")
        unit, name = f"apache@{node.port}.service", f"apache-{node.port}"
        started = time.monotonic()
        node.start_apache(docker_client)
        wait_for(
            lambda: node.entries().get(node.key, ("",))[0] == f"127.0.0.1:{node.port}",
            timeout=30,
            message=node.key,
        )
        node.figures["apache@ start to key"] = time.monotonic() - started

        def running() -> bool:
            try:
                return bool(docker_client.api.inspect_container(name)["State"]["Running"])
            except docker.errors.NotFound:
                return False

        assert running()
        started = time.monotonic()
        stopper = subprocess.Popen(["docker", "exec", node.container.id, "systemctl", "stop", unit])
        try:
            while node.key in node.entries():
                assert time.monotonic() - started < 30, "key not withdrawn"
                time.sleep(0.02)
            key_gone = time.monotonic() - started
            still_running = running()
            wait_for(lambda: not running(), timeout=30, message=f"{name} stopped")
            container_gone = time.monotonic() - started
        finally:
            assert stopper.wait(60) == 0
        node.figures["apache@ stop to key gone"] = key_gone
        node.figures["apache@ stop to container gone"] = container_gone
        print(f"\nkey gone {key_gone:.2f} s, container stopped {container_gone:.2f} s after stop")
        assert still_running, "the key went only after the container"
        assert container_gone > key_gone
        _wait_removed(docker_client, name)
        node.start_apache(docker_client)
        wait_for(lambda: node.key in node.entries(), timeout=30, message=node.key)

    def test_load_balancer_renders_checks_and_reloads(
        self, node: Node, docker_client: docker.DockerClient, systemd_image: str
    ) -> None:
        """The README's render block beside the agent: sidekick-render.service writes one
        `server 127.0.0.1:PORT;` per running apache@ unit into /etc/sidekick/nginx/nginx.conf,
        nginx.service runs it (published on 127.0.0.1 only), and when one apache@ stops the file
        loses that line and the nginx container gets SIGHUP, which nginx acts on (new worker
        processes) and reads the new file. A value nginx refuses fails the check (`nginx -t` in
        the nginx image) and never goes live.

        nginx runs in Docker's bridge network, where the announced 127.0.0.1 is its own
        loopback: its answer is the template's 503 page (no backend reachable), which shows
        it serves the rendered file; traffic to the backends through it is tests/test_e2e.py's.
        The node image, which has nginx-light, is tagged nginx:stable for the test."""
        assert not _container_exists(docker_client, NGINX), f"a container {NGINX} runs already"
        node.sh("systemctl start sidekick.service")
        second = free_port()
        node.start_apache(docker_client)
        node.start_apache(docker_client, port=second)
        ours = {node.port, second}
        both = sorted(f"127.0.0.1:{p}" for p in ours)
        wait_for(
            lambda: sorted(v for v, _, _ in node.entries().values() if _port(v) in ours) == both,
            timeout=30,
            message=f"both apache@ keys: {both}",
        )
        previous = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            previous = docker_client.images.get("nginx:stable")
        docker_client.images.get(systemd_image).tag("nginx:stable")
        lb_port = free_port()
        block = substitute(
            readme_block("render"),
            {
                "systemctl enable --now": (
                    f"sed -i 's/ -p 80:80 / -p 127.0.0.1:{lb_port}:80 /'"
                    " /etc/systemd/system/nginx.service\n"
                    f"grep -q -- '-p 127.0.0.1:{lb_port}:80 ' /etc/systemd/system/nginx.service\n"
                    "systemctl daemon-reload\n"
                    "systemctl enable --now"
                )
            },
        )
        try:
            started = time.monotonic()
            node.sh(block, workdir="/root/install")
            wait_for(
                lambda: _servers(node, ours) == both, timeout=60, message=f"{RENDERED} lists {both}"
            )
            node.figures["render unit start to file"] = time.monotonic() - started
            wait_for(lambda: _lb_answer(lb_port) == 503, timeout=60, message="nginx answers")
            node.figures["render unit start to nginx answering"] = time.monotonic() - started
            assert (
                "No backend is available right now."
                in requests.get(f"http://127.0.0.1:{lb_port}/", timeout=5).text
            )
            # nginx may have started after the first render: the renderer's reload was owed
            # until it ran. Wait until no reload is owed, then count from there.
            wait_for(lambda: _reload_settled(node), timeout=90, message="no reload owed")
            reloads = node.journal("sidekick-render.service").count('"event": "reloaded"')
            workers = _nginx_workers(docker_client)
            assert workers, "nginx runs worker processes"
            since = time.time()

            started = time.monotonic()
            node.sh(f"systemctl stop apache@{second}.service")
            one = [f"127.0.0.1:{node.port}"]
            wait_for(
                lambda: _servers(node, ours) == one, timeout=30, message=f"{RENDERED} lists {one}"
            )
            node.figures["apache@ stop to file"] = time.monotonic() - started
            inside = docker_client.containers.get(NGINX).exec_run(["cat", str(RENDERED)])
            inside_servers = re.findall(r"^\s*server (\S+);", inside.output.decode(), re.M)
            assert [v for v in inside_servers if _port(v) in ours] == one, inside_servers
            wait_for(
                lambda: _hups(docker_client, since) >= 1,
                timeout=30,
                message=f"SIGHUP to {NGINX}",
            )
            wait_for(
                lambda: _nginx_workers(docker_client).isdisjoint(workers),
                timeout=30,
                message="nginx replaced its workers (it reloaded)",
            )
            journal = node.journal("sidekick-render.service")
            assert journal.count('"event": "reloaded"') > reloads, journal[-2000:]
            assert "check failed" not in journal, journal[-2000:]
            node.figures["apache@ stop to nginx reloaded"] = time.monotonic() - started

            # A value nginx refuses: the check fails, the live file stays, no reload.
            hups = _hups(docker_client, since)
            broken = f"{node.prefix}/zz-broken"
            node.etcd.put(broken, "127.0.0.1:1 bogus")
            try:
                wait_for(
                    lambda: "check failed" in node.journal("sidekick-render.service"),
                    timeout=60,
                    message="the check refuses the broken value",
                )
            finally:
                node.etcd.delete(broken)
            journal = node.journal("sidekick-render.service")
            assert "[emerg]" in journal and "bogus" in journal, journal[-2000:]
            assert _servers(node, ours) == one, "the refused file never went live"
            assert "bogus" not in node.sh(f"cat {RENDERED}")
            assert _hups(docker_client, since) == hups, "no reload for a refused file"
            assert not list(RENDERED.parent.glob(".nginx.conf.*")), "no staged file left"
        finally:
            for unit in ("sidekick-render.service", "nginx.service"):
                with contextlib.suppress(Exception):
                    print(f"\n{unit}:\n" + node.journal(unit)[-2500:])
            node.sh("systemctl disable --now sidekick-render.service nginx.service", check=False)
            node.sh(f"systemctl stop apache@{second}.service", check=False)
            with contextlib.suppress(docker.errors.APIError):
                docker_client.containers.get(NGINX).remove(force=True)
            if previous is not None:
                previous.tag("nginx:stable")
            else:
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove("nginx:stable")

    def test_kill_9_resumes_the_lease(self, node: Node) -> None:
        """kill -9 of the agent: systemd restarts it (Restart=always, 5 s), it resumes the
        lease from /run/sidekick/lease and the key is neither rewritten nor dropped."""
        before = node.entries()[node.key]
        assert node.lease_file() == f"{before[1]:x}"
        pid, restarts = (
            node.main_pid(),
            int(node.show("sidekick.service", "NRestarts")["NRestarts"]),
        )
        node.sh(f"kill -9 {pid}")
        elapsed = _wait_restart(node, pid, 60)
        node.figures["kill -9 to active again"] = elapsed
        assert int(node.show("sidekick.service", "NRestarts")["NRestarts"]) == restarts + 1
        assert node.entries()[node.key] == before, "same value, lease and mod_revision"
        assert node.lease_file() == f"{before[1]:x}"
        assert f'"lease": "{before[1]:x}", "ttl": 30, "event": "lease resumed"' in node.journal(
            "sidekick.service"
        )
        print(f"\nkill -9: active again after {elapsed:.1f} s, lease {before[1]:x} resumed")

    def test_watchdog_restarts_a_stuck_agent(self, node: Node) -> None:
        """kill -STOP: the watchdog (WatchdogSec, 6 s here) makes systemd kill it (SIGABRT)
        and restart it; the lease outlived that (TTL 30 s), so the key stays untouched."""
        before = node.entries()[node.key]
        assert node.show("sidekick.service", "WatchdogUSec")["WatchdogUSec"] == f"{WATCHDOG_SEC}s"
        pid = node.main_pid()
        node.sh(f"kill -STOP {pid}")
        elapsed = _wait_restart(node, pid, 90)
        node.figures["SIGSTOP to active again"] = elapsed
        journal = node.journal("sidekick.service")
        assert f"Watchdog timeout (limit {WATCHDOG_SEC}s)" in journal, journal[-2000:]
        assert elapsed >= WATCHDOG_SEC - 1
        assert node.entries()[node.key] == before, "same value, lease and mod_revision"
        print(f"\nSIGSTOP: watchdog restart, active again after {elapsed:.1f} s")

    def test_restart_keeps_every_key(self, node: Node) -> None:
        """`systemctl restart sidekick` (an upgrade) sends SIGUSR1: the agent exits keeping its
        lease, the new one resumes it, the key is not rewritten."""
        before = node.entries()[node.key]
        pid = node.main_pid()
        started = time.monotonic()
        node.sh("systemctl restart sidekick.service")
        elapsed = time.monotonic() - started
        node.figures["systemctl restart"] = elapsed
        assert node.main_pid() not in {0, pid}
        assert node.entries()[node.key] == before, "same value, lease and mod_revision"
        assert node.lease_alive(before[1])
        assert "agent stopped for a restart; keys kept on the lease" in node.journal(
            "sidekick.service"
        )
        print(f"\nsystemctl restart: {elapsed:.1f} s, lease {before[1]:x} kept")

    def test_two_agents_each_with_its_lease_file(
        self, node: Node, docker_client: docker.DockerClient
    ) -> None:
        """The README's second agent (sidekick@blue): its own settings file, lease file and
        lease; stopping it removes its keys only."""
        blue_prefix = f"{node.prefix}-blue"
        block = substitute(
            readme_block("blue"),
            {
                "SIDEKICK_PREFIX=/blue": f"SIDEKICK_PREFIX={blue_prefix}",
                "label=team=blue": f"label=team={node.scope}",
                "127.0.0.1:9477": f"127.0.0.1:{free_port()}",
            },
        )
        node.sh("systemctl start sidekick.service")
        main_before = node.entries()[node.key]
        backend, port = _start_backend(
            docker_client, node.scope, {"team": node.scope, "sidekick.service": "web"}
        )
        try:
            node.sh(block, workdir="/root/install")
            blue_key = f"{blue_prefix}/web-{port}"
            wait_for(
                lambda: node.entries(blue_prefix).get(blue_key, ("",))[0] == f"127.0.0.1:{port}",
                timeout=30,
                message=blue_key,
            )
            blue_lease = node.entries(blue_prefix)[blue_key][1]
            assert node.lease_file("blue.lease") == f"{blue_lease:x}"
            assert node.lease_file("lease") == f"{main_before[1]:x}"
            assert blue_lease != main_before[1]
            assert f"{node.prefix}/web-{port}" not in node.entries(), "the main agent's filter"
            node.sh("systemctl stop sidekick@blue.service")
            assert node.entries(blue_prefix) == {}, "blue's keys go at once"
            assert not node.lease_alive(blue_lease)
            assert node.entries()[node.key] == main_before, "the main agent's key is untouched"
        finally:
            backend.remove(force=True)
            node.sh("systemctl stop sidekick@blue.service", check=False)

    def test_stop_removes_every_key_at_once(self, node: Node) -> None:
        """`systemctl stop sidekick` (SIGTERM) revokes the lease: the key is gone when stop
        returns, not a TTL later."""
        node.sh("systemctl start sidekick.service")
        wait_for(lambda: node.key in node.entries(), timeout=30, message=node.key)
        lease = node.entries()[node.key][1]
        started = time.monotonic()
        node.sh("systemctl stop sidekick.service")
        elapsed = time.monotonic() - started
        node.figures["systemctl stop"] = elapsed
        assert node.key not in node.entries()
        assert not node.lease_alive(lease)
        assert node.lease_file() == ""
        assert node.show("sidekick.service", "ExecMainStatus")["ExecMainStatus"] == "0"
        print(f"\nsystemctl stop: {elapsed:.2f} s, lease {lease:x} revoked")

    def test_container_variant(
        self, node: Node, docker_client: docker.DockerClient, image: str
    ) -> None:
        """sidekick-docker.service installed as sidekick.service (the README's block), the
        image tagged sidekick:latest: the agent gets /etc/default/sidekick and only
        COREOS_PRIVATE_IPV4 (Ubuntu's quoted PATH= line stays out), its lease file is the
        host's /run/sidekick/lease; `systemctl restart` keeps the key (SIGUSR1 through the
        `docker run` client), `systemctl stop` removes it at once."""
        node.sh("systemctl stop sidekick.service")
        previous = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            previous = docker_client.images.get("sidekick:latest")
        host_lease_existed = HOST_LEASE_FILE.exists()
        docker_client.images.get(image).tag("sidekick:latest")
        try:
            metrics = f"SIDEKICK_METRICS_ADDRESS=127.0.0.1:{free_port()}"
            node.sh(
                f"echo '{UBUNTU_PATH}' >> /etc/environment"
                f" && echo {metrics} >> /etc/default/sidekick"
                # the watchdog drop-in is for the native unit; Type=simple sends no WATCHDOG=1
                " && rm -rf /etc/systemd/system/sidekick.service.d"
            )
            node.sh(readme_block("docker"), workdir="/root/install")
            started = time.monotonic()
            node.sh("systemctl daemon-reload && systemctl start sidekick.service")
            wait_for(
                lambda: node.entries().get(node.key, ("",))[0] == f"127.0.0.1:{node.port}",
                timeout=60,
                message=f"{node.key} from the container agent",
            )
            node.figures["container variant start to key"] = time.monotonic() - started
            before = node.entries()[node.key]
            agent = docker_client.containers.get("sidekick")
            env = dict(e.split("=", 1) for e in agent.attrs["Config"]["Env"])
            assert env["PATH"].startswith("/opt/sidekick/bin:"), env["PATH"]
            assert env["COREOS_PRIVATE_IPV4"] == "127.0.0.1"
            assert env["SIDEKICK_PREFIX"] == node.prefix
            assert HOST_LEASE_FILE.read_text().strip() == f"{before[1]:x}"

            started = time.monotonic()
            node.sh("systemctl restart sidekick.service")

            def resumed() -> bool:
                with contextlib.suppress(docker.errors.NotFound):
                    new = docker_client.containers.get("sidekick")
                    logs = new.logs()
                    return new.id != agent.id and b'"reconciled"' in logs
                return False

            wait_for(resumed, timeout=60, interval=0.2, message="a new container reconciled")
            node.figures["container variant restart"] = time.monotonic() - started
            logs = docker_client.containers.get("sidekick").logs().decode()
            assert f'"lease": "{before[1]:x}", "ttl": 30, "event": "lease resumed"' in logs, logs
            assert node.entries()[node.key] == before, "same value, lease and mod_revision"

            node.sh("systemctl stop sidekick.service")
            assert node.key not in node.entries(), "stop revokes the lease at once"
            assert not node.lease_alive(before[1])
        finally:
            node.sh("systemctl stop sidekick.service", check=False)
            with contextlib.suppress(docker.errors.APIError):
                docker_client.containers.get("sidekick").remove(force=True)
            if previous is not None:
                previous.tag("sidekick:latest")
            else:
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove("sidekick:latest")
            if not host_lease_existed:
                HOST_LEASE_FILE.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    HOST_LEASE_FILE.parent.rmdir()

    def test_register_lines_on_a_node_without_an_agent(
        self, node: Node, docker_client: docker.DockerClient
    ) -> None:
        """README.md's apache@ lines for a node without an agent, as a drop-in: `register`
        and `deregister` read /etc/default/sidekick (the test's etcd, not the default
        127.0.0.1:2379), the key is plain and there when `systemctl start` returns, and it
        goes before the container stops."""
        unit, name = f"apache@{node.port}.service", f"apache-{node.port}"
        node.sh(
            f"systemctl stop sidekick.service {unit}"
            " && rm -f /etc/systemd/system/sidekick.service && systemctl daemon-reload"
        )
        assert node.key not in node.entries()
        _wait_removed(docker_client, name)
        lines = readme_block("oneshot", README)
        # Replace the unit's ExecStop= (the README lists all three stop lines) instead of
        # adding to it, as editing apache@.service itself would.
        node.write(
            "/etc/systemd/system/apache@.service.d/oneshot.conf", f"[Service]\nExecStop=\n{lines}"
        )
        node.sh("systemctl daemon-reload")
        out = node.start_apache(docker_client, check=False)
        assert "FAILED" not in out, out + node.journal(unit)[-3000:]
        value, lease, _ = node.entries()[node.key]
        assert (value, lease) == (f"127.0.0.1:{node.port}", 0), "a plain key, written by register"

        def running() -> bool:
            try:
                return bool(docker_client.api.inspect_container(name)["State"]["Running"])
            except docker.errors.NotFound:
                return False

        stopper = subprocess.Popen(["docker", "exec", node.container.id, "systemctl", "stop", unit])
        try:
            started = time.monotonic()
            while node.key in node.entries():
                assert time.monotonic() - started < 30, "key not deregistered"
                time.sleep(0.02)
            still_running = running()
        finally:
            assert stopper.wait(60) == 0
        assert still_running, "deregister runs before docker stop"
        assert node.key not in node.entries()
