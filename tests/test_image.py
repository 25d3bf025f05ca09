"""The Docker image: built offline (debootstrap base, pip wheelhouse), small, and the agent in
it announces another container and withdraws it when that container stops."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import TEST_LABEL, Containers, EtcdServer, free_port, missing, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "sidekick-base:bookworm"
MAX_SIZE_MB = 250


def _source_digest() -> str:
    """A digest of everything the image is built from, so an unchanged tree is not rebuilt."""
    digest = hashlib.sha256()
    files = [ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "README.md"]
    files += sorted(
        p for p in (ROOT / "sidekick").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@pytest.fixture(name="image", scope="session")
def _image(docker_client: docker.DockerClient) -> str:
    """sidekick's image, built by scripts/build-image (the base image only when missing)."""
    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if os.geteuid() != 0:
            missing(f"no {BASE_IMAGE}, and scripts/build-base-image needs root (debootstrap)")
    tag = f"sidekick-test/sidekick:{_source_digest()}"
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "build-image"), tag],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return tag


def run_in_image(
    client: docker.DockerClient, image: str, *args: str, entrypoint: str | None = None
) -> tuple[int, str]:
    container = client.containers.run(
        image, list(args), entrypoint=entrypoint, detach=True, network_mode="none"
    )
    try:
        code = int(container.wait(timeout=60)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


class TestImage:
    """What the image is: entry point, default command, health check, nothing extra."""

    def test_metadata(self, docker_client: docker.DockerClient, image: str) -> None:
        """Entry point `sidekick`, command `run`, a HEALTHCHECK on the agent's /healthz."""
        config = docker_client.images.get(image).attrs["Config"]
        assert config["Entrypoint"] == ["sidekick"]
        assert config["Cmd"] == ["run"]
        assert config["Healthcheck"]["Test"][:3] == ["CMD", "python", "-c"]
        assert "/healthz" in config["Healthcheck"]["Test"][3]

    def test_small_and_clean(self, docker_client: docker.DockerClient, image: str) -> None:
        """No compiler, no pip, no pip or apt caches; under the size limit; it runs."""
        size_mb = docker_client.images.get(image).attrs["Size"] / 1e6
        code, out = run_in_image(
            docker_client,
            image,
            "-c",
            "for t in gcc cc c++ make pip pip3; do command -v $t; done;"
            " ls -A /root/.cache 2>/dev/null; ls /var/cache/apt/archives/*.deb 2>/dev/null;"
            " ls -A /var/lib/apt/lists;"
            " /opt/sidekick/bin/sidekick --version",
            entrypoint="sh",
        )
        print(f"\nimage {image}: {size_mb:.0f} MB")
        assert code == 0, out
        assert re.fullmatch(r"sidekick \S+", out.strip()), out
        assert size_mb < MAX_SIZE_MB

    def test_render_in_image(self, docker_client: docker.DockerClient, image: str) -> None:
        """The nginx template is packaged data: it loads inside the image."""
        code, out = run_in_image(
            docker_client,
            image,
            "-c",
            "from sidekick.render_template import load_template; print(load_template(None).name)",
            entrypoint="/opt/sidekick/bin/python",
        )
        assert (code, out.strip()) == (0, "nginx.conf.j2"), out


class TestAgentInImage:
    """docker run --net host -v /var/run/docker.sock:... sidekick: the agent works from it."""

    def test_announces_and_withdraws(
        self,
        *,
        docker_client: docker.DockerClient,
        image: str,
        images: dict[str, str],
        containers: Containers,
        live_etcd: EtcdServer,
        scope: str,
    ) -> None:
        """Another container is announced, and its key goes when it stops; the agent's own
        `docker stop` revokes the lease and exits 0."""
        prefix = f"/{scope}"
        agent = containers.run(
            image=image,
            command=["run"],
            enable=None,
            name=f"{scope}-sidekick",
            network_mode="host",
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
            environment={
                "SIDEKICK_ETCD_ENDPOINTS": live_etcd.url,
                "SIDEKICK_PREFIX": prefix,
                "SIDEKICK_FILTERS": f"label={TEST_LABEL}={scope}",
                "SIDEKICK_HOST_IP": "10.0.0.7",
                "SIDEKICK_TTL": "6",
                "SIDEKICK_LOG_FORMAT": "json",
                "SIDEKICK_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            },
            healthcheck={  # the image's own check, run more often
                "test": docker_client.images.get(image).attrs["Config"]["Healthcheck"]["Test"],
                "interval": 1_000_000_000,
                "timeout": 10_000_000_000,
                "retries": 3,
            },
        )
        try:
            wait_for(
                lambda: b'"reconciled"' in agent.logs(), timeout=30, message="agent reconciled"
            )
            port = free_port()
            backend = containers.run(image=images["apache"], ports={"80/tcp": ("127.0.0.1", port)})
            key = f"{prefix}/apache-{port}"
            wait_for(
                lambda: live_etcd.keys(prefix + "/") == {key: f"127.0.0.1:{port}"}, message=key
            )
            backend.stop(timeout=1)
            wait_for(lambda: live_etcd.keys(prefix + "/") == {}, message="key removed")
            wait_for(
                lambda: _health(docker_client, agent.id) == "healthy",
                timeout=30,
                message="healthy",
            )
            backend2 = containers.run(image=images["apache"], ports={"80/tcp": ("127.0.0.1", port)})
            wait_for(lambda: key in live_etcd.keys(prefix + "/"), message="announced again")
            agent.stop(timeout=10)
            assert agent.wait(timeout=10)["StatusCode"] == 0
            assert live_etcd.keys(prefix + "/") == {}, "SIGTERM revokes the lease"
            assert b"lease revoked" in agent.logs()
            backend2.stop(timeout=1)
        except AssertionError:
            print(agent.logs().decode(errors="replace")[-4000:])
            raise


def _health(client: docker.DockerClient, container_id: str) -> Any:
    state = client.api.inspect_container(container_id)["State"]
    return state.get("Health", {}).get("Status")
