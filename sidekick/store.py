"""A thin adapter around etcd3gw: endpoints with failover, leases, prefix reads, transactions.

etcd3gw gives one endpoint per client and no timeout by default; this class owns one client
per endpoint, each with a timeout and its own requests.Session (trust_env off, so a
REQUESTS_CA_BUNDLE in the environment cannot override our settings), and moves to the next
endpoint when the one in use fails.

Errors: EtcdUnavailable is an outage (retry); EtcdConfigError is a setting that retrying cannot
fix (credentials, a role, TLS files); any other EtcdError is a request etcd refused.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import ssl
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, TextIO

import requests
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

from sidekick.config import Endpoint, EtcdSecurity
from sidekick.model import Delete, KeyState, Put

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


class EtcdError(Exception):
    """etcd answered with an error (bad request, permission, too large)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time."""


class EtcdConfigError(EtcdError):
    """A setting that retrying cannot fix: credentials, a role, TLS certificates."""


class EtcdPermissionDenied(EtcdConfigError):
    """etcd refused the user (bad credentials, or a key outside its role)."""


class EtcdTLSError(EtcdConfigError):
    """The TLS handshake failed: etcd refused our client certificate or we refused its."""


_TOKEN_ERRORS = ("invalid auth token", "auth token is expired", "user name is empty")
# gRPC codes of a login etcd refuses: InvalidArgument (bad user or password), PermissionDenied,
# FailedPrecondition (auth not enabled), Unauthenticated. Others (busy, no leader) may pass.
_LOGIN_REFUSED = {3, 7, 9, 16}
_PERMISSION_DENIED = 7
_SSL_REASON = re.compile(r"\[[A-Z0-9]+: [A-Z0-9_]+\][^'\"(]*")


def b64(text: str) -> str:
    """A key or value as the JSON gateway wants it (base64 of UTF-8)."""
    return base64.b64encode(text.encode()).decode("ascii")


def unb64(text: str) -> str:
    """A key or value as the JSON gateway sends it, decoded (bad UTF-8 replaced)."""
    return base64.b64decode(text).decode(errors="replace")


def prefix_range_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


class Store:
    """etcd v3 through the grpc-gateway, with failover across endpoints."""

    dry_run = False  # DryRunStore: reads for real, writes nothing (the logs say "would")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        timeout: float,
        security: EtcdSecurity | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.security = security or EtcdSecurity()
        self._clients = [self._client(e) for e in self.endpoints]
        self._current = 0

    def _client(self, endpoint: Endpoint) -> Etcd3Client:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace our CA
        if self.security.ca is not None:
            session.verify = str(self.security.ca)
        if self.security.cert is not None and self.security.key is not None:
            session.cert = (str(self.security.cert), str(self.security.key))
        return Etcd3Client(
            host=endpoint.host,
            port=endpoint.port,
            protocol=endpoint.scheme,
            timeout=self.timeout,
            api_path="/v3/",
            session=session,
        )

    def clone(self) -> Store:
        """The same settings on connections of its own, for another thread."""
        twin = copy.copy(self)
        twin._clients = [twin._client(e) for e in self.endpoints]
        return twin

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint in use."""
        return self.endpoints[self._current]

    def _post(
        self, path: str, payload: dict[str, Any], subject: str | None = None
    ) -> dict[str, Any]:
        """POST to the endpoint in use, moving on to the next while they fail.

        EtcdTLSError when every endpoint failed the TLS handshake, EtcdUnavailable when they
        all failed otherwise. `subject` (the keys) names what a permission denied was for.
        """
        last: Exception | None = None
        refused: list[tuple[str, Exception]] = []
        for _ in self._clients:
            client, endpoint = self._clients[self._current], self.endpoint
            try:
                return self._post_authenticated(client, path, payload, subject or path)
            except (
                etcd_exceptions.ConnectionFailedError,
                etcd_exceptions.ConnectionTimeoutError,
            ) as exc:
                last = exc
                if (message := self._tls_failure(endpoint, exc)) is not None:
                    refused.append((message, exc))
                self._current = (self._current + 1) % len(self._clients)
            except etcd_exceptions.Etcd3Exception as exc:
                raise EtcdError(_detail(exc)) from exc
            except (requests.RequestException, ValueError) as exc:
                raise EtcdError(str(exc)) from exc
            except OSError as exc:  # requests: a CA, certificate or key file it cannot read
                raise EtcdTLSError(self._tls_message(endpoint, str(exc))) from exc
        if len(refused) == len(self._clients):
            raise EtcdTLSError(refused[0][0]) from refused[0][1]
        names = ", ".join(e.url for e in self.endpoints)
        raise EtcdUnavailable(f"no etcd endpoint answered ({names}): {_detail(last)}") from last

    def _post_authenticated(
        self, client: Etcd3Client, path: str, payload: dict[str, Any], subject: str
    ) -> dict[str, Any]:
        """One request; with a user, log in first and again when etcd says the token is bad."""
        if self.security.user and "Authorization" not in client.session.headers:
            self._authenticate(client)
        try:
            return dict(client.post(client.get_url(path), data=json.dumps(payload)))
        except etcd_exceptions.Etcd3Exception as exc:
            if not (self.security.user and any(e in _detail(exc) for e in _TOKEN_ERRORS)):
                self._raise_refusal(client, exc, subject)
                raise
        self._authenticate(client)
        try:
            return dict(client.post(client.get_url(path), data=json.dumps(payload)))
        except etcd_exceptions.Etcd3Exception as exc:
            self._raise_refusal(client, exc, subject)
            raise

    def _raise_refusal(
        self, client: Etcd3Client, exc: etcd_exceptions.Etcd3Exception, subject: str
    ) -> None:
        """An EtcdConfigError if etcd refused the user rather than the moment."""
        detail = _detail(exc)
        if "permission denied" in detail or _grpc_code(exc) == _PERMISSION_DENIED:
            raise EtcdPermissionDenied(
                f"etcd denied {subject} to user {self.security.user or '(none)'}: {detail}"
            ) from exc
        if not self.security.user and "user name is empty" in detail:
            raise EtcdConfigError(
                f"etcd at {client.base_url} requires authentication and no user is set: {detail}"
            ) from exc

    def _tls_failure(self, endpoint: Endpoint, exc: BaseException) -> str | None:
        """The EtcdTLSError message if `exc` is a failed TLS handshake, else None.

        etcd3gw raises ConnectionFailedError(str(requests_error)) in its except block: the
        requests SSLError is in __context__, its text in detail_text. etcd 3.5 speaks TLS 1.2
        and refuses a missing or foreign client certificate with a "bad certificate" alert
        during the handshake. An EOF in the handshake stays an outage: a restarting server or
        a proxy cuts one the same way.
        """
        reason = _ssl_reason(exc)
        if reason is None or "EOF" in reason:
            return None
        return self._tls_message(endpoint, reason)

    def _unreachable(self, endpoint: Endpoint, exc: BaseException, message: str) -> EtcdError:
        """EtcdTLSError for a TLS failure or a TLS file requests cannot read (a plain OSError),
        else EtcdUnavailable(message)."""
        if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
            return EtcdTLSError(self._tls_message(endpoint, str(exc)))
        if (tls := self._tls_failure(endpoint, exc)) is not None:
            return EtcdTLSError(tls)
        return EtcdUnavailable(message)

    def _tls_message(self, endpoint: Endpoint, reason: str) -> str:
        cert = self.security.cert if self.security.key is not None else None
        settings = f"client certificate: {cert or 'none'}; CA: {self.security.ca or 'default'}"
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            what = "presented a certificate we do not accept"
        elif "alert" in reason:
            what = "refused the TLS handshake"
        else:
            what = "TLS failed"
        return f"etcd at {endpoint.url} {what} ({settings}): {reason}"

    def _authenticate(self, client: Etcd3Client) -> None:
        client.session.headers.pop("Authorization", None)
        try:
            answer = client.post(
                client.get_url("/auth/authenticate"),
                json={"name": self.security.user, "password": self.security.password},
            )
        except (etcd_exceptions.ConnectionFailedError, etcd_exceptions.ConnectionTimeoutError):
            raise
        except etcd_exceptions.Etcd3Exception as exc:
            if _grpc_code(exc) not in _LOGIN_REFUSED:
                raise EtcdError(
                    f"etcd login of user {self.security.user} failed: {_detail(exc)}"
                ) from exc
            raise EtcdPermissionDenied(
                f"etcd authentication failed for user {self.security.user}: {_detail(exc)}"
            ) from exc
        token = answer.get("token") if isinstance(answer, dict) else None
        if not token:
            raise EtcdPermissionDenied(f"etcd authentication failed for user {self.security.user}")
        client.session.headers["Authorization"] = str(token)

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        answer = self._post("/lease/grant", {"TTL": ttl, "ID": 0})
        with _parsing("/lease/grant"):
            return int(answer["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its TTL, or a value <= 0 when the lease is gone."""
        answer = self._post("/lease/keepalive", {"ID": lease})
        with _parsing("/lease/keepalive"):
            return int(answer.get("result", {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> int:
        """Seconds left on a lease, or -1 when it is gone (or in its last second: etcd's JSON
        gateway leaves out a TTL of 0; a keepalive is the way to know)."""
        answer = self._post("/lease/timetolive", {"ID": lease})
        with _parsing("/lease/timetolive"):
            return int(answer.get("TTL", -1))

    def lease_keys(self, lease: int) -> tuple[int, list[str]]:
        """(seconds left, keys attached) of a lease in one request, whatever the size of the
        prefix; (-1, []) when the lease is gone. A missing TTL is -1: etcd's JSON gateway leaves
        out a TTL of 0 (the lease's last second), as in time_to_live."""
        answer = self._post("/lease/timetolive", {"ID": lease, "keys": True})
        with _parsing("/lease/timetolive"):
            return int(answer.get("TTL", -1)), [unb64(key) for key in answer.get("keys", [])]

    def revoke(self, lease: int) -> None:
        """Revoke a lease: every key attached to it goes at once."""
        try:
            self._post("/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- keys ----------------------------------------------------------------------------

    def read_prefix(self, prefix: str) -> tuple[dict[str, KeyState], int]:
        """Every key under `prefix`, and the revision the read saw."""
        answer = self._post(
            "/kv/range",
            {"key": b64(prefix), "range_end": prefix_range_end(prefix)},
            subject=f"prefix {prefix}",
        )
        with _parsing("/kv/range"):
            keys = dict(_key_states(answer))
            return keys, int(answer.get("header", {}).get("revision", 0))

    def check_write(self, prefix: str) -> None:
        """EtcdPermissionDenied unless our user may write under `prefix`; writes nothing.

        A transaction whose compare never holds (a version below 0) with a put in its success
        branch: etcd checks the permissions of every operation in a transaction before it
        evaluates the compare, so a role without write access to the prefix is refused here.
        """
        key = b64(prefix.rstrip("/") + "/")
        compare = {"key": key, "result": "LESS", "target": "VERSION", "version": "0"}
        put = {"request_put": {"key": key, "value": ""}}
        self._post("/kv/txn", {"compare": [compare], "success": [put]}, f"prefix {prefix}")

    def read_keys(self, keys: Collection[str]) -> dict[str, KeyState]:
        """The state of each of `keys` that exists (absent keys are left out), read by range
        requests in transactions of at most MAX_TXN_OPS: the cost follows len(keys), not the
        size of the prefix. No keys, no request."""
        wanted = sorted(set(keys))
        found: dict[str, KeyState] = {}
        for start in range(0, len(wanted), MAX_TXN_OPS):
            chunk = wanted[start : start + MAX_TXN_OPS]
            success = [{"request_range": {"key": b64(key)}} for key in chunk]
            answer = self._post("/kv/txn", {"success": success}, subject=_keys_subject(chunk))
            with _parsing("/kv/txn"):
                for response in answer.get("responses", []):
                    found.update(_key_states(response.get("response_range", {})))
        return found

    def txn(self, operations: Sequence[Put | Delete], lease: int) -> tuple[bool, int]:
        """Apply up to MAX_TXN_OPS operations in one transaction; (succeeded, revision).

        Each operation is guarded by the mod_revision it expects, so the transaction fails as
        a whole, writing nothing, when any of its keys changed since it was read.
        """
        if len(operations) > MAX_TXN_OPS:
            raise ValueError(f"at most {MAX_TXN_OPS} operations per transaction")
        compare, success = [], []
        for op in operations:
            compare.append(
                {
                    "key": b64(op.key),
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": str(op.expect_mod_revision),
                }
            )
            if isinstance(op, Put):
                put: dict[str, Any] = {"key": b64(op.key), "value": b64(op.value)}
                if lease:
                    put["lease"] = str(lease)
                success.append({"request_put": put})
            else:
                success.append({"request_delete_range": {"key": b64(op.key)}})
        answer = self._post(
            "/kv/txn",
            {"compare": compare, "success": success},
            subject=_keys_subject([op.key for op in operations]),
        )
        with _parsing("/kv/txn"):
            revision = int(answer.get("header", {}).get("revision", 0))
            return bool(answer.get("succeeded", False)), revision

    def open_stream(
        self, path: str, payload: dict[str, Any], read_timeout: float
    ) -> requests.Response:
        """A streaming POST (a watch) to the endpoint in use, with the session, TLS and auth
        token every request uses; the caller reads it and closes it. A connection failure
        moves to the next endpoint and raises EtcdUnavailable (EtcdTLSError for TLS)."""
        client = self._clients[self._current]
        url = client.get_url(path)
        try:
            if self.security.user and "Authorization" not in client.session.headers:
                self._authenticate(client)
            return client.session.post(
                url, data=json.dumps(payload), stream=True, timeout=(self.timeout, read_timeout)
            )
        except (
            OSError,  # requests.RequestException, or a TLS file requests cannot read
            etcd_exceptions.ConnectionFailedError,
            etcd_exceptions.ConnectionTimeoutError,
        ) as exc:
            endpoint = self.endpoint
            self.next_endpoint()
            raise self._unreachable(endpoint, exc, f"etcd at {url}: {_detail(exc)}") from exc

    def next_endpoint(self) -> None:
        """Move to the next endpoint (a stream on the one in use failed)."""
        self._current = (self._current + 1) % len(self._clients)

    def forget_token(self) -> None:
        """Drop the auth token of the endpoint in use: the next request logs in again."""
        self._clients[self._current].session.headers.pop("Authorization", None)

    def version(self) -> str:
        """The server version of the endpoint in use."""
        client = self._clients[self._current]
        try:
            answer = client.session.get(client.base_url + "/version", timeout=self.timeout)
            return str(answer.json().get("etcdserver", "unknown"))
        except (OSError, ValueError) as exc:
            message = f"etcd at {self.endpoint.url}: {exc}"
            raise self._unreachable(self.endpoint, exc, message) from exc

    def health(self) -> dict[str, Any]:
        """GET /health of the endpoint in use: {"health": "true"} while it has quorum.

        etcd answers 503 with {"health": "false", "reason": ...} when it has none, so the
        document is returned whatever the status code.
        """
        client = self._clients[self._current]
        try:
            answer = client.session.get(client.base_url + "/health", timeout=self.timeout)
            return dict(answer.json())
        except (OSError, ValueError) as exc:
            message = f"etcd at {self.endpoint.url}: {exc}"
            raise self._unreachable(self.endpoint, exc, message) from exc

    @property
    def api_path(self) -> str:
        """The v3 API path requests go to (the grpc-gateway's, e.g. /v3/)."""
        return str(self._clients[self._current].api_path)

    def status(self) -> dict[str, Any]:
        """The maintenance status (version, leader, raft term) through the v3 API path."""
        return self._post("/maintenance/status", {})


@contextlib.contextmanager
def _parsing(path: str) -> Iterator[None]:
    """An answer that is not what etcd's API promises is an EtcdError, not a crash."""
    try:
        yield
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise EtcdError(f"unexpected answer from etcd to {path}: {exc!r}") from exc


def _key_states(answer: dict[str, Any]) -> Iterator[tuple[str, KeyState]]:
    """(key, state) of each kv in a range answer (int64 fields come as strings)."""
    for kv in answer.get("kvs", []):
        yield (
            unb64(kv["key"]),
            KeyState(
                value=unb64(kv.get("value", "")),
                lease=int(kv.get("lease", 0)),
                mod_revision=int(kv.get("mod_revision", 0)),
            ),
        )


def _keys_subject(keys: Sequence[str]) -> str:
    """What a request was about, for a permission denied: "key /a" or "keys /a, /b and 3 more"."""
    if len(keys) == 1:
        return f"key {keys[0]}"
    more = f" and {len(keys) - 2} more" if len(keys) > 2 else ""
    return f"keys {', '.join(keys[:2])}{more}"


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """`exc` and the exceptions behind it: causes, contexts and urllib3's `reason`."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for behind in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(behind, BaseException):
                todo.append(behind)


def _ssl_reason(exc: BaseException) -> str | None:
    """The TLS library's reason if a TLS failure is behind `exc` (or only in its text)."""
    for behind in _chain(exc):
        if isinstance(behind, ssl.SSLError):
            return _short_ssl(str(behind))
    text = _detail(exc)
    if (found := _SSL_REASON.search(text)) is not None:
        return _short_ssl(found.group())
    if any(isinstance(behind, requests.exceptions.SSLError) for behind in _chain(exc)):
        return text
    return None


def _short_ssl(text: str) -> str:
    """ "[SSL: X] what happened (_ssl.c:1006)" without the source location."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text).strip(" '\"")


def _grpc_code(exc: etcd_exceptions.Etcd3Exception) -> int | None:
    """The gRPC status code in etcd's JSON error body, if there is one."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return int(json.loads(exc.detail_text or "").get("code"))
    return None


def _detail(exc: BaseException | None) -> str:
    if exc is None:
        return "no endpoint"
    detail = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
    with contextlib.suppress(ValueError, AttributeError):  # etcd's JSON error body
        detail = json.loads(detail).get("message", detail)
    return " ".join(str(detail).split())[:300]


class DryRunStore(Store):
    """Reads etcd for real; prints every write it would make and makes none."""

    DRY_RUN_LEASE = -1  # never equal to a real lease id, so nothing real is taken as ours
    dry_run = True

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        timeout: float,
        out: TextIO,
        security: EtcdSecurity | None = None,
    ) -> None:
        super().__init__(endpoints, timeout, security)
        self.out = out
        self._revision = 0

    def grant(self, ttl: int) -> int:
        print(f"dry-run: would grant a lease of {ttl}s", file=self.out, flush=True)
        return self.DRY_RUN_LEASE

    def keepalive(self, lease: int) -> int:
        return 1

    def lease_keys(self, lease: int) -> tuple[int, list[str]]:
        if lease == self.DRY_RUN_LEASE:  # alive, as keepalive says, and holding nothing
            return 1, []
        return super().lease_keys(lease)

    def revoke(self, lease: int) -> None:
        print("dry-run: would revoke the lease", file=self.out, flush=True)

    def txn(self, operations: Sequence[Put | Delete], lease: int) -> tuple[bool, int]:
        for op in operations:
            if isinstance(op, Put):
                owner = "lease" if lease else "no lease"
                print(
                    f"dry-run: would put {op.key} = {op.value} ({owner})", file=self.out, flush=True
                )
            else:
                print(f"dry-run: would delete {op.key}", file=self.out, flush=True)
        self._revision += 1
        return True, self._revision
