"""etcd over TLS with client certificates, etcd users and roles, Docker over TCP with TLS."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.conftest import (
    TEST_LABEL,
    EtcdServer,
    free_port,
    missing,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT_PASSWORD = "root-Secret-1"  # noqa: S105 - a throwaway test etcd
AGENT_PASSWORD = "agent-Secret-42"  # noqa: S105


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )


def make_cert(directory: Path, ca: str, name: str) -> None:
    """A certificate for 127.0.0.1, good for server and client auth, signed by `ca`."""
    (directory / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with server and client certificates, and a rogue CA with a server certificate."""
    if shutil.which("openssl") is None:
        missing("no openssl to make test certificates")
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_cert(directory, "ca", "server")
    make_cert(directory, "ca", "client")
    make_ca(directory, "rogue-ca")
    make_cert(directory, "rogue-ca", "rogue-server")
    return directory


class TlsEtcd(EtcdServer):
    """etcd on https, demanding client certificates from the test CA."""

    def __init__(self, data_dir: Path, pki: Path, server: str = "server") -> None:
        super().__init__(data_dir)
        self.pki = pki
        self.url = f"https://127.0.0.1:{self.client_port}"
        self.extra_args = [
            "--cert-file",
            str(pki / f"{server}.pem"),
            "--key-file",
            str(pki / f"{server}.key"),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(pki / "ca.pem"),
        ]

    def healthy(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.client_port), 1),
        ):
            return True
        return False

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = requests.post(
            f"{self.url}/v3/{path}",
            json=payload,
            timeout=5,
            verify=str(self.pki / "ca.pem"),
            cert=(str(self.pki / "client.pem"), str(self.pki / "client.key")),
        )
        answer.raise_for_status()
        return dict(answer.json())


@pytest.fixture(name="tls_etcd")
def _tls_etcd(tmp_path: Path, pki: Path) -> Iterator[TlsEtcd]:
    server = TlsEtcd(tmp_path / "etcd-tls", pki)
    server.start()
    yield server
    server.stop()


class AuthEtcd(EtcdServer):
    """etcd with authentication on: root, and a user `agent` whose role covers one prefix.

    Its simple tokens expire after 2 s idle, so an agent must log in again now and then.
    """

    def __init__(self, data_dir: Path, prefix: str) -> None:
        super().__init__(data_dir)
        self.prefix = prefix
        self.extra_args = ["--auth-token", "simple", "--auth-token-ttl", "2"]

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        binary = Path(sys.executable).parent / "etcdctl"
        command = [str(binary if binary.exists() else "etcdctl"), "--endpoints", self.url]
        if user:
            command += ["--user", user]
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return result.stdout

    def enable_auth(self) -> None:
        self.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        self.etcdctl("role", "add", "root")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("role", "add", "agent")
        self.etcdctl(
            "role", "grant-permission", "agent", "readwrite", self.prefix + "/", "--prefix=true"
        )
        self.etcdctl("user", "add", f"agent:{AGENT_PASSWORD}")
        self.etcdctl("user", "grant-role", "agent", "agent")
        self.etcdctl("auth", "enable")

    def keys(self, prefix: str) -> dict[str, str]:
        lines = self.etcdctl("get", "--prefix", prefix, user=f"root:{ROOT_PASSWORD}").splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=True))


@pytest.fixture(name="auth_etcd")
def _auth_etcd(tmp_path: Path, scope: str) -> Iterator[AuthEtcd]:
    server = AuthEtcd(tmp_path / "etcd-auth", f"/{scope}")
    server.start()
    server.enable_auth()
    yield server
    server.stop()


def published(port: int) -> dict[str, tuple[str, int]]:
    return {"80/tcp": ("127.0.0.1", port)}


class TestEtcdTLS:
    """--etcd-ca/--etcd-cert/--etcd-key: our CA, our client certificate, nothing else."""

    def test_agent_over_tls(self, agent_factory, containers, tls_etcd, pki, scope):
        """With the CA and a client certificate the agent registers over https."""
        agent_factory(
            "--etcd-ca",
            str(pki / "ca.pem"),
            "--etcd-cert",
            str(pki / "client.pem"),
            "--etcd-key",
            str(pki / "client.key"),
            etcd_endpoints=tls_etcd.url,
            # the trap: requests would take this bundle over ours if we let it
            env={
                "REQUESTS_CA_BUNDLE": str(pki / "rogue-ca.pem"),
                "CURL_CA_BUNDLE": str(pki / "rogue-ca.pem"),
            },
        )
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "tls"})
        wait_for(
            lambda: tls_etcd.keys(f"/{scope}/") == {f"/{scope}/tls-{port}": f"127.0.0.1:{port}"}
        )

    def test_server_from_another_ca_is_refused(self, agent_factory, tmp_path, pki, scope):
        """A server certificate that does not chain to --etcd-ca is refused; nothing is written."""
        rogue = TlsEtcd(tmp_path / "etcd-rogue", pki, server="rogue-server")
        rogue.start()
        try:
            agent = agent_factory(
                "--etcd-ca",
                str(pki / "ca.pem"),
                "--etcd-cert",
                str(pki / "client.pem"),
                "--etcd-key",
                str(pki / "client.key"),
                etcd_endpoints=rogue.url,
                wait_ready=False,
            )
            assert agent.wait() == 2  # at start-up, a configuration error: retrying cannot help
            [line] = [x for x in agent.log_path.read_text().splitlines() if "error:" in x]
            assert line.startswith("sidekick: error: etcd at https://")
            assert "CERTIFICATE_VERIFY_FAILED" in line
            assert agent.events("reconciled") == []
        finally:
            rogue.stop()

    def test_missing_client_key_is_a_config_error(self, pki, tmp_path):
        """--etcd-cert without --etcd-key exits 2 naming the option."""
        (tmp_path / "env").touch()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "run",
                "--host-ip",
                "192.0.2.1",
                "--environment-file",
                str(tmp_path / "env"),
                "--etcd-cert",
                str(pki / "client.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 2
        assert "--etcd-cert" in result.stderr


class TestEtcdAuth:
    """--etcd-user with a password from a file or the environment; tokens renewed; roles obeyed."""

    def test_login_and_token_renewal(self, agent_factory, containers, auth_etcd, scope, tmp_path):
        """The agent logs in, keeps working after its token expires, and never logs the password."""
        password_file = tmp_path / "password"
        password_file.write_text(AGENT_PASSWORD + "\n")
        agent = agent_factory(
            "--etcd-user",
            "agent",
            "--etcd-password-file",
            str(password_file),
            etcd_endpoints=auth_etcd.url,
            ttl=9,
        )
        first = free_port()
        containers.run(ports=published(first), labels={"sidekick.service": "a"})
        wait_for(lambda: f"/{scope}/a-{first}" in auth_etcd.keys(f"/{scope}/"))
        time.sleep(4)  # the 2 s token expires between keepalives (every 3 s)
        second = free_port()
        containers.run(ports=published(second), labels={"sidekick.service": "b"})
        wait_for(
            lambda: f"/{scope}/b-{second}" in auth_etcd.keys(f"/{scope}/"), message="after expiry"
        )
        time.sleep(7)  # past the 9 s lease: only renewed keepalives keep the first key
        assert f"/{scope}/a-{first}" in auth_etcd.keys(f"/{scope}/")
        assert AGENT_PASSWORD not in agent.log_path.read_text()

    def test_password_from_environment(self, agent_factory, containers, auth_etcd, scope):
        """SIDEKICK_ETCD_PASSWORD is read when no password file is given."""
        agent_factory(
            "--etcd-user",
            "agent",
            etcd_endpoints=auth_etcd.url,
            env={"SIDEKICK_ETCD_PASSWORD": AGENT_PASSWORD},
        )
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "env"})
        wait_for(
            lambda: auth_etcd.keys(f"/{scope}/") == {f"/{scope}/env-{port}": f"127.0.0.1:{port}"}
        )

    def test_prefix_outside_role_is_denied_clearly(
        self, agent_factory, containers, auth_etcd, scope
    ):
        """A prefix outside the user's role: "permission denied" in the log, nothing written."""
        agent = agent_factory(
            "--etcd-user",
            "agent",
            etcd_endpoints=auth_etcd.url,
            prefix="/elsewhere",
            env={"SIDEKICK_ETCD_PASSWORD": AGENT_PASSWORD},
            wait_ready=False,
        )
        assert agent.wait() == 2  # at start-up, a configuration error: retrying cannot help
        [line] = [x for x in agent.log_path.read_text().splitlines() if "error:" in x]
        assert line.startswith("sidekick: error: etcd denied prefix /elsewhere to user agent")
        assert "permission denied" in line
        assert auth_etcd.keys("/elsewhere") == {}

    def test_wrong_password(self, agent_factory, auth_etcd):
        """A wrong password is reported as an authentication failure for that user."""
        agent = agent_factory(
            "--etcd-user",
            "agent",
            etcd_endpoints=auth_etcd.url,
            env={"SIDEKICK_ETCD_PASSWORD": "wrong"},
            wait_ready=False,
        )
        assert agent.wait() == 2  # at start-up, a configuration error: retrying cannot help
        [line] = [x for x in agent.log_path.read_text().splitlines() if "error:" in x]
        assert line.startswith("sidekick: error: etcd authentication failed for user agent")
        assert "wrong" not in agent.log_path.read_text().replace("authentication failed", "")

    def test_no_password_flag(self, tmp_path):
        """There is no flag that takes the password itself (it would show in `ps`)."""
        (tmp_path / "env").touch()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "run",
                "--host-ip",
                "192.0.2.1",
                "--environment-file",
                str(tmp_path / "env"),
                "--etcd-password",
                "x",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 2
        assert "--etcd-password" in result.stderr


class TlsDockerd:
    """A second dockerd listening on 127.0.0.1 with TLS, on a bridge of its own.

    Never `--bridge none`: a dockerd started so deletes the docker0 interface of the
    machine's main engine. It gets its own bridge; its containers use the host network.
    """

    def __init__(self, root: Path, pki: Path) -> None:
        self.root = root
        self.pki = pki
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.bridge = f"sktls{os.getpid() % 10000}"

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            missing("no dockerd")
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", "198.18.77.1/24", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self.process = subprocess.Popen(
            [
                str(dockerd),
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "pid"),
                "-H",
                f"unix://{self.root / 'sock'}",
                "-H",
                self.url,
                "--tlsverify",
                "--tlscacert",
                str(self.pki / "ca.pem"),
                "--tlscert",
                str(self.pki / "server.pem"),
                "--tlskey",
                str(self.pki / "server.key"),
                "--bridge",
                self.bridge,
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=(self.root / "log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self.answers, timeout=60, message="TLS dockerd")

    def client(self) -> docker.DockerClient:
        tls = docker.tls.TLSConfig(
            client_cert=(str(self.pki / "client.pem"), str(self.pki / "client.key")),
            ca_cert=str(self.pki / "ca.pem"),
            verify=True,
        )
        client = docker.DockerClient(base_url=self.url, tls=tls, timeout=30, version="1.41")
        client.api.trust_env = False  # this machine's REQUESTS_CA_BUNDLE is not our CA
        return client

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def stop(self) -> None:
        stop_process(self.process, grace=30)
        subprocess.run(["ip", "link", "delete", self.bridge], check=False)


@pytest.fixture(name="tls_dockerd")
def _tls_dockerd(pki: Path, images: dict[str, str], docker_client) -> Iterator[TlsDockerd]:
    root = Path(f"/tmp/sk-dockerd-{os.getpid()}")
    root.mkdir(exist_ok=True)
    daemon = TlsDockerd(root, pki)
    daemon.start()
    image = docker_client.images.get(images["busybox"])
    daemon.client().images.load(b"".join(image.save(named=images["busybox"])))
    yield daemon
    with contextlib.suppress(Exception):
        for container in daemon.client().containers.list(all=True):
            container.remove(force=True)
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


class TestDockerTLS:
    """--docker-url tcp:// with --docker-tls-*: the agent follows a TLS-protected engine."""

    def test_agent_on_tls_docker(self, agent_factory, tls_dockerd, pki, etcd, images, scope):
        """A host-network container on the TLS engine is announced and withdrawn."""
        agent_factory(
            "--docker-url",
            tls_dockerd.url,
            "--docker-tls-ca",
            str(pki / "ca.pem"),
            "--docker-tls-cert",
            str(pki / "client.pem"),
            "--docker-tls-key",
            str(pki / "client.key"),
            host_ip="192.0.2.30",
        )
        port = free_port()
        container = tls_dockerd.client().containers.run(
            images["busybox"],
            "sleep 60",
            detach=True,
            network_mode="host",
            labels={
                TEST_LABEL: scope,
                "sidekick.enable": "true",
                "sidekick.service": "tlsd",
                "sidekick.port": str(port),
            },
        )
        key = f"/{scope}/tlsd-{port}"
        wait_for(lambda: etcd.keys(f"/{scope}/") == {key: f"192.0.2.30:{port}"})
        container.remove(force=True)
        wait_for(lambda: etcd.keys(f"/{scope}/") == {}, message="withdrawn")

    def test_docker_tls_without_ca_trust_is_refused(self, agent_factory, tls_dockerd, pki, scope):
        """Without our CA the engine's certificate is not trusted: the agent never connects."""
        agent = agent_factory(
            "--docker-url",
            tls_dockerd.url,
            "--docker-tls-ca",
            str(pki / "rogue-ca.pem"),
            "--docker-tls-cert",
            str(pki / "client.pem"),
            "--docker-tls-key",
            str(pki / "client.key"),
            wait_ready=False,
        )
        outage = agent.wait_log("docker unavailable; retrying with backoff")[0]
        assert "certificate" in outage["error"].lower() or "ssl" in outage["error"].lower()
