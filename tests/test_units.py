"""The systemd units in units/ and the confd nginx template beside them.

`systemd-analyze verify` checks each unit inside a throw-away root (--root=):
the units are installed there as on a node, next to stub executables
(/usr/bin/docker, /usr/local/bin/sidekick, /bin/sh) and stub units
(docker.service and the targets default dependencies pull in). Without the
stubs verify fails on whatever this machine lacks (e.g. "Command
/usr/local/bin/sidekick is not executable"); with them the result depends
only on the unit files. verify exits 0 on parse warnings (unknown key, bad
Type=), so a unit passes only with exit 0 *and* no output at all.

The confd template is never run through confd here (confd is not packaged for
this machine). render_confd below expands it instead: a regex translation of
the few Go text/template actions the template uses, with getvs's sorting. Its
output for 0 and 2 backends is kept in tests/data/nginx-{0,2}-backends.conf,
under a header saying so; test_fixture_matches_template keeps the files equal
to what render_confd gives, and the real `nginx -t` checks them, in a private
mount namespace so nginx's temp dirs under /var are never created. Whether
confd itself would give the same text is not tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "units"
# The units that run the agent; units/README.md installs the command as /usr/local/bin/sidekick.
AGENT_UNITS = ("sidekick.service", "sidekick@.service", "sidekick-docker.service")
TEMPLATE = UNITS / "confd" / "templates" / "nginx.conf.tmpl"
RESOURCE = UNITS / "confd" / "conf.d" / "nginx.toml"
DATA = Path(__file__).resolve().parent / "data"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".path", ".mount")

# Executables the units run, and units they require, that a node provides.
STUB_EXECUTABLES = (
    "/usr/bin/docker",
    "/usr/local/bin/sidekick",
    "/bin/sh",
    "/bin/mkdir",
    "/bin/kill",
    "/usr/bin/touch",
)
STUB_UNITS = {
    "docker.service": "[Unit]\nDescription=stub\n[Service]\nExecStart=/usr/bin/docker\n",
    # DefaultDependencies=yes: Requires=sysinit.target, After=basic.target,
    # Conflicts=shutdown.target; verify fails if these are missing.
    "sysinit.target": "[Unit]\nDescription=stub\n",
    "basic.target": "[Unit]\nDescription=stub\n",
    "shutdown.target": "[Unit]\nDescription=stub\n",
    "network-online.target": "[Unit]\nDescription=stub\n",
    "multi-user.target": "[Unit]\nDescription=stub\n",
}
TWO_BACKENDS = {"/test/apache-8002": "127.0.0.1:8002", "/test/apache-8001": "127.0.0.1:8001"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _require(tool: str, package: str) -> str:
    """Path of `tool`; fail under CI (never skip there), skip elsewhere."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    message = f"{tool} not found: apt-get install -y {package}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def unit_files() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.is_file() and p.name.endswith(UNIT_SUFFIXES))


def verify_name(path: Path) -> str:
    """The name to verify: a template (foo@.service) is checked as an instance."""
    return path.name.replace("@.", "@8001.")


def make_root(base: Path, units: dict[str, str]) -> Path:
    """A root with `units` installed in /etc/systemd/system, plus the stubs."""
    root = base / "root"
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for name, text in {**STUB_UNITS, **units}.items():
        (unit_dir / name).write_text(text)
    for exe in STUB_EXECUTABLES:
        stub = root / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path, name: str) -> tuple[int, str]:
    """Run systemd-analyze verify on unit `name` inside `root`: (exit, output)."""
    tool = _require("systemd-analyze", "systemd")
    proc = subprocess.run(
        [tool, "verify", "--man=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def all_units() -> dict[str, str]:
    return {p.name: p.read_text() for p in unit_files()}


def render_confd(template: str, kv: dict[str, str]) -> str:
    """Expand the subset of Go text/template the nginx template uses (a translation, not
    confd: what confd would give is assumed from its documented getvs, never observed).

    Supports `{{- range getvs "P"}}..{{.}}..{{- else}}..{{- end}}` and
    `{{- if getvs "P"}}..{{- else}}..{{- end}}`; getvs returns the values whose
    key matches P (path.Match: `*` stops at `/`), sorted. Anything else raises.
    """

    def getvs(pattern: str) -> list[str]:
        rx = re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")
        return sorted(v for k, v in kv.items() if rx.match(k))

    block = re.compile(
        r"\s*\{\{-\s*(range|if) getvs \"([^\"]+)\"\s*\}\}(.*?)"
        r"\s*\{\{-\s*else\s*\}\}(.*?)\s*\{\{-\s*end\s*\}\}",
        re.S,
    )

    def expand(m: re.Match[str]) -> str:
        kind, pattern, body, other = m.groups()
        values = getvs(pattern)
        if not values:
            return other
        if kind == "if":
            return body
        return "".join(body.replace("{{.}}", v) for v in values)

    out = block.sub(expand, template)
    if "{{" in out:
        raise ValueError(f"unsupported template action left: {out[out.index('{{') :][:60]!r}")
    return out


def _temp_parents(nginx: str) -> list[str]:
    """Parent dirs of the temp paths compiled into nginx (created by `nginx -t`)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True).stderr
    paths = re.findall(r"--http-[a-z]+-temp-path=(\S+)", built)
    return sorted({str(Path(p).parent) for p in paths})


def nginx_test(conf: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t -c conf` with pid and logs in tmp and tmpfs over its /var temp dirs."""
    nginx = _require("nginx", "nginx-light")
    unshare = _require("unshare", "util-linux")
    mounts = "".join(f'mount -t tmpfs tmpfs "{d}" && ' for d in _temp_parents(nginx))
    script = f'{mounts}exec "$0" -t -e stderr -c "$1" -g "pid $2;"'
    return subprocess.run(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            nginx,
            str(conf),
            str(tmp / "nginx.pid"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestSystemdUnits:
    """Every unit in units/ passes systemd-analyze verify, and the check can fail."""

    def test_units_present(self) -> None:
        """units/ ships the agent, apache and load-balancer units."""
        names = {p.name for p in unit_files()}
        assert names >= {
            "sidekick.service",
            "sidekick-docker.service",
            "apache@.service",
            "sidekick-render.service",
            "sidekick-render-docker.service",
            "confd.service",
            "nginx.service",
        }

    @pytest.mark.integration
    @pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
    def test_unit_verifies_cleanly(self, unit: Path, tmp_path: Path) -> None:
        """systemd-analyze verify exits 0 and prints nothing for the unit."""
        code, output = verify(make_root(tmp_path, all_units()), verify_name(unit))
        assert (code, output) == (0, ""), output

    @pytest.mark.integration
    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ("[Service]\n", "[Service]\nFrobnicate=yes\n"),
            ("Type=notify\n", "Type=bogus\n"),
            ("ExecStart=/usr/local/bin/sidekick", "ExecStart=/usr/local/bin/sidekick-missing"),
            ("Requires=docker.service", "Requires=docker-missing.service"),
        ],
        ids=["unknown-directive", "bad-type", "missing-binary", "missing-required-unit"],
    )
    def test_broken_unit_is_reported(self, old: str, new: str, tmp_path: Path) -> None:
        """A deliberately broken sidekick.service fails the same check."""
        text = (UNITS / "sidekick.service").read_text()
        assert old in text
        code, output = verify(
            make_root(tmp_path, {"sidekick.service": text.replace(old, new, 1)}),
            "sidekick.service",
        )
        assert (code, output) != (0, "")
        assert "sidekick.service" in output

    def test_notify_unit_has_watchdog(self) -> None:
        """sidekick.service is Type=notify with a watchdog and main-only notify access."""
        text = (UNITS / "sidekick.service").read_text()
        for line in ("Type=notify", "WatchdogSec=30s", "NotifyAccess=main", "KillSignal=SIGTERM"):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), line

    def test_no_etcdctl_left(self) -> None:
        """No unit writes etcd keys itself any more: sidekick announces by label."""
        for unit in unit_files():
            execs = re.findall(r"^Exec\w*=.*$", unit.read_text(), re.M)
            assert execs, unit.name
            assert not [line for line in execs if "etcdctl" in line], unit.name
        apache = (UNITS / "apache@.service").read_text()
        assert "--label sidekick.enable=true --label sidekick.service=apache" in apache


def unit_lines(name: str) -> list[str]:
    """The unit's lines with continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (UNITS / name).read_text())
    return [line for line in text.splitlines() if line and not line.startswith("#")]


class TestOneInstallOneSetOfSettings:
    """One command path and one set of settings files in every unit and doc (issue 15)."""

    def test_one_command_path(self) -> None:
        """/usr/bin/sidekick appears nowhere; the native units run /usr/local/bin/sidekick."""
        for path in [*unit_files(), UNITS / "README.md", ROOT / "README.md", ROOT / "Dockerfile"]:
            assert "/usr/bin/sidekick" not in path.read_text(), path.name
        for name in ("sidekick.service", "sidekick@.service"):
            assert "ExecStart=/usr/local/bin/sidekick run" in unit_lines(name), name

    def test_every_agent_unit_reads_the_settings(self) -> None:
        """/etc/environment and /etc/default/sidekick, both optional, in each agent unit;
        the container variant hands the latter to docker run --env-file."""
        for name in AGENT_UNITS:
            lines = unit_lines(name)
            assert "EnvironmentFile=-/etc/environment" in lines, name
            if name == "sidekick-docker.service":
                assert any("--env-file /etc/default/sidekick" in line for line in lines)
            else:
                assert "EnvironmentFile=-/etc/default/sidekick" in lines, name
        assert "EnvironmentFile=/etc/default/sidekick-%i" in unit_lines("sidekick@.service")

    def test_restart_keeps_the_lease_stop_revokes_it(self) -> None:
        """KillSignal=SIGTERM (stop revokes) and RestartKillSignal=SIGUSR1 (restart keeps);
        the lease file's directory outlives a restart."""
        for name in AGENT_UNITS:
            lines = unit_lines(name)
            assert "KillSignal=SIGTERM" in lines, name
            assert "RestartKillSignal=SIGUSR1" in lines, name
            assert "RuntimeDirectory=sidekick" in lines, name
            assert "RuntimeDirectoryPreserve=yes" in lines, name

    def test_container_variant_passes_only_what_the_agent_needs(self) -> None:
        """Not the whole /etc/environment (a quoted PATH= replaces the image's), only
        COREOS_PRIVATE_IPV4; the host's /run/sidekick for the lease file; no `docker stop`
        (which would always send SIGTERM), the client forwards systemd's signal."""
        lines = unit_lines("sidekick-docker.service")
        start = next(line for line in lines if line.startswith("ExecStart="))
        assert "--env-file /etc/environment" not in start
        assert "-v /etc/environment" not in start
        assert " -e COREOS_PRIVATE_IPV4 " in start
        assert " -v /run/sidekick:/run/sidekick " in start
        assert not [line for line in lines if line.startswith("ExecStop=")]
        text = (UNITS / "sidekick-docker.service").read_text()
        assert "docker save sidekick:latest | ssh NODE docker load" in text

    def test_register_lines_only_without_an_agent(self) -> None:
        """The shipped apache@.service has no register/deregister lines; the README shows
        them for a node without an agent, with the same settings and the one path."""
        apache = (UNITS / "apache@.service").read_text()
        assert "sidekick register" not in apache
        assert "sidekick deregister" not in apache
        readme = (ROOT / "README.md").read_text()
        block = re.search(r"<!-- test_systemd: oneshot -->\n```ini\n(.*?)```", readme, re.S)
        assert block, "README.md: the register/deregister unit lines"
        lines = block.group(1)
        assert "ExecStartPost=/usr/local/bin/sidekick register apache-%i" in lines
        assert "ExecStop=/usr/local/bin/sidekick deregister --service apache --port %i" in lines
        assert "EnvironmentFile=-/etc/default/sidekick" in lines
        assert "for a node without the agent" in readme[: block.start()][-600:]


def exec_start(name: str) -> str:
    """The unit's ExecStart= line, continuations joined, runs of blanks made one."""
    line = next(line for line in unit_lines(name) if line.startswith("ExecStart="))
    return " ".join(line.split())


class TestRenderUnits:
    """sidekick-render.service and its container variant feed the nginx that nginx.service
    runs: one directory, the same path on the host and in each container."""

    def test_template_is_the_packaged_one(self) -> None:
        """units/sidekick-render/nginx.conf.j2 is sidekick's own nginx template, byte for byte
        (tests/test_render.py compares that one with the confd template)."""
        shipped = ROOT / "sidekick" / "templates" / "nginx.conf.j2"
        assert (UNITS / "sidekick-render" / "nginx.conf.j2").read_text() == shipped.read_text()

    def test_native_unit_checks_then_signals(self) -> None:
        """The host's sidekick renders into nginx.service's directory, checks the staged file
        with nginx -t in the image nginx.service runs (mounted at the same path, so {src} is
        valid inside) and HUPs the nginx.service container through the Docker API."""
        start = exec_start("sidekick-render.service")
        assert start.startswith("ExecStart=/usr/local/bin/sidekick render ")
        assert "--template /etc/sidekick/nginx.conf.j2" in start
        assert "--dest /etc/sidekick/nginx/nginx.conf" in start
        assert (
            "--check-cmd 'docker run --rm -v /etc/sidekick/nginx:/etc/sidekick/nginx:ro "
            "nginx:stable nginx -t -q -c {src}'" in start
        )
        assert start.endswith("--reload-signal HUP --reload-container nginx.service")
        lines = unit_lines("sidekick-render.service")
        assert "EnvironmentFile=-/etc/default/sidekick" in lines
        assert "Before=nginx.service" in lines

    def test_container_variant_signals_without_a_check(self) -> None:
        """The image has no nginx and no docker CLI: the variant signals through the mounted
        socket and runs no check (its comment says so)."""
        text = (UNITS / "sidekick-render-docker.service").read_text()
        assert "What it cannot do: check the new file." in text
        start = exec_start("sidekick-render-docker.service")
        assert "--check-cmd" not in start
        assert " -v /var/run/docker.sock:/var/run/docker.sock " in start
        assert " -v /etc/sidekick:/etc/sidekick " in start
        assert " --no-healthcheck " in start
        assert "--env-file /etc/default/sidekick -e COREOS_PRIVATE_IPV4 " in start
        assert start.endswith(
            "sidekick:latest render --template /etc/sidekick/nginx.conf.j2 "
            "--dest /etc/sidekick/nginx/nginx.conf --reload-signal HUP "
            "--reload-container nginx.service"
        )

    def test_nginx_reads_the_rendered_directory(self) -> None:
        """nginx.service mounts /etc/sidekick/nginx (a directory: the rename of a new file
        would not reach a file bind mount) and runs nginx on the file both renderers write;
        confd renders there too."""
        start = exec_start("nginx.service")
        assert " -v /etc/sidekick/nginx:/etc/sidekick/nginx:ro " in start
        assert start.endswith("nginx -c /etc/sidekick/nginx/nginx.conf -g 'daemon off;'")
        assert "--volumes-from" not in start
        confd = exec_start("confd.service")
        assert " -v /etc/sidekick/nginx:/etc/sidekick/nginx " in confd


def fixture_header(kv: dict[str, str]) -> str:
    """The comment that opens tests/data/nginx-N-backends.conf: what produced the file."""
    keys = ", ".join(f"{k}={v}" for k, v in sorted(kv.items())) or "none"
    return (
        "## Test fixture, not confd output: units/confd/templates/nginx.conf.tmpl expanded\n"
        "## by render_confd in tests/test_units.py (a regex translation of its Go template\n"
        "## actions); confd itself never ran on it. Keys under /test:\n"
        f"## {keys}\n"
        "## Below: the expanded template, starting with the comment the template writes.\n"
    )


class TestConfdNginxTemplate:
    """The confd resource, and the template as render_confd expands it, checked by real nginx."""

    def test_resource_points_at_template(self) -> None:
        """nginx.toml watches /test, checks with nginx -t and reloads with a HUP."""
        text = RESOURCE.read_text()
        assert 'src = "nginx.conf.tmpl"' in text
        assert 'dest = "/etc/sidekick/nginx/nginx.conf"' in text
        assert 'keys = ["/test"]' in text
        assert 'check_cmd = "nginx -t -c {{.src}}"' in text
        assert 'reload_cmd = "docker kill -s HUP nginx.service"' in text

    @pytest.mark.parametrize(
        ("fixture", "kv"),
        [("nginx-0-backends.conf", {}), ("nginx-2-backends.conf", TWO_BACKENDS)],
    )
    def test_fixture_matches_template(self, fixture: str, kv: dict[str, str]) -> None:
        """The fixture is its header plus what render_confd gives for those keys from the
        current template (the test's translation of it; confd is not run)."""
        expected = fixture_header(kv) + render_confd(TEMPLATE.read_text(), kv)
        assert (DATA / fixture).read_text() == expected

    def test_two_backends_sorted(self) -> None:
        """Both backends appear in upstream backend, sorted whatever the key order."""
        text = (DATA / "nginx-2-backends.conf").read_text()
        servers = re.findall(r"^\s*server (\S+);", text, re.M)
        assert servers == ["127.0.0.1:8001", "127.0.0.1:8002"]
        assert "proxy_pass http://backend;" in text

    def test_zero_backends_answers_503(self) -> None:
        """With no backend, upstream keeps a down placeholder and / answers 503."""
        text = (DATA / "nginx-0-backends.conf").read_text()
        assert "server 127.0.0.1:65535 down;" in text
        assert "proxy_pass" not in text
        assert re.search(r"location / \{\s*return 503;\s*\}", text)
        assert 'return 503 "<!DOCTYPE html>' in text

    @pytest.mark.integration
    @pytest.mark.parametrize("fixture", ["nginx-0-backends.conf", "nginx-2-backends.conf"])
    def test_nginx_accepts_rendered_config(self, fixture: str, tmp_path: Path) -> None:
        """nginx -t accepts the rendered configuration."""
        proc = nginx_test(DATA / fixture, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "test is successful" in proc.stderr

    @pytest.mark.integration
    def test_nginx_rejects_empty_upstream(self, tmp_path: Path) -> None:
        """Without the placeholder, nginx -t refuses the 0-backend config."""
        text = (DATA / "nginx-0-backends.conf").read_text()
        broken = tmp_path / "empty-upstream.conf"
        broken.write_text(text.replace("server 127.0.0.1:65535 down;", "", 1))
        proc = nginx_test(broken, tmp_path)
        assert proc.returncode != 0
        assert "no servers are inside upstream" in proc.stderr
