"""sidekick.prom: the text it exposes reads back through prometheus_client's own parser, and is
the text prometheus_client itself writes for the same metrics (less its `_created` samples)."""

from __future__ import annotations

import math
import re
import threading
import time

import prometheus_client
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from sidekick import prom
from sidekick.metrics import Metrics, MetricsServer, RenderMetrics

BUCKETS = (0.0005, 0.001, 0.0075, 0.25, 1, 5)
AWKWARD = 'a "quoted"\\ back\nslash'  # every character the text format escapes


def _families(registry: prom.Registry) -> dict[str, prometheus_client.Metric]:
    return {f.name: f for f in text_string_to_metric_families(registry.expose().decode())}


def _without_created(text: str) -> str:
    """prometheus_client's text less its `_created` families, which sidekick.prom leaves out."""

    def name(line: str) -> str:
        return line.split(" ")[2] if line.startswith("#") else re.split("[{ ]", line)[0]

    return "".join(n for n in text.splitlines(keepends=True) if not name(n).endswith("_created"))


def _fill(lib, registry) -> None:
    """The same metrics and updates in prometheus_client (lib) or sidekick.prom."""
    lib.Counter("c", "A counter.", registry=registry).inc(3)
    lib.Gauge("g", "A gauge\\ with\nnewline.", registry=registry).set(-2.5)
    h = lib.Histogram("h", "A histogram.", registry=registry)
    lc = lib.Counter("lc", "Labelled.", ["peer", "kind"], registry=registry)
    lc.labels("etcd", "ConnectionError").inc()
    lc.labels("docker", AWKWARD).inc(2.5)
    lc.labels("etcd", "Timeout")  # made, never counted: exposed as 0
    lg = lib.Gauge("lg", "Labelled gauge.", ["peer"], registry=registry)
    lg.labels("etcd").set(1)
    lg.labels("docker").set_function(lambda: True)
    lh = lib.Histogram("lh", "Labelled histogram.", ["call"], buckets=BUCKETS, registry=registry)
    lib.Counter("empty", "Labelled, no child yet.", ["x"], registry=registry)
    for value in (0.0001, 0.0005, 0.004, 0.2, 0.25, 3, 100, 12345678.9):
        h.observe(value)
        lh.labels("kv/txn").observe(value)
    lh.labels("inspect").observe(0.001)


def test_text_is_prometheus_clients() -> None:
    ours = prom.Registry()
    _fill(prom, ours)
    theirs = prometheus_client.CollectorRegistry()
    _fill(prometheus_client, theirs)
    expected = _without_created(prometheus_client.generate_latest(theirs).decode())
    assert ours.expose().decode() == expected
    assert "_created" not in ours.expose().decode()


def test_text_reads_back() -> None:
    """Names, types, help, labels (escaped) and values through prometheus_client's parser."""
    registry = prom.Registry()
    _fill(prom, registry)
    families = _families(registry)
    assert {n: f.type for n, f in families.items()} == {
        "c": "counter",
        "g": "gauge",
        "h": "histogram",
        "lc": "counter",
        "lg": "gauge",
        "lh": "histogram",
        "empty": "counter",
    }
    assert families["g"].documentation == "A gauge\\ with\nnewline."
    assert [(s.name, s.value) for s in families["c"].samples] == [("c_total", 3.0)]
    assert [(s.labels, s.value) for s in families["lc"].samples] == [
        ({"peer": "etcd", "kind": "ConnectionError"}, 1.0),
        ({"peer": "docker", "kind": AWKWARD}, 2.5),
        ({"peer": "etcd", "kind": "Timeout"}, 0.0),
    ]
    assert [(s.labels, s.value) for s in families["lg"].samples] == [
        ({"peer": "etcd"}, 1.0),
        ({"peer": "docker"}, 1.0),
    ]
    assert families["empty"].samples == []
    assert "# HELP empty_total Labelled, no child yet.\n# TYPE empty_total counter\n" in (
        registry.expose().decode()
    )


def test_histogram_buckets_are_cumulative() -> None:
    registry = prom.Registry()
    _fill(prom, registry)
    samples = [s for s in _families(registry)["lh"].samples if s.labels["call"] == "kv/txn"]
    buckets = [(s.labels["le"], s.value) for s in samples if s.name == "lh_bucket"]
    assert buckets == [
        ("0.0005", 2.0),  # an observation on a bound counts in its bucket
        ("0.001", 2.0),
        ("0.0075", 3.0),
        ("0.25", 5.0),
        ("1.0", 5.0),
        ("5.0", 6.0),
        ("+Inf", 8.0),
    ]
    rest = {s.name: s.value for s in samples if s.name != "lh_bucket"}
    assert rest == {"lh_count": 8.0, "lh_sum": pytest.approx(12345783.1546)}
    default = [s.labels["le"] for s in _families(registry)["h"].samples if s.name == "h_bucket"]
    assert default[0] == "0.005" and default[-1] == "+Inf" and len(default) == 15


@pytest.mark.parametrize(
    "value",
    [0, 1, -3, 0.005, 0.0075, 2.5, 1e-7, 1234567.0, 12345678.9, 1e7, 1e22, math.inf, -math.inf],
)
def test_numbers_as_prometheus_client_writes_them(value: float) -> None:
    assert prom.format_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_nan() -> None:
    assert prom.format_float(math.nan) == "NaN"


def test_get_sample_value() -> None:
    registry = prom.Registry()
    _fill(prom, registry)
    sample = registry.get_sample_value
    assert sample("c_total") == 3.0
    assert sample("g") == -2.5
    assert sample("lc_total", {"peer": "docker", "kind": AWKWARD}) == 2.5
    assert sample("lc_total", {"peer": "etcd", "kind": "Timeout"}) == 0.0
    assert sample("lc_total", {"peer": "etcd"}) is None  # labels must match exactly
    assert sample("lh_bucket", {"call": "inspect", "le": "0.001"}) == 1.0
    assert sample("h_count") == 8.0
    assert sample("c") is None
    assert sample("nothing") is None


def test_gauge_time_and_function() -> None:
    gauge = prom.Gauge("t", "Time.")
    before = time.time()
    gauge.set_to_current_time()
    assert before <= next(gauge.samples())[2] <= time.time()
    value = [1.5]
    gauge.set_function(lambda: value[0])
    value[0] = 7.0
    assert list(gauge.samples()) == [("t", {}, 7.0)]


def test_mistakes_are_refused() -> None:
    registry = prom.Registry()
    counter = prom.Counter("c", "C.", ["op"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels("put", "extra")
    with pytest.raises(ValueError, match="use labels"):
        counter.inc()
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("put").inc(-1)
    with pytest.raises(ValueError, match="registered already"):
        prom.Gauge("c", "Again.", registry=registry)
    with pytest.raises(ValueError, match="labels"):
        prom.Gauge("plain", "No labels.").labels("x")
    with pytest.raises(ValueError, match="in order"):
        prom.Histogram("h", "H.", buckets=(1, 0.5))


def test_updates_from_many_threads_are_all_counted() -> None:
    counter = prom.Counter("c", "C.", ["op"])
    histogram = prom.Histogram("h", "H.", ["call"], buckets=BUCKETS)
    threads, rounds = 8, 5000

    def work() -> None:
        for i in range(rounds):
            counter.labels("put").inc()
            histogram.labels(f"call-{i % 3}").observe(0.001)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert next(counter.samples())[2] == threads * rounds
    counts = [v for n, _, v in histogram.samples() if n == "h_count"]
    assert sum(counts) == threads * rounds and len(counts) == 3


def test_agent_and_renderer_metrics_parse() -> None:
    """Every metric of Metrics and RenderMetrics, as prometheus_client reads them."""
    for registry in (Metrics().registry, RenderMetrics().registry):
        families = _families(registry)
        assert families and all(f.documentation for f in families.values())
    metrics = Metrics()
    assert metrics.registry.get_sample_value("sidekick_etcd_writes_total", {"op": "put"}) == 0
    metrics.docker_request("inspect", 0.002)
    assert (
        metrics.registry.get_sample_value(
            "sidekick_docker_request_seconds_bucket", {"call": "inspect", "le": "0.002"}
        )
        == 1
    )


def test_server_answers_with_the_text_format() -> None:
    metrics = Metrics()
    metrics.registrations.set(4)
    server = MetricsServer(("127.0.0.1", 0), metrics.registry, lambda: (True, "ok"))
    server.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.stop()
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.content == metrics.registry.expose()
    assert "sidekick_registrations 4.0\n" in answer.text
