"""Inside the agent: where its registration time goes, from its own metrics.

The agent times every Docker and etcd request by call and each event's lag from dockerd's time
(sidekick.metrics). The bench scrapes its /metrics before and after a round and, from the
differences, gives each stage's count, mean and median (the median interpolated within the
histogram's buckets). Pure, but for scrape(); runs on the bench's main thread.
"""

from __future__ import annotations

import math
import re
import socket
from typing import Any

import requests

# (stage, metric, labels): what a `-p 80` start costs inside the agent, in order
STAGES = (
    ("event lag", "sidekick_docker_event_lag_seconds", ""),
    ("docker list", "sidekick_docker_request_seconds", 'call="list"'),
    ("etcd txn", "sidekick_etcd_request_seconds", 'call="kv/txn"'),
)
# (results key, the rounds' name): where bench/realistic.py keeps each round's stages
ROUNDS = (("inside", "one after another"), ("inside_burst", "bursts"))
_SAMPLE = re.compile(r"^(\w+?)(_bucket|_sum|_count)\{?([^}]*)\}? (\S+)$")

Snapshot = dict[tuple[str, str], dict[str, Any]]  # (metric, labels) -> sum, count, buckets


def parse(text: str) -> Snapshot:
    """The histograms in Prometheus text: (name, labels without `le`) -> sum, count, buckets."""
    out: Snapshot = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, part, labels, value = match.groups()
        le = re.search(r'(?:^|,)le="([^"]+)"', labels)
        labels = re.sub(r',?le="[^"]+"', "", labels).strip(",")
        entry = out.setdefault((name, labels), {"sum": 0.0, "count": 0.0, "buckets": {}})
        if part == "_bucket" and le is not None:
            entry["buckets"][float(le.group(1))] = float(value)
        elif part in {"_sum", "_count"}:
            entry[part[1:]] = float(value)
    return out


def scrape(url: str) -> Snapshot:
    """The agent's histograms now (url: its --metrics-address, http://HOST:PORT)."""
    return parse(requests.get(url + "/metrics", timeout=5).text)


def quantile(buckets: dict[float, float], q: float) -> float:
    """The q-quantile (0 < q < 1) of cumulative bucket counts (upper bound -> count),
    interpolated linearly within its bucket; the last finite bound when it falls in the open
    bucket (a floor, not the value); nan with no sample."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank, lower, below = total * q, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def beyond_bounds(buckets: dict[float, float], q: float) -> bool:
    """Whether the q-quantile falls in the open bucket, where quantile() gives only a floor."""
    finite = [bound for bound in buckets if not math.isinf(bound)]
    total = max(buckets.values(), default=0.0)
    return bool(finite) and total > 0 and buckets[max(finite)] < total * q


def median(buckets: dict[float, float]) -> float:
    """The median of cumulative bucket counts (see quantile)."""
    return quantile(buckets, 0.5)


def stages(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Each stage's count, mean, median and p99 (ms) over what happened between the snapshots;
    p99_open (1.0 or 0.0): the p99 is beyond the last bound, and p99_ms is that bound."""
    out = {}
    for stage, name, labels in STAGES:
        empty: dict[str, Any] = {"sum": 0.0, "count": 0.0, "buckets": {}}
        a, b = before.get((name, labels), empty), after.get((name, labels), empty)
        count = b["count"] - a["count"]
        buckets = {le: n - a["buckets"].get(le, 0.0) for le, n in b["buckets"].items()}
        out[stage] = {
            "n": count,
            "mean_ms": (b["sum"] - a["sum"]) / count * 1000 if count else math.nan,
            "p50_ms": median(buckets) * 1000,
            "p99_ms": quantile(buckets, 0.99) * 1000,
            "p99_open": float(beyond_bounds(buckets, 0.99)),
        }
    return out


def free_port() -> int:
    """A loopback port free now, for the agent's --metrics-address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
