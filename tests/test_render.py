"""`sidekick render`: the template, the check-then-swap, the reload, and the watch that must
not miss a change when its connection drops or goes silent."""

from __future__ import annotations

import base64
import contextlib
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sidekick import render, render_output
from sidekick.config import ConfigError, Endpoint
from sidekick.render import EtcdWatcher, Renderer, make_options
from sidekick.render_options import Wait, parse_wait
from sidekick.render_output import reload_retry_delay
from sidekick.render_template import Keys, context, load_template, render_text
from sidekick.store import Store
from tests.conftest import Containers, EtcdServer, free_port, metric, wait_for
from tests.lb import Nginx, RenderProcess, TcpProxy, clean_env, nginx_binary

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parent.parent
TWO_BACKENDS = {"/test/apache-8002": "127.0.0.1:8002", "/test/apache-8001": "127.0.0.1:8001"}


def body(text: str) -> str:
    """The text after its leading comment lines (which name what rendered it)."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


class TestTemplate:
    """The shipped Jinja2 template gives the text of the confd template as the test translates
    it (tests/test_units.py's render_confd; confd itself is not packaged here, never run)."""

    @pytest.mark.parametrize(
        ("fixture", "kv"),
        [("nginx-0-backends.conf", {}), ("nginx-2-backends.conf", TWO_BACKENDS)],
    )
    def test_same_text_as_translated_confd_template(self, fixture: str, kv: dict[str, str]) -> None:
        """The shipped Jinja2 template and the confd template, translated by the test, give the
        same text byte for byte, but for the leading comments (each names its renderer; the
        fixture's also say what produced it)."""
        text = render_text(load_template(None), "/test", kv, {})
        assert body(text) == body((DATA / fixture).read_text())
        assert text.startswith("# Rendered by sidekick render from the values under /test")

    def test_values_are_getvs_one_level(self) -> None:
        """values = confd's getvs "<prefix>/*": one level under the prefix, sorted by value."""
        kv = {
            "/test/b": "10.0.0.2:80",
            "/test/a": "10.0.0.9:80",
            "/test/nested/x": "10.0.0.3:80",
            "/testing/y": "10.0.0.4:80",
        }
        ctx = context("/test", kv, {"listen": "81"})
        assert ctx["values"] == ["10.0.0.2:80", "10.0.0.9:80"]
        assert ctx["getvs"]("/test/*/*") == ["10.0.0.3:80"]
        assert ctx["getv"]("/test/a") == "10.0.0.9:80"
        assert ctx["listen"] == "81"

    def test_variables_listen_and_temp_dir(self) -> None:
        """--set listen and temp_dir change only those lines."""
        text = render_text(
            load_template(None),
            "/test",
            TWO_BACKENDS,
            {"listen": "127.0.0.1:8080", "temp_dir": "/t"},
        )
        assert "listen 127.0.0.1:8080 default_server;" in text
        assert re.findall(r"^\s+(\w+_temp_path) /t/\w+;$", text, re.M) == [
            "client_body_temp_path",
            "proxy_temp_path",
            "fastcgi_temp_path",
            "uwsgi_temp_path",
            "scgi_temp_path",
        ]

    @pytest.mark.integration
    @pytest.mark.parametrize("kv", [{}, TWO_BACKENDS], ids=["0-backends", "2-backends"])
    def test_nginx_accepts_it(self, kv: dict[str, str], tmp_path: Path) -> None:
        """Real nginx -t accepts the file, with no backend as with two."""
        nginx = Nginx(tmp_path, 8080)
        nginx.conf.write_text(
            render_text(
                load_template(None),
                "/test",
                kv,
                dict(s.split("=", 1) for s in nginx.template_vars[1::2]),
            )
        )
        proc = subprocess.run(  # noqa: S602 - the command line the renderer would run
            nginx.check_cmd().replace("{src}", str(nginx.conf)),
            shell=True,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in nginx.temp_dir.iterdir()) == [
            "body",
            "fastcgi",
            "proxy",
            "scgi",
            "uwsgi",
        ]

    def test_template_error_names_the_line(self, tmp_path: Path) -> None:
        """A template that does not parse is refused at start with its line."""
        bad = tmp_path / "bad.j2"
        bad.write_text("ok\n{% for x in values %}\n")
        with pytest.raises(ConfigError, match=r"--template: .*bad.j2 line 2"):
            load_template(bad)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"variables": ["nope"]}, "--set: expected NAME=VALUE"),
            ({"variables": ["values=1"]}, "--set: expected NAME=VALUE"),
            ({"check_cmd": "nginx -t"}, "--check-cmd: must name the new file as {src}"),
            ({"reload_cmd": "true", "reload_signal": "HUP"}, "--reload-cmd: give either"),
            ({"reload_signal": "HUP"}, "--reload-signal and --reload-container go together"),
            (
                {"reload_signal": "BOGUS", "reload_container": "nginx"},
                "--reload-signal: unknown signal",
            ),
            ({"mode": "rw"}, "--mode: not an octal mode"),
            ({"watch_timeout": 0.1}, "--watch-timeout: must be at least 0.5"),
            ({"wait": "soon"}, "--wait: expected MIN[:MAX] in seconds"),
            ({"wait": "1:0.5"}, "--wait: MAX (0.5) must not be less than MIN (1)"),
            ({"template": Path("/nonexistent.j2")}, "--template: /nonexistent.j2 is not a file"),
        ],
    )
    def test_bad_options(self, kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
        """Each bad option is refused with a message naming it."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_options(dest=tmp_path / "out.conf", **kwargs)  # type: ignore[arg-type]

    def test_bad_dest(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"--dest: directory .* does not exist"):
            make_options(dest=tmp_path / "missing" / "out.conf")

    def test_signal_names(self, tmp_path: Path) -> None:
        """HUP, SIGHUP and hup all mean SIGHUP."""
        for name in ("HUP", "SIGHUP", "hup"):
            options = make_options(
                dest=tmp_path / "o", reload_signal=name, reload_container="nginx"
            )
            assert options.reload_signal == "HUP"


class TestWaitOption:
    """--wait MIN[:MAX]: docker-gen's -wait, in seconds."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0", Wait(0, 0)),
            ("0.5", Wait(0.5, 2.0)),
            ("0.5:1", Wait(0.5, 1.0)),
            ("500ms:2s", Wait(0.5, 2.0)),
            (".25", Wait(0.25, 1.0)),
            ("0:1", Wait(0, 1.0)),
        ],
    )
    def test_parsed(self, text: str, expected: Wait) -> None:
        """MAX defaults to 4 x MIN; ms and s suffixes as docker-gen writes them."""
        assert parse_wait(text) == expected

    @pytest.mark.parametrize("text", ["", "x", "-1", "1:", ":1", "1:2:3", "1m", "nan", "inf"])
    def test_refused_naming_the_option(self, text: str) -> None:
        with pytest.raises(ConfigError, match=r"^SIDEKICK_RENDER_WAIT: expected MIN\[:MAX\]"):
            parse_wait(text, "SIDEKICK_RENDER_WAIT")

    def test_due(self) -> None:
        """Rendered MIN after the latest change, but never later than MAX after the first."""
        wait = Wait(0.5, 2.0)
        assert wait.due(first=10.0, last=10.3) == pytest.approx(10.8)
        assert wait.due(first=10.0, last=11.9) == pytest.approx(12.0)
        assert Wait().due(first=10.0, last=10.3) == 10.0


class TestKeys:
    """The kept-sorted keys and values give what sorting everything again gives."""

    def test_same_context_as_sorting_again(self) -> None:
        rng = random.Random(7)
        keys, kv = Keys("/p"), dict[str, str]()
        names = [f"/p/{rng.choice('abc')}{n}" for n in range(40)] + ["/p/x/deep", "/px/y"]
        for _ in range(2000):
            key = rng.choice(names)
            if rng.random() < 0.3:
                keys.delete(key)
                kv.pop(key, None)
            else:
                value = f"10.0.0.{rng.randrange(5)}:{rng.randrange(3)}"  # duplicates on purpose
                keys.put(key, value)
                kv[key] = value
            if rng.random() < 0.05:
                ours, fresh = context("/p", keys.view(), {}), context("/p", dict(kv), {})
                assert ours["values"] == fresh["values"]
                assert list(ours["entries"]) == list(fresh["entries"]) == sorted(kv.items())

    def test_entries_in_a_template(self, tmp_path: Path) -> None:
        """entries: iterated, counted and indexed as a list would be."""
        path = tmp_path / "e.j2"
        path.write_text(
            "{{ entries|length }} {{ entries[0][0] }} {{ entries[-1][1] }}"
            "{% for k, v in entries %} {{ k }}={{ v }}{% endfor %}"
        )
        text = render_text(load_template(path), "/p", {"/p/b": "2", "/p/a": "1"}, {})
        assert text == "2 /p/a 2 /p/a=1 /p/b=2"


# -- against a real etcd -------------------------------------------------------------------


class Setup:
    """A prefix of this test's own, a place for the output, and render processes."""

    def __init__(self, etcd: EtcdServer, scope: str, tmp_path: Path) -> None:
        self.etcd = etcd
        self.prefix = f"/{scope}"
        self.tmp = tmp_path
        self.dest = tmp_path / "out.conf"
        self.reloads = tmp_path / "reloads"
        self.env_file = tmp_path / "environment"
        self.env_file.touch()
        self.processes: list[RenderProcess] = []

    def template(self, text: str = "{% for v in values %}{{ v }}\n{% endfor %}") -> Path:
        path = self.tmp / "list.j2"
        path.write_text(text)
        return path

    def render(self, *extra: str, endpoint: str | None = None) -> RenderProcess:
        args = [
            "--etcd-endpoints",
            endpoint or self.etcd.url,
            "--prefix",
            self.prefix,
            "--environment-file",
            str(self.env_file),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--dest",
            str(self.dest),
            *extra,
        ]
        process = RenderProcess(args, self.tmp / f"render{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0

    def lines(self) -> list[str]:
        return self.dest.read_text().splitlines() if self.dest.exists() else []

    def wait_lines(self, expected: list[str], timeout: float = 5.0) -> None:
        wait_for(
            lambda: self.lines() == expected, timeout=timeout, message=f"{self.dest} = {expected}"
        )

    def revision(self, key: str) -> int:
        """The mod_revision of a key under the prefix."""
        return self.etcd.entries(key)[key][2]

    def wait_settled(self, process: RenderProcess, revision: int) -> list[dict[str, Any]]:
        """Wait until `process` has rendered etcd's keys as of `revision` and the reload that
        follows that render is done; its "rendered" lines. With no later change nothing more
        is rendered or reloaded, so counts read after this are final."""

        def settled() -> list[dict[str, Any]] | None:
            rendered = process.events("rendered")
            done = any(int(line["revision"]) >= revision for line in rendered)
            reloads = len(process.events("reloaded"))
            return rendered if done and reloads == len(rendered) else None

        return list(wait_for(settled, message=f"the render of revision {revision}, reloaded"))


@pytest.fixture(name="setup")
def _setup(live_etcd: EtcdServer, scope: str, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(live_etcd, scope, tmp_path)
    yield s
    for process in s.processes:
        process.stop()


@pytest.mark.integration
class TestOnce:
    """--once reads the prefix, installs the file if it changed, reloads, exits."""

    def test_renders_then_unchanged(self, setup: Setup) -> None:
        """First run writes and reloads; a second with the same keys touches nothing."""
        setup.etcd.put(f"{setup.prefix}/apache-8002", "10.0.0.2:8002")
        setup.etcd.put(f"{setup.prefix}/apache-8001", "10.0.0.1:8001")
        reload = f"echo reloaded >> {setup.reloads}"
        template = str(setup.template())
        assert setup.render("--template", template, "--reload-cmd", reload).run_once() == 0
        assert setup.lines() == ["10.0.0.1:8001", "10.0.0.2:8002"]
        assert setup.reload_count() == 1
        assert setup.dest.stat().st_mode & 0o777 == 0o644
        inode = setup.dest.stat().st_ino
        assert setup.render("--template", template, "--reload-cmd", reload).run_once() == 0
        assert (setup.reload_count(), setup.dest.stat().st_ino) == (1, inode)

    def test_failed_check_never_goes_live(self, setup: Setup) -> None:
        """A file the check refuses is not installed, nothing is reloaded, exit 1."""
        setup.dest.write_text("old\n")
        setup.etcd.put(f"{setup.prefix}/a", "bad")
        process = setup.render(
            "--template",
            str(setup.template()),
            "--check-cmd",
            "! grep -q bad {src}",
            "--reload-cmd",
            f"echo reloaded >> {setup.reloads}",
        )
        assert process.run_once() == 1
        assert setup.dest.read_text() == "old\n"
        assert setup.reload_count() == 0
        [failed] = process.events("check failed; the new file is not installed")
        assert failed["level"] == "error"
        assert "exit 1" in failed["output"]
        assert [p.name for p in setup.tmp.iterdir() if p.name.startswith(".out.conf")] == []

    def test_etcd_unreachable_exits_3(self, setup: Setup) -> None:
        process = setup.render("--etcd-timeout", "0.5", endpoint="http://127.0.0.1:9")
        assert process.run_once() == 3
        assert "no etcd endpoint answered" in setup.processes[0].log_path.read_text()

    def test_shipped_template_by_default(self, setup: Setup) -> None:
        """Without --template the nginx template is used, with --set variables."""
        setup.etcd.put(f"{setup.prefix}/apache-8001", "127.0.0.1:8001")
        assert setup.render("--set", "listen=127.0.0.1:8081").run_once() == 0
        text = setup.dest.read_text()
        assert "server 127.0.0.1:8001;" in text
        assert "listen 127.0.0.1:8081 default_server;" in text


@pytest.mark.integration
class TestWatch:
    """The file follows every change under the prefix, and only those that change it."""

    def test_follows_puts_and_deletes(self, setup: Setup) -> None:
        """Each put and delete shows in the file within a second, with one reload each."""
        process = setup.render(
            "--template", str(setup.template()), "--reload-cmd", f"echo r >> {setup.reloads}"
        ).start()
        wait_for(lambda: setup.reload_count() == 1, message="first render")
        assert setup.lines() == []
        setup.etcd.put(f"{setup.prefix}/b", "2")
        setup.wait_lines(["2"], timeout=1)
        setup.etcd.put(f"{setup.prefix}/a", "1")
        setup.wait_lines(["1", "2"], timeout=1)
        setup.etcd.delete(f"{setup.prefix}/b")
        setup.wait_lines(["1"], timeout=1)
        wait_for(lambda: setup.reload_count() == 4, timeout=2)
        # Changes that leave the output as it is reload nothing.
        setup.etcd.put(f"{setup.prefix}/a", "1")
        setup.etcd.put(f"{setup.prefix}/nested/x", "9")
        setup.etcd.put(f"{setup.prefix}x/y", "9")
        setup.etcd.put(f"{setup.prefix}/c", "3")
        setup.wait_lines(["1", "3"], timeout=1)
        # The watch applies changes in order, so the render that has c has every put before it.
        rendered = setup.wait_settled(process, setup.revision(f"{setup.prefix}/c"))
        assert (len(rendered), setup.reload_count()) == (5, 5)
        assert process.process is not None and process.process.poll() is None

    def test_refused_file_keeps_the_old_one(self, setup: Setup) -> None:
        """A change the check refuses leaves the live file; the next good change goes live."""
        process = setup.render(
            "--template", str(setup.template()), "--check-cmd", "! grep -q bad {src}"
        ).start()
        setup.etcd.put(f"{setup.prefix}/a", "good")
        setup.wait_lines(["good"])
        setup.etcd.put(f"{setup.prefix}/b", "bad")
        process.wait_log("check failed; the new file is not installed")
        assert setup.lines() == ["good"]
        setup.etcd.delete(f"{setup.prefix}/b")
        setup.etcd.put(f"{setup.prefix}/c", "fine")
        setup.wait_lines(["fine", "good"])

    def test_healthz_says_the_check_fails(self, setup: Setup) -> None:
        """--metrics-address serves /healthz: 503 naming the failing check, 200 once it passes."""
        port = free_port()
        setup.render(
            "--template",
            str(setup.template()),
            "--check-cmd",
            "! grep -q bad {src}",
            "--metrics-address",
            f"127.0.0.1:{port}",
        ).start()
        setup.etcd.put(f"{setup.prefix}/a", "good")
        setup.wait_lines(["good"])

        def healthz() -> tuple[int, str]:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except requests.ConnectionError:
                return 0, ""
            return answer.status_code, answer.text

        wait_for(lambda: healthz() == (200, "ok\n"), message="/healthz ok")
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert metric(metrics, "sidekick_renders_total") == 1
        assert metric(metrics, "sidekick_render_refused") == 0
        assert metric(metrics, "sidekick_render_failures_total", 'stage="check"') == 0
        assert metric(metrics, "sidekick_peer_up", 'peer="etcd"') == 1
        setup.etcd.put(f"{setup.prefix}/b", "bad")
        _, text = wait_for(lambda: (r := healthz())[0] == 503 and r, message="/healthz 503")
        assert text.startswith("check failing: exit 1")
        assert setup.lines() == ["good"]
        assert metric(metrics, "sidekick_render_refused") == 1
        assert metric(metrics, "sidekick_render_failures_total", 'stage="check"') == 1
        setup.etcd.delete(f"{setup.prefix}/b")
        wait_for(lambda: healthz() == (200, "ok\n"), message="/healthz ok again")
        assert metric(metrics, "sidekick_render_refused") == 0
        assert metric(metrics, "sidekick_renders_total") == 1  # the live text again: not new

    def test_sigterm_exits_0(self, setup: Setup) -> None:
        process = setup.render("--template", str(setup.template())).start()
        process.wait_log("rendered")
        started = time.monotonic()
        assert process.stop() == 0
        assert time.monotonic() - started < 3
        process.wait_log("render stopped")


@pytest.mark.integration
class TestCoalescing:
    """--wait MIN[:MAX]: a burst costs one render and one reload; a steady trickle still
    renders. Counts only: no assertion on how long anything took."""

    def test_burst_is_one_reload(self, setup: Setup) -> None:
        """50 puts in a burst with --wait 0.5: far fewer reloads than puts, and the file
        ends with all 50."""
        process = setup.render(
            "--template",
            str(setup.template()),
            "--reload-cmd",
            f"echo r >> {setup.reloads}",
            "--wait",
            "0.5",
        ).start()
        wait_for(lambda: setup.reload_count() == 1, message="first render")
        for n in range(50):
            setup.etcd.put(f"{setup.prefix}/k{n:02d}", f"v{n:02d}")
        expected = [f"v{n:02d}" for n in range(50)]
        setup.wait_lines(expected, timeout=10)
        rendered = setup.wait_settled(process, setup.revision(f"{setup.prefix}/k49"))
        reloads = setup.reload_count() - 1
        print(f"50 puts in a burst: {reloads} reload(s)")
        assert 1 <= reloads <= 5
        assert len(rendered) == reloads + 1

    def test_trickle_still_renders(self, setup: Setup) -> None:
        """A put every 0.1 s with --wait 1:2 never leaves MIN quiet, yet MAX makes it render
        while the trickle goes on; and every put is in the file at the end."""
        setup.render("--template", str(setup.template()), "--wait", "1:2").start()
        wait_for(setup.dest.exists, message="first render")
        seen_during: set[str] = set()
        for n in range(60):
            setup.etcd.put(f"{setup.prefix}/t{n:02d}", f"t{n:02d}")
            seen_during.update(setup.lines())
            time.sleep(0.1)
        assert seen_during, "nothing rendered during a 6 s trickle with MAX 2 s"
        setup.wait_lines([f"t{n:02d}" for n in range(60)], timeout=10)

    @pytest.mark.parametrize(
        ("flag", "env", "named"),
        [
            (["--wait", "1:0.5"], {}, "--wait: MAX (0.5) must not be less than MIN (1)"),
            ([], {"SIDEKICK_RENDER_WAIT": "soon"}, "SIDEKICK_RENDER_WAIT: expected MIN[:MAX]"),
        ],
    )
    def test_bad_wait_exits_2(
        self, setup: Setup, flag: list[str], env: dict[str, str], named: str
    ) -> None:
        """One line naming the option, or the variable it came from; exit 2."""
        done = subprocess.run(
            [sys.executable, "-m", "sidekick", "render", "--dest", str(setup.dest), *flag],
            capture_output=True,
            text=True,
            env={**clean_env(), **env},
            timeout=30,
            check=False,
        )
        assert done.returncode == 2, done
        [line] = done.stderr.splitlines()
        assert line.startswith(f"sidekick: error: {named}"), line


@pytest.mark.integration
class TestWatchFaults:
    """The field notes' watch traps: a silent or dropped watch is resumed, nothing is lost."""

    def test_silent_watch_is_resumed(self, setup: Setup) -> None:
        """A watch whose connection goes silent (no FIN, no data) is replaced within
        --watch-timeout, from the last revision, and the change made meanwhile shows."""
        proxy = TcpProxy(int(setup.etcd.url.rsplit(":", 1)[1]))
        try:
            setup.render(
                "--template", str(setup.template()), "--watch-timeout", "1", endpoint=proxy.url
            ).start()
            setup.etcd.put(f"{setup.prefix}/a", "1")
            setup.wait_lines(["1"])
            assert proxy.freeze() >= 1
            frozen_at = time.monotonic()
            setup.etcd.put(f"{setup.prefix}/b", "2")
            setup.wait_lines(["1", "2"], timeout=5)
            took = time.monotonic() - frozen_at
            print(f"silent watch: change seen {took:.2f} s after the connection froze")
            assert took < 3
        finally:
            proxy.close()

    def test_dropped_watch_misses_nothing(self, setup: Setup) -> None:
        """etcd out of reach while keys change: on return the watch resumes from the last
        revision it saw and every change made meanwhile shows; no full re-read needed."""
        proxy = TcpProxy(int(setup.etcd.url.rsplit(":", 1)[1]))
        try:
            process = setup.render(
                "--template", str(setup.template()), "--watch-timeout", "1", endpoint=proxy.url
            ).start()
            setup.etcd.put(f"{setup.prefix}/a", "1")
            setup.wait_lines(["1"])
            proxy.refusing = True
            proxy.cut()
            process.wait_log("etcd unavailable; retrying with backoff")
            setup.etcd.put(f"{setup.prefix}/b", "2")
            setup.etcd.put(f"{setup.prefix}/c", "3")
            setup.etcd.delete(f"{setup.prefix}/a")
            refused = proxy.refused
            wait_for(lambda: proxy.refused > refused, message="a retry after the changes, refused")
            assert setup.lines() == ["1"]
            proxy.refusing = False
            setup.wait_lines(["2", "3"], timeout=8)
            process.wait_log("etcd is back")
            assert process.events("watch cannot resume; reading the prefix again") == []
        finally:
            proxy.close()

    def test_compacted_revision_reads_again(self, setup: Setup) -> None:
        """If etcd compacted past our revision while we were away, the prefix is read again."""
        proxy = TcpProxy(int(setup.etcd.url.rsplit(":", 1)[1]))
        try:
            process = setup.render(
                "--template", str(setup.template()), "--watch-timeout", "1", endpoint=proxy.url
            ).start()
            setup.etcd.put(f"{setup.prefix}/a", "1")
            setup.wait_lines(["1"])
            proxy.refusing = True
            proxy.cut()
            process.wait_log("etcd unavailable; retrying with backoff")
            setup.etcd.put(f"{setup.prefix}/a", "2")
            setup.etcd.put(f"{setup.prefix}/b", "3")
            revision = int(setup.etcd.post("kv/range", {"key": "AA=="})["header"]["revision"])
            setup.etcd.post("kv/compaction", {"revision": str(revision)})
            proxy.refusing = False
            setup.wait_lines(["2", "3"], timeout=8)
            [reset] = process.events("watch cannot resume; reading the prefix again")
            assert "compacted" in reset["reason"]
        finally:
            proxy.close()

    def test_etcd_restart(self, setup: Setup) -> None:
        """etcd stopped and started again: the watch comes back and follows."""
        process = setup.render("--template", str(setup.template()), "--watch-timeout", "1").start()
        setup.etcd.put(f"{setup.prefix}/a", "1")
        setup.wait_lines(["1"])
        setup.etcd.stop()
        process.wait_log("etcd unavailable; retrying with backoff")
        setup.etcd.start()
        setup.etcd.put(f"{setup.prefix}/b", "2")
        setup.wait_lines(["1", "2"], timeout=10)
        process.wait_log("etcd is back")


@pytest.mark.integration
class TestReloadSignal:
    """--reload-signal HUP --reload-container NAME: the seed's `docker kill -s HUP`."""

    def test_hup_through_docker(self, setup: Setup, containers: Containers, scope: str) -> None:
        name = f"{scope}-nginx"
        script = "trap 'echo got-hup' HUP; echo ready; while true; do sleep 0.1; done"
        containers.run(command=["sh", "-c", script], enable=None, name=name)
        container = containers.client.containers.get(name)
        wait_for(lambda: b"ready" in container.logs(), message="container ready")
        setup.render(
            "--template",
            str(setup.template()),
            "--reload-signal",
            "HUP",
            "--reload-container",
            name,
        ).start()
        wait_for(lambda: container.logs().count(b"got-hup") == 1, message="first HUP")
        setup.etcd.put(f"{setup.prefix}/a", "1")
        wait_for(lambda: container.logs().count(b"got-hup") == 2, message="second HUP")
        assert container.status != "exited"

    def test_missing_container_is_logged(self, setup: Setup, scope: str) -> None:
        """A reload that fails is logged and the renderer carries on."""
        process = setup.render(
            "--template",
            str(setup.template()),
            "--reload-signal",
            "HUP",
            "--reload-container",
            f"{scope}-missing",
        ).start()
        [failed] = process.wait_log("reload failed")
        assert "reload signal failed" in failed["error"]
        setup.etcd.put(f"{setup.prefix}/a", "1")
        setup.wait_lines(["1"])
        assert process.process is not None and process.process.poll() is None


def failing_reload(setup: Setup) -> tuple[str, Path]:
    """A reload command that fails while the flag file exists, else appends to setup.reloads."""
    flag = setup.tmp / "nginx-down"
    flag.touch()
    command = (
        f"if [ -e {flag} ]; then echo nginx is down >&2; exit 1; fi; echo r >> {setup.reloads}"
    )
    return command, flag


def in_process(setup: Setup, **options: Any) -> Renderer:
    """A Renderer in this process on the test's etcd, so its health() can be asked."""
    store = Store((Endpoint("http", "127.0.0.1", setup.etcd.client_port),), timeout=2)
    return Renderer(
        make_options(dest=setup.dest, template=setup.template(), watch_timeout=1, **options),
        setup.prefix,
        EtcdWatcher(store),
    )


@contextlib.contextmanager
def looping(renderer: Renderer) -> Iterator[Renderer]:
    """The renderer's watch loop in a thread (run() wants the main thread for its signals)."""

    def loop() -> None:
        with contextlib.suppress(render._Stop):
            renderer._loop()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield renderer
    finally:
        renderer.stop()
        thread.join(10)
        assert not thread.is_alive()


def test_reload_retry_delay() -> None:
    """1 s, doubling, at most 30 s."""
    assert [reload_retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert reload_retry_delay(10_000) == 30


@pytest.mark.integration
class TestReloadRetry:
    """A failed reload is owed: tried again on a timer and on the next change until it works."""

    def test_retried_on_a_timer(self, setup: Setup) -> None:
        """With no change in etcd the reload is tried again after 1 s, 2 s, ... until it
        succeeds; one error when it starts failing, one "reload succeeded" when it recovers."""
        command, flag = failing_reload(setup)
        process = setup.render("--template", str(setup.template()), "--reload-cmd", command).start()
        [failed] = process.wait_log("reload failed")
        assert (failed["level"], failed["retry_in"]) == ("error", 1.0)
        assert "reload command failed: exit 1: nginx is down" in failed["error"]
        again = process.wait_log("reload failed again")[0]
        assert (again["level"], again["retry_in"]) == ("debug", 2.0)
        assert setup.dest.exists() and setup.reload_count() == 0
        flag.unlink()
        wait_for(lambda: setup.reload_count() == 1, message="the owed reload, on its timer")
        [succeeded] = process.wait_log("reload succeeded")
        assert succeeded["level"] == "info" and succeeded["failed_attempts"] >= 2
        assert len(process.events("reload failed")) == 1
        assert len(process.events("rendered")) == 1  # nothing changed: the same file reloaded

    def test_retried_on_the_next_change(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A change that leaves the text as it is still retries the owed reload; health()
        says "reload failing" until then."""
        monkeypatch.setattr(render_output, "RELOAD_RETRY_FIRST", 600.0)  # no timer in this test
        command, flag = failing_reload(setup)
        with looping(in_process(setup, reload_cmd=command)) as renderer:
            wait_for(lambda: renderer.output.reload_failing, message="the first reload failing")
            assert renderer.health() == (
                False,
                "reload failing: reload command failed: exit 1: nginx is down",
            )
            sample = renderer.metrics.registry.get_sample_value
            assert sample("sidekick_render_reload_failing") == 1
            assert sample("sidekick_render_failures_total", {"stage": "reload"}) == 1
            flag.unlink()
            setup.etcd.put(f"{setup.prefix}/nested/x", "9")  # not one level down: same text
            wait_for(lambda: setup.reload_count() == 1, message="the owed reload, on a change")
            wait_for(lambda: renderer.health() == (True, "ok"), message="health ok")
            assert sample("sidekick_render_reload_failing") == 0
            assert setup.lines() == []


@pytest.mark.integration
class TestHealth:
    """health() is not ok while the check refuses the latest render; the live file stays."""

    def test_failed_check_is_reported(self, setup: Setup) -> None:
        renderer = in_process(setup, check_cmd="! grep -q bad {src}")
        setup.etcd.put(f"{setup.prefix}/a", "good")
        assert renderer.once() is True
        assert renderer.health() == (True, "ok")
        setup.etcd.put(f"{setup.prefix}/b", "bad")
        assert renderer.once() is False
        assert setup.lines() == ["good"]
        ok, reason = renderer.health()
        assert not ok
        assert reason.startswith("check failing: exit 1")
        assert "\n" not in reason
        assert renderer.once() is False  # the same text again: still refused, still said
        assert renderer.health()[1] == reason
        setup.etcd.delete(f"{setup.prefix}/b")
        assert renderer.once() is True  # back to the live text
        assert renderer.health() == (True, "ok")

    def test_failed_check_and_owed_reload_both_said(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both problems at once are both in the one line."""
        monkeypatch.setattr(render_output, "RELOAD_RETRY_FIRST", 600.0)
        command, _flag = failing_reload(setup)
        renderer = in_process(setup, reload_cmd=command, check_cmd="! grep -q bad {src}")
        with looping(renderer):
            wait_for(lambda: renderer.output.reload_failing, message="the first reload failing")
            setup.etcd.put(f"{setup.prefix}/b", "bad")
            wait_for(lambda: renderer.output.refused, message="the check failing")
            ok, reason = renderer.health()
        assert not ok
        assert reason.startswith("check failing: exit 1")
        assert reason.endswith("; reload failing: reload command failed: exit 1: nginx is down")
        assert setup.lines() == []


@pytest.mark.integration
def test_nginx_binary_present() -> None:
    """The end-to-end tests need Debian's nginx; scripts/test installs nginx-light."""
    assert Path(nginx_binary()).exists()


@pytest.mark.integration
class TestAuth:
    """With etcd users, the watch logs in like every request, and again when its token dies."""

    def test_follows_with_auth_and_new_token(self, tmp_path: Path, scope: str) -> None:
        server = EtcdServer(tmp_path / "auth-etcd")
        server.start()
        try:
            server.post("auth/user/add", {"name": "root", "password": "rootpw"})
            server.post("auth/user/grant", {"user": "root", "role": "root"})
            server.post("auth/enable", {})

            def put(key: str, value: str) -> None:
                token = server.post("auth/authenticate", {"name": "root", "password": "rootpw"})
                requests.post(
                    f"{server.url}/v3/kv/put",
                    json={"key": _b64(key), "value": _b64(value)},
                    headers={"Authorization": token["token"]},
                    timeout=5,
                ).raise_for_status()

            (tmp_path / "pw").write_text("rootpw\n")
            setup = Setup(server, scope, tmp_path)
            process = setup.render(
                "--template",
                str(setup.template()),
                "--etcd-user",
                "root",
                "--etcd-password-file",
                str(tmp_path / "pw"),
                "--watch-timeout",
                "1",
            ).start()
            try:
                put(f"{setup.prefix}/a", "1")
                setup.wait_lines(["1"])
                # auth disable + enable drops every token the server had handed out
                token = server.post("auth/authenticate", {"name": "root", "password": "rootpw"})
                requests.post(
                    f"{server.url}/v3/auth/disable",
                    json={},
                    headers={"Authorization": token["token"]},
                    timeout=5,
                ).raise_for_status()
                server.post("auth/enable", {})
                put(f"{setup.prefix}/b", "2")
                setup.wait_lines(["1", "2"], timeout=8)
            finally:
                process.stop()
        finally:
            server.stop()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
