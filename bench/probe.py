"""A loopback etcd put every few milliseconds, timed, in a process of its own.

    python -m bench.probe http://127.0.0.1:PORT KEY INTERVAL_MS MAX_SECONDS

Prints one JSON line per put: {"t": <time.time_ns() when sent>, "ms": <until etcd answered>},
after {"ready": true}. Run beside the agent during the latency phase, it shows what one etcd
write costs on the machine at that moment: the part of any agent's latency that is etcd's
(its commit, its fsync, its share of the CPU), whatever the agent does.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

from bench.watch import _emit


def main() -> int:
    url, key, interval_ms, max_seconds = sys.argv[1:5]
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    body = json.dumps(
        {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(b"probe").decode(),
        }
    )
    deadline = time.monotonic() + float(max_seconds)
    _emit({"ready": True})
    while time.monotonic() < deadline:
        sent = time.time_ns()
        started = time.perf_counter()
        connection.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        connection.getresponse().read()
        _emit({"t": sent, "ms": (time.perf_counter() - started) * 1000})
        time.sleep(float(interval_ms) / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
