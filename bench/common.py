"""The harness's instruments: containers, the Docker events clock, the etcd watcher, etcd's
request and byte counters, a byte-counting TCP proxy, /proc readings and percentiles.

Every container made here carries BENCH_LABEL=<run id> (and the pid of the harness that made
it), so the end of a run, or the start of a later one, removes exactly what a run left.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH_LABEL = "sidekick.bench"
PID_LABEL = "sidekick.bench.pid"
GROUP_LABEL = "sidekick.bench.group"
KEY_LABEL = "sidekick.bench.key"  # "<service>-<host port>": what the seed's unit name carried
# PID 1 is a shell that exits at SIGUSR1: `docker kill -s USR1` makes the container die on its
# own (a `die` with no SIGTERM/SIGKILL `kill` before it, like a crash), so the deregistration
# is timed from `die`. `sleep 3600` bounds a container's life if everything else fails.
COMMAND = ["sh", "-c", 'trap "exit 0" USR1; sleep 3600 & wait']
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the checkout -------------------------------------------------------------------------


def git_commit() -> str:
    """`git describe --always --dirty` of this checkout: the commit a run's figures are of."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


# -- numbers ------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float], missing: int = 0) -> dict[str, float | int]:
    """n, p50, p95, p99, max, mean (in the unit given) and how many never arrived."""
    return {
        "n": len(values),
        "missing": missing,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    """Poll predicate until truthy; its value, or None after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the process table --------------------------------------------------------------------


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU of the host since boot, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def host_busy_percent(since: tuple[int, int]) -> float:
    """The share of the host's CPU time that was busy since `since` (host_cpu_ticks())."""
    busy, total = host_cpu_ticks()
    return 100.0 * (busy - since[0]) / max(1, total - since[1])


def cpu_ticks(pid: int, children: bool = False) -> int:
    """utime + stime of a process (its threads included), plus reaped children if asked."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def cpu_ns(pid: int) -> int:
    """CPU time of a process's live threads in ns (/proc/PID/task/*/schedstat): finer than
    cpu_ticks' 10 ms clock ticks, for an idle process; a thread that exits takes its share."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that just exited
            total += int(stat.read_text().split()[0])
    return total


def idle_cpu_ms_per_s(pid: int, seconds: float) -> float:
    """A process's CPU, in ms a second, while it is left alone for `seconds`."""
    before, began = cpu_ns(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_ns(pid) - before) / 1e6 / (time.monotonic() - began)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size (kB): each shared page counted once across the processes sharing
    it (`Pss:` of /proc/PID/smaps_rollup), so PSS of several processes adds up honestly."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def group_pss_kb(pgids: Iterable[int]) -> int:
    """PSS (kB) summed over every live process in these process groups (a loop shell and the
    etcdctl it runs at that moment)."""
    wanted = set(pgids)
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            pgrp = int(text[text.rindex(")") + 2 :].split()[2])
            if pgrp in wanted:
                total += pss_kb(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return total


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(process: subprocess.Popen[Any] | None, group: bool = False) -> None:
    """SIGTERM (the process group when it leads one), then SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, 15)
        else:
            process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, 9)
            else:
                process.kill()
        process.wait(10)


# -- etcd's request counters --------------------------------------------------------------

WRITE_METHODS = frozenset(
    {"Put", "Txn", "DeleteRange", "LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "Compact"}
)
_STARTED = re.compile(r'^grpc_server_started_total\{grpc_method="([^"]+)",[^}]*\}\s+(\S+)$')


def etcd_requests(url: str) -> dict[str, int]:
    """grpc_server_started_total by method, Watch left out (the harness's own watcher).

    The JSON gateway forwards every /v3/... call to the gRPC server, so an HTTP request the
    agent makes and an etcdctl call count alike.
    """
    counts: dict[str, int] = defaultdict(int)
    text = requests.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        match = _STARTED.match(line)
        if match and match.group(1) != "Watch":
            counts[match.group(1)] += int(float(match.group(2)))
    return dict(counts)


_SENT_BYTES = re.compile(r"^etcd_network_client_grpc_sent_bytes_total\s+(\S+)$", re.MULTILINE)


def etcd_sent_bytes(url: str) -> int:
    """etcd's own count of the bytes its gRPC server sent (protobuf; the JSON gateway is one
    of its gRPC clients, so every /v3/... answer counts here before it becomes JSON)."""
    match = _SENT_BYTES.search(requests.get(url + "/metrics", timeout=5).text)
    return int(float(match.group(1))) if match else 0


_BUCKET = re.compile(
    r'^(etcd_disk_(?:wal_fsync|backend_commit)_duration_seconds)_bucket\{le="([^"]+)"\}\s+(\S+)$'
)


def etcd_disk_histograms(url: str) -> dict[str, dict[float, int]]:
    """etcd's WAL fsync and backend commit histograms: name -> {bucket bound (s): count}."""
    out: dict[str, dict[float, int]] = defaultdict(dict)
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        match = _BUCKET.match(line)
        if match:
            out[match.group(1)][float(match.group(2))] = int(float(match.group(3)))
    return dict(out)


def histogram_quantile(
    after: dict[float, int], before: dict[float, int], q: float
) -> tuple[float, int]:
    """(upper bound in ms of the bucket holding quantile q, samples) of after minus before."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0) for b in bounds]  # cumulative, as Prometheus keeps
    total = counts[-1] if counts else 0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if total and cumulative >= q * total:
            return bound * 1000, total
    return math.nan, total


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def writes(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k in WRITE_METHODS)


# -- the watcher --------------------------------------------------------------------------


class Watch:
    """bench.watch in a subprocess; keeps, per key, every (type, arrival ns) it reported."""

    def __init__(self, url: str, prefix: str, log: Path) -> None:
        self.prefix = prefix
        self._cond = threading.Condition()
        self.history: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
        self.present: dict[str, str] = {}
        self.errors: list[str] = []
        self._stderr = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.watch", url, prefix, str(3 * 3600)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            text=True,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="watch-reader")
        self._reader.start()
        if not self._ready.wait(15):
            self.close()
            raise RuntimeError(f"the etcd watcher did not start: {self.errors}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = json.loads(line)
            if record.get("connected"):
                continue
            if record.get("ready"):
                self._ready.set()
                continue
            if "error" in record:
                self.errors.append(str(record["error"]))
                continue
            with self._cond:
                key = record["key"]
                self.history[key].append((record["type"], record["t"], record["value"]))
                if record["type"] == "DELETE":
                    self.present.pop(key, None)
                else:
                    self.present[key] = record["value"]
                self._cond.notify_all()

    def first(self, key: str, kind: str) -> int | None:
        """Arrival time (ns) of the first PUT or DELETE of key."""
        with self._cond:
            for seen, t, _ in self.history.get(key, ()):
                if seen == kind:
                    return t
        return None

    def values(self, key: str) -> list[str]:
        """The values of every PUT of key, in order."""
        with self._cond:
            return [value for seen, _, value in self.history.get(key, ()) if seen == "PUT"]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_seen(self, keys: Iterable[str], kind: str, timeout: float) -> bool:
        """Until every key has had a PUT (or DELETE) event."""
        wanted = list(keys)

        def done() -> bool:
            return all(any(s == kind for s, _, _ in self.history.get(k, ())) for k in wanted)

        return self.wait(done, timeout)

    def close(self) -> None:
        stop_process(self.process)
        self._stderr.close()


class EtcdProbe:
    """bench.probe in a subprocess: one timed etcd put every few milliseconds."""

    def __init__(self, url: str, key: str, log: Path, interval_ms: float = 10) -> None:
        self._lock = threading.Lock()
        self.samples: list[tuple[int, float]] = []  # (sent, ns; took, ms)
        self._stderr = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.probe", url, key, str(interval_ms), str(3 * 3600)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="etcd-probe")
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = json.loads(line)
            if "ms" in record:
                with self._lock:
                    self.samples.append((record["t"], record["ms"]))

    def within(self, windows: Iterable[tuple[int, int]]) -> list[float]:
        """The put times (ms) of the puts sent inside any of the (start, end) ns windows."""
        spans = list(windows)
        with self._lock:
            return [ms for t, ms in self.samples if any(a <= t <= b for a, b in spans)]

    def close(self) -> None:
        stop_process(self.process)
        self._stderr.close()


# -- Docker ------------------------------------------------------------------------------


class DockerEvents:
    """Docker's clock and ours: for each start and die of this run's containers, its timeNano
    and when it reached a subscriber (bench.events, a process of its own, stamps arrivals)."""

    def __init__(self, run_id: str, log: Path, socket_path: str = "/var/run/docker.sock") -> None:
        self._lock = threading.Lock()
        self.times: dict[str, dict[str, int]] = defaultdict(dict)
        self.arrivals: dict[str, dict[str, int]] = defaultdict(dict)
        self._stderr = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.events", socket_path, f"{BENCH_LABEL}={run_id}"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            text=True,
        )
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="docker-events")
        self._thread.start()
        if not self._ready.wait(15):
            self.close()
            raise RuntimeError("the Docker events reader did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = json.loads(line)
            if record.get("connected"):
                self._ready.set()
                continue
            if "error" in record:
                continue
            with self._lock:
                self.times[record["id"]].setdefault(record["action"], record["time_nano"])
                self.arrivals[record["id"]].setdefault(record["action"], record["t"])

    def time_of(self, container_id: str, action: str, timeout: float = 5.0) -> int | None:
        def seen() -> int | None:
            with self._lock:
                return self.times.get(container_id, {}).get(action)

        found: int | None = wait_until(seen, timeout, interval=0.01)
        return found

    def delivery_ms(self, container_id: str, action: str) -> float | None:
        """How long after its timeNano the event reached a subscriber."""
        with self._lock:
            stamped = self.times.get(container_id, {}).get(action)
            arrived = self.arrivals.get(container_id, {}).get(action)
        return (arrived - stamped) / 1e6 if stamped and arrived else None

    def close(self) -> None:
        stop_process(self.process)
        self._stderr.close()


@dataclass(frozen=True)
class Member:
    """One bench container and the key (after the prefix) it should have.

    port is the announced port: the host port published on 127.0.0.1, or, for a container
    announced by its own address (`sidekick.address=container`), the container port, with ip
    its address on that network as `docker inspect` gives it.
    """

    id: str
    name: str
    service: str
    port: int
    ip: str = "127.0.0.1"

    @property
    def key(self) -> str:
        return f"{self.service}-{self.port}"

    @property
    def value(self) -> str:
        return f"{self.ip}:{self.port}"


class Fleet:
    """Starts, kills and removes this run's containers; ports published on 127.0.0.1 only.

    The containers sit on a bridge network of the run's own (not docker0), so nothing another
    user of the shared engine does to the default bridge can break a run.
    """

    def __init__(self, client: docker.DockerClient, image: str, run_id: str) -> None:
        self.client = client
        self.api: docker.APIClient = client.api
        self.image = image
        self.run_id = run_id
        self.network = f"skb-{run_id}"
        self._lock = threading.Lock()
        self._serial = 0
        self._next_port = 20000 + (os.getpid() % 50) * 100

    def create_network(self) -> None:
        self.api.create_network(
            self.network,
            driver="bridge",
            labels={BENCH_LABEL: self.run_id, PID_LABEL: str(os.getpid())},
        )

    def remove_network(self, name: str | None = None) -> None:
        """Remove the run's network (or another of the run's, by name); the engine may still be
        detaching removed containers."""
        for _ in range(10):
            try:
                self.api.remove_network(name or self.network)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                time.sleep(1.0)

    def _port(self) -> int:
        """A loopback port nothing listens on (ports are never reused within a run)."""
        with self._lock:
            while True:
                port = self._next_port
                self._next_port += 1
                if self._next_port > 32000:
                    self._next_port = 20000
                with socket.socket() as sock:
                    try:
                        sock.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                return port

    def start(self, group: str, labels: dict[str, str] | None = None) -> Member:
        with self._lock:
            self._serial += 1
            serial = self._serial
        service = f"{group}{serial:04d}"
        for _ in range(5):
            port = self._port()
            all_labels = {
                BENCH_LABEL: self.run_id,
                PID_LABEL: str(os.getpid()),
                GROUP_LABEL: f"{self.run_id}-{group}",
                KEY_LABEL: f"{service}-{port}",
                "sidekick.enable": "true",
                "sidekick.service": service,
                **(labels or {}),
            }
            created = self.api.create_container(
                self.image,
                command=COMMAND,
                labels=all_labels,
                ports=[80],
                name=f"skb-{self.run_id}-{service}",
                host_config=self.api.create_host_config(
                    port_bindings={80: ("127.0.0.1", port)}, network_mode=self.network
                ),
            )
            try:
                self.api.start(created["Id"])
            except docker.errors.APIError as exc:  # the port was taken after all
                self.api.remove_container(created["Id"], force=True)
                if "allocated" in str(exc) or "in use" in str(exc):
                    continue
                raise
            return Member(created["Id"], f"skb-{self.run_id}-{service}", service, port)
        raise RuntimeError("could not find a free loopback port in 5 tries")

    def start_many(
        self, group: str, count: int, labels_for: Callable[[int], dict[str, str]] | None = None
    ) -> list[Member]:
        """count containers, 8 at a time; in index order."""
        with ThreadPoolExecutor(8) as pool:
            return list(
                pool.map(
                    lambda i: self.start(group, labels_for(i) if labels_for else None), range(count)
                )
            )

    def crash(self, member: Member) -> None:
        """Make it exit by itself: a `die` with no stopping `kill` before it."""
        with contextlib.suppress(docker.errors.APIError):
            self.api.kill(member.id, signal="SIGUSR1")

    def remove(self, members: Iterable[Member]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._remove, [m.id for m in members]))

    def _remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.api.remove_container(container_id, force=True)

    def remove_run(self) -> int:
        """Every container of this run, whatever state it is in."""
        found = self.api.containers(all=True, filters={"label": f"{BENCH_LABEL}={self.run_id}"})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._remove, [c["Id"] for c in found]))
        return len(found)

    def remove_orphans(self) -> int:
        """Containers of earlier runs whose harness process is gone."""
        found = self.api.containers(all=True, filters={"label": BENCH_LABEL})
        orphans = [
            c["Id"]
            for c in found
            if not pid_alive(int((c.get("Labels") or {}).get(PID_LABEL, "0") or 0))
        ]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._remove, orphans))
        for network in self.api.networks(filters={"label": BENCH_LABEL}):
            labels = network.get("Labels") or {}
            if not pid_alive(int(labels.get(PID_LABEL, "0") or 0)):
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_network(network["Id"])
        return len(orphans)


# -- a byte-counting TCP proxy ------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"^(?:GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1")


class ByteCounter:
    """A TCP proxy on 127.0.0.1 in front of one loopback port, counting the bytes each way.

    The bytes of each answer are also counted by the path of the request they answer: on one
    HTTP/1.1 connection a client such as `requests` sends a request and reads its answer
    before the next, so what the server sends belongs to the connection's last request line.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.to_client = 0
        self.to_server = 0
        self.answer_bytes: dict[str, int] = defaultdict(int)  # path -> bytes answered
        self.request_count: dict[str, int] = defaultdict(int)  # path -> requests
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ByteCounter:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def snapshot(self) -> dict[str, Any]:
        """The counts so far (copies)."""
        with self._lock:
            return {
                "to_client": self.to_client,
                "to_server": self.to_server,
                "answer_bytes": dict(self.answer_bytes),
                "request_count": dict(self.request_count),
            }

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, upstream]
            last_path = ["?"]  # the connection's last request path
            threading.Thread(
                target=self._requests, args=(client, upstream, last_path), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client, last_path), daemon=True
            ).start()

    def _requests(self, source: socket.socket, sink: socket.socket, last: list[str]) -> None:
        def count(data: bytes) -> None:
            if (match := _REQUEST_LINE.match(data)) is not None:
                last[0] = match.group(1).decode("latin-1")
                self.request_count[last[0]] += 1
            self.to_server += len(data)

        self._pipe(source, sink, count)

    def _answers(self, source: socket.socket, sink: socket.socket, last: list[str]) -> None:
        def count(data: bytes) -> None:
            self.to_client += len(data)
            self.answer_bytes[last[0]] += len(data)

        self._pipe(source, sink, count)

    def _pipe(
        self, source: socket.socket, sink: socket.socket, count: Callable[[bytes], None]
    ) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    count(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
