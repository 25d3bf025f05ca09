"""What a registration cannot avoid: the requests any registrar makes, timed in the same run.

A registrar that learns a `-p 80` container's host port after its `start` needs the event, one
Docker read of the container (sidekick: `docker ps --filter id=`; registrator: an inspect) and
one etcd write. Right after each sequential container's key appears, the bench makes the same
listing and an etcd put of a probe key of its own, each on a kept connection (plain
http.client, no library above it), so the sum of the event's delivery to a subscriber, the
listing and the put is the floor the agent's registration p50 is compared with; the rest is
the agent's own time (Python, its queue, its txn's compare). Runs on the bench's main thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (Docker's): a kept connection of the thread that owns it."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.sock = sock


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Floor:
    """Times `docker ps --filter id=ID` and an etcd put, one of each per sample()."""

    def __init__(self, etcd_url: str, probe_key: str, docker_socket: str) -> None:
        parts = urlsplit(etcd_url)
        self.etcd = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 2379)
        self.docker = UnixConnection(docker_socket)
        self.probe_key = probe_key
        self.listing_ms: list[float] = []
        self.put_ms: list[float] = []

    def _timed(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes | None = None,
    ) -> tuple[float, Any]:
        started = time.perf_counter()
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        content = answer.read()
        took = (time.perf_counter() - started) * 1000
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status} {content[:200]!r}")
        return took, json.loads(content)

    def sample(self, container_id: str) -> None:
        """One listing of this container by id and one put, each timed."""
        filters = quote(json.dumps({"id": [container_id]}))
        took, listed = self._timed(self.docker, "GET", f"/containers/json?filters={filters}")
        if not listed:
            raise RuntimeError(f"container {container_id[:12]} not listed")
        self.listing_ms.append(took)
        body = json.dumps({"key": b64(self.probe_key), "value": b64(container_id)}).encode()
        took, _ = self._timed(self.etcd, "POST", "/v3/kv/put", body)
        self.put_ms.append(took)

    def close(self) -> None:
        """Remove the probe key; close both connections."""
        try:
            body = json.dumps({"key": b64(self.probe_key)}).encode()
            self._timed(self.etcd, "POST", "/v3/kv/deleterange", body)
        finally:
            self.etcd.close()
            self.docker.close()


# The writer of wake_cpu_us: another process, so each line wakes the reader from its wait.
_WAKER = """
import socket, sys, time
out = socket.socket(fileno=int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    out.sendall(b"x" * 400 + b"\\n")
    time.sleep(float(sys.argv[3]))
"""


def wake_cpu_us(wakes: int = 200, gap: float = 0.01) -> float:
    """CPU (us, on the reading thread's own clock) a thread pays each time another process's
    write wakes it from a blocking read of a socket, `gap` seconds apart: the price, on this
    host, of every event a registrar reads and every answer it waits for, in any language (Python's
    readline adds a microsecond or two)."""
    reader, writer = socket.socketpair()
    reader.settimeout(max(10.0, 10 * gap))  # a waker that died fails the bench, not hangs it
    with reader, writer:
        waker = subprocess.Popen(
            [sys.executable, "-c", _WAKER, str(writer.fileno()), str(wakes), str(gap)],
            pass_fds=[writer.fileno()],
        )
        lines = reader.makefile("rb")
        lines.readline()  # the first: the waker's start-up is not a wake's price
        began = time.thread_time()
        for _ in range(wakes - 1):
            lines.readline()
        spent = time.thread_time() - began
        waker.wait(30)
    return spent / (wakes - 1) * 1e6
