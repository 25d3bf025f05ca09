"""`./bench/run --render-scale`: `sidekick render` and `sidekick ls` with 100,000 keys under the
prefix (2,000 leases of 50 keys, put in transactions of 128) on a real etcd.

1. One renderer (the shipped nginx template, `--reload-cmd` appending a line to a file) for
   each `--wait` in the plan, and the renderer of the commit before `--wait` existed: its first
   render (seconds from the process's start until the file is there, peak RSS then), then a
   churn of 100 changes/s (each put gives one key a new value, on its lease): change-to-file
   p50/p99 (from the put's answer to the file holding the value, seen through inotify on the
   file's directory), the renderer's CPU, renders and reloads per minute.
2. Fan-out: N renderers (processes) on the same prefix, each with a small template (the values
   of 100 probe keys, so that N renders per change fit on this machine); etcd's RSS before
   and with them, and the change-to-file p50/p99 across all of them under a slow churn.
3. `sidekick ls` at 100,000 keys: wall time and peak RSS (ru_maxrss, through a small parent
   process), for the whole prefix, --json, --service, --by-node and --this-node.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from bench import report
from bench.common import CLK_TCK, cpu_ticks, percentile, rss_kb
from bench.resync import _b64, count_keys, export_commit, foreign_puts, git, log, put_all

if TYPE_CHECKING:
    from bench.harness import Bench

BEGIN = "<!-- render-scale: written by ./bench/run --render-scale; do not edit -->"
END = "<!-- /render-scale -->"
BEFORE_COMMIT = "7ddad4c"  # the renderer before --wait (one render per watch message)
KEY_TEMPLATE = "{prefix}/{node}-{service}-{port}"  # how the bench's keys are laid out
CHURN_VALUE = re.compile(rb"127\.0\.0\.2:(\d+)")
IN_CLOSE_WRITE, IN_MOVED_TO = 0x8, 0x80
GOAL_P99_MS = 250


@dataclass(frozen=True)
class ScalePlan:
    """How much of each part to run."""

    nodes: int = 2000
    keys_per_node: int = 50
    churn_rate: float = 100.0  # changes per second
    churn_seconds: float = 60.0
    waits: tuple[str, ...] = ("0", "0.05", "0.1", "0.2")
    before_seconds: float = 10.0  # the old renderer falls behind: a shorter churn
    fanout: int = 100
    fanout_rate: float = 2.0
    fanout_seconds: float = 30.0
    fanout_probes: int = 100
    fanout_wait: str = "0.05"  # sidekick render's default
    ls_repeats: int = 3
    foreign_ttl: int = 3600

    @classmethod
    def make(cls, quick: bool) -> ScalePlan:
        if not quick:
            return cls()
        return cls(churn_seconds=20, waits=("0", "0.1"), fanout=20, fanout_seconds=15)


# -- seeing files change ------------------------------------------------------------------


class FileTimes:
    """When each churned value first showed in each file of one directory: inotify on the
    directory (a render renames its staged file over the old one: IN_MOVED_TO), read on a
    thread of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if (
            self.fd < 0
            or libc.inotify_add_watch(
                self.fd, str(directory).encode(), IN_MOVED_TO | IN_CLOSE_WRITE
            )
            < 0
        ):
            raise OSError(ctypes.get_errno(), "inotify")
        self.seen: dict[str, dict[int, float]] = {}  # file name -> value number -> first seen
        self.first: dict[str, float] = {}  # file name -> when it first appeared
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self.fd, 1 << 20)
            now = time.monotonic()
            for name in sorted(_names(data)):
                self._look(name, now)

    def _look(self, name: str, now: float) -> None:
        try:
            text = (self.directory / name).read_bytes()
        except FileNotFoundError:
            return
        self.first.setdefault(name, now)
        seen = self.seen.setdefault(name, {})
        for match in CHURN_VALUE.finditer(text):
            seen.setdefault(int(match.group(1)), now)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        os.close(self.fd)


def _names(data: bytes) -> set[str]:
    """The file names in a buffer of inotify events (staged `.name.xxxx` files left out)."""
    names, offset = set(), 0
    while offset < len(data):
        _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
        raw = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
        offset += 16 + length
        if raw and not raw.startswith(b"."):
            names.add(raw.decode())
    return names


# -- churn --------------------------------------------------------------------------------


class Churn:
    """Puts at a steady rate; each gives one key a new value `127.0.0.2:<n>` (n never used
    before in the run) on the key's lease, and records when etcd answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.next = 1

    def run(self, keys: Sequence[tuple[str, int]], rate: float, seconds: float) -> dict[int, float]:
        answered: dict[int, float] = {}
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            number, (key, lease) = self.next, keys[(self.next - 1) % len(keys)]
            self.next += 1
            payload = {"key": _b64(key), "value": _b64(f"127.0.0.2:{number}")}
            if lease:
                payload["lease"] = str(lease)
            self.session.post(f"{self.url}/v3/kv/put", json=payload, timeout=30).raise_for_status()
            answered[number] = time.monotonic()
        return answered


def latencies(
    answered: dict[int, float], times: FileTimes, names: Sequence[str], timeout: float
) -> tuple[list[float], int]:
    """Milliseconds from each put's answer to its value in each file (waiting up to `timeout`
    for the last ones), and how many never showed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n in times.seen.get(name, {}) for name in names for n in answered):
            break
        time.sleep(0.1)
    found, missing = [], 0
    for name in names:
        seen = times.seen.get(name, {})
        for number, at in answered.items():
            if number in seen:
                found.append(max(0.0, seen[number] - at) * 1000)
            else:
                missing += 1
    return found, missing


# -- processes ----------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Renderer:
    """`sidekick render` of an exported commit, logging JSON lines to a file."""

    def __init__(self, source: Path, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidekick", "render", *args],
                stdout=out,
                stderr=out,
                cwd=source,
                env=_env(),
            )
        self.started = time.monotonic()

    def count(self, event: str) -> int:
        marker = f'"event": "{event}"'
        return sum(marker in line for line in self.log_path.read_text().splitlines())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _env() -> dict[str, str]:
    drop = ("SIDEKICK_", "COREOS_PRIVATE_IPV4", "DOCKER_HOST", "PYTHONDONTWRITEBYTECODE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def render_args(url: str, prefix: str, dest: Path, env_file: Path, *extra: str) -> list[str]:
    return [
        "--etcd-endpoints",
        url,
        "--prefix",
        prefix,
        "--environment-file",
        str(env_file),
        "--dest",
        str(dest),
        "--log-format",
        "json",
        "--log-level",
        "info",
        *extra,
    ]


def wait_first(times: FileTimes, name: str, process: subprocess.Popen[bytes], limit: float) -> None:
    if not rendered(times, name, process, limit):
        raise RuntimeError(f"no first render of {name} (exit {process.poll()})")


def rendered(times: FileTimes, name: str, process: subprocess.Popen[bytes], limit: float) -> bool:
    """Whether the file `name` appeared within `limit` seconds while the process ran."""
    deadline = time.monotonic() + limit
    while name not in times.first:
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- 1. one renderer under churn ----------------------------------------------------------


@dataclass
class Scale:
    """What the parts share: the etcd, the prefix, the keys and the places for files."""

    bench: Bench
    plan: ScalePlan
    prefix: str
    keys: list[tuple[str, int]]  # (key, lease) of every key put, in the churn's order
    node_leases: list[int]  # node number -> its lease
    source: Path  # the commit's package
    before: Path  # the package before --wait
    workdir: Path
    churn: Churn

    @property
    def url(self) -> str:
        return self.bench.etcd.url


def one_renderer(scale: Scale, wait: str | None, tag: str) -> dict[str, Any]:
    """First render, then the churn; wait None: the renderer before --wait."""
    plan, home = scale.plan, scale.workdir / f"render-{tag}"
    home.mkdir()
    env_file, reloads, dest = home / "environment", home / "reloads", home / "out" / "nginx.conf"
    env_file.touch()
    dest.parent.mkdir()
    extra = ["--reload-cmd", f"echo r >> {reloads}"]
    extra += ["--wait", wait] if wait is not None else []
    times = FileTimes(dest.parent)
    renderer = Renderer(
        scale.source if wait is not None else scale.before,
        render_args(scale.url, scale.prefix, dest, env_file, *extra),
        home / "render.log",
    )
    pid = renderer.process.pid
    try:
        wait_first(times, dest.name, renderer.process, 120)
        first = {
            "first_render_seconds": times.first[dest.name] - renderer.started,
            "first_render_peak_rss_kb": status_kb(pid, "VmHWM"),
            "first_render_cpu_seconds": cpu_ticks(pid) / CLK_TCK,
            "file_bytes": dest.stat().st_size,
        }
        time.sleep(2)
        seconds = plan.churn_seconds if wait is not None else plan.before_seconds
        before = (cpu_ticks(pid), _lines(reloads), renderer.count("rendered"), time.monotonic())
        answered = scale.churn.run(scale.keys, plan.churn_rate, seconds)  # keys not yet churned
        after = (cpu_ticks(pid), _lines(reloads), renderer.count("rendered"), time.monotonic())
        found, missing = latencies(answered, times, [dest.name], timeout=30)
        window = after[3] - before[3]
        row: dict[str, Any] = {
            "wait": wait,
            "tag": tag,
            **first,
            "churn_seconds": window,
            "changes": len(answered),
            "changes_per_second": len(answered) / window,
            "p50_ms": percentile(found, 50),
            "p99_ms": percentile(found, 99),
            "max_ms": max(found) if found else None,
            "missing": missing,
            "cpu_percent": (after[0] - before[0]) / CLK_TCK / window * 100,
            "reloads_per_minute": (after[1] - before[1]) / window * 60,
            "renders_per_minute": (after[2] - before[2]) / window * 60,
            "steady_rss_kb": rss_kb(pid),
        }
    finally:
        renderer.stop()
        times.close()
    log(
        f"render {tag}: first {row['first_render_seconds']:.2f} s, "
        f"{row['first_render_peak_rss_kb'] / 1024:.0f} MiB; churn p50 {row['p50_ms']:.0f} ms "
        f"p99 {row['p99_ms']:.0f} ms ({missing} missing), cpu {row['cpu_percent']:.0f}%, "
        f"{row['reloads_per_minute']:.0f} reloads/min"
    )
    return row


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- 2. fan-out ---------------------------------------------------------------------------


def fanout(scale: Scale) -> dict[str, Any]:
    """N renderers on the prefix, a small template each; etcd's RSS; p50/p99 across all."""
    plan, home = scale.plan, scale.workdir / "fanout"
    (home / "out").mkdir(parents=True)
    env_file = home / "environment"
    env_file.touch()
    template = home / "probes.j2"
    template.write_text(
        f'{{% for k in range({plan.fanout_probes}) %}}{{{{ getv(prefix ~ "/probe-" ~ k, "") }}}}\n'
        "{% endfor %}"
    )
    probes = [(f"{scale.prefix}/probe-{k}", 0) for k in range(plan.fanout_probes)]
    for key, _ in probes:
        requests.post(
            f"{scale.url}/v3/kv/put", json={"key": _b64(key), "value": _b64("-")}, timeout=30
        ).raise_for_status()
    assert scale.bench.etcd.process is not None
    etcd_pid = scale.bench.etcd.process.pid
    etcd_before = rss_kb(etcd_pid)
    times = FileTimes(home / "out")
    renderers: list[Renderer] = []
    started = time.monotonic()
    try:
        for batch in range(0, plan.fanout, 5):  # five reading the prefix at a time
            group = range(batch, min(batch + 5, plan.fanout))
            for index in group:
                dest = home / "out" / f"r{index:03d}.conf"
                extra = ("--template", str(template), "--wait", plan.fanout_wait)
                args = render_args(scale.url, scale.prefix, dest, env_file, *extra)
                renderers.append(Renderer(scale.source, args, home / f"r{index:03d}.log"))
            late = [
                i for i in group if not rendered(times, f"r{i:03d}.conf", renderers[i].process, 300)
            ]
            if late:  # the most this machine holds: measure those that rendered
                log(f"fan-out: r{late[0]:03d} not rendered in 300 s; {late[0]} renderers held")
                for _ in group:
                    renderers.pop().stop()
                break
        log(f"fan-out: {len(renderers)} renderers up in {time.monotonic() - started:.0f} s")
        time.sleep(3)
        etcd_with = rss_kb(etcd_pid)
        rss = [rss_kb(r.process.pid) for r in renderers]
        names = [f"r{i:03d}.conf" for i in range(len(renderers))]
        peak = [etcd_with]
        sampler = threading.Event()

        def sample() -> None:
            while not sampler.wait(1):
                peak.append(rss_kb(etcd_pid))

        threading.Thread(target=sample, daemon=True).start()
        answered = scale.churn.run(probes, plan.fanout_rate, plan.fanout_seconds)
        sampler.set()
        found, missing = latencies(answered, times, names, timeout=60)
        row: dict[str, Any] = {
            "renderers": len(renderers),
            "renderers_planned": plan.fanout,
            "changes": len(answered),
            "rate": plan.fanout_rate,
            "etcd_rss_kb_before": etcd_before,
            "etcd_rss_kb_with": etcd_with,
            "etcd_rss_kb_peak_churn": max(peak),
            "renderer_rss_kb_median": statistics.median(rss),
            "renderers_rss_kb_total": sum(rss),
            "samples": len(found),
            "missing": missing,
            "p50_ms": percentile(found, 50),
            "p99_ms": percentile(found, 99),
            "max_ms": max(found) if found else None,
        }
    finally:
        for r in renderers:
            r.process.send_signal(signal.SIGTERM)
        for r in renderers:
            r.stop()
        times.close()
    log(
        f"fan-out {len(renderers)}: etcd {etcd_before / 1024:.0f} -> {etcd_with / 1024:.0f} MiB; "
        f"p50 {row['p50_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms ({missing} missing)"
    )
    return row


# -- 3. ls --------------------------------------------------------------------------------


def ls_runs(scale: Scale) -> list[dict[str, Any]]:
    """`sidekick ls` variants: median wall time and peak RSS over plan.ls_repeats runs."""
    home = scale.workdir / "ls"
    home.mkdir()
    env_file, lease_file = home / "environment", home / "lease"
    env_file.touch()
    node = min(42, len(scale.node_leases) - 1)
    lease_file.write_text(f"{scale.node_leases[node]:x}\n")
    base = [
        "--etcd-endpoints",
        scale.url,
        "--prefix",
        scale.prefix,
        "--environment-file",
        str(env_file),
        "--filter",
        f"label=sidekick.bench={scale.bench.run_id}-none",  # no container of this node
        "--key-template",
        KEY_TEMPLATE,
    ]
    variants = [
        ("whole prefix, table", scale.source, []),
        ("whole prefix, --json", scale.source, ["--json"]),
        ("--service svc07", scale.source, ["--service", "svc07"]),
        ("--by-node node01234", scale.source, ["--by-node", "node01234"]),
        (
            "--this-node (lease file)",
            scale.source,
            ["--node", f"node{node:05d}", "--this-node", "--lease-file", str(lease_file)],
        ),
        (f"whole prefix, table, at {BEFORE_COMMIT}", scale.before, []),
    ]
    rows = []
    for name, source, extra in variants:
        runs = [_ls_once(source, [*base, *extra], home) for _ in range(scale.plan.ls_repeats)]
        row: dict[str, Any] = {
            "variant": name,
            "seconds": statistics.median(r[0] for r in runs),
            "peak_rss_kb": statistics.median(r[1] for r in runs),
            "lines": runs[0][2],
            "exit": runs[0][3],
        }
        rows.append(row)
        log(f"ls {name}: {row['seconds']:.2f} s, {row['peak_rss_kb'] / 1024:.0f} MiB")
    return rows


# A small parent for `ls`: the peak RSS of a child forked straight from the bench would count
# the bench's own pages, copied at the fork, until the exec.
_PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _ls_once(source: Path, args: list[str], home: Path) -> tuple[float, int, int, int]:
    """(wall seconds, peak RSS in KB, stdout lines, exit code) of one `sidekick ls`."""
    out = home / "out.txt"
    with out.open("wb") as stdout:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, sys.executable, "-m", "sidekick", "ls", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=source,
            env=_env(),
            check=False,
        )
        seconds = time.monotonic() - started
    lines = out.read_bytes().count(b"\n")
    return seconds, int(done.stderr.split()[-1]), lines, done.returncode


# -- the whole mode -----------------------------------------------------------------------


def run(bench: Bench, plan: ScalePlan) -> dict[str, Any]:
    """Fill the prefix, then each part; the results."""
    results: dict[str, Any] = {
        "plan": asdict(plan),
        "run_id": bench.run_id,
        "machine": report.machine(bench.client, bench.etcd.url),
        "commit": git("rev-parse", "--short", "HEAD"),
        "before_commit": BEFORE_COMMIT,
    }
    workdir = bench.workdir
    source = export_commit(results["commit"], workdir / "src-head")
    before = export_commit(BEFORE_COMMIT, workdir / "src-before")
    prefix = f"{bench.base}/lb"
    began = time.monotonic()
    puts = foreign_puts(
        bench.etcd.url, prefix, range(plan.nodes), plan.keys_per_node, plan.foreign_ttl
    )
    put_all(bench.etcd.url, puts)
    results["keys_under_prefix"] = count_keys(bench.etcd.url, prefix + "/")
    results["fill_seconds"] = time.monotonic() - began
    log(f"{results['keys_under_prefix']} keys under {prefix}/ in {results['fill_seconds']:.0f} s")
    assert bench.etcd.process is not None
    results["etcd_rss_kb_filled"] = rss_kb(bench.etcd.process.pid)
    # Churned keys are taken in an order that walks every node: node i, then node i + 1, ...
    order = sorted(range(len(puts)), key=lambda i: (i % plan.keys_per_node, i))
    keys = [(puts[i][0], puts[i][2]) for i in order]
    node_leases = [puts[n * plan.keys_per_node][2] for n in range(plan.nodes)]
    churn = Churn(bench.etcd.url)
    scale = Scale(bench, plan, prefix, keys, node_leases, source, before, workdir, churn)
    results["renderers"] = [one_renderer(scale, None, "before")]
    for wait in plan.waits:
        results["renderers"].append(one_renderer(scale, wait, f"wait-{wait}"))
    results["ls"] = ls_runs(scale)
    results["fanout"] = fanout(scale)
    results["machine"]["load_end"] = os.getloadavg()[0]
    return results


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of the last stdout line."""
    line: dict[str, Any] = {}
    for row in results["renderers"]:
        tag = row["tag"].replace("-", "_").replace(".", "")
        line[f"render_{tag}_p99_ms"] = _round(row["p99_ms"])
        line[f"render_{tag}_reloads_per_min"] = _round(row["reloads_per_minute"])
    fan = results["fanout"]
    line.update(
        {
            "render_first_seconds": _round(results["renderers"][-1]["first_render_seconds"], 2),
            "render_first_peak_rss_mib": _round(
                results["renderers"][-1]["first_render_peak_rss_kb"] / 1024
            ),
            "fanout_renderers": fan["renderers"],
            "fanout_p99_ms": _round(fan["p99_ms"]),
            "fanout_etcd_rss_mib": _round(fan["etcd_rss_kb_with"] / 1024),
            "ls_seconds": _round(results["ls"][0]["seconds"], 2),
            "ls_this_node_seconds": _round(results["ls"][4]["seconds"], 2),
            "commit": results["commit"],
            "date": results["machine"]["date"],
        }
    )
    return line


def _round(value: float | None, digits: int = 0) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits) if digits else float(round(value))


# -- docs/benchmarks.md -------------------------------------------------------------------


def write_docs(results: dict[str, Any], command: str, docs: Path) -> None:
    """Put the section into docs/benchmarks.md (in place of the last one, else at the end)."""
    path = docs / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = markdown(results, command)
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def _met(results: dict[str, Any]) -> list[str]:
    """The renderers whose p99 met the goal."""
    return [
        "before" if row["wait"] is None else f"`--wait {row['wait']}`"
        for row in results["renderers"]
        if row["p99_ms"] <= GOAL_P99_MS
    ]


def _cpu_per_render(row: dict[str, Any]) -> float | None:
    """The renderer's CPU over the churn divided by its renders (its watch thread included)."""
    if not row["renders_per_minute"]:
        return None
    return float(row["cpu_percent"] / 100 * 60 / row["renders_per_minute"] * 1000)


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def markdown(results: dict[str, Any], command: str) -> str:
    plan, host = results["plan"], results["machine"]
    out = [
        BEGIN,
        "## `sidekick render` and `sidekick ls` at 100,000 keys",
        "",
        f"Generated by `{command}` (`bench/render_scale.py`) at commit `{results['commit']}` on "
        f"{host['date']}: {host['nproc']} CPUs ({host['cpu']}), {host['memory_gib']} GiB, "
        f"{host['os']}, etcd {host['etcd']} (one member, loopback), Python {host['python']}; "
        f"1-minute load average {host['load_start']:.1f} at the start, "
        f"{host.get('load_end', float('nan')):.1f} at the end. Each `sidekick` is that "
        "commit's package (`git archive`), whatever the working tree held.",
        "",
        f"{results['keys_under_prefix']:,} keys under the prefix ({plan['nodes']:,} leases of "
        f"{plan['keys_per_node']} keys, transactions of 128 puts, "
        f"{results['fill_seconds']:.0f} s; etcd's RSS then "
        f"{results['etcd_rss_kb_filled'] / 1024:.0f} MiB). One `sidekick render` with the "
        "shipped nginx template (every key one level under the prefix: a "
        f"{results['renderers'][-1]['file_bytes'] / 1e6:.1f} MB file of "
        f"{results['keys_under_prefix']:,} `server` lines), `--reload-cmd 'echo r >> FILE'` "
        "and no `--check-cmd`. First render: from the process's start (Python's start-up "
        "included) until the file is there; peak RSS then (VmHWM). Then a churn of "
        f"{plan['churn_rate']:g} changes/s for {plan['churn_seconds']:g} s: each change is a "
        "put that gives one key (a different key each time, on its own lease) a value never "
        "used before; change-to-file is from the put's answer to the moment the file holds "
        "that value (inotify on the file's directory, the file read at each rename). CPU is "
        "the renderer's (utime + stime over the churn); reloads and renders per minute over "
        "the churn. `before` is the renderer at "
        f"`{results['before_commit']}`, before this change: it rendered once per watch "
        f"message, so it falls behind (churn of {plan['before_seconds']:g} s only; its late "
        "changes are counted as missing after 30 s).",
        "",
        "| renderer | first render (s) | peak RSS (MiB) | changes/s | change-to-file p50 (ms) "
        "| p99 (ms) | max (ms) | missing | renderer CPU | renders/min | CPU per render (ms) "
        "| reloads/min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["renderers"]:
        name = "before (no `--wait`)" if row["wait"] is None else f"`--wait {row['wait']}`"
        out.append(
            f"| {name} | {row['first_render_seconds']:.2f} | "
            f"{row['first_render_peak_rss_kb'] / 1024:.0f} | {row['changes_per_second']:.0f} | "
            f"{_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {_ms(row['max_ms'])} | "
            f"{row['missing']} | {row['cpu_percent']:.0f}% | {row['renders_per_minute']:.0f} | "
            f"{_ms(_cpu_per_render(row))} | {row['reloads_per_minute']:.0f} |"
        )
    fan = results["fanout"]
    out += [
        "",
        f"Goal: change-to-file p99 ≤ {GOAL_P99_MS} ms at 100,000 keys with churn; met here by "
        + (", ".join(_met(results)) or "none of the settings")
        + ".",
        "",
        f"**Fan-out**: {fan['renderers']} `sidekick render` processes on the same prefix "
        f"({fan['renderers_planned']} planned; started five at a time, each given 300 s for its "
        "first render, and the fan-out stops growing at the first that misses it), each with "
        "a small template (the values of "
        f"{plan['fanout_probes']} probe keys: with the nginx template each render costs the "
        "CPU in the table above, and this machine's two cores cannot render it "
        f"{fan['renderers']} times per change); `--wait {plan['fanout_wait']}` (the default). "
        "A churn of "
        f"{fan['rate']:g} changes/s for {plan['fanout_seconds']:g} s on the probe keys. "
        f"etcd's RSS {fan['etcd_rss_kb_before'] / 1024:.0f} MiB before, "
        f"{fan['etcd_rss_kb_with'] / 1024:.0f} MiB with the {fan['renderers']} watchers, "
        f"{fan['etcd_rss_kb_peak_churn'] / 1024:.0f} MiB at most during the churn; each "
        f"renderer {fan['renderer_rss_kb_median'] / 1024:.0f} MiB (median RSS, "
        f"{fan['renderers_rss_kb_total'] / 1024 / 1024:.1f} GiB together). Change-to-file "
        f"across all of them ({fan['samples']:,} file changes): p50 "
        f"**{_ms(fan['p50_ms'])} ms**, p99 **{_ms(fan['p99_ms'])} ms**, max "
        f"{_ms(fan['max_ms'])} ms, {fan['missing']} missing.",
        "",
        f"**`sidekick ls`** at {results['keys_under_prefix']:,} keys (median of "
        f"{plan['ls_repeats']} runs; key template `{KEY_TEMPLATE}`; stdout to a file; peak "
        "RSS is the process's ru_maxrss, read by a small parent process; wall time includes "
        "Python's start-up):",
        "",
        "| ls | wall time (s) | peak RSS (MiB) | lines out |",
        "|---|---:|---:|---:|",
    ]
    for row in results["ls"]:
        out.append(
            f"| {row['variant']} | {row['seconds']:.2f} | {row['peak_rss_kb'] / 1024:.0f} | "
            f"{row['lines']:,} |"
        )
    out += [END]
    return "\n".join(out)
