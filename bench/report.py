"""docs/benchmarks.md and docs/benchmarks-latency.png from one run's results."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import requests

from bench.common import ROOT
from sidekick import __version__

PLOT_NAME = "benchmarks-latency.png"


def machine(client: docker.DockerClient | None, etcd_url: str) -> dict[str, Any]:
    """What the figures were taken on (no client: a run that uses no Docker engine)."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    try:
        etcd_version = requests.get(etcd_url + "/version", timeout=5).json().get("etcdserver")
    except (requests.RequestException, ValueError):
        etcd_version = "unknown"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": _os_name(),
        "docker": client.version().get("Version", "unknown") if client else "not used",
        "etcd": etcd_version,
        "python": platform.python_version(),
        "sidekick": f"{__version__} ({commit})" if commit else __version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": os.getloadavg()[0],
    }


def _os_name() -> str:
    with_name = Path("/etc/os-release")
    if with_name.exists():
        for line in with_name.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ratio(baseline: Any, ours: Any) -> str:
    try:
        if baseline is None or ours is None or math.isnan(baseline) or math.isnan(ours):
            return "n/a"
    except TypeError:
        return "n/a"
    if ours == 0:
        return "∞" if baseline else "1"
    value = baseline / ours
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def _mark(ours: Any, limit: float | None) -> str:
    if limit is None:
        return ""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return "n/a"
    return "met" if ours <= limit else "**missed**"


def write(results: dict[str, Any], line: dict[str, Any], command: str, docs: Path) -> None:
    """docs/benchmarks.md from a full run; the resync-cost section of an earlier
    `--resync-cost` run is kept, at the end."""
    docs.mkdir(exist_ok=True)
    plotted = plot(results, docs / PLOT_NAME)
    path = docs / "benchmarks.md"
    kept = _resync_section(path.read_text()) if path.exists() else None
    text = markdown(results, line, command, plotted)
    (docs / "benchmarks.md").write_text(text + ("\n" + kept + "\n" if kept else ""))


# -- the resync-cost section (./bench/run --resync-cost) -----------------------------------

RESYNC_BEGIN = "<!-- resync-cost: written by ./bench/run --resync-cost; do not edit -->"
RESYNC_END = "<!-- /resync-cost -->"


def _resync_section(text: str) -> str | None:
    """The resync-cost section of a benchmarks.md, markers included, if it has one."""
    start = text.find(RESYNC_BEGIN)
    end = text.find(RESYNC_END, start)
    if start < 0 or end < 0:
        return None
    return text[start : end + len(RESYNC_END)]


def write_resync(results: dict[str, Any], line: dict[str, Any], command: str, docs: Path) -> None:
    """Put the resync-cost section into docs/benchmarks.md (in place of the last one, else
    at the end), leaving the rest of the file as it is."""
    path = docs / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = resync_markdown(results, line, command)
    old = _resync_section(text)
    if old is not None:
        text = text.replace(old, section)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def _bytes(value: float) -> str:
    return f"{value:,.0f}"


def _methods(by_method: dict[str, float]) -> str:
    return ", ".join(f"{m} {n:g}" for m, n in sorted(by_method.items())) or "none"


def resync_markdown(results: dict[str, Any], line: dict[str, Any], command: str) -> str:
    """The section's text: how it was measured, one row per size, the ratios."""
    plan, host, rows, r = results["plan"], results["machine"], results["rows"], results["ratios"]
    limit = line["resync_ratio_limit"]
    out = [
        RESYNC_BEGIN,
        "## Resync cost with other nodes' keys under the prefix",
        "",
        f"Generated by `{command}` (`bench/resync.py`) at commit `{results['commit']}` on "
        f"{host['date']}: {host['nproc']} CPUs ({host['cpu']}), {host['os']}, Docker "
        f"{host['docker']}, etcd {host['etcd']} (one member, loopback), Python "
        f"{host['python']}; 1-minute load average {host['load_start']:.1f} at the start, "
        f"{host.get('load_end', math.nan):.1f} at the end. The agent is that commit's "
        "`sidekick` package (`git archive`), whatever the working tree held.",
        "",
        f"One `sidekick run` (`--resync {plan['resync']:g}`, ttl {plan['ttl']}) announces "
        f"{plan['containers']} busybox containers (ports published on 127.0.0.1) and talks to "
        "etcd through a TCP proxy on loopback that counts the bytes each way. With the prefix "
        "holding only the agent's keys, then with other nodes' keys put under the same prefix "
        f"({plan['keys_per_node']} keys on each node's own lease, transactions of 128 puts), "
        f"the next {plan['resyncs']} resyncs are measured at each size, from just after one "
        "`reconciled` log line (polled every 10 ms) to just after the last of them. Per resync: "
        "the agent's CPU (utime + stime of the whole "
        "process from `/proc/PID/stat`, so its idle work between resyncs is in it too), the "
        "bytes it read from etcd (HTTP answers, headers included, counted by the proxy; "
        "keepalive answers left out), the bytes etcd's gRPC server sent "
        "(`etcd_network_client_grpc_sent_bytes_total`, protobuf, keepalives included) and "
        "etcd's requests by method (`grpc_server_started_total`; the JSON gateway turns "
        "every HTTP call into a gRPC one; keepalives left out and given apart).",
        "",
        "| other nodes' keys | keys under the prefix | agent CPU per resync (ms) "
        "| bytes read from etcd per resync | etcd gRPC bytes sent per resync "
        "| etcd requests per resync | by method | keepalives in the window "
        "| agent's reconcile, median (ms) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        reconcile = row["reconcile_seconds_median"]
        out.append(
            f"| {row['foreign_keys']:,} | {row['keys_under_prefix']:,} | "
            f"{row['cpu_seconds_per_resync'] * 1000:.1f} | "
            f"{_bytes(row['bytes_read_per_resync'])} | "
            f"{_bytes(row['etcd_grpc_bytes_per_resync'])} | "
            f"{row['requests_per_resync']:g} | {_methods(row['requests_by_method_per_resync'])} | "
            f"{row['keepalives_in_window']} | "
            f"{_fmt(reconcile * 1000 if reconcile is not None else None)} |"
        )
    out += [
        "",
        f"Ratio {r['foreign_keys']:,} : 0 (target ≤ {limit:g}): agent CPU "
        f"**{r['cpu']:.2f}** ({_mark(r['cpu'], limit)}), bytes read from etcd "
        f"**{r['bytes_read']:.2f}** ({_mark(r['bytes_read'], limit)}); etcd's gRPC bytes "
        f"{r['etcd_grpc_bytes']:.2f}, requests {r['requests']:.2f}.",
        "",
        "Bytes read per resync by request path at "
        f"{rows[-1]['foreign_keys']:,} keys: "
        + ", ".join(
            f"`{p}` {_bytes(n)}" for p, n in rows[-1]["bytes_read_by_path_per_resync"].items()
        )
        + ". The CPU figure has a resolution of one clock tick (10 ms) over the "
        f"{plan['resyncs']} resyncs of a size.",
        "",
        "```json",
        _json(line),
        "```",
        RESYNC_END,
    ]
    return "\n".join(out)


def markdown(results: dict[str, Any], line: dict[str, Any], command: str, plotted: bool) -> str:
    lat, seed = results["latency"], results["latency_seed"]
    cold, steady = results["coldstart"], results["steady"]
    loop, rec = results["steady_ttl_loop"], results["recovery"]
    plan, host = results["plan"], results["machine"]
    rows: list[tuple[str, Any, str, Any, str, int]] = []  # figure, ours, target, base, note, digits

    def add(
        name: str,
        ours: Any,
        target: float | None,
        base: Any,
        *,
        note: str = "",
        digits: int = 1,
        target_text: str | None = None,
    ) -> None:
        text = target_text or ("" if target is None else f"≤ {target:g}")
        if target is not None:
            text += f" ({_mark(ours, target)})"
        rows.append((name, ours, text, base, note, digits))

    a, b = lat["all"], seed["all"]
    seq, burst = lat["sequential"], lat["burst"]
    floor_note = ""
    if "etcd_put" in burst and burst.get("docker_delivery"):
        floor_note = (
            f"in bursts one etcd put alone took p99 {_fmt(burst['etcd_put']['p99'])} ms and "
            f"Docker delivered start events p99 {_fmt(burst['docker_delivery']['start']['p99'])}"
            " ms late (below)"
        )
    add("Registration p50 (ms)", a["register"]["p50"], 5, b["register"]["p50"])
    add("Registration p95 (ms)", a["register"]["p95"], None, b["register"]["p95"])
    add("Registration p99 (ms)", a["register"]["p99"], 15, b["register"]["p99"], note=floor_note)
    add(
        "Registration p99, one after another (ms)",
        seq["register"]["p99"],
        15,
        seed["sequential"]["register"]["p99"],
    )
    add("Registration max (ms)", a["register"]["max"], None, b["register"]["max"])
    add("Deregistration p50 (ms)", a["deregister"]["p50"], None, b["deregister"]["p50"])
    add("Deregistration p95 (ms)", a["deregister"]["p95"], None, b["deregister"]["p95"])
    add("Deregistration p99 (ms)", a["deregister"]["p99"], 15, b["deregister"]["p99"])
    add(
        "Deregistration p99, one after another (ms)",
        seq["deregister"]["p99"],
        15,
        seed["sequential"]["deregister"]["p99"],
    )
    add("Deregistration max (ms)", a["deregister"]["max"], None, b["deregister"]["max"])
    for n in sorted(cold, key=int):
        c = cold[n]
        add(
            f"Cold start, {n} containers (s)",
            c["seconds"],
            1.5 if n == "200" else None,
            c["seed_seconds"],
            digits=3,
        )
        add(
            f"Cold start, {n} containers: etcd requests",
            c["requests"],
            None,
            c["seed_requests"],
            target_text="a handful" if n == "200" else None,
            digits=0,
        )
    add(
        f"Steady, {steady['registrations']} registrations: etcd writes/min",
        steady["writes_per_min"],
        None,
        loop["writes_per_min"],
        note="sidekick: "
        + ", ".join(f"{k} {v}" for k, v in sorted(steady["by_method"].items()) if k != "Range")
        + f" in {steady['seconds']:.0f} s (a keepalive every 10 s, and one more in each 60 s "
        f"resync); TTL loop computed: {loop['computed_writes_per_min']:.0f} "
        f"({loop['computed_puts_per_min']:.0f} puts + as many lease grants)",
        target_text="≈ 6 (keepalives)",
    )
    add(
        "Steady: all etcd requests/min",
        steady["requests_per_min"],
        None,
        loop["writes_per_min"],
        note="writes plus the resync's range read",
    )
    add(
        "Idle CPU (% of one core)",
        steady["cpu_percent"],
        0.5,
        loop["cpu_percent"],
        digits=3,
        note="baseline: the 100 loops and the etcdctl they run",
    )
    add(
        "Idle RSS (MB)",
        steady["rss_mb_max"],
        45,
        loop["rss_mb_mean"],
        note="baseline: the 100 loop shells",
    )
    add(
        f"Recovery after etcd's return, outage {rec['etcd']['outage_seconds']} s "
        f"(s, worst of {len(rec['etcd']['runs'])})",
        rec["etcd"]["seconds"],
        2,
        float(plan["ttl_loop_period"]),
        note="baseline computed: a TTL loop rewrites within its 45 s period; the seed's "
        "one-shot put never repairs",
        digits=3,
    )
    add(
        f"Recovery after Docker's return, cut {rec['docker']['cut_seconds']:g} s "
        f"(s, worst of {len(rec['docker']['runs'])})",
        rec["docker"]["seconds"],
        2,
        float(plan["ttl_loop_ttl"]),
        note="baseline computed: a dead container's key stays until its 60 s TTL",
        digits=3,
    )

    out = [
        "# Benchmarks",
        "",
        "Generated by `" + command + "` (`bench/harness.py`); do not edit by hand. A benchmark is "
        "not a test: CI does not run it and no number here fails a build.",
        "",
        f"Taken {host['date']} on: {host['nproc']} CPUs ({host['cpu']}), "
        f"{host['memory_gib']} GiB memory, {host['os']}, kernel {host['kernel']}, "
        f"Docker {host['docker']}, etcd {host['etcd']} (one member, loopback), "
        f"Python {host['python']}, sidekick {host['sidekick']}. "
        f"1-minute load average {host['load_start']:.1f} at the start, "
        f"{host.get('load_end', math.nan):.1f} at the end (other work on the machine shows "
        "here: the figures are only as quiet as the machine was). "
        + (
            "**Quick run** (`--quick`): fewer containers, a one-minute steady state."
            if plan["quick"]
            else "Full run."
        ),
        "",
        "| figure | sidekick | target | baseline | baseline / sidekick | note |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, ours, target, base, note, digits in rows:
        out.append(
            f"| {name} | {_fmt(ours, digits)} | {target} | {_fmt(base, digits)} | "
            f"{_ratio(base, ours)} | {note} |"
        )
    out += [
        "",
        "Baselines, measured in the same run against the same etcd and Docker engine:",
        "",
        "- **Latency**: the seed's way, one `etcdctl put` per container start (its "
        "`ExecStartPre=`) and one `etcdctl del` per die (its `ExecStop=`), each in its own "
        "process, driven by `docker events` (`bench/seed-follow.sh`) so that both are timed "
        "from the same Docker events.",
        "- **Cold start**: one `etcdctl put` per running container, 8 at a time "
        "(`bench/seed-coldstart.sh`).",
        "- **Steady state**: the CoreOS TTL-loop unit, one per registration, "
        f"`etcdctl lease grant {plan['ttl_loop_ttl']}` + `etcdctl put --lease` every "
        f"{plan['ttl_loop_period']} s (`bench/ttl-loop.sh`; etcd v3 has no per-key TTL, so a "
        "round is two writes), started at random phases and measured over "
        f"{loop['seconds']:.0f} s.",
        "",
        "## Latency",
        "",
        "From the container's `start` event (its `timeNano`, Docker's clock) to the moment the "
        "key reaches an etcd watcher on the prefix (a streaming `POST /v3/watch` read by its own "
        "process, stamped on arrival), and from `die` to the delete event. Containers die by "
        "themselves (PID 1 exits on SIGUSR1), so `die` is the first event that ends them. "
        f"{plan['sequential']} containers one after another (each waits for the previous key), "
        f"then {plan['bursts']} bursts of 20 started at once.",
        "",
        "| run | mode | n | register p50 | p95 | p99 | max | deregister p50 | p95 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for who, data in (("sidekick", lat), ("seed (etcdctl)", seed)):
        for mode in ("sequential", "burst", "all"):
            reg, dereg = data[mode]["register"], data[mode]["deregister"]
            missing = reg["missing"] + dereg["missing"]
            out.append(
                f"| {who} | {mode}{f' ({missing} missing)' if missing else ''} | {reg['n']} | "
                + " | ".join(_fmt(reg[k]) for k in ("p50", "p95", "p99", "max"))
                + " | "
                + " | ".join(_fmt(dereg[k]) for k in ("p50", "p95", "p99", "max"))
                + " |"
            )
    floor = []
    for who, data in (("sidekick", lat), ("seed", seed)):
        for mode in ("sequential", "burst"):
            d = data[mode].get("docker_delivery")
            a = data[mode].get("after_delivery")
            put = data[mode].get("etcd_put", {"p50": math.nan, "p99": math.nan})
            if d and a:
                floor.append(
                    f"| {who} | {mode} | {_fmt(put['p50'])} | {_fmt(put['p99'])} | "
                    f"{_fmt(d['start']['p50'])} | {_fmt(d['start']['p99'])} | "
                    f"{_fmt(a['register']['p50'])} | {_fmt(a['register']['p99'])} | "
                    f"{_fmt(d['die']['p50'])} | {_fmt(d['die']['p99'])} | "
                    f"{_fmt(a['deregister']['p50'])} | {_fmt(a['deregister']['p99'])} |"
                )
    if floor:
        out += [
            "",
            "Where the time goes. The floor under any agent has two parts. etcd's: a separate "
            "process put one key every 10 ms during the same rounds (`bench/probe.py`); the "
            "table gives how long those puts took. Docker's: how long after its `timeNano` the "
            "event reached a subscriber of the events API (a separate reader process, stamped "
            "on arrival). 'After it' is the latency minus Docker's share, per container: the "
            "agent's work, etcd's commit and the watch. The bursts start 20 containers at once "
            "on the machine below, and dockerd, containerd and runc then keep every CPU busy: "
            "etcd and the agent wait for a CPU like everything else.",
            "",
            "| run | mode | etcd put p50 | p99 | start: Docker p50 | p99 "
            "| register after it p50 | p99 "
            "| die: Docker p50 | p99 | deregister after it p50 | p99 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *floor,
        ]
    fsync = {
        mode: lat[mode].get("etcd_disk_p99_ms", {}).get("etcd_disk_wal_fsync_duration_seconds")
        for mode in ("sequential", "burst")
    }
    if all(v is not None for v in fsync.values()):
        out += [
            "",
            "What holds etcd up in the bursts: its disk, to which dockerd writes every new "
            "container's layers and files at the same time (etcd's own histogram of WAL "
            f"fsyncs, `etcd_disk_wal_fsync_duration_seconds`, puts their p99 at ≤ "
            f"{fsync['sequential']:g} ms one after another and ≤ {fsync['burst']:g} ms in the "
            "bursts), and the CPUs, busy with the starts. A write that arrives while another "
            "is committing waits for it, so the agent's worst cases are about two of etcd's.",
        ]
    out += [
        "",
        "All in milliseconds. The agent's CPU time over the whole latency phase was "
        f"{lat.get('agent_cpu_ms_per_event', math.nan):.2f} ms per start or die event "
        "(resyncs and keepalives included).",
    ]
    if plotted:
        out += ["", f"![latency distributions]({PLOT_NAME})"]
    out += [
        "",
        "## Cold start",
        "",
        "With N opted-in containers already running: from the moment `sidekick run` is spawned "
        "(interpreter start-up included) to the last of the N keys reaching the watcher. etcd "
        "requests are etcd's own `grpc_server_started_total` (all methods but Watch; the JSON "
        "gateway forwards every call to gRPC) before the start and 0.5 s after the last key.",
        "",
        "| N | seconds (runs) | first key (s) | agent's reconcile (s) | etcd requests "
        "| by method |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for n in sorted(cold, key=int):
        runs = cold[n]["runs"]
        out.append(
            f"| {n} | {', '.join(_fmt(r['seconds'], 3) for r in runs)} | "
            f"{_fmt(runs[0]['first_key_seconds'], 3)} | {_fmt(runs[0]['reconcile_seconds'], 3)} | "
            f"{cold[n]['requests']} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(runs[0]['by_method'].items()))} |"
        )
    out += [
        "",
        "## Steady state",
        "",
        f"{steady['registrations']} registrations held for {steady['seconds']:.0f} s at ttl 30 "
        f"(default keepalive every 10 s, resync every 60 s). etcd requests by method: "
        + ", ".join(f"{k} {v}" for k, v in sorted(steady["by_method"].items()))
        + f" ({steady['writes_in_window_per_min']:.1f} writes/min counted over the window; the "
        "table's rate is taken between the first and the last write seen, which does not depend "
        "on where the window falls between two keepalives)"
        + f". CPU is utime + stime from `/proc/<pid>/stat` over the window; RSS is `VmRSS`, "
        f"sampled every second (mean {steady['rss_mb_mean']:.1f} MB, max "
        f"{steady['rss_mb_max']:.1f} MB). TTL loops by method: "
        + ", ".join(f"{k} {v}" for k, v in sorted(loop["by_method"].items()))
        + ".",
        "",
        "## Recovery",
        "",
        f"etcd: {rec['etcd']['outage_seconds']} s outage (2 x ttl {rec['etcd']['ttl']}) while 5 "
        "of 20 containers die and 5 new ones start; timed from the moment etcd answers "
        f"`/health` again (it took {rec['etcd']['etcd_boot_seconds']:.2f} s to boot) until the "
        "prefix holds exactly the running containers' keys (polled every 5 ms). Docker: the "
        "agent talks to Docker through a unix-socket proxy that is cut for "
        f"{rec['docker']['cut_seconds']:g} s (the shared dockerd is not restarted) with the same "
        "churn; timed from the moment the socket accepts again. Runs (s): etcd "
        + ", ".join(_fmt(r["seconds"], 3) for r in rec["etcd"]["runs"])
        + "; Docker "
        + ", ".join(_fmt(r["seconds"], 3) for r in rec["docker"]["runs"])
        + ". The table gives the worst. Both wait on the agent's retry backoff "
        "(exponential from 50 ms with jitter, capped at min(2 s, ttl/3)), so a figure is "
        "anywhere from the reconcile time to that cap.",
        "",
        "## Running it",
        "",
        "```console",
        "$ ./bench/run            # full: 200 + 10x20 containers, 3 cold starts each, 5 min steady",
        "$ ./bench/run --quick    # 40 + 2x20 containers, 1 cold start each, 1 min steady",
        "$ ./bench/run --quick --profile .tmp/profile   # also py-spy profiles of the agent",
        "$ ./bench/run --resync-cost   # only the resync cost with other nodes' keys (below)",
        "```",
        "",
        "It needs what `scripts/test` needs (it installs the same packages and starts dockerd "
        "when none answers), starts its own etcd on a free loopback port with its own data dir, "
        "builds the busybox image offline, labels every container `sidekick.bench=<run id>` and "
        "removes them, and every process it started, at the end. The last line on stdout is one "
        "JSON object with the headline figures; the full results are in "
        "`.tmp/bench-results.json`.",
        "",
        "Headline of this run:",
        "",
        "```json",
        _json(line),
        "```",
        "",
    ]
    return "\n".join(out)


def _json(line: dict[str, Any]) -> str:
    return json.dumps(line, indent=1)


def plot(results: dict[str, Any], path: Path) -> bool:
    """ECDFs of registration and deregistration latency, sidekick and the baseline."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    styles = {
        ("latency", "sequential"): ("sidekick, one after another", "tab:blue", "-"),
        ("latency", "burst"): ("sidekick, bursts of 20", "tab:blue", "--"),
        ("latency_seed", "sequential"): ("etcdctl per event, one after another", "tab:red", "-"),
        ("latency_seed", "burst"): ("etcdctl per event, bursts of 20", "tab:red", "--"),
    }
    for ax, what, title in (
        (axes[0], "register_ms", "start event → key seen by a watcher"),
        (axes[1], "deregister_ms", "die event → delete seen by a watcher"),
    ):
        for (run, mode), (label, color, style) in styles.items():
            values = sorted(v for v in results[run][mode][what] if v > 0)
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(
                values,
                ys,
                where="post",
                label=f"{label} (n={len(values)})",
                color=color,
                linestyle=style,
            )
        for limit, text in ((5, "p50 target"), (15, "p99 target")):
            ax.axvline(limit, color="grey", linewidth=0.8, linestyle=":")
            ax.text(limit, 0.02, f" {text}", color="grey", fontsize=8, rotation=90)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of containers")
    axes[0].legend(loc="lower right", fontsize=8)
    quick = " (quick run)" if results["plan"]["quick"] else ""
    fig.suptitle(f"sidekick latency vs the seed's etcdctl per event{quick}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
