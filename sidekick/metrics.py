"""Prometheus metrics and the /healthz answer, served by one small HTTP server.

Runs on: the metrics are updated by the agent's threads (main loop, Docker events reader,
lease thread, look-ahead helpers) or the renderer's; MetricsServer answers on threads of its
own (sidekick.prom keeps the values thread-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sidekick.prom import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

# Seconds; fine below 10 ms, where a registration's requests and events normally take.
REQUEST_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
)  # fmt: skip


class Metrics:
    """The agent's counters; one registry per agent so tests can make several."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.registrations = Gauge(
            "sidekick_registrations", "Keys this agent holds on its lease.", registry=r
        )
        self.docker_events = Counter(
            "sidekick_docker_events", "Docker container events received.", ["action"], registry=r
        )
        self.writes = Counter(
            "sidekick_etcd_writes", "Keys written (put) or deleted in etcd.", ["op"], registry=r
        )
        self.clashes = Counter(
            "sidekick_clashes", "Keys wanted but held by another owner.", registry=r
        )
        self.errors = Counter(
            "sidekick_errors", "Errors talking to a peer.", ["peer", "kind"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "sidekick_reconcile_duration_seconds", "Time a full reconcile took.", registry=r
        )
        self.keepalive_seconds = Histogram(
            "sidekick_keepalive_rtt_seconds",
            "Round-trip time of a lease keepalive.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.docker_request_seconds = Histogram(
            "sidekick_docker_request_seconds",
            "Time a Docker API request took, by call (list, inspect, ...).",
            ["call"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.etcd_request_seconds = Histogram(
            "sidekick_etcd_request_seconds",
            "Time an etcd request took, by API path (kv/txn, lease/keepalive, ...).",
            ["call"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.event_lag_seconds = Histogram(
            "sidekick_docker_event_lag_seconds",
            "From a Docker event's time (dockerd's clock) to the agent taking it up.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.last_keepalive = Gauge(
            "sidekick_last_keepalive_timestamp_seconds",
            "Unix time of the last successful keepalive.",
            registry=r,
        )
        self.lease_regrants = Counter(
            "sidekick_lease_regrants",
            "Leases granted anew after etcd said the lease was gone (keys put back).",
            registry=r,
        )
        self.thread_restarts = Counter(
            "sidekick_thread_restarts",
            "Helper threads restarted after dying of an unexpected error.",
            ["thread"],
            registry=r,
        )
        self.docker_stalled = Gauge(
            "sidekick_docker_stalled_seconds",
            "How long the Docker request in flight has waited for an answer (0: none).",
            registry=r,
        )
        self.lease_ttl = Gauge(
            "sidekick_lease_ttl_seconds",
            "The TTL the agent asks for its lease (--ttl): keys outlive a dead agent this long.",
            registry=r,
        )
        self.peer_up = Gauge(
            "sidekick_peer_up",
            "1 while the peer answers: etcd (the last request of the loop and of the lease "
            "thread succeeded, credentials accepted), docker (the events stream is open).",
            ["peer"],
            registry=r,
        )
        self.writes.labels("put")
        self.writes.labels("delete")

    def docker_request(self, call: str, seconds: float) -> None:
        """A Docker request's time (DockerSource.timed)."""
        self.docker_request_seconds.labels(call).observe(seconds)

    def etcd_request(self, call: str, seconds: float) -> None:
        """An etcd request's time (Gateway.timed)."""
        self.etcd_request_seconds.labels(call).observe(seconds)


class RenderMetrics:
    """`sidekick render`'s counters and gauges; one registry per renderer."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.renders = Counter(
            "sidekick_renders",
            "New files that went live (checked, renamed into place).",
            registry=r,
        )
        self.failures = Counter(
            "sidekick_render_failures",
            "Failures by stage: template (it raised), check (--check-cmd refused the new "
            "file), reload (the reload command or signal failed).",
            ["stage"],
            registry=r,
        )
        self.refused = Gauge(
            "sidekick_render_refused",
            "1 while the latest render is refused (template error or failed check): the old "
            "file stays live.",
            registry=r,
        )
        self.reload_failing = Gauge(
            "sidekick_render_reload_failing",
            "1 while a reload is owed (the last reload failed; it is tried again).",
            registry=r,
        )
        self.peer_up = Gauge(
            "sidekick_peer_up",
            "1 while the peer answers: etcd (the renderer's watch or read succeeded last).",
            ["peer"],
            registry=r,
        )
        for stage in ("template", "check", "reload"):
            self.failures.labels(stage)


HealthCheck = Callable[[], tuple[bool, str]]


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz (200, or 503 with the reason)."""

    def __init__(self, address: tuple[str, int], registry: Registry, health: HealthCheck) -> None:

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    self._answer(200, registry.expose(), CONTENT_TYPE)
                elif self.path.split("?")[0] == "/healthz":
                    ok, reason = health()
                    self._answer(200 if ok else 503, (reason + "\n").encode(), "text/plain")
                else:
                    self._answer(404, b"not found\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: scrapes are not news."""

        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
