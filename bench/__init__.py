"""The benchmark harness (./bench/run); see bench/harness.py and docs/benchmarks.md."""
