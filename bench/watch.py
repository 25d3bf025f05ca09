"""An etcd watcher that timestamps every event on arrival, run as its own process.

    python -m bench.watch http://127.0.0.1:PORT /prefix/ MAX_SECONDS

It opens one streaming POST to /v3/watch on the prefix (a raw HTTP/1.1 socket, so nothing
buffers between the kernel and the clock), and prints one JSON line per event:
{"t": <time.time_ns() when the bytes arrived>, "type": "PUT"|"DELETE", "key", "value", "rev"},
after a first line {"ready": true} once etcd has created the watch. It is a separate process
so that the harness's own threads (starting containers, reading Docker events) cannot delay the
timestamps by holding the GIL. It exits when etcd closes the stream or after MAX_SECONDS.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _emit(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _messages(body: bytearray) -> list[bytes]:
    """Complete newline-delimited messages taken off the front of body."""
    lines = []
    while (end := body.find(b"\n")) >= 0:
        line = bytes(body[:end]).strip()
        del body[: end + 1]
        if line:
            lines.append(line)
    return lines


def _handle(line: bytes, now: int) -> None:
    message = json.loads(line)
    result = message.get("result") or {}
    if message.get("error"):
        _emit({"error": message["error"]})
        return
    if result.get("created"):
        _emit({"ready": True, "t": now})
    for event in result.get("events") or []:
        kv = event.get("kv") or {}
        _emit(
            {
                "t": now,
                "type": event.get("type", "PUT"),
                "key": _unb64(kv.get("key", "")),
                "value": _unb64(kv.get("value", "")),
                "rev": int(kv.get("mod_revision", 0)),
            }
        )


def follow(
    sock: socket.socket, request: bytes, handle: Callable[[bytes, int], None], max_seconds: float
) -> int:
    """Send request, then feed each newline-delimited message of the chunked answer to handle
    with the time.time_ns() at which its last bytes arrived. 0 when the server ends it."""
    sock.sendall(request)
    sock.settimeout(1.0)
    deadline = time.monotonic() + max_seconds
    raw = bytearray()  # bytes not yet de-chunked
    body = bytearray()  # de-chunked bytes not yet split into messages
    headers_done = False
    data_left = 0  # bytes of chunk data still to come
    crlf_left = 0  # bytes of the CRLF after the chunk data still to come
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return 1
        now = time.time_ns()
        if not data:
            return 0
        raw += data
        if not headers_done:
            head_end = raw.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(raw[:head_end]).decode("latin-1")
            del raw[: head_end + 4]
            if " 200 " not in head.split("\r\n", 1)[0] or "chunked" not in head.lower():
                _emit({"error": head.split("\r\n", 1)[0]})
                return 1
            headers_done = True
            _emit({"connected": True, "t": now})
        while raw:
            if data_left:
                take = min(data_left, len(raw))
                body += raw[:take]
                del raw[:take]
                data_left -= take
                continue
            if crlf_left:
                take = min(crlf_left, len(raw))
                del raw[:take]
                crlf_left -= take
                continue
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(bytes(raw[:line_end]).split(b";")[0], 16)
            del raw[: line_end + 2]
            if size == 0:
                return 0
            data_left, crlf_left = size, 2
        for line in _messages(body):
            handle(line, now)
    return 0


def watch(url: str, prefix: str, max_seconds: float) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 2379
    end = bytearray(prefix.encode())
    end[-1] += 1
    body = json.dumps(
        {"create_request": {"key": _b64(prefix.encode()), "range_end": _b64(bytes(end))}}
    ).encode()
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body)) + body
    )
    return follow(sock, request, _handle, max_seconds)


def main() -> int:
    url, prefix = sys.argv[1], sys.argv[2]
    max_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3 * 3600
    try:
        return watch(url, prefix, max_seconds)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
