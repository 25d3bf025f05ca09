"""sidekick.wire: requests' answers and errors on a lighter transport, against real servers
(a local HTTP server that counts connections, the test etcd and the Docker engine)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
import pytest
import requests

from sidekick.wire import WireAPIClient, WireSession


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        self.server.connections.add(self.client_address)  # type: ignore[attr-defined]
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            body = json.dumps({"path": self.path, "pad": "x" * 5000}).encode()
            for start in range(0, len(body), 1000):
                chunk = body[start : start + 1000]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            text = b'{"n": 1}\n{"n": 2}\n{"n"' + b": 3}\n"  # a document split across chunks
            for piece in (text[:9], text[9:20], text[20:]):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
            self.server.release.wait(30)  # type: ignore[attr-defined]  # then hang up
            return
        if self.path.startswith("/truncated"):  # a chunked answer cut before its end
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b'5\r\n{"a":\r\n')
            self.close_connection = True
            return
        if self.path.startswith("/close"):
            self._json(200, {"closing": True}, close=True)
            return
        if self.path.startswith("/missing"):
            self._json(404, {"message": "no such thing"})
            return
        self._json(200, {"path": self.path, "agent": self.headers.get("X-Test", "")})

    def do_POST(self) -> None:
        self.server.connections.add(self.client_address)  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", 0))
        self._json(200, {"echo": json.loads(self.rfile.read(length) or b"null")})

    def _json(self, code: int, document: object, close: bool = False) -> None:
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if close:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.connections = set()  # type: ignore[attr-defined]
    httpd.release = threading.Event()  # type: ignore[attr-defined]
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def _url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_one_kept_connection_for_many_calls(server):
    session = WireSession()
    for n in range(20):
        answer = session.get(_url(server, f"/n{n}"), params={"a": "b c"}, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["path"] == f"/n{n}?a=b+c"
    assert len(server.connections) == 1


def test_params_as_requests_encodes_them(server):
    session, plain = WireSession(), requests.Session()
    cases: list[dict[str, Any]] = [
        {"a": None, "b": ["x", "y z"]},
        {"filters": '{"id": ["1"]}', "all": True},
    ]
    for params in cases:
        ours = session.get(_url(server, "/p?q=1"), params=params, timeout=5).json()["path"]
        theirs = plain.get(_url(server, "/p?q=1"), params=params, timeout=5).json()["path"]
        assert ours == theirs


def test_post_json_and_headers(server):
    session = WireSession()
    session.headers["X-Test"] = "from-session"
    assert session.post(_url(server, "/"), json={"k": [1, 2]}, timeout=5).json() == {
        "echo": {"k": [1, 2]}
    }
    assert session.get(_url(server, "/h"), timeout=5).json()["agent"] == "from-session"
    dropped = session.get(_url(server, "/h"), headers={"X-Test": None}, timeout=5)
    assert dropped.json()["agent"] == ""


def test_chunked_answer_is_whole(server):
    answer = WireSession().get(_url(server, "/chunked"), timeout=5)
    assert answer.headers["Content-Type"] == "application/json"
    assert len(answer.json()["pad"]) == 5000


def test_a_closed_connection_is_replaced(server):
    session = WireSession()
    assert session.get(_url(server, "/close"), timeout=5).json() == {"closing": True}
    assert session.get(_url(server, "/after"), timeout=5).status_code == 200
    assert len(server.connections) == 2


def test_errors_are_requests_errors(server):
    session = WireSession()
    missing = session.get(_url(server, "/missing"), timeout=5)
    assert missing.status_code == 404
    with pytest.raises(requests.HTTPError):
        missing.raise_for_status()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_a_cut_answer_is_an_error_not_a_short_body(server):
    with pytest.raises(requests.ConnectionError):
        WireSession().get(_url(server, "/truncated"), timeout=5)


def test_a_silent_server_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(requests.Timeout):
            WireSession().get(url, timeout=0.5)


def test_a_stream_takes_requests_own_path(server):
    answer = WireSession().get(_url(server, "/s"), stream=True, timeout=5)
    assert answer.raw is not None  # urllib3's response: requests' path
    assert answer.json()["path"] == "/s"


@pytest.mark.integration
def test_etcd_answers_the_same(live_etcd):
    etcd = live_etcd
    url = f"{etcd.url}/v3/kv/range"
    payload = {"key": "L3dpcmU=", "range_end": "L3dpcmY="}
    plain = requests.Session()
    ours = WireSession()
    ours.post(f"{etcd.url}/v3/kv/put", json={"key": "L3dpcmUvYQ==", "value": "MQ=="}, timeout=5)
    theirs_answer = plain.post(url, json=payload, timeout=5).json()
    our_answer = ours.post(url, json=payload, timeout=5).json()
    assert our_answer["kvs"] == theirs_answer["kvs"] and our_answer["kvs"]


@pytest.mark.integration
def test_docker_answers_the_same(docker_client, images):
    label = f"sidekick-test-wire={uuid.uuid4().hex}"
    container = docker_client.containers.create(
        images["busybox"], ["sleep", "30"], labels=dict([label.split("=")])
    )
    try:
        version = docker_client.api.api_version
        ours, theirs = WireAPIClient(version=version), docker.APIClient(version=version)
        assert ours.inspect_container(container.id) == theirs.inspect_container(container.id)
        listed = ours.containers(all=True, filters={"label": label})
        assert [c["Id"] for c in listed] == [container.id]
        with pytest.raises(docker.errors.NotFound):
            ours.inspect_container("no-such-container-" + container.id[:8])
    finally:
        container.remove(force=True)


def test_a_stream_of_json_lines_ends_when_closed(server):
    api = WireAPIClient(base_url=_url(server, ""), version="1.41")
    stream = api.wire.open_stream(_url(server, "/stream"), {"filters": '{"a": ["b"]}'})
    seen = []
    for document in stream:
        seen.append(document["n"])
        if len(seen) == 3:
            threading.Thread(target=stream.close).start()  # while the reader waits for more
    assert seen == [1, 2, 3]
