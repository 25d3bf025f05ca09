"""What is wrong with the agent, in words, for /healthz and systemd's STATUS=.

Runs on: whichever thread asks (the metrics server's, the lease thread's for STATUS=); pure.
"""

from __future__ import annotations

from typing import NamedTuple

STALL_AFTER = 2.0  # a Docker request unanswered this long: Docker is stalled


class Facts(NamedTuple):
    """The agent's state as its parts report it."""

    docker_waiting: float  # seconds the loop's Docker request in flight has waited (0: none)
    docker_connected: bool  # the events stream is open
    etcd_refused: str | None  # etcd refused our credentials, role or certificate
    etcd_down: bool  # the last etcd request (lease thread or loop) failed
    lease_alive: bool  # etcd confirmed the lease within the TTL
    loop_alive: bool  # the loop moved lately


def problems(facts: Facts) -> list[str]:
    """Every problem, most telling first; empty when all is well."""
    found = []
    if facts.docker_waiting >= STALL_AFTER:
        found.append(f"docker stalled: a request unanswered for {facts.docker_waiting:.0f}s")
    elif not facts.docker_connected:
        found.append("docker events stream not connected")
    if facts.etcd_refused is not None:
        found.append(f"etcd refused the agent: {facts.etcd_refused}")
    elif facts.etcd_down:
        found.append("etcd unreachable")
    if not facts.lease_alive:
        found.append("no live lease")
    if not facts.loop_alive:
        found.append("loop stalled")
    return found
