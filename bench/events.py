"""Docker's container events, stamped on arrival, in a process of their own.

    python -m bench.events /var/run/docker.sock LABEL=VALUE MAX_SECONDS

Reads GET /events (start, kill, die, stop and health_status of containers with that label) on
the unix socket and prints one JSON line per event: {"t": <time.time_ns() on arrival>, "id",
"action", "time_nano"}, after {"ready": true} once the engine has answered. Comparing "t" with
Docker's own "time_nano" gives how late the engine delivers an event to a subscriber: the floor
under any agent's latency.
"""

from __future__ import annotations

import json
import socket
import sys
from urllib.parse import quote

from bench.watch import _emit, follow


def _handle(line: bytes, now: int) -> None:
    raw = json.loads(line)
    actor = raw.get("Actor") or {}
    _emit(
        {
            "t": now,
            "id": str(actor.get("ID") or raw.get("id") or ""),
            "action": str(raw.get("Action") or raw.get("status") or ""),
            "time_nano": int(raw.get("timeNano") or 0),
        }
    )


def main() -> int:
    path, label = sys.argv[1], sys.argv[2]
    max_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3 * 3600
    actions = ["start", "kill", "die", "stop", "health_status"]
    filters = json.dumps({"type": ["container"], "event": actions, "label": [label]})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    request = f"GET /events?filters={quote(filters)} HTTP/1.1\r\nHost: docker\r\n\r\n".encode()
    try:
        return follow(sock, request, _handle, max_seconds)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
