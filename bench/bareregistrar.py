"""A bare registrar in Python: what the least a registrar does costs at the moment it does it.

The floor in bench/floor.py times a listing and a put once each key has appeared. This
registrar makes the same requests when a registrar makes them, right after the `start` (or
the `health_status: healthy`), and is timed by the bench exactly as sidekick and the Go
registrar are (that event to the key at the watcher), on the same kinds of containers one
after another (bench/realistic.py, run_bare).

It does no more than those containers need, on kept connections with the standard library
only (http.client, json): it grants one lease and keeps it alive; follows the Docker events
`start`, `health_status`, `kill` and `die` of the containers with the --filter label; at a
`start` (a container with a healthcheck: at `health_status: healthy`) it lists the container
by id (`docker ps --filter id=`) and puts `<prefix>/<service>-<host port>` =
`<host-ip>:<host port>` for each published TCP port, on the lease; at `kill`, `die` and any
other verdict it deletes them. No retry, reconnection, ownership check or reconcile: a floor,
not a registrar to run. It logs JSON lines on stderr ("reconciled" once it follows the events,
as the other registrars do); at SIGTERM or SIGINT, or when the stream ends, it revokes the
lease. Any failure ends it with a non-zero status and the error logged.

Runs on: the main thread (the events and the writes) and one keepalive thread, each on a
connection of its own. Usage: python -m bench.bareregistrar --etcd URL --prefix P
--filter label=K=V [--ttl S] [--host-ip IP] [--docker-socket PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from bench.floor import UnixConnection, b64

HEALTHY = "healthy"


class Stop(Exception):
    """SIGTERM or SIGINT: revoke the lease and exit."""


def _log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


class Etcd:
    """POSTs to etcd's JSON gateway on one kept connection (one thread's)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 2379
        )

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.connection.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        answer = self.connection.getresponse()
        content = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {content[:200]!r}")
        return dict(json.loads(content))


def _keep_alive(url: str, lease: str, ttl: int, stop: threading.Event) -> None:
    """The keepalive thread: renew every ttl/3; a failure or a lost lease ends the process."""
    try:
        etcd = Etcd(url)
        while not stop.wait(ttl / 3):
            answer = etcd.post("/v3/lease/keepalive", {"ID": lease})
            if int(answer.get("result", {}).get("TTL", 0)) <= 0:
                raise RuntimeError(f"lease {lease} is gone")
    except Exception as exc:
        _log("keepalive failed", error=repr(exc))
        os._exit(1)


class Bare:
    """The main thread's registrar: events in, puts and deletes out."""

    def __init__(self, args: argparse.Namespace, lease: str) -> None:
        self.etcd = Etcd(args.etcd)
        self.docker = UnixConnection(args.docker_socket)
        self.prefix = args.prefix.rstrip("/")
        self.host_ip = args.host_ip
        self.lease = lease
        self.keys: dict[str, set[str]] = {}  # container id -> its keys

    def follow(self, stream: http.client.HTTPResponse) -> None:
        """Handle each event until the stream ends (Stop from a signal ends it sooner)."""
        while line := stream.readline():
            if not line.strip():
                continue
            event = json.loads(line)
            container_id = event["Actor"]["ID"]
            action, _, verdict = event["Action"].partition(": ")
            if action == "start" or (action == "health_status" and verdict == HEALTHY):
                self.register(container_id, time.monotonic(), from_verdict=bool(verdict))
            else:  # kill, die, or a verdict other than healthy
                self.withdraw(container_id)

    def register(self, container_id: str, read: float, *, from_verdict: bool) -> None:
        """List the container; put its published TCP ports (at its start: unless it has a
        healthcheck, whose `healthy` verdict registers it)."""
        by_id = quote(json.dumps({"id": [container_id]}))
        self.docker.request("GET", f"/containers/json?filters={by_id}")
        answer = self.docker.getresponse()
        listed = json.loads(answer.read())
        if answer.status != 200:
            raise RuntimeError(f"docker ps: {answer.status} {listed!r}")
        for container in listed:
            if not from_verdict and "(health: " in container.get("Status", ""):
                _log("until healthy", id=container_id[:12])  # its `healthy` registers it
                continue
            service = container["Labels"].get("sidekick.service", "")
            ports = {
                p["PublicPort"]
                for p in container.get("Ports", [])
                if p.get("PublicPort") and p.get("Type") == "tcp"
            }
            for port in sorted(ports) if service else ():
                key, value = f"{self.prefix}/{service}-{port}", f"{self.host_ip}:{port}"
                self.etcd.post(
                    "/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": self.lease}
                )
                self.keys.setdefault(container_id, set()).add(key)
                _log("put", key=key, ms=round((time.monotonic() - read) * 1000, 2))

    def withdraw(self, container_id: str) -> None:
        for key in sorted(self.keys.pop(container_id, ())):
            self.etcd.post("/v3/kv/deleterange", {"key": b64(key)})
            _log("delete", key=key)


def _events(docker_socket: str, label: str) -> http.client.HTTPResponse:
    """The Docker events stream's answer (one JSON document a line)."""
    filters = {
        "type": ["container"],
        "event": ["start", "health_status", "kill", "die"],
        "label": [label],
    }
    connection = UnixConnection(docker_socket)
    connection.request("GET", f"/events?filters={quote(json.dumps(filters))}")
    answer = connection.getresponse()
    if answer.status != 200:
        raise RuntimeError(f"docker events: {answer.status} {answer.read()[:200]!r}")
    return answer


def _stop(signum: int, _frame: Any) -> None:
    """The signal handler (main thread): end the events loop."""
    raise Stop(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--host-ip", default="127.0.0.1")
    parser.add_argument("--ttl", type=int, default=30)
    parser.add_argument("--filter", required=True, help="label=K=V")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    lease = str(Etcd(args.etcd).post("/v3/lease/grant", {"TTL": args.ttl})["ID"])
    stop = threading.Event()
    threading.Thread(
        target=_keep_alive, args=(args.etcd, lease, args.ttl, stop), daemon=True
    ).start()
    try:
        stream = _events(args.docker_socket, args.filter.removeprefix("label="))
        _log("reconciled", lease=lease)
        Bare(args, lease).follow(stream)
        _log("docker events stream ended")
    except Stop as why:
        _log("stopping", signal=str(why))
    finally:
        stop.set()
        Etcd(args.etcd).post("/v3/lease/revoke", {"ID": lease})  # a fresh connection
        _log("lease revoked; keys removed")


if __name__ == "__main__":
    main()
