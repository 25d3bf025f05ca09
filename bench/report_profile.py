"""The realistic section's tables of where the agent's CPU and import floor go, from what
bench/cpuprofile.py measured. Pure; runs on the bench's main thread."""

from __future__ import annotations

from typing import Any

THREAD_NAMES = {
    "MainThread": "main loop",
    "docker-events": "events reader",
    "look-ahead": "look-ahead helpers",
    "lease": "lease keeper",
}


def _ms(value: float) -> str:
    return f"{value:.2f}"


def cpu_markdown(profile: dict[str, Any] | None) -> list[str]:
    """The profiled round's table: CPU per container by thread, stage and call."""
    if not profile:  # a run before bench/agentprofile.py
        return []
    total = profile["cpu_ms"]
    rows, in_requests = [], 0.0
    for name, thread in profile["threads"].items():
        label = THREAD_NAMES.get(name, name)
        rows.append(
            f"| **{label}** | | | **{_ms(thread['cpu_ms'])}** | {thread['cpu_ms'] / total:.0%} |"
        )
        for stage, by_call in thread["stages"].items():
            for call, part in by_call.items():
                in_requests += part["cpu_ms"]
                rows.append(
                    f"| | {stage}{f': {call}' if call else ''} | {part['calls']:.2f} "
                    f"| {_ms(part['cpu_ms'])} | {part['cpu_ms'] / total:.0%} |"
                )
        rows.append(
            f"| | the rest (sidekick's own code) | | {_ms(thread['rest_ms'])} "
            f"| {thread['rest_ms'] / total:.0%} |"
        )
    return [
        "",
        f"**Where the agent's CPU goes**: one more round, {profile['containers']} containers one "
        "after another (the host-port kinds in turn, started and stopped as above; not timed), "
        "with the agent run by `python -m bench.agentprofile`: each thread's CPU from its own "
        "CPU clock, each stage's from `time.thread_time()` around its one entry point (a Docker "
        "request, an etcd request, the events stream's next event, a log line), so nothing "
        "slows the agent but two clock reads a call. Per container (a start and a stop): "
        f"{_ms(total)} ms over the threads (the process's utime + stime: "
        f"{_ms(profile['process_cpu_ms'])} ms). Docker and etcd requests, the events stream and "
        f"log lines take {in_requests / total:.0%} of it; the rest is sidekick's own code "
        "between them (routing events, plans, transaction payloads, metrics, the hand-off to "
        "the loop).",
        "",
        "| thread | stage: call | calls per container | CPU per container (ms) | share |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]


def memory_markdown(rows: list[dict[str, Any]] | None) -> list[str]:
    """The import floor by package, in the agent's import order."""
    if not rows:  # a run before import_floor_by_package()
        return []
    deps = rows[-2]["total_mb"] if len(rows) > 1 else rows[-1]["total_mb"]
    return [
        "",
        "**Where the import floor goes**: a fresh interpreter importing, in this order, what "
        "`sidekick run` imports (`bench/cpuprofile.py`), `Pss:` after each row; a module "
        "imported by an earlier row counts there. Before sidekick's own modules, the "
        f"interpreter and the dependencies come to {deps:.1f} MB.",
        "",
        "| imported | modules added | PSS added (MB) | PSS (MB) |",
        "|---|---:|---:|---:|",
        *(
            f"| {row['group']} | {row['modules']} | {row['pss_mb']:.1f} | {row['total_mb']:.1f} |"
            for row in rows
        ),
    ]


def cpu_note(profile: dict[str, Any] | None) -> str:
    """The headline CPU row's note: where a container's CPU goes, from the profiled round."""
    if not profile:
        return ""
    own = sum(thread["rest_ms"] for thread in profile["threads"].values())
    return (
        f"where it goes, per container (start and stop) in a profiled round: "
        f"{_ms(profile['cpu_ms'] - own)} ms in Docker and etcd requests, the events stream and "
        f"log lines, {_ms(own)} ms in sidekick's own code (section Realistic workloads)"
    )


def floor_note(rows: list[dict[str, Any]] | None) -> str:
    """The headline PSS row's note: the part of the floor that is not sidekick's code."""
    if not rows or len(rows) < 2:
        return ""
    return (
        f"; the interpreter and the dependencies before sidekick's own modules: "
        f"{rows[-2]['total_mb']:.1f} MB"
    )


def waits_per_container(profile: dict[str, Any] | None) -> tuple[float, float] | None:
    """Per container in the profiled round: events read, and Docker and etcd requests
    answered (each a wait the thread is woken from); None without a profile."""
    if not profile:
        return None
    events = requests = 0.0
    for thread in profile["threads"].values():
        for stage, by_call in thread["stages"].items():
            calls = sum(part["calls"] for part in by_call.values())
            if stage == "events stream":
                events += calls
            elif stage.endswith("requests"):
                requests += calls
    return events, requests


def wake_markdown(wake_us: float | None, profile: dict[str, Any] | None) -> list[str]:
    """What a wake-up costs on this host, and how many sidekick pays per container."""
    waits = waits_per_container(profile)
    if wake_us is None or waits is None:  # a run before bench/floor.py's wake_cpu_us
        return []
    events, requests = waits
    return [
        "",
        "**Why the CPU per start or stop is what it is**: on this host a thread woken from a "
        "blocking socket read by another process's write pays "
        f"{wake_us:.0f} µs of its own CPU each time (`bench/floor.py` `wake_cpu_us`: 200 "
        "lines 10 ms apart on a socket pair, measured after the rounds), in any language. "
        "Every event a registrar reads and every answer it waits for can be such a wake "
        "(events that come together are read at once). In the profiled round sidekick read "
        f"{events:.2f} events and waited on {requests:.2f} Docker and etcd answers per "
        f"container (a start and a stop): up to {events + requests:.1f} wakes, "
        f"{(events + requests) * wake_us / 1000:.2f} ms at that price before any code runs. "
        "The bare registrar follows at most four events and makes three requests a container.",
    ]
