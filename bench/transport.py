"""What one etcd transaction and one Docker inspect cost the agent, in instructions, through
requests and through sidekick.wire: `python -m bench.transport` (needs valgrind and Docker).

callgrind counts instructions, not seconds, so the figures repeat whatever else the machine is
doing. Each case runs twice in a child under callgrind, with 10 and with 60 calls; the
difference over 50 is one call's cost, start-up and imports cancelled out. Prints a table and,
last, one JSON line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import requests

from bench.common import ROOT, git_commit
from tests.conftest import EtcdServer, build_busybox_image

CASES = {
    "etcd txn, requests": "etcd-requests",
    "etcd txn, sidekick.wire": "etcd-wire",
    "docker inspect, requests": "docker-requests",
    "docker inspect, sidekick.wire": "docker-wire",
}

CHILD = """
import sys
import docker, requests
from sidekick.wire import WireAPIClient, WireSession
case, n, etcd_url, container = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = {"compare": [], "success": [{"request_put": {"key": "L3RyYW5zcG9ydA==", "value": "MQ=="}}]}
if case.startswith("etcd"):
    session = WireSession() if case == "etcd-wire" else requests.Session()
    session.trust_env = False
    call = lambda: session.post(etcd_url + "/v3/kv/txn", json=body, timeout=5).json()
else:
    version = docker.APIClient().version()["ApiVersion"]
    api = (WireAPIClient if case == "docker-wire" else docker.APIClient)(version=version)
    api.trust_env = False
    call = lambda: api.inspect_container(container)
for _ in range(n):
    call()
"""


def instructions(case: str, n: int, etcd_url: str, container: str) -> int:
    """Instructions callgrind counted for a child making n calls."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}/callgrind.out",
                sys.executable,
                "-c",
                CHILD,
                case,
                str(n),
                etcd_url,
                container,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind: {done.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    client = docker.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-transport-"))
    etcd = EtcdServer(workdir / "etcd")
    etcd.start()
    container = client.containers.create(build_busybox_image(client), ["true"])
    try:
        requests.get(etcd.url + "/version", timeout=5).raise_for_status()
        per_call = {}
        for label, case in CASES.items():
            few = instructions(case, 10, etcd.url, container.id)
            many = instructions(case, 60, etcd.url, container.id)
            per_call[label] = (many - few) // 50
            print(f"{label:32s} {per_call[label] / 1e6:6.2f} M instructions a call", flush=True)
    finally:
        container.remove(force=True)
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    commit = git_commit()
    print(json.dumps({"commit": commit, "instructions_per_call": per_call}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
