"""The Go registrar of the realistic workloads (bench/goregistrar, issue #12's side-by-side).

bench/goregistrar/main.go is a minimal registrar written for this bench, standard library
only: not registrator (which cannot be built here, with no Go module proxy), but what a Go
program doing sidekick's job on these containers looks like. build() compiles it into the
run's work dir with the machine's Go toolchain (bench/run installs Debian's golang-go);
without one the run goes on and says the baseline was not measured, and why. start() runs it
as the rounds run sidekick: same etcd, same Docker engine, its own prefix and group label,
loopback only; it logs JSON lines like sidekick's, "reconciled" once it has registered the
containers already running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import GROUP_LABEL
from tests.conftest import AgentProcess

if TYPE_CHECKING:
    from bench.harness import Bench

SOURCE = Path(__file__).resolve().parent / "goregistrar"
GO_CANDIDATES = ("/usr/lib/go/bin/go",)  # Debian's, when /usr/bin/go is not on PATH
TTL = 30  # sidekick's in the rounds (Bench.start_agent's default)


@dataclass(frozen=True)
class Built:
    """The compiled registrar, or why there is none."""

    binary: Path | None
    go_version: str = ""
    reason: str = ""  # when binary is None


def find_go() -> str | None:
    found = shutil.which("go")
    if found is not None:
        return found
    return next((c for c in GO_CANDIDATES if os.access(c, os.X_OK)), None)


def build(workdir: Path) -> Built:
    """`go build` of bench/goregistrar into workdir; never raises."""
    go = find_go()
    if go is None:
        return Built(None, reason="no Go toolchain on this machine (golang-go not installed)")
    env = {
        **os.environ,
        "GOPROXY": "off",  # standard library only: nothing to fetch, and nothing is fetched
        "GOFLAGS": "-mod=mod",
        "CGO_ENABLED": "0",  # a static binary, as Go registrars ship
    }
    if "HOME" not in env and "XDG_CACHE_HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(workdir / "go-cache")
    try:
        version = subprocess.run(
            [go, "version"], capture_output=True, text=True, env=env, check=False, timeout=60
        ).stdout.strip()
        binary = workdir / "goregistrar"
        done = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=SOURCE,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Built(None, reason=f"go build failed: {exc}")
    if done.returncode != 0 or not binary.exists():
        tail = " ".join(done.stderr.split())[-400:]
        return Built(None, version, f"go build failed (exit {done.returncode}): {tail}")
    return Built(binary, version)


class GoRegistrar(AgentProcess):
    """The compiled registrar in a subprocess, its JSON lines (stderr) in log_path."""

    def __init__(self, binary: Path, args: list[str], log_path: Path, env: dict[str, str]):
        super().__init__(args, log_path, env)
        self.binary = binary

    def start(self) -> GoRegistrar:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), *self.args], stdout=log, stderr=log, env=self.env
            )
        return self


def start(
    bench: Bench, binary: Path, name: str, prefix: str, group: str, *, wait_ready: bool = True
) -> GoRegistrar:
    """The registrar on the run's etcd and Docker socket, scoped to one group's containers as
    Bench.start_agent scopes sidekick (`--filter label=<group label>`), --host-ip 127.0.0.1."""
    args = [
        "-docker-socket",
        "/var/run/docker.sock",
        "-etcd",
        bench.etcd.url,
        "-prefix",
        prefix,
        "-ttl",
        str(TTL),
        "-host-ip",
        "127.0.0.1",
        "-filter",
        f"label={GROUP_LABEL}={bench.run_id}-{group}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDEKICK_", "DOCKER_"))}
    agent = GoRegistrar(binary, args, bench.workdir / f"agent-{name}.log", env).start()
    bench.agents.append(agent)
    if wait_ready:
        agent.wait_log("reconciled", timeout=60)
    return agent
