"""bench/inside.py: stage times from two scrapes of the agent's histograms (pure)."""

from __future__ import annotations

import math

import pytest

from bench.inside import beyond_bounds, median, parse, quantile, stages

BEFORE = """
# HELP sidekick_etcd_request_seconds Time an etcd request took
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.001"} 1.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.002"} 1.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.005"} 2.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="+Inf"} 2.0
sidekick_etcd_request_seconds_count{call="kv/txn"} 2.0
sidekick_etcd_request_seconds_sum{call="kv/txn"} 0.004
sidekick_etcd_request_seconds_count{call="lease/keepalive"} 9.0
sidekick_docker_event_lag_seconds_bucket{le="0.001"} 0.0
sidekick_docker_event_lag_seconds_bucket{le="+Inf"} 0.0
sidekick_docker_event_lag_seconds_count 0.0
sidekick_docker_event_lag_seconds_sum 0.0
"""
AFTER = """
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.001"} 1.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.002"} 3.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="0.005"} 6.0
sidekick_etcd_request_seconds_bucket{call="kv/txn",le="+Inf"} 6.0
sidekick_etcd_request_seconds_count{call="kv/txn"} 6.0
sidekick_etcd_request_seconds_sum{call="kv/txn"} 0.016
sidekick_docker_event_lag_seconds_bucket{le="0.001"} 3.0
sidekick_docker_event_lag_seconds_bucket{le="+Inf"} 4.0
sidekick_docker_event_lag_seconds_count 4.0
sidekick_docker_event_lag_seconds_sum 0.0042
"""


def test_parse_keeps_labels_without_le():
    snapshot = parse(AFTER)
    txn = snapshot[("sidekick_etcd_request_seconds", 'call="kv/txn"')]
    assert (txn["count"], txn["sum"]) == (6.0, 0.016)
    assert txn["buckets"] == {0.001: 1.0, 0.002: 3.0, 0.005: 6.0, math.inf: 6.0}
    assert snapshot[("sidekick_docker_event_lag_seconds", "")]["count"] == 4.0


def test_stages_are_the_differences():
    """The round's 4 txns: 2 in (1, 2] ms and 2 in (2, 5] ms: mean 3 ms, median 2 ms."""
    out = stages(parse(BEFORE), parse(AFTER))
    assert out["etcd txn"]["n"] == 4
    assert out["etcd txn"]["mean_ms"] == pytest.approx(3.0)
    assert out["etcd txn"]["p50_ms"] == pytest.approx(2.0)
    assert out["etcd txn"]["p99_ms"] == pytest.approx(2 + 3 * 1.96 / 2)  # rank 3.96 in (2, 5]
    assert out["event lag"]["n"] == 4
    assert out["event lag"]["mean_ms"] == pytest.approx(1.05)
    assert out["event lag"]["p50_ms"] == pytest.approx(2 / 3)  # 2 of 3 within (0, 1] ms
    # 3 of the 4 lags within 1 ms, the fourth beyond the last bound: p99 is that bound, a floor
    assert (out["event lag"]["p99_ms"], out["event lag"]["p99_open"]) == (1.0, 1.0)
    assert out["etcd txn"]["p99_open"] == 0.0
    assert out["docker list"]["n"] == 0 and math.isnan(out["docker list"]["mean_ms"])


def test_median_interpolates_and_handles_the_open_bucket():
    assert median({0.001: 0.0, 0.002: 10.0, math.inf: 10.0}) == pytest.approx(0.0015)
    assert median({0.001: 1.0, math.inf: 5.0}) == pytest.approx(0.001)  # beyond the last bound
    assert math.isnan(median({}))


def test_quantile_interpolates_in_its_bucket_and_floors_the_open_one():
    """100 samples: 90 within 1 ms, 9 in (1, 10] ms, 1 beyond 10 ms."""
    buckets = {0.001: 90.0, 0.01: 99.0, math.inf: 100.0}
    assert quantile(buckets, 0.9) == pytest.approx(0.001)
    assert quantile(buckets, 0.95) == pytest.approx(0.001 + 0.009 * 5 / 9)
    assert quantile(buckets, 0.995) == pytest.approx(0.01)  # in the open bucket: its floor
    assert math.isnan(quantile({}, 0.99))
    # a rank at the top of a bucket with an empty one after it: that top, not the next one's
    assert quantile({0.001: 50.0, 0.002: 50.0, 0.005: 100.0}, 0.5) == pytest.approx(0.001)


def test_beyond_bounds_only_when_the_rank_falls_in_the_open_bucket():
    buckets = {0.001: 90.0, 0.01: 99.0, math.inf: 100.0}
    assert not beyond_bounds(buckets, 0.99)  # the 99th sample is within 10 ms
    assert beyond_bounds(buckets, 0.995)
    assert not beyond_bounds({}, 0.99)
