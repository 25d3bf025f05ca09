"""monitoring/: the Prometheus rules and the Grafana dashboard against what sidekick exports.

A real agent (`sidekick run`, on the test's etcd and the host's Docker) and a real renderer
(`sidekick render`) are started with --metrics-address and their /metrics scraped. Every
series the promtool test feeds the rules is one of those scraped samples, by name and labels
(with values of the test's choosing, plus the job and instance labels Prometheus adds), so a
metric renamed or relabelled in sidekick fails here. `promtool test rules` (Debian's
`prometheus` package) then shows each alert firing when it should and no alert on a healthy
node. Every metric name that a rule or a dashboard query reads must be in the scraped text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import EtcdServer, free_port, missing, stop_process, wait_for
from tests.lb import RenderProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "prometheus" / "sidekick-rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "sidekick-dashboard.json"
# Names Prometheus makes itself, not an exporter: the scrape's health.
PROMETHEUS_OWN = {"up"}
AGENT = {"job": "sidekick", "instance": "node1:9476"}
RENDER = {"job": "sidekick-render", "instance": "lb1:9477"}
STEP = 15  # seconds between samples and between rule evaluations


# -- what a live agent and renderer export -----------------------------------------------------

Sample = tuple[str, dict[str, str]]


def parse(text: str) -> tuple[set[str], list[Sample]]:
    """(every metric name the text declares or has a sample of, the samples' names and labels).
    A counter declared without samples yet (errors before the first error) counts by its
    # TYPE line; a histogram's TYPE names its _bucket, _count and _sum series."""
    names: set[str] = set()
    samples: list[Sample] = []
    for line in text.splitlines():
        if typed := re.match(r"# TYPE (\S+) (\S+)", line):
            name, kind = typed.groups()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        elif line and not line.startswith("#"):
            found = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ", line)
            assert found, line
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
            names.add(found.group(1))
            samples.append((found.group(1), labels))
    return names, samples


class Scraped:
    """The /metrics texts of one live agent and one live renderer."""

    def __init__(self, agent: str, render: str) -> None:
        self.texts = {"sidekick": agent, "sidekick-render": render}
        self.names: set[str] = set()
        self.samples: dict[str, list[Sample]] = {}
        for job, text in self.texts.items():
            names, samples = parse(text)
            self.names |= names
            self.samples[job] = samples

    def series(
        self, target: dict[str, str], name: str, values: str, **labels: str
    ) -> dict[str, str]:
        """A promtool input series: the scraped sample `name` whose labels include `labels`,
        with `target`'s job and instance added. Fails when no live sample matches."""
        for sample, have in self.samples[target["job"]]:
            if sample == name and labels.items() <= have.items():
                full = {**have, **target}
                selector = ",".join(f'{k}="{v}"' for k, v in sorted(full.items()))
                return {"series": f"{name}{{{selector}}}", "values": values}
        raise AssertionError(
            f"no sample {name}{labels or ''} in a live {target['job']}'s /metrics; "
            f"it has: {sorted({s for s, _ in self.samples[target['job']]})}"
        )


@pytest.fixture(name="scraped")
def _scraped(agent_factory: Any, live_etcd: EtcdServer, scope: str, tmp_path: Path) -> Scraped:
    agent_address = f"127.0.0.1:{free_port()}"
    agent_factory("--metrics-address", agent_address)
    agent_url = f"http://{agent_address}/metrics"
    wait_for(
        lambda: 'sidekick_peer_up{peer="docker"} 1.0' in requests.get(agent_url, timeout=5).text,
        message="the agent's events stream open",
    )
    render_address = f"127.0.0.1:{free_port()}"
    (tmp_path / "render-env").touch()
    renderer = RenderProcess(
        [
            "--etcd-endpoints",
            live_etcd.url,
            "--prefix",
            f"/{scope}",
            "--environment-file",
            str(tmp_path / "render-env"),
            "--log-format",
            "json",
            "--dest",
            str(tmp_path / "nginx.conf"),
            "--metrics-address",
            render_address,
        ],
        tmp_path / "render.log",
    ).start()
    try:
        render_url = f"http://{render_address}/metrics"

        def rendered() -> str:
            try:
                text = requests.get(render_url, timeout=5).text
            except requests.ConnectionError:
                return ""
            return text if re.search(r"^sidekick_renders_total 1\.0$", text, re.M) else ""

        render_text = wait_for(rendered, timeout=30, message="the renderer's first file")
        return Scraped(requests.get(agent_url, timeout=5).text, render_text)
    finally:
        stop_process(renderer.process)


# -- the rules under promtool ----------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("no promtool: apt-get install --no-install-recommends prometheus")
    assert path is not None
    return path


def rules() -> dict[str, dict[str, Any]]:
    """Each alerting rule by its name."""
    loaded = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in loaded["groups"] for r in g["rules"] if "alert" in r}


def fired(alert: str, **labels: str) -> dict[str, Any]:
    """promtool's expected alert: the rule's own labels, the series' labels and the rule's
    annotations as they read with those labels ({{ $labels.NAME }} is all they use)."""
    rule = rules()[alert]
    every = {**labels, **rule.get("labels", {})}

    def expand(text: str) -> str:
        assert re.sub(r"\{\{ \$labels\.\w+ \}\}", "", text).count("{{") == 0, text
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    annotations = {k: expand(v) for k, v in rule.get("annotations", {}).items()}
    return {"exp_labels": every, "exp_annotations": annotations}


def healthy_series(s: Scraped, minutes: int) -> list[dict[str, str]]:
    """A healthy agent and renderer for `minutes`: keepalives on time, both peers up, no
    stall, a reconcile a minute, nothing refused or failing."""
    n = minutes * 60 // STEP
    return [
        {"series": f'up{{instance="{AGENT["instance"]}",job="sidekick"}}', "values": f"1x{n}"},
        {
            "series": f'up{{instance="{RENDER["instance"]}",job="sidekick-render"}}',
            "values": f"1x{n}",
        },
        s.series(AGENT, "sidekick_last_keepalive_timestamp_seconds", f"0+{STEP}x{n}"),
        s.series(AGENT, "sidekick_lease_ttl_seconds", f"60x{n}"),
        s.series(AGENT, "sidekick_peer_up", f"1x{n}", peer="etcd"),
        s.series(AGENT, "sidekick_peer_up", f"1x{n}", peer="docker"),
        s.series(AGENT, "sidekick_docker_stalled_seconds", f"0x{n}"),
        s.series(AGENT, "sidekick_clashes_total", f"0x{n}"),
        s.series(AGENT, "sidekick_lease_regrants_total", f"0x{n}"),
        s.series(AGENT, "sidekick_reconcile_duration_seconds_count", f"0+0.25x{n}"),
        s.series(AGENT, "sidekick_thread_restarts_total", f"0x{n}", thread="docker-events"),
        s.series(RENDER, "sidekick_render_refused", f"0x{n}"),
        s.series(RENDER, "sidekick_render_reload_failing", f"0x{n}"),
        s.series(RENDER, "sidekick_peer_up", f"1x{n}", peer="etcd"),
    ]


def replace(series: list[dict[str, str]], new: dict[str, str]) -> list[dict[str, str]]:
    """`series` with the one of the same selector as `new` swapped for it."""
    assert any(x["series"] == new["series"] for x in series), new["series"]
    return [new if x["series"] == new["series"] else x for x in series]


def none_fire(at: str) -> list[dict[str, Any]]:
    return [{"eval_time": at, "alertname": name, "exp_alerts": []} for name in rules()]


def scenarios(s: Scraped) -> list[dict[str, Any]]:
    """promtool test groups: a healthy node fires nothing, then each failure its alert."""
    base = healthy_series(s, 25)
    at = {"instance": AGENT["instance"], "job": "sidekick"}
    lb = {"instance": RENDER["instance"], "job": "sidekick-render"}
    tests: list[dict[str, Any]] = [{"input_series": base, "alert_rule_test": none_fire("20m")}]

    def case(changes: list[dict[str, str]], checks: list[dict[str, Any]]) -> None:
        series = base
        for change in changes:
            series = replace(series, change)
        tests.append({"input_series": series, "alert_rule_test": checks})

    # Keepalives stop at 5 min (the TTL is 60 s here): 2/3 of the TTL (40 s) later the lease
    # is about to lapse; a TTL and the rule's minute later it is missing.
    case(
        [s.series(AGENT, "sidekick_last_keepalive_timestamp_seconds", "0+15x20 300x80")],
        [
            {"eval_time": "5m", "alertname": "SidekickLeaseAboutToLapse", "exp_alerts": []},
            {
                "eval_time": "345s",
                "alertname": "SidekickLeaseAboutToLapse",
                "exp_alerts": [fired("SidekickLeaseAboutToLapse", **at)],
            },
            {"eval_time": "345s", "alertname": "SidekickLeaseMissing", "exp_alerts": []},
            {
                "eval_time": "8m",
                "alertname": "SidekickLeaseMissing",
                "exp_alerts": [fired("SidekickLeaseMissing", **at)],
            },
            {"eval_time": "8m", "alertname": "SidekickLeaseAboutToLapse", "exp_alerts": []},
        ],
    )
    # The down and failing states from 2.5 min on, each for the rule's `for`.
    for job, name, labels, alert, target in (
        ("up", "up", {}, "SidekickDown", at),
        ("agent", "sidekick_peer_up", {"peer": "etcd"}, "SidekickEtcdUnreachable", at),
        ("render", "sidekick_peer_up", {"peer": "etcd"}, "SidekickEtcdUnreachable", lb),
        ("agent", "sidekick_peer_up", {"peer": "docker"}, "SidekickDockerEventsDown", at),
        ("agent", "sidekick_docker_stalled_seconds", {}, "SidekickDockerStalled", at),
        ("render", "sidekick_render_refused", {}, "SidekickRenderRefused", lb),
        ("render", "sidekick_render_reload_failing", {}, "SidekickRenderReloadFailing", lb),
    ):
        bad = "5" if alert == "SidekickDockerStalled" else "0"
        bad = "1" if alert.startswith("SidekickRender") else bad
        good = "0" if bad in {"1", "5"} else "1"
        values = f"{good}x10 {bad}x90"
        if job == "up":
            change = {
                "series": f'up{{instance="{AGENT["instance"]}",job="sidekick"}}',
                "values": values,
            }
        else:
            change = s.series(AGENT if job == "agent" else RENDER, name, values, **labels)
        case(
            [change],
            [
                {"eval_time": "2m", "alertname": alert, "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": alert,
                    "exp_alerts": [fired(alert, **{**labels, **target})],
                },
            ],
        )
    # One clash, one lease re-grant, one thread restart at 2.5 min: an alert while the
    # counter's rise is in the window, none after it.
    for name, labels, alert, quiet in (
        ("sidekick_clashes_total", {}, "SidekickClash", "14m"),
        ("sidekick_lease_regrants_total", {}, "SidekickLeaseRegranted", "19m"),
        (
            "sidekick_thread_restarts_total",
            {"thread": "docker-events"},
            "SidekickThreadRestarts",
            "19m",
        ),
    ):
        case(
            [s.series(AGENT, name, "0x10 1x90", **labels)],
            [
                {"eval_time": "2m", "alertname": alert, "exp_alerts": []},
                {
                    "eval_time": "4m",
                    "alertname": alert,
                    "exp_alerts": [fired(alert, **{**labels, **at})],
                },
                {"eval_time": quiet, "alertname": alert, "exp_alerts": []},
            ],
        )
    # Reconciles stop at 5 min: 10 minutes without one, then the rule's 5 minutes.
    case(
        [s.series(AGENT, "sidekick_reconcile_duration_seconds_count", "0+0.25x20 5x80")],
        [
            {"eval_time": "14m", "alertname": "SidekickReconcileFailing", "exp_alerts": []},
            {
                "eval_time": "21m",
                "alertname": "SidekickReconcileFailing",
                "exp_alerts": [fired("SidekickReconcileFailing", **at)],
            },
        ],
    )
    for test in tests:
        test["interval"] = f"{STEP}s"
    return tests


class TestRules:
    """monitoring/prometheus/sidekick-rules.yml under `promtool test rules`."""

    def test_each_alert_fires_on_live_series(self, scraped: Scraped, tmp_path: Path) -> None:
        """Series named and labelled as a live agent and renderer export them: a healthy node
        fires nothing; each failure fires its alert (and only when it should)."""
        tests = scenarios(scraped)
        tested = {
            c["alertname"] for t in tests[1:] for c in t["alert_rule_test"] if c["exp_alerts"]
        }
        assert tested == set(rules()), f"alerts never shown firing: {set(rules()) - tested}"
        spec = tmp_path / "sidekick-rules.test.yml"
        spec.write_text(
            yaml.safe_dump(
                {"rule_files": [str(RULES)], "evaluation_interval": f"{STEP}s", "tests": tests},
                sort_keys=False,
            )
        )
        checked = subprocess.run(
            [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        proc = subprocess.run(
            [promtool(), "test", "rules", str(spec)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout, proc.stdout

    def test_a_renamed_metric_fails(self, scraped: Scraped) -> None:
        """The series come from the scrape: a name the agent does not export is refused."""
        with pytest.raises(AssertionError, match="no sample sidekick_clash_total"):
            scraped.series(AGENT, "sidekick_clash_total", "0x10")
        with pytest.raises(AssertionError, match="no sample sidekick_peer_up"):
            scraped.series(AGENT, "sidekick_peer_up", "0x10", peer="dockerd")


# -- every name a rule or a panel reads ------------------------------------------------------

FUNCTIONS_AND_KEYWORDS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right|bool|and|or|unless|offset)\b\s*(\([^)]*\))?"
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana's $variables taken out)."""
    text = re.sub(r"\$\{?\w+\}?", "", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = FUNCTIONS_AND_KEYWORDS.sub(" ", text)
    names = set()
    for found in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        rest = text[found.end() :].lstrip()
        if not rest.startswith("("):  # a function call
            names.add(found.group())
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_metric_names_parsed() -> None:
    """The name finder sees names, not functions, keywords, labels, ranges or variables."""
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{instance=~"$x"}'
        "[$__rate_interval]))) / on(instance) b_total > c * 2 / 3 and time() - d unless e"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d", "e"}
    assert metric_names("label_values(sidekick_peer_up, instance)") == {
        "sidekick_peer_up",
        "instance",
    }


class TestNamesExist:
    """Every metric a rule or a dashboard query reads is in a live agent's or renderer's
    /metrics (or is Prometheus' own `up`)."""

    def test_rules(self, scraped: Scraped) -> None:
        used = set().union(*(metric_names(r["expr"]) for r in rules().values()))
        assert used - PROMETHEUS_OWN <= scraped.names, used - PROMETHEUS_OWN - scraped.names
        assert {"sidekick_peer_up", "sidekick_render_refused"} <= used

    def test_dashboard(self, scraped: Scraped) -> None:
        used = set().union(*(metric_names(e) for e in dashboard_exprs()))
        used -= {"instance"}  # label_values(metric, instance): the label, not a metric
        assert used - PROMETHEUS_OWN <= scraped.names, used - PROMETHEUS_OWN - scraped.names
        # Every metric family the agent and the renderer export has a panel.
        families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in scraped.names}
        shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
        assert families - shown == set(), families - shown
