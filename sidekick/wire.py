"""A lighter HTTP transport under etcd3gw and docker-py, for the agent's many small requests.

etcd3gw and docker-py are used as they are; only the session under them changes. A plain call
(no stream, files, auth, cookies, hooks or proxies: every etcd transaction and keepalive,
every Docker inspect and listing, and the Docker events stream) goes over one kept connection
per session and comes back as a requests.Response; anything else takes requests' own path.
Measured with callgrind (`python -m bench.transport`): an etcd transaction costs 2.19 M
instructions through requests and 0.28 M here, a Docker inspect 2.20 M and 0.52 M; the agent
makes two to four such calls per container.

Failures are raised as requests raises them (ConnectionError, Timeout, SSLError, with the
socket's or TLS library's error as the cause), so etcd3gw's and docker-py's error handling,
and ours above them, see what they always saw.

Runs on: the thread that owns the session (each thread has its own sessions and connections).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import docker
import requests
from requests.structures import CaseInsensitiveDict

_PLAIN_ARGUMENTS = frozenset({"params", "data", "json", "headers", "timeout", "allow_redirects"})
_OURS = frozenset({"host", "content-length"})  # the connection writes these
DEFAULT_CONNECT_TIMEOUT = 60.0  # docker-py's default request timeout
UNIX_SCHEMES = ("http+docker", "http+unix")


class Connection:
    """One kept socket speaking HTTP/1.1: the whole request in one write (no Nagle wait
    between head and body), the answer read by Content-Length or chunks."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.host_header = host_header

    def exchange(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, timeout: Any
    ) -> tuple[int, str, list[tuple[str, str]], bytes, bool]:
        """(status, reason, headers, content, server will close). OSError or
        http.client.HTTPException when the exchange fails."""
        self.sock.settimeout(timeout)
        self._send(method, target, headers, body)
        while True:
            line = self.file.readline(_MAX_LINE)
            if not line:
                raise http.client.RemoteDisconnected("the connection closed with no answer")
            version, status, reason = _status_line(line)
            answer_headers = self._headers()
            if not 100 <= status < 200:
                break
        fields = {name.lower(): value for name, value in answer_headers}
        close = version == "HTTP/1.0" or fields.get("connection", "").lower() == "close"
        if method == "HEAD" or status in {204, 304}:
            content = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            content = self._chunked()
        elif "content-length" in fields:
            content = self._exactly(int(fields["content-length"]))
        else:
            content, close = self.file.read(), True
        return status, reason, answer_headers, content, close

    def open(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, str, Any]:
        """Send a request and read the answer's head only, for a stream; no timeout."""
        self.sock.settimeout(None)
        self._send(method, target, headers, None)
        line = self.file.readline(_MAX_LINE)
        if not line:
            raise http.client.RemoteDisconnected("the connection closed with no answer")
        _, status, reason = _status_line(line)
        return status, reason, self._headers()

    def _send(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> None:
        """The request head (our Host and Content-Length in place of the caller's) and body,
        in one write."""
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in _OURS]
        if body is not None or method in {"POST", "PUT"}:
            head.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (body or b""))

    def _headers(self) -> list[tuple[str, str]]:
        found = []
        while (line := self.file.readline(_MAX_LINE)) not in {b"\r\n", b"\n", b""}:
            name, _, value = line.decode("latin-1").partition(":")
            found.append((name.strip(), value.strip()))
        return found

    def _exactly(self, size: int) -> bytes:
        data = self.file.read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def chunk_size(self) -> int:
        """The next chunk's size; IncompleteRead when the connection ends before it."""
        line = self.file.readline(_MAX_LINE)
        if not line:
            raise http.client.IncompleteRead(b"")
        return int(line.split(b";")[0].strip() or b"0", 16)

    def chunk(self, size: int) -> bytes:
        """The next chunk's `size` bytes, and the CRLF after them."""
        data = self._exactly(size)
        self.file.readline(_MAX_LINE)  # the chunk's CRLF
        return data

    def _chunked(self) -> bytes:
        chunks = []
        while (size := self.chunk_size()) > 0:
            chunks.append(self.chunk(size))
        self._headers()  # trailers, up to the blank line
        return b"".join(chunks)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


_MAX_LINE = 65536


def _status_line(line: bytes) -> tuple[str, int, str]:
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise http.client.BadStatusLine(line.decode("latin-1"))
    return version, int(code), reason


class JsonLines:
    """A streamed answer read as one JSON document a line, as Docker sends its events;
    close() from another thread ends the iteration."""

    def __init__(self, connection: Connection, chunked: bool) -> None:
        self.connection = connection
        self.chunked = chunked
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        buffer = b""
        while piece := self._piece():
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def _piece(self) -> bytes:
        """The next chunk (b"" at the end of the answer, or once closed)."""
        try:
            return b"" if self.closed else self._read_piece()
        except (OSError, ValueError):  # ValueError: the file was closed under the read
            if self.closed:
                return b""
            raise

    def _read_piece(self) -> bytes:
        if not self.chunked:
            return self.connection.file.read1(65536)
        try:
            size = self.connection.chunk_size()
        except http.client.IncompleteRead:
            return b""  # the connection ended between chunks: the end of the stream
        return self.connection.chunk(size) if size else b""

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked reader
        with contextlib.suppress(OSError):
            self.connection.close()


class Wire:
    """The kept connections of one session, by (scheme, host, port)."""

    def __init__(self, session: requests.Session, unix_socket: str | None = None) -> None:
        self.session = session
        self.unix_socket = unix_socket
        self._connections: dict[tuple[str, str, int], Connection] = {}
        self._tls: ssl.SSLContext | None = None

    def plain(self, method: str, url: str | bytes, kwargs: dict[str, Any]) -> bool:
        """Whether this call can take the light path."""
        s = self.session
        return (
            isinstance(url, str)
            and method in {"GET", "POST", "PUT", "DELETE", "HEAD"}
            and _PLAIN_ARGUMENTS.issuperset(kwargs)
            and isinstance(kwargs.get("data"), str | bytes | None)  # a form: requests' path
            and not (s.trust_env or s.cookies or s.auth or s.proxies or s.params or s.stream)
            and not any(s.hooks.values())
            and urlsplit(url).scheme in {"http", "https", *UNIX_SCHEMES}
        )

    def send(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        """The call over a kept connection (a stale one is replaced once)."""
        headers: dict[str, str] = {str(k): str(v) for k, v in self.session.headers.items()}
        for name, value in (kwargs.get("headers") or {}).items():
            for known in [k for k in headers if k.lower() == name.lower()]:
                del headers[known]
            if value is not None:  # as requests does: None drops a session header
                headers[name] = str(value)
        headers = {k: v for k, v in headers.items() if k.lower() not in _OURS}
        headers["Accept-Encoding"] = "identity"  # we decode no gzip
        body = _body(kwargs, headers)
        parts = urlsplit(url)
        target = (parts.path or "/") + _query(parts.query, kwargs.get("params"))
        key = (parts.scheme, parts.hostname or "", parts.port or 0)
        if parts.scheme == "https":
            self._tls_context()  # a TLS file it cannot read: OSError, outside the retries
        timeout = kwargs.get("timeout")
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout,) * 2
        for attempt in range(2):
            connection = self._connections.get(key)
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._connections[key] = self._connect(key, connect_timeout)
                status, reason, fields, content, close = connection.exchange(
                    method, target, headers, body, read_timeout
                )
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key)
                stale = isinstance(
                    exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                )
                if reused and stale and attempt == 0:
                    continue  # the server closed a kept connection: one new one
                raise _as_requests_error(exc, method, url) from exc
            if close:
                self._drop(key)
            return _response(url, status, reason, fields, content)
        raise AssertionError("unreachable")

    def open_stream(self, url: str, params: dict[str, Any]) -> JsonLines:
        """GET a long answer on a connection of its own, read as one JSON document a line
        (Docker's events); no read timeout. requests' errors, as send() raises them."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port or 0)
        target = (parts.path or "/") + _query(parts.query, params)
        headers = {str(k): str(v) for k, v in self.session.headers.items()}
        headers["Accept-Encoding"] = "identity"
        try:
            connection = self._connect(key, DEFAULT_CONNECT_TIMEOUT)
        except OSError as exc:
            raise _as_requests_error(exc, "GET", url) from exc
        try:
            status, reason, fields = connection.open("GET", target, headers)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _as_requests_error(exc, "GET", url) from exc
        if status != 200:
            connection.close()
            raise requests.exceptions.HTTPError(f"{status} {reason} for GET {url}")
        chunked = "chunked" in dict((k.lower(), v) for k, v in fields).get("transfer-encoding", "")
        return JsonLines(connection, chunked)

    def _connect(self, key: tuple[str, str, int], timeout: float | None) -> Connection:
        scheme, host, port = key
        if scheme in UNIX_SCHEMES:
            if self.unix_socket is None:
                raise requests.exceptions.InvalidURL(f"no socket path for {scheme}://{host}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.unix_socket)
            except OSError:
                sock.close()
                raise
            return Connection(sock, "localhost")
        context = self._tls_context() if scheme == "https" else None  # OSError: a TLS file
        port = port or (443 if context else 80)
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
        except OSError:
            sock.close()
            raise
        name = f"[{host}]" if ":" in host else host
        return Connection(sock, name if port == (443 if context else 80) else f"{name}:{port}")

    def _tls_context(self) -> ssl.SSLContext:
        """The session's verify and cert settings as an SSL context (read once). A file it
        cannot read raises OSError, as requests does."""
        if self._tls is None:
            verify, cert = self.session.verify, self.session.cert
            _must_exist("CA certificate bundle", verify if isinstance(verify, str) else None)
            pair = cert if isinstance(cert, tuple) else (cert, None)
            _must_exist("certificate file", pair[0])
            _must_exist("key file", pair[1])
            context = ssl.create_default_context(
                cafile=verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
            )
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if isinstance(cert, tuple):
                context.load_cert_chain(cert[0], cert[1])
            elif isinstance(cert, str):
                context.load_cert_chain(cert)
            self._tls = context
        return self._tls

    def _drop(self, key: tuple[str, str, int]) -> None:
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(key)


def _must_exist(what: str, path: str | None) -> None:
    """requests' own words for a TLS file that is not there."""
    if path is not None and not os.path.exists(path):
        raise OSError(f"Could not find the TLS {what}, invalid path: {path}")


def _body(kwargs: dict[str, Any], headers: dict[str, str]) -> bytes | None:
    """The request body as requests would send it: JSON, or data as given."""
    if kwargs.get("json") is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(kwargs["json"], allow_nan=False).encode()
    data = kwargs.get("data")
    return data.encode() if isinstance(data, str) else data or None


def _query(existing: str, params: Any) -> str:
    """`?query`: the URL's own, then params as requests encodes them (None values left out)."""
    pairs = [
        (str(k), str(v))
        for k, values in (params or {}).items()
        for v in (values if isinstance(values, list | tuple) else [values])
        if v is not None
    ]
    query = "&".join(q for q in (existing, urlencode(pairs)) if q)
    return "?" + query if query else ""


def _as_requests_error(exc: BaseException, method: str, url: str) -> Exception:
    where = f"{method} {url}"
    if isinstance(exc, ssl.SSLError):
        return requests.exceptions.SSLError(f"{where}: {exc}")
    if isinstance(exc, TimeoutError):
        return requests.exceptions.Timeout(f"{where}: timed out")
    return requests.exceptions.ConnectionError(f"{where}: {exc}")


def _response(
    url: str,
    status: int,
    reason: str,
    fields: list[tuple[str, str]],
    content: bytes,
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response.headers = CaseInsensitiveDict(fields)
    response._content = content
    response._content_consumed = True  # type: ignore[attr-defined]  # nothing left to read
    response.url = url
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    return response


class _LightPath(requests.Session):
    """A requests.Session whose plain calls go through `self.wire`, which the subclass sets.
    docker-py's APIClient, a Session too, comes after it in WireAPIClient's bases."""

    wire: Wire

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        method = method.upper()
        if args or not self.wire.plain(method, url, kwargs):
            return super().request(method, url, *args, **kwargs)
        return self.wire.send(method, str(url), kwargs)

    def close(self) -> None:
        self.wire.close()
        super().close()


class WireSession(_LightPath):
    """A requests.Session (for etcd3gw) whose plain calls take the light path. trust_env
    is off: a REQUESTS_CA_BUNDLE in the environment must not replace our CA."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.wire = Wire(self)


class WireAPIClient(_LightPath, docker.APIClient):  # type: ignore[misc]  # docker-py ships no types
    """docker-py's low-level client whose plain calls take the light path (trust_env off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trust_env = False
        adapter = getattr(self, "_custom_adapter", None)
        self.wire = Wire(self, unix_socket=getattr(adapter, "socket_path", None))

    def stream_json(self, path: str, params: dict[str, Any]) -> Any:
        """GET `path` (e.g. "/events") as a stream of JSON documents with close(): on the
        light path where it can go, else docker-py's own stream."""
        url = self._url(path)
        if self.wire.plain("GET", url, {"params": params}):
            return self.wire.open_stream(url, params)
        response = self._get(url, params=params, stream=True, timeout=None)
        return self._stream_helper(response, decode=True)
