"""The seed's load balancer, end to end: apache containers announced by the agent, nginx
configured by `sidekick render`, requests through nginx on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Containers, free_port, wait_for
from tests.lb import Nginx, RenderProcess

pytestmark = pytest.mark.integration

STOP_WINDOW = 2.0  # seconds after a stop within which nginx must stop using that backend
ERROR_PAGE = "503 Service Unavailable"


@dataclass
class Sample:
    sent: float  # time.monotonic() when the request was sent
    status: int  # 0 when the request failed (no HTTP answer)
    body: str
    took: float = 0.0


class Load:
    """Requests through nginx, one fresh connection each, ~150 a second, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def get(self) -> Sample:
        sent = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            answer = conn.getresponse()
            text = answer.read().decode(errors="replace").strip()
            return Sample(sent, answer.status, text, time.monotonic() - sent)
        except (OSError, http.client.HTTPException) as exc:
            return Sample(sent, 0, f"{type(exc).__name__}: {exc}", time.monotonic() - sent)
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.get())
            time.sleep(0.005)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def since(self, t: float, until: float | None = None) -> list[Sample]:
        end = until if until is not None else float("inf")
        return [s for s in list(self.samples) if t <= s.sent < end]

    def served_by(self, t: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.since(t):
            if s.status == 200:
                counts[s.body] = counts.get(s.body, 0) + 1
        return counts

    def last_served(self, page: str) -> float:
        return max(
            (s.sent for s in list(self.samples) if s.status == 200 and s.body == page), default=0
        )


def apache(containers: Containers, image: str, scope: str, port: int) -> Any:
    """The seed's apache: busybox httpd serving a page that names it, on 127.0.0.1:port."""
    page = f"apache-{port}"
    return containers.run(
        image=image,
        name=f"{scope}-apache-{port}",
        ports={"80/tcp": ("127.0.0.1", port)},
        command=["sh", "-c", f"echo {page} > /www/index.html && exec httpd -f -p 80 -h /www"],
    )


class TestLoadBalancer:
    """Two apache containers, the agent, sidekick render and a real nginx."""

    def test_nginx_follows_the_containers(
        self,
        *,
        agent_factory: Any,
        containers: Containers,
        images: dict[str, str],
        scope: str,
        live_etcd: Any,
        tmp_path: Path,
    ) -> None:
        """Both backends get traffic; a stopped one leaves nginx within 2 s with no failed
        request; a new one gets traffic; with none left nginx answers its 503 page."""
        prefix = f"/{scope}"
        nginx = Nginx(tmp_path / "nginx", free_port())
        (tmp_path / "environment").touch()
        common = [
            "--etcd-endpoints",
            live_etcd.url,
            "--prefix",
            prefix,
            "--environment-file",
            str(tmp_path / "environment"),
            "--log-format",
            "json",
            "--dest",
            str(nginx.conf),
            "--check-cmd",
            nginx.check_cmd(),
            *nginx.template_vars,
        ]
        # The first configuration (no backend yet), then nginx, then the watching renderer.
        assert RenderProcess(list(common), tmp_path / "render-once.log").run_once() == 0
        nginx.start()
        render = RenderProcess(
            [*common, "--reload-cmd", nginx.reload_cmd()], tmp_path / "render.log"
        )
        render.start()
        load = Load(nginx.port)
        try:
            self._scenario(
                agent_factory, containers, images, scope, nginx=nginx, render=render, load=load
            )
        finally:
            load.stop()
            render.stop()
            nginx.stop()

    def _scenario(
        self,
        agent_factory: Any,
        containers: Containers,
        images: dict[str, str],
        scope: str,
        *,
        nginx: Nginx,
        render: RenderProcess,
        load: Load,
    ) -> None:
        figures: list[str] = []
        self.stops: list[float] = []  # when each docker stop began
        first = load.get()
        assert (first.status, ERROR_PAGE in first.body) == (503, True), first
        agent_factory()
        p1, p2, p3 = free_port(), free_port(), free_port()
        c1 = apache(containers, images["apache"], scope, p1)
        c2 = apache(containers, images["apache"], scope, p2)
        pages = {c1: f"apache-{p1}", c2: f"apache-{p2}"}
        load.start()

        # 1. Both backends answer through nginx.
        t = time.monotonic()
        wait_for(
            lambda: set(load.served_by(t)) == {pages[c1], pages[c2]},
            timeout=15,
            message="both apache containers reached through nginx",
        )
        figures.append(f"both backends reached {time.monotonic() - t:.2f} s after start")
        t = time.monotonic()
        time.sleep(1.5)
        balanced = load.served_by(t)
        assert min(balanced.values()) > 0.2 * sum(balanced.values()), balanced
        assert [s for s in load.since(t) if s.status != 200] == []
        figures.append(f"balanced over 1.5 s: {balanced}")

        # 2. One stopped: nginx stops sending to it within 2 s, and nothing fails.
        windows = [self._stop_and_measure(c1, pages[c1], load, figures)]

        # 3. A third one started gets traffic.
        t = time.monotonic()
        c3 = apache(containers, images["apache"], scope, p3)
        pages[c3] = f"apache-{p3}"
        wait_for(lambda: pages[c3] in load.served_by(t), timeout=10, message="apache 3 reached")
        figures.append(
            f"new backend got its first request {time.monotonic() - t:.2f} s after docker run"
        )
        time.sleep(1)
        assert [s for s in load.since(t) if s.status != 200] == []

        # 4. Every container stopped: nginx still runs and answers its error page.
        windows.append(self._stop_and_measure(c2, pages[c2], load, figures))
        t = time.monotonic()
        c3.stop(timeout=1)
        wait_for(
            lambda: (s := load.get()).status == 503 and ERROR_PAGE in s.body,
            timeout=10,
            message="the 503 page once no backend is left",
        )
        figures.append(f"503 page {time.monotonic() - t:.2f} s after the last docker stop began")
        time.sleep(1)
        after = load.since(time.monotonic() - 0.8)
        assert after and all(s.status == 503 and ERROR_PAGE in s.body for s in after), after[:3]
        assert nginx.running()
        assert "server 127.0.0.1:65535 down;" in nginx.conf.read_text()
        failures = [s for s in load.samples if s.status not in (200, 503)]
        # A request in flight when a backend dies may fail (through docker-proxy it can even
        # hang until the client's timeout): allowed only when sent inside a stop's window.
        outside = [
            s for s in failures if not any(t <= s.sent <= t + STOP_WINDOW for t in self.stops)
        ]
        figures.append(
            f"requests: {len(load.samples)} in all, {len(failures)} failed "
            f"({len(outside)} outside a stop window); "
            f"worst stop window {max(windows):.3f} s (limit {STOP_WINDOW} s); "
            f"slowest request {max(s.took for s in load.samples):.3f} s; "
            f"reloads: {len(render.events('reloaded'))}"
        )
        print("\nload balancer figures:\n  " + "\n  ".join(figures))
        assert outside == [], outside[:3]

    def _stop_and_measure(self, container: Any, page: str, load: Load, figures: list[str]) -> float:
        """docker stop; the window until nginx last sent a request to it; no failures."""
        t0 = time.monotonic()
        self.stops.append(t0)
        container.stop(timeout=1)
        time.sleep(STOP_WINDOW + 0.5)
        window = max(0.0, load.last_served(page) - t0)
        during = load.since(t0)
        failed = [s for s in during if s.status != 200]
        late = [s for s in during if s.body == page and s.sent > t0 + STOP_WINDOW]
        failed = [
            s for s in failed if s.sent > t0 + STOP_WINDOW
        ]  # in flight at the kill: see above
        figures.append(
            f"stop {page}: last request to it {window:.3f} s after docker stop; "
            f"{len(during)} requests in the following {STOP_WINDOW + 0.5:g} s, {len(failed)} failed"
        )
        assert window <= STOP_WINDOW, window
        assert late == []
        assert failed == [], failed[:3]
        return window
