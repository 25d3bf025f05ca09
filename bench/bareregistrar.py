"""A bare registrar in Python: what the least a registrar does costs at the moment it does it.

The floor in bench/floor.py times a listing and a put once each key has appeared, when dockerd
and etcd have finished with the container's start. This registrar makes the same requests at
the moment a registrar makes them, right after the `start`, and is timed by the bench exactly
as sidekick and the Go registrar are (the `start` event to the key at the watcher), on the
same port-kind containers one after another (bench/realistic.py, run_bare).

It does no more than the port kind needs, on kept connections with the standard library only
(http.client, json): it grants one lease and keeps it alive; follows the Docker events
`start`, `kill` and `die` of the containers with the -filter label; at a `start` it lists the
container by id (`docker ps --filter id=`) and puts `<prefix>/<service>-<host port>` =
`<host-ip>:<host port>` for each published TCP port, on the lease; at `kill` and `die` it
deletes them. No healthcheck, stop signal, retry, reconnection, ownership check or
reconcile: a floor, not a registrar to run. It logs JSON lines on stderr ("reconciled" once it
follows the events, as the other registrars do).

Runs on: its main thread (the events and the writes) and one keepalive thread, each on its own
connection. Usage: python -m bench.bareregistrar --etcd URL --prefix P --filter label=K=V
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import signal
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

TTL = 30


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.sock = sock


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


class Etcd:
    """POSTs to etcd's JSON gateway on one kept connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.connection.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        answer = self.connection.getresponse()
        content = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {content[:200]!r}")
        return dict(json.loads(content))


def _keep_alive(url: str, lease: str, stop: threading.Event) -> None:
    etcd = Etcd(url)
    while not stop.wait(TTL / 3):
        etcd.post("/v3/lease/keepalive", {"ID": lease})


def _events(docker_socket: str, label: str) -> Any:
    """The Docker events stream's answer (one JSON document a line)."""
    filters = {"type": ["container"], "event": ["start", "kill", "die"], "label": [label]}
    connection = _UnixConnection(docker_socket)
    connection.request("GET", f"/events?filters={quote(json.dumps(filters))}")
    return connection.getresponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--host-ip", default="127.0.0.1")
    parser.add_argument("--filter", required=True, help="label=K=V")
    args = parser.parse_args()
    label = args.filter.removeprefix("label=")
    prefix = args.prefix.rstrip("/")

    etcd = Etcd(args.etcd)
    lease = str(etcd.post("/v3/lease/grant", {"TTL": TTL})["ID"])
    stop = threading.Event()
    threading.Thread(target=_keep_alive, args=(args.etcd, lease, stop), daemon=True).start()
    docker = _UnixConnection(args.docker_socket)
    stream = _events(args.docker_socket, label)
    keys: dict[str, list[str]] = {}  # container id -> its keys

    def revoke(*_: Any) -> None:
        stop.set()
        etcd.post("/v3/lease/revoke", {"ID": lease})
        _log("lease revoked; keys removed")
        sys.exit(0)

    signal.signal(signal.SIGTERM, revoke)
    _log("reconciled", lease=lease)
    while line := stream.readline():
        if not line.strip():
            continue
        event = json.loads(line)
        container_id, action = event["id"], event["Action"]
        read = time.monotonic()
        if action == "start":
            by_id = quote(json.dumps({"id": [container_id]}))
            docker.request("GET", f"/containers/json?filters={by_id}")
            listed = json.loads(docker.getresponse().read())
            for container in listed:
                service = container["Labels"].get("sidekick.service", "")
                for port in container.get("Ports", []):
                    if port.get("PublicPort") and port.get("Type") == "tcp" and service:
                        key = f"{prefix}/{service}-{port['PublicPort']}"
                        value = f"{args.host_ip}:{port['PublicPort']}"
                        etcd.post(
                            "/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": lease}
                        )
                        keys.setdefault(container_id, []).append(key)
                        _log("put", key=key, ms=round((time.monotonic() - read) * 1000, 2))
        else:
            for key in keys.pop(container_id, []):
                etcd.post("/v3/kv/deleterange", {"key": _b64(key)})
                _log("delete", key=key)


if __name__ == "__main__":
    main()
