"""bench/bareregistrar.py against the real Docker engine and etcd: the bench times it beside
sidekick, so it must put the key sidekick puts for a `-p 80` container, on a lease, and delete
it at the stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_LABEL, Containers, EtcdServer, stop_process, wait_for

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parent.parent


def test_the_bare_registrar_puts_the_published_port_on_a_lease_and_deletes_it_at_the_stop(
    live_etcd: EtcdServer, containers: Containers, scope: str, tmp_path: Path
):
    prefix = f"/{scope}"
    log = (tmp_path / "bare.log").open("wb")
    registrar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bareregistrar",
            "--etcd",
            live_etcd.url,
            "--prefix",
            prefix,
            "--filter",
            f"label={TEST_LABEL}={scope}",
        ],
        stdout=log,
        stderr=log,
        cwd=REPOSITORY,
    )
    try:
        wait_for(lambda: b"reconciled" in (tmp_path / "bare.log").read_bytes(), timeout=15)
        web = containers.run(
            labels={"sidekick.service": "web"}, ports={"80/tcp": ("127.0.0.1", None)}
        )
        web.reload()
        port = web.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
        key = f"{prefix}/web-{port}"
        wait_for(lambda: live_etcd.keys(prefix) == {key: f"127.0.0.1:{port}"}, timeout=10)
        leased = live_etcd.entries(prefix)[key][1]
        assert leased != 0, "the key is not on a lease"
        web.stop(timeout=2)
        wait_for(lambda: live_etcd.keys(prefix) == {}, timeout=10)
    finally:
        stop_process(registrar)
        log.close()
