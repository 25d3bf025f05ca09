"""bench/bareregistrar.py against the real Docker engine and etcd: the bench times it beside
sidekick, so it must put the keys sidekick puts for `-p 80` containers (one with a healthcheck
once it is healthy), on a lease it keeps alive, and delete them at the stop, or at its own
SIGTERM by revoking the lease."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_LABEL, Containers, EtcdServer, JsonLog, stop_process, wait_for

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parent.parent
TTL = 2  # seconds: the test outlives it, so the keepalive must work


class Bare(JsonLog):
    def __init__(self, etcd: EtcdServer, prefix: str, scope: str, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bench.bareregistrar"),
                    *("--etcd", etcd.url, "--prefix", prefix, "--ttl", str(TTL)),
                    *("--filter", f"label={TEST_LABEL}={scope}"),
                ],
                stdout=log,
                stderr=log,
                cwd=REPOSITORY,
            )


def published_port(container) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])


def test_the_bare_registrar_registers_as_sidekick_and_revokes_at_sigterm(
    live_etcd: EtcdServer, containers: Containers, scope: str, tmp_path: Path
):
    prefix = f"/{scope}"
    bare = Bare(live_etcd, prefix, scope, tmp_path / "bare.log")
    try:
        bare.wait_log("reconciled")
        web = containers.run(
            labels={"sidekick.service": "web"}, ports={"80/tcp": ("127.0.0.1", None)}
        )
        port = published_port(web)
        web_key = f"{prefix}/web-{port}"
        wait_for(lambda: live_etcd.keys(prefix) == {web_key: f"127.0.0.1:{port}"})
        assert live_etcd.entries(prefix)[web_key][1] != 0, "the key is not on a lease"

        # a healthcheck that passes once the test says so: registered at `healthy`, not before
        checked = containers.run(
            labels={"sidekick.service": "checked"},
            ports={"80/tcp": ("127.0.0.1", None)},
            command="sleep 600",
            healthcheck={"test": ["CMD", "test", "-e", "/tmp/ok"], "interval": 200_000_000},
        )
        checked_key = f"{prefix}/checked-{published_port(checked)}"
        bare.wait_log("until healthy")
        assert checked_key not in live_etcd.keys(prefix)
        checked.exec_run("touch /tmp/ok")
        wait_for(lambda: checked_key in live_etcd.keys(prefix), timeout=10)

        web.stop(timeout=2)
        wait_for(lambda: set(live_etcd.keys(prefix)) == {checked_key}, timeout=10)
        # twice the TTL: without its keepalive the lease, and the key, would be gone
        time.sleep(2 * TTL)
        assert set(live_etcd.keys(prefix)) == {checked_key}, "the lease lapsed: no keepalive"

        bare.process.send_signal(signal.SIGTERM)
        assert bare.process.wait(10) == 0
        assert live_etcd.keys(prefix) == {}
        bare.wait_log("lease revoked; keys removed")
    finally:
        stop_process(bare.process)
