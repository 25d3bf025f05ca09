"""The etcd v3 JSON gateway as one client: endpoints with failover, users, TLS, and errors
sorted into outages and settings.

Runs on: whichever thread owns the instance; an instance is used by one thread at a time (the
loop's by the loop or the events reader in the loop's turn; the lease thread takes its own
clone()). etcd3gw gives one endpoint per client and no timeout by
default; a Gateway owns one client per endpoint, each with a timeout and its own session
(sidekick.wire: requests' interface on a lighter transport; trust_env off, so a
REQUESTS_CA_BUNDLE in the environment cannot override our settings), and moves to the next
endpoint when the one in use fails.

Errors: EtcdUnavailable is an outage (retry); EtcdConfigError is a setting that retrying cannot
fix (credentials, a role, TLS files); any other EtcdError is a request etcd refused.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import requests
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

from sidekick.config import Endpoint, EtcdSecurity
from sidekick.wire import WireSession


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


def _untimed(_call: str, _seconds: float) -> None:
    pass


class Gateway:
    """POSTs to etcd's JSON gateway, with failover across endpoints, login and TLS."""

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
        self.timed: Callable[[str, float], None] = _untimed  # told each answered request's time

    def _client(self, endpoint: Endpoint) -> Etcd3Client:
        session = WireSession()  # trust_env off: REQUESTS_CA_BUNDLE must not replace our CA
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

    def clone(self) -> Self:
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
                started = time.monotonic()
                answer = self._post_authenticated(client, path, payload, subject or path)
                self.timed(path.strip("/"), time.monotonic() - started)
                return answer
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
