"""The realistic workloads' rows as the report and `./bench/run --realistic` show them, from a
results dict alone (no Docker, no etcd, no timing): the container-address kind has rows of its
own beside the host-port kinds and stays out of their "all"; the Go registrar's round sits
beside sidekick's row by row, or is said not to have been measured."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import gobaseline, harness, realistic, report
from bench.common import host_busy_percent, host_cpu_ticks, summary
from bench.floor import wake_cpu_us

HOST_KINDS = ["port", "health", "stopsignal"]


def _row(register: list[float], wrong: int = 0, missing: int = 0) -> dict[str, Any]:
    kill = [v + 1 for v in register]
    return {
        "register": summary(register, missing),
        "deregister_from_kill": summary(kill),
        "deregister_from_die": summary([-v for v in register]),
        "register_ms": register,
        "deregister_from_kill_ms": kill,
        "wrong_values": wrong,
        "wrong_examples": [f"/bench/real/x-{i}" for i in range(wrong)],
    }


def _mode() -> dict[str, Any]:
    return {
        "port": _row([1.0, 2.0]),
        "health": {**_row([2.0, 3.0]), "start_to_healthy": summary([300.0])},
        "stopsignal": _row([1.5, 2.5]),
        "all": _row([1.0, 1.5, 2.0, 2.0, 2.5, 3.0]),
        "container": _row([7.0, 9.0], wrong=1, missing=2),
    }


def _realistic() -> dict[str, Any]:
    burst = {**_mode(), "etcd_put": summary([1.0, 4.0])}
    return {
        "plan": {
            "sequential": 30,
            "bursts": 2,
            "running_per_kind": 10,
            "address_sequential": 10,
            "address_bursts": 1,
            "kinds": HOST_KINDS,
            "burst": 20,
            "drain_seconds": 0.3,
            "ready_seconds": 0.3,
            "health_interval_ms": 100,
            "stop_timeout": 10,
            "images": {},
            "address": {
                "kind": "container",
                "network": "skb-b0-addr",
                "labels": {"sidekick.address": "container", "sidekick.network": "skb-b0-addr"},
            },
        },
        "sequential": _mode(),
        "burst": burst,
        "all": _row([1.0, 2.0, 3.0]),
        "agent_cpu_ms_per_event": 0.5,
        "address_agent_cpu_ms_per_event": 0.75,
        "running": {
            "containers": 30,
            "by_kind_count": dict.fromkeys(HOST_KINDS, 10),
            "health_healthy_before_start": True,
            "complete": True,
            "seconds": 1.2,
            "first_key_seconds": 0.9,
            "seconds_by_kind": dict.fromkeys(HOST_KINDS, 1.2),
            "wrong_values": 0,
            "wrong_examples": [],
            "idle_pss_mb": 25.0,
            "idle_rss_mb": 30.0,
            "registrations": 30,
        },
        "import_floor": {"pss_mb": 20.0, "rss_mb": 24.0},
    }


def _before_the_container_kind() -> dict[str, Any]:
    """Results saved by a run before the container-address kind existed."""
    real = _realistic()
    del real["plan"]["address"], real["address_agent_cpu_ms_per_event"]
    for mode in ("sequential", "burst"):
        del real[mode]["container"]
        for kind in (*HOST_KINDS, "all"):
            del real[mode][kind]["wrong_values"], real[mode][kind]["wrong_examples"]
    return real


def _table_kinds(real: dict[str, Any]) -> list[tuple[str, str]]:
    lines = report.realistic_markdown({"realistic": real})
    rows = [line for line in lines if line.startswith(("| sequential ", "| burst "))]
    return [(cells[1].strip(), cells[2].strip()) for cells in (r.split("|") for r in rows)]


def test_the_container_row_sits_after_the_host_port_mix():
    kinds = _table_kinds(_realistic())
    expected = [*HOST_KINDS, "all", "container address (2 missing, 1 wrong)"]
    assert kinds == [("sequential", k) for k in expected] + [("burst", k) for k in expected]


def test_the_section_says_what_the_container_kind_is():
    text = "\n".join(report.realistic_markdown({"realistic": _realistic()}))
    assert "`sidekick.address=container`, `sidekick.network=skb-b0-addr`" in text
    assert "not in **all**" in text
    assert "(0.75 ms over the container address rounds)" in text


def test_results_before_the_container_kind_still_render():
    kinds = _table_kinds(_before_the_container_kind())
    assert kinds == [(m, k) for m in ("sequential", "burst") for k in (*HOST_KINDS, "all")]


def test_the_headline_is_the_host_port_mix_and_the_container_kind_is_apart():
    real = _realistic()
    line = harness.realistic_headline(real)
    assert line["register_p50_ms"] == real["all"]["register"]["p50"]  # 2.0: not the 7-9 ms
    assert line["realistic_samples"] == 3
    assert line["container_address_register_sequential_p50_ms"] == 8.0
    assert line["container_address_samples"] == 4
    assert line["container_address_missing"] == 4
    assert line["container_address_wrong"] == 2
    older = harness.realistic_headline(_before_the_container_kind())
    assert not any(k.startswith("container_address") for k in older)
    assert {k: v for k, v in line.items() if not k.startswith("container_address")} == older


def test_print_summary_has_the_container_rows(capsys: pytest.CaptureFixture[str]):
    realistic.print_summary(_realistic())
    err = capsys.readouterr().err.splitlines()
    container = [line for line in err if " container " in line and "register n=" in line]
    assert len(container) == 2
    assert all("n=2 miss=2" in line and "wrong values 1" in line for line in container)
    assert any("sidekick.address=container on skb-b0-addr" in line for line in err)


def _with_floor() -> dict[str, Any]:
    real = _realistic()
    real["floor"] = {
        "delivery": {"p50": 0.5},
        "listing": {"p50": 1.5},
        "put": {"p50": 2.0},
        "p50_sum": 4.0,
    }
    return real


def test_the_floor_says_where_a_registration_goes():
    real = _with_floor()
    lines = report.realistic_markdown({"realistic": real})
    row = lines[lines.index("|---:|---:|---:|---:|---:|---:|") + 1]
    own = real["sequential"]["all"]["register"]["p50"] - 4.0
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["0.5", "1.5", "2.0", "4.0"]
    assert row.rstrip(" |").endswith(report._fmt(own))
    assert harness.realistic_headline(real)["register_sequential_floor_p50_ms"] == 4.0
    assert "register_sequential_floor_p50_ms" not in harness.realistic_headline(_realistic())
    assert not any(
        "time goes" in line for line in report.realistic_markdown({"realistic": _realistic()})
    )


def test_inside_the_agent_rows_when_the_run_has_them():
    real = _realistic()
    assert not any(
        "Inside the agent" in line for line in report.realistic_markdown({"realistic": real})
    )
    real["inside"] = {  # a run before the p99s: n/a there, and no tail paragraph
        "event lag": {"n": 240.0, "p50_ms": 0.4, "mean_ms": 0.9},
        "docker list": {"n": 30.0, "p50_ms": 1.6, "mean_ms": float("nan")},
    }
    lines = report.realistic_markdown({"realistic": real})
    header = "|---|---|---:|---:|---:|---:|"
    rows = lines[lines.index(header) + 1 :][:3]
    assert rows == [
        "| one after another | event lag | 240 | 0.4 | n/a | 0.9 |",
        "| one after another | docker list | 30 | 1.6 | n/a | n/a |",
        "",
    ]
    assert not any("bursts' tail" in line for line in lines)

    real["inside_burst"] = {
        "event lag": {"n": 80.0, "p50_ms": 0.9, "p99_ms": 40.0, "mean_ms": 5.0},
        "docker list": {"n": 20.0, "p50_ms": 3.0, "p99_ms": 60.0, "mean_ms": 9.0},
    }
    lines = report.realistic_markdown({"realistic": real})
    rows = lines[lines.index(header) + 1 :][:4]
    assert rows[2:] == [
        "| bursts | event lag | 80 | 0.9 | 40.0 | 5.0 |",
        "| bursts | docker list | 20 | 3.0 | 60.0 | 9.0 |",
    ]
    tail = next(line for line in lines if "bursts' tail" in line)
    register_p99 = report._fmt(real["burst"]["all"]["register"]["p99"])
    assert "in the bursts: event lag 40.0 ms, docker list 60.0 ms; one after another: " in tail
    assert f"The registrations' p99 in the bursts was {register_p99} ms" in tail

    real["inside_burst"]["docker list"].update(p99_ms=5000.0, p99_open=1.0)  # beyond the bounds
    lines = report.realistic_markdown({"realistic": real})
    assert "| bursts | docker list | 20 | 3.0 | > 5000 | 9.0 |" in lines
    assert "docker list > 5000 ms" in next(line for line in lines if "bursts' tail" in line)
    assert "bounds above 10 ms are 25, 50, 100, 250, 1000 and 5000 ms" in "".join(lines)


def _go_round() -> dict[str, Any]:
    """The Go registrar's results: the host-port rounds and already running, no container kind."""
    mode = {k: v for k, v in _mode().items() if k != "container"}
    mode["all"] = _row([0.5, 1.0], wrong=1)
    return {
        "measured": True,
        "go_version": "go version go1.19.8 linux/amd64",
        "source": "bench/goregistrar/main.go",
        "binary_bytes": 7_000_000,
        "sequential": mode,
        "burst": {**mode, "all": _row([4.0, 6.0]), "etcd_put": summary([1.0])},
        "all": _row([0.5, 1.0, 4.0, 6.0]),
        "agent_cpu_ms_per_event": 0.125,
        "agent_idle_cpu_ms_per_s": 0.07,
        "host_busy_percent": {"sequential": 21.4, "burst": 88.6},
        "running": {
            **_realistic()["running"],
            "seconds": 0.25,
            "idle_pss_mb": 4.5,
            "host_busy_percent": 40.2,
        },
    }


def _with_go(measured: bool = True) -> dict[str, Any]:
    real = _realistic()
    real["go_registrar"] = (
        _go_round() if measured else {"measured": False, "reason": "no Go toolchain"}
    )
    return real


def _side_by_side(lines: list[str]) -> dict[str, list[str]]:
    start = lines.index("| | sidekick | Go registrar |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, *cells = (c.strip() for c in line.strip("|").split("|"))
        rows[label] = cells
    return rows


def test_the_go_registrar_sits_beside_sidekick_row_by_row():
    rows = _side_by_side(report.realistic_markdown({"realistic": _with_go()}))
    assert rows["Registration p50, one after another, all (ms)"] == ["2.0", "0.8"]
    assert rows["Registration p50, one after another, health (ms)"] == ["2.5", "2.5"]
    assert rows["Registration p99, one after another, health (ms)"] == ["3.0", "3.0"]
    assert rows["Registration p99, bursts of 20, all (ms)"] == ["3.0", "6.0"]
    assert rows["Withdrawal p50 from the stop's `kill`, all (ms)"] == ["3.0", "3.5"]
    assert rows["Withdrawal p99 from the stop's `kill`, all (ms)"] == ["4.0", "6.9"]
    assert rows["Already running: 30 containers, every key (s)"] == ["1.200", "0.250"]
    assert rows["Idle PSS with 30 registrations (MB)"] == ["25.0", "4.5"]
    assert rows["CPU per container start or stop, less idle (ms)"] == ["0.50", "0.12"]
    # wrong values: sequential all + burst all + already running
    assert rows["Keys put with a wrong value"] == ["0", "1"]
    # a run from before the host's busy share was measured says so (sidekick's round here)
    assert rows["CPU idle, before the rounds (ms a second)"] == ["n/a", "0.07"]
    assert rows["Host CPU busy, one after another (% of every CPU)"] == ["n/a", "21"]
    assert rows["Host CPU busy, bursts (%)"] == ["n/a", "89"]
    assert rows["Host CPU busy, already running, until every key (%)"] == ["n/a", "40"]
    # (all + 3 kinds) x 2, burst, 3 withdrawal, running, PSS, CPU, 2 counts, idle, 3 host busy
    assert len(rows) == 21


def test_a_go_registrar_not_measured_is_said_and_shows_no_figure():
    lines = report.realistic_markdown({"realistic": _with_go(measured=False)})
    said = [line for line in lines if "Beside a Go registrar" in line]
    assert len(said) == 1 and "not measured in this run (no Go toolchain)" in said[0]
    assert "| | sidekick | Go registrar |" not in lines
    assert report.go_comparison(_with_go(measured=False)) == []
    assert harness.realistic_headline(_with_go(measured=False))["go_registrar_measured"] is False


def test_a_run_before_the_go_round_has_no_go_section_nor_keys():
    real = _realistic()
    lines = report.realistic_markdown({"realistic": real})
    assert not any("Go registrar" in line for line in lines)
    assert not any(k.startswith("go_") for k in harness.realistic_headline(real))


def test_the_headline_has_the_go_figures_apart():
    real = _with_go()
    line = harness.realistic_headline(real)
    assert line["go_registrar_measured"] is True
    assert line["go_register_sequential_p50_ms"] == 0.75
    assert line["go_register_burst_p99_ms"] == 5.98
    assert line["go_idle_pss_mb"] == 4.5
    assert line["go_wrong"] == 1
    assert line["go_samples"] == 4
    # sidekick's own figures are those of the run without the Go round
    without = harness.realistic_headline(_realistic())
    assert {k: v for k, v in line.items() if not k.startswith("go_")} == without


def test_print_summary_has_the_go_rows_and_the_side_by_side(capsys: pytest.CaptureFixture[str]):
    realistic.print_summary(_with_go())
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "] go sequential " in line]) == 4
    assert len([line for line in err if "] go burst " in line]) == 4
    assert any("side by side" in line for line in err)
    pss = [line for line in err if "Idle PSS with 30 registrations" in line]
    assert len(pss) == 1 and pss[0].split()[-3:] == ["25.0", "|", "4.5"]
    realistic.print_summary(_with_go(measured=False))
    assert "go registrar baseline: NOT measured (no Go toolchain)" in capsys.readouterr().err


def test_without_go_the_build_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(gobaseline, "find_go", lambda: None)
    built = gobaseline.build(tmp_path)
    assert built.binary is None and "no Go toolchain" in built.reason
    assert not list(tmp_path.iterdir())


def test_the_headline_takes_the_go_registrar_as_the_realistic_baseline():
    """With a measured Go round, the realistic headline rows carry its figures as their
    baseline; without one, none."""
    for real, expected in ((_with_go(), True), (_with_go(measured=False), False)):
        rows: dict[str, Any] = {}

        def add(name: str, ours: Any, target: Any, base: Any, **_: Any) -> None:
            rows[name] = base  # noqa: B023 - used at once, inside this iteration

        report._agent_rows({"realistic": real}, add, report.TARGETS)
        p50 = rows["Registration p50, realistic, one after another (ms)"]
        if expected:
            assert p50 == real["go_registrar"]["sequential"]["all"]["register"]["p50"]
            assert rows["Idle PSS with 30 registrations (MB)"] == 4.5
        else:
            assert set(rows.values()) == {None}


def test_the_cpu_row_says_what_the_bare_registrar_used_when_it_was_measured():
    """The CPU target's row sets sidekick's one-after-another CPU beside the bare Python
    registrar's (the requests alone); no such words without a measured bare round."""
    name = "Agent CPU per container start or stop, realistic, less idle (ms)"
    for measured in (True, False):
        notes: dict[str, str] = {}

        def add(row: str, *_: Any, note: str = "", **__: Any) -> None:
            notes[row] = note  # noqa: B023 - used at once, inside this iteration

        report._agent_rows({"realistic": _with_bare(measured=measured)}, add, report.TARGETS)
        said = "nothing else) used 1.23 ms (sidekick 2.50)"
        if measured:
            assert "one after another, the bare registrar in Python" in notes[name]
            assert notes[name].endswith(said)
        else:
            assert "bare registrar" not in notes[name]


def test_host_busy_percent_sees_this_process_burn_a_cpu():
    """The host's busy share over a window in which this process keeps one CPU busy: at least
    the share of one CPU among them all, give or take the clock's tick."""
    since = host_cpu_ticks()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pass
    busy = host_busy_percent(since)
    assert 100 / os.cpu_count() * 0.6 <= busy <= 100  # type: ignore[operator]


def _with_bare(measured: bool = True, go: bool = True) -> dict[str, Any]:
    real = _with_go(measured=go)
    real["floor"] = _with_floor()["floor"]
    real["agent_cpu_ms_per_event_sequential"] = 2.5
    real["host_busy_percent"] = {"sequential": 30.0, "burst": 50.0}
    if go:
        real["go_registrar"]["agent_cpu_ms_per_event_sequential"] = 0.9
        for kind, values in (("port", [0.2, 0.4]), ("stopsignal", [0.6, 0.8])):
            real["go_registrar"]["sequential"][kind] = _row(values)
    mode = {k: _row([v, v + 1]) for k, v in (("port", 3), ("health", 4), ("stopsignal", 5))}
    real["bare_registrar"] = (
        {
            "measured": True,
            "source": "bench/bareregistrar.py",
            "agent_idle_cpu_ms_per_s": 0.01,
            "host_busy_percent": {"sequential": 23.4},
            "agent_cpu_ms_per_event_sequential": 1.234,
            "sequential": {**mode, "all": _row([3.0, 4.0, 5.0, 6.0], wrong=2)},
        }
        if measured
        else {"measured": False, "reason": "the registrar exited (/bench/barereal)"}
    )
    return real


def _bare_table(lines: list[str]) -> list[list[str]]:
    start = lines.index(
        "| registrar | port p50 | health p50 | stopsignal p50 | all p50 | all p99 "
        "| CPU per start or stop (ms) | host busy (%) |"
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_bare_registrar_sits_beside_sidekick_and_go_by_kind(
    capsys: pytest.CaptureFixture[str],
):
    assert _bare_table(report.realistic_markdown({"realistic": _with_bare()})) == [
        ["sidekick", "1.5", "2.5", "2.0", "2.0", "3.0", "2.50", "30"],
        ["bare registrar (Python)", "3.5", "4.5", "5.5", "4.5", "6.0", "1.23", "23"],
        ["Go registrar", "0.3", "2.5", "0.7", "0.8", "1.0", "0.90", "21"],
    ]
    without_go = report.realistic_markdown({"realistic": _with_bare(go=False)})
    assert [row[0] for row in _bare_table(without_go)] == ["sidekick", "bare registrar (Python)"]
    line = harness.realistic_headline(_with_bare())
    assert line["bare_registrar_measured"] is True
    assert (line["bare_register_port_p50_ms"], line["bare_register_all_p50_ms"]) == (3.5, 4.5)
    assert (line["bare_cpu_ms_per_event"], line["bare_wrong"]) == (1.234, 2)
    assert not any(k.startswith("bare_") for k in harness.realistic_headline(_realistic()))
    before = report.realistic_markdown({"realistic": _with_floor()})  # a run before it
    assert not any(x.startswith("| registrar |") for x in before)
    realistic.print_summary(_with_bare())
    err = capsys.readouterr().err
    assert "bare registrar, one after another: port n=2 miss=0 p50=3.5" in err
    assert "cpu per start or stop 1.23 ms less idle" in err


def test_a_bare_registrar_that_failed_is_said_and_shows_no_figure(
    capsys: pytest.CaptureFixture[str],
):
    lines = report.realistic_markdown({"realistic": _with_bare(measured=False)})
    said = [line for line in lines if "bare registrar" in line and "not measured" in line]
    assert said == [
        "The bare registrar (`bench/bareregistrar.py`) was not measured: the registrar exited "
        "(/bench/barereal)."
    ]
    assert not any(x.startswith("| registrar |") for x in lines)
    assert (
        harness.realistic_headline(_with_bare(measured=False))["bare_registrar_measured"] is False
    )
    realistic.print_summary(_with_bare(measured=False))
    assert "bare registrar: NOT measured (the registrar exited" in capsys.readouterr().err


def _profile() -> dict[str, Any]:
    """A profiled round's shape (bench/cpuprofile.py): two threads, events and requests."""

    def part(cpu: float, calls: float) -> dict[str, float]:
        return {"cpu_ms": cpu, "calls": calls}

    return {
        "containers": 30,
        "cpu_ms": 4.0,
        "process_cpu_ms": 4.1,
        "threads": {
            "docker-events": {
                "cpu_ms": 3.0,
                "stages": {
                    "events stream": {"": part(1.0, 7.0)},
                    "docker requests": {"list": part(0.5, 1.0)},
                    "etcd requests": {"/kv/txn": part(1.0, 2.0)},
                    "log lines": {"": part(0.2, 2.0)},
                },
                "rest_ms": 0.3,
            },
            "look-ahead": {
                "cpu_ms": 1.0,
                "stages": {"docker requests": {"inspect": part(0.7, 1.0)}},
                "rest_ms": 0.3,
            },
        },
    }


def test_the_price_of_a_wake_and_the_wakes_per_container():
    """The wake's price (bench/floor.py) times the events read and requests waited on per
    container in the profiled round (log lines are not waits); no sentence without either."""
    real = _with_bare()
    real["cpu_profile"] = _profile()
    real["wake_cpu_us"] = 102.6
    lines = report.realistic_markdown({"realistic": real})
    (said,) = [line for line in lines if line.startswith("**Why the CPU per start or stop")]
    assert "pays 103 µs of its own CPU each time" in said
    assert "read 7.00 events and waited on 4.00 Docker and etcd answers per container" in said
    assert "up to 11.0 wakes, 1.13 ms at that price" in said
    assert harness.realistic_headline(real)["wake_cpu_us"] == 102.6
    del real["wake_cpu_us"]  # a run before it
    lines = report.realistic_markdown({"realistic": real})
    assert not [line for line in lines if line.startswith("**Why the CPU")]
    assert "wake_cpu_us" not in harness.realistic_headline(real)


def test_a_wake_costs_cpu_on_the_reading_thread():
    """Measured, not typed: positive, and far below the 5 ms between wakes (a reader that
    spun would pay about that)."""
    price = wake_cpu_us(wakes=20, gap=0.005)
    assert 0 < price < 2500
