"""Helpers for the load-balancer tests: `sidekick render` as a process, a real nginx on
loopback, and a TCP proxy in front of etcd that can go silent or drop its connections."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, JsonLog, stop_process, wait_for


def nginx_binary() -> str:
    """Debian's nginx (nginx-light); fail under CI, skip elsewhere."""
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if path is None:
        message = "no nginx: apt-get install nginx-light"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def clean_env() -> dict[str, str]:
    """The environment without SIDEKICK_* and COREOS_PRIVATE_IPV4."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SIDEKICK_") and k != "COREOS_PRIVATE_IPV4"
    }


class RenderProcess(JsonLog):
    """`sidekick render` in a subprocess, logging JSON lines to a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RenderProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidekick", "render", *self.args],
                stdout=log,
                stderr=log,
                env=clean_env(),
            )
        return self

    def run_once(self, timeout: float = 30) -> int:
        """Run with --once; the exit code."""
        self.args.append("--once")
        self.start()
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        stop_process(self.process)
        return self.process.returncode


class Nginx:
    """A real nginx master on 127.0.0.1:port, with its pid and temp files in `home`."""

    def __init__(self, home: Path, port: int) -> None:
        self.binary = nginx_binary()
        self.home = home
        self.port = port
        self.conf = home / "nginx.conf"
        self.pid_file = home / "nginx.pid"
        self.temp_dir = home / "temp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def template_vars(self) -> list[str]:
        """--set options for the shipped template: listen on loopback, temp files here."""
        return ["--set", f"listen=127.0.0.1:{self.port}", "--set", f"temp_dir={self.temp_dir}"]

    def _args(self, conf: str, *directives: str) -> list[str]:
        # -e stderr: no /var/log/nginx; -g pid: no /run/nginx.pid; temp paths come from the
        # template (temp_dir), so nothing under /var/lib/nginx is touched either.
        main = " ".join([f"pid {self.pid_file};", *directives])
        return ["-e", "stderr", "-p", str(self.home), "-c", conf, "-g", main]

    def check_cmd(self) -> str:
        """For --check-cmd: nginx -t on the staged file."""
        return shlex.join([self.binary, "-t", "-q", *self._args("SRC")]).replace("SRC", "{src}")

    def reload_cmd(self) -> str:
        """For --reload-cmd: nginx -s reload (finds the master through the pid file)."""
        return shlex.join([self.binary, "-s", "reload", *self._args(str(self.conf))])

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, *self._args(str(self.conf), "daemon off;")],
                stdout=log,
                stderr=log,
            )
        wait_for(self.answers, timeout=10, message=f"nginx on 127.0.0.1:{self.port}")

    def answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, signal.SIGQUIT, grace=10)  # nginx: graceful shutdown


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target. freeze() makes the open connections go silent
    (still open, nothing forwarded, as a dead peer behind a NAT); cut() drops them;
    refuse() closes every new connection at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.refusing = False
        self.accepted = 0
        self.refused = 0  # connections closed at once because `refusing` was set
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                with self._lock:
                    self.refused += 1
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                client.close()
                continue
            frozen = threading.Event()
            with self._lock:
                self._conns.append((client, upstream, frozen))
                self.accepted += 1
            threading.Thread(
                target=self._pump, args=(client, upstream, frozen), daemon=True
            ).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, frozen: threading.Event) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                if frozen.is_set():
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    if frozen.is_set():
                        break
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def freeze(self) -> int:
        """Silence every open connection (new ones still work); how many were frozen."""
        with self._lock:
            for _, _, frozen in self._conns:
                frozen.set()
            return len(self._conns)

    def cut(self) -> None:
        """Drop every open connection."""
        with self._lock:
            conns, self._conns = self._conns, []
        for client, upstream, _ in conns:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        self.cut()
