"""bench/agentprofile.py, bench/cpuprofile.py and bench/report_profile.py: where the agent's
CPU and import floor go. Pure, but for the CPU clocks of real threads and a subprocess that
wraps the real sidekick classes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from bench import agentprofile, cpuprofile, report_profile


def test_thread_groups_join_numbered_helpers() -> None:
    assert agentprofile.thread_group("look-ahead-12") == "look-ahead"
    assert agentprofile.thread_group("docker-events") == "docker-events"
    assert agentprofile.thread_group("MainThread") == "MainThread"


def _burn(seconds: float) -> int:
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def test_stages_count_cpu_not_waiting() -> None:
    """A stage that burns CPU counts it; one that sleeps counts (almost) none; a stage
    inside another counts for the outer one only."""
    stages = agentprofile.Stages()
    burn = stages.timed("work", lambda seconds: "burn")(_burn)
    sleep = stages.timed("work", lambda seconds: "sleep")(time.sleep)
    outer = stages.timed("outer", lambda: "")(lambda: burn(0.02))

    def run() -> None:
        burn(0.05)
        sleep(0.2)
        outer()

    thread = threading.Thread(target=run, name="look-ahead-3")
    thread.start()
    thread.join()
    counts = stages.snapshot()
    burnt, calls = counts[("look-ahead-3", "work", "burn")]
    assert calls == 1 and 0.04 <= burnt < 0.2
    slept, _ = counts[("look-ahead-3", "work", "sleep")]
    assert slept < 0.02  # 0.2 s of waiting is not CPU
    assert counts[("look-ahead-3", "outer", "")][0] >= 0.015
    assert len(counts) == 3  # the burn inside `outer` was not counted again


def test_timed_iterator_counts_each_item() -> None:
    stages = agentprofile.Stages()

    def produce() -> object:
        for _ in range(3):
            _burn(0.01)
            yield 1

    assert list(stages.timed_iterator("events stream")(produce)()) == [1, 1, 1]
    seconds, calls = stages.snapshot()[(threading.current_thread().name, "events stream", "")]
    assert calls == 4  # three items and the end
    assert seconds >= 0.025


def test_thread_cpu_reads_other_threads_clocks() -> None:
    done = threading.Event()

    def busy() -> None:
        _burn(0.05)
        done.wait(10)

    thread = threading.Thread(target=busy, name="busy-1")
    thread.start()
    try:
        for _ in range(200):
            cpu = agentprofile.thread_cpu()
            if cpu.get(thread.ident or 0, ("", 0.0))[1] >= 0.04:
                break
            time.sleep(0.01)
        assert cpu[thread.ident or 0][0] == "busy-1"
        assert cpu[thread.ident or 0][1] >= 0.04
    finally:
        done.set()
        thread.join()


def test_report_is_the_window_per_thread_group() -> None:
    begin = (
        {1: ("MainThread", 1.0), 2: ("look-ahead-0", 0.5)},
        {("MainThread", "etcd requests", "/kv/txn"): [0.2, 4.0]},
    )
    end = (
        {1: ("MainThread", 1.6), 2: ("look-ahead-0", 0.7), 3: ("look-ahead-1", 0.1)},
        {
            ("MainThread", "etcd requests", "/kv/txn"): [0.5, 10.0],
            ("look-ahead-0", "docker requests", "inspect"): [0.1, 2.0],
            ("look-ahead-1", "docker requests", "inspect"): [0.05, 1.0],
        },
    )
    report = agentprofile.report(begin, end)
    assert report["MainThread"]["cpu_s"] == pytest.approx(0.6)
    assert report["MainThread"]["stages"]["etcd requests"]["/kv/txn"] == pytest.approx([0.3, 6.0])
    assert report["look-ahead"]["cpu_s"] == pytest.approx(0.3)  # 0.2 + a thread born in it
    assert report["look-ahead"]["stages"]["docker requests"]["inspect"] == pytest.approx(
        [0.15, 3.0]
    )


def test_per_container_and_its_table() -> None:
    groups = {
        "docker-events": {"cpu_s": 0.3, "stages": {"events stream": {"": [0.2, 70.0]}}},
        "MainThread": {
            "cpu_s": 0.6,
            "stages": {
                "etcd requests": {"/kv/txn": [0.2, 20.0]},
                "docker requests": {"list": [0.1, 10.0]},
            },
        },
    }
    out = cpuprofile.per_container(groups, 10)
    assert list(out["threads"]) == ["MainThread", "docker-events"]  # most CPU first
    main = out["threads"]["MainThread"]
    assert main["cpu_ms"] == pytest.approx(60.0)
    assert main["stages"]["etcd requests"]["/kv/txn"] == pytest.approx(
        {"cpu_ms": 20.0, "calls": 2.0}
    )
    assert main["rest_ms"] == pytest.approx(30.0)
    assert out["cpu_ms"] == pytest.approx(90.0)
    out["process_cpu_ms"] = 95.0
    table = "\n".join(report_profile.cpu_markdown(out))
    assert "| **main loop** | | | **60.00** | 67% |" in table
    assert "| | etcd requests: /kv/txn | 2.00 | 20.00 | 22% |" in table
    assert "| | events stream | 7.00 | 20.00 | 22% |" in table
    assert "| | the rest (sidekick's own code) | | 30.00 | 33% |" in table
    assert "take 56% of it" in table  # (20 + 10 + 20) / 90
    assert report_profile.cpu_markdown(None) == []


def test_memory_table() -> None:
    rows = [
        {"group": "the interpreter", "pss_mb": 7.0, "modules": 40, "total_mb": 7.0},
        {"group": "requests", "pss_mb": 9.0, "modules": 200, "total_mb": 16.0},
        {"group": "sidekick's own", "pss_mb": 3.0, "modules": 30, "total_mb": 19.0},
    ]
    table = "\n".join(report_profile.memory_markdown(rows))
    assert "| requests | 200 | 9.0 | 16.0 |" in table
    assert "come to 16.0 MB" in table
    assert report_profile.memory_markdown(None) == []


def test_import_floor_by_package_adds_up() -> None:
    rows = cpuprofile.import_floor_by_package()
    assert [r["group"] for r in rows] == [g for g, _ in cpuprofile.IMPORT_GROUPS]
    assert sum(r["pss_mb"] for r in rows) == pytest.approx(rows[-1]["total_mb"])
    by_group = {r["group"]: r for r in rows}
    assert by_group["docker (docker-py)"]["modules"] > 10
    assert rows[-1]["total_mb"] > rows[0]["total_mb"]


def test_import_floor_by_package_loads_what_the_agent_loads() -> None:
    """The groups, imported as the measurement imports them, load the agent's modules: the
    same libraries, and none of what sidekick/__init__.py leaves out."""
    measured = set(cpuprofile._measure_import_groups()["modules"])
    code = "import sys, sidekick.cli; print(' '.join(sorted(sys.modules)))"
    agent = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        ).stdout.split()
    )
    assert "etcd3gw.client" in agent and "asyncio" not in agent
    own = {"importlib", "types", "warnings"}  # the measurement's own imports
    assert measured - own == agent - own


def test_instrument_wraps_the_real_entry_points() -> None:
    """The wrapped names exist in sidekick and structlog as they are (a rename fails here,
    not silently in the bench)."""
    code = (
        "import sidekick\n"
        "from bench import agentprofile\n"
        "agentprofile.instrument(agentprofile.Stages())\n"
        "import structlog._base\n"
        "from sidekick.docker_source import DockerSource\n"
        "from sidekick.gateway import Gateway\n"
        "for f in (DockerSource._call, DockerSource._follow, Gateway._post,\n"
        "          structlog._base.BoundLoggerBase._proxy_to_logger):\n"
        "    assert hasattr(f, '__wrapped__'), f\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_headline_notes() -> None:
    profile = cpuprofile.per_container(
        {
            "MainThread": {"cpu_s": 0.6, "stages": {"etcd requests": {"/kv/txn": [0.2, 20.0]}}},
            "docker-events": {"cpu_s": 0.2, "stages": {"events stream": {"": [0.1, 70.0]}}},
        },
        10,
    )
    note = report_profile.cpu_note(profile)
    assert "30.00 ms in Docker and etcd requests" in note  # (0.2 + 0.1) s / 10 containers
    assert "50.00 ms in sidekick's own code" in note  # (0.4 + 0.1) s / 10
    assert report_profile.cpu_note(None) == ""
    rows = [
        {"group": "the interpreter", "pss_mb": 7.0, "modules": 40, "total_mb": 7.0},
        {"group": "sidekick's own", "pss_mb": 3.0, "modules": 30, "total_mb": 10.0},
    ]
    assert report_profile.floor_note(rows).endswith("sidekick's own modules: 7.0 MB")
    assert report_profile.floor_note(None) == ""
