"""Counters, gauges and histograms, and their Prometheus text (format 0.0.4).

The little of prometheus_client the agent and the renderer use, without its import cost: the
same metric names, types, label order, suffixes (`_total`; `_bucket`, `_count`, `_sum`) and
number format as it writes, but no `_created` samples.

Runs on: any thread. The main loop, the Docker events reader, the lease thread and the
look-ahead helpers update; the metrics server's threads read. Each value has its own lock.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Self

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INF = float("inf")
DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, INF,
)  # fmt: skip

Labels = dict[str, str]
Sample = tuple[str, Labels, float]  # name (with its suffix), labels, value


def format_float(value: float) -> str:
    """A value or bucket bound as Go writes it (`1.0`, `0.005`, `+Inf`, `1.5e+07`)."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go turns to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: Labels) -> str:
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + pairs + "}" if pairs else ""


class _Metric:
    """A metric with no labels is its own value; one with labels holds a child per label
    values (labels()), and only the children are exposed."""

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: Registry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()  # the value's, or (labelled) the children's
        self._children: dict[tuple[str, ...], Self] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object) -> Self:
        """The child for these label values (in labelnames' order), made on first use."""
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if not key or len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {values!r}")
            with self._lock:
                child = self._children.setdefault(key, self._child())
        return child

    def _child(self) -> Self:
        return type(self)(self.name, self.documentation)

    def _unlabelled(self) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use labels()")

    def _values(self) -> Iterator[Sample]:
        """(suffix, extra labels, value) of this value's samples."""
        raise NotImplementedError

    def samples(self) -> Iterator[Sample]:
        """(name, labels, value) of each sample, as exposed."""
        with self._lock:
            children = list(self._children.items()) if self.labelnames else [((), self)]
        for key, child in children:
            labels = dict(zip(self.labelnames, key, strict=True))
            for suffix, extra, value in child._values():
                yield self.name + suffix, labels | extra, value

    def expose(self) -> str:
        """The `# HELP`, `# TYPE` and sample lines."""
        name = self.name + "_total" if self.kind == "counter" else self.name
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines = [f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n"]
        for sample, labels, value in self.samples():
            lines.append(f"{sample}{_label_text(labels)} {format_float(value)}\n")
        return "".join(lines)


class Counter(_Metric):
    """Only goes up; exposed as NAME_total."""

    kind = "counter"
    _value = 0.0

    def inc(self, amount: float = 1) -> None:
        self._unlabelled()
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up, not by {amount}")
        with self._lock:
            self._value += amount

    def _values(self) -> Iterator[Sample]:
        yield "_total", {}, self._value


class Gauge(_Metric):
    """A value set (one store: no lock needed), or read from a function at each scrape."""

    kind = "gauge"
    _value = 0.0
    _function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._unlabelled()
        self._value = float(value)

    def set_to_current_time(self) -> None:
        self.set(time.time())

    def set_function(self, function: Callable[[], float]) -> None:
        """From now on the value is float(function()), called by each scrape's thread."""
        self._unlabelled()
        self._function = function

    def _values(self) -> Iterator[Sample]:
        function = self._function
        yield "", {}, float(function()) if function is not None else self._value


class Histogram(_Metric):
    """Observations counted in buckets (upper bounds; +Inf added), exposed cumulative."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: Registry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets not in order: {buckets}")
        self.bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self._sum = 0.0
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> Self:
        return type(self)(self.name, self.documentation, buckets=self.bounds)

    def observe(self, amount: float) -> None:
        self._unlabelled()
        bucket = bisect.bisect_left(self.bounds, amount)  # the first bound >= amount
        with self._lock:
            self._counts[bucket] += 1
            self._sum += amount

    def _values(self) -> Iterator[Sample]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = 0.0
        for bound, count in zip(self.bounds, counts, strict=True):
            cumulative += count
            yield "_bucket", {"le": format_float(bound)}, cumulative
        yield "_count", {}, cumulative
        yield "_sum", {}, total


class Registry:
    """The metrics one /metrics serves, in the order they were made."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"{metric.name} is registered already")
        self._metrics[metric.name] = metric

    def samples(self) -> Iterator[Sample]:
        for metric in list(self._metrics.values()):
            yield from metric.samples()

    def get_sample_value(self, name: str, labels: Labels | None = None) -> float | None:
        """One sample's value (e.g. `sidekick_errors_total`, {"peer": "etcd", ...}), or None."""
        wanted = labels or {}
        return next((v for n, ls, v in self.samples() if n == name and ls == wanted), None)

    def expose(self) -> bytes:
        """The text a scrape gets (CONTENT_TYPE)."""
        return "".join(m.expose() for m in list(self._metrics.values())).encode()
