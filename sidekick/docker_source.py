"""A thin adapter around docker-py: container snapshots and the events stream as plain records.

docker-py's client runs on sidekick.wire's lighter transport for its plain calls (inspect,
listing) and the events stream."""

from __future__ import annotations

import contextlib
import copy
import http.client
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NamedTuple

import docker
import docker.errors
import docker.tls
import docker.utils
import requests

from sidekick.config import DockerTLS
from sidekick.docker_parse import (
    container_as_started,
    container_from_inspect,
    container_from_summary,
    has_healthcheck,
    knowable_at_create,
    stop_signal_of,
)
from sidekick.model import LABEL_ENABLE, Container, matches_filters
from sidekick.wire import WireAPIClient

# The container events that can change what a container announces, and `create`, after which
# the agent looks ahead at what the container's start will announce. Every event costs the
# agent a wake-up and a JSON document to read, so not `stop`: a `docker stop` of a running
# container always brings its `die` (and its `kill` first), which withdraw it; a container
# stopped while waiting to restart was withdrawn at its `die`. Not `destroy`: a container is
# withdrawn at its `die`, and what the agent learnt of it goes at the next reconcile.
EVENT_ACTIONS = (
    "create",
    "start",
    "restart",
    "unpause",
    "health_status",
    "die",
    "kill",
    "pause",
)
# Network events that can change a container's address (--address container): the container
# is Actor.Attributes.container, the network Actor.Attributes.name.
NETWORK_ACTIONS = ("connect", "disconnect")


MIN_API_VERSION = "1.24"  # for the first request; the engine's own version is used after
NETWORK_CACHE_SECONDS = 30.0  # a network's options never change; its name may be reused
LISTED_IDS_PER_REQUEST = 50  # ids in one `docker ps --filter id=...` (they go in the URL)


class DockerUnavailable(Exception):
    """The Docker engine did not answer."""


class Created(NamedTuple):
    """A container read right after `create`."""

    container: Container | None  # what it announces once started, if that is known already
    stop_signal: int | None  # what `docker stop` will send it first


class DockerEvent(NamedTuple):
    """One container event, flattened."""

    action: str  # "start", "die", "health_status", ...
    detail: str  # "healthy" for "health_status: healthy", else ""
    container_id: str
    name: str  # the container's name ("" on a network event)
    attributes: dict[str, str]
    kind: str = "container"  # or "network": a connect or disconnect of container_id
    at: float = 0.0  # when dockerd says it happened (Unix time; 0.0: it did not say)


def event_from_raw(raw: Any) -> DockerEvent | None:
    """Turn one decoded events-API message into a DockerEvent (None if it is not one)."""
    if not isinstance(raw, dict):
        return None
    action, _, detail = str(raw.get("Action") or raw.get("status") or "").partition(":")
    actor: dict[str, Any] = raw["Actor"] if isinstance(raw.get("Actor"), dict) else {}
    raw_attributes = actor.get("Attributes")
    attributes = (
        {str(k): str(v) for k, v in raw_attributes.items()}
        if isinstance(raw_attributes, dict)
        else {}
    )
    kind = raw.get("Type", "container")
    at = raw.get("timeNano")
    at = at / 1e9 if isinstance(at, int) else 0.0
    if kind == "network" and action.strip() in NETWORK_ACTIONS:
        container_id = attributes.get("container", "")
        return (
            DockerEvent(
                action.strip(), attributes.get("name", ""), container_id, "", {}, "network", at
            )
            if container_id
            else None
        )
    container_id = str(actor.get("ID") or raw.get("id") or "")
    if kind != "container" or not container_id or not action:
        return None
    return DockerEvent(
        action=action.strip(),
        detail=detail.strip(),
        container_id=container_id,
        name=attributes.get("name", ""),
        attributes=attributes,
        at=at,
    )


def _untimed(_call: str, _seconds: float) -> None:
    pass


class DockerSource:
    """Reads containers and events from one Docker engine."""

    def __init__(
        self,
        url: str | None,
        timeout: float,
        label_filters: list[str],
        opted_in_only: bool,
        tls: DockerTLS | None = None,
    ) -> None:
        self.url = url
        self.tls = tls
        self.timeout = timeout
        self.label_filters = list(label_filters)
        if opted_in_only:
            self.label_filters.append(LABEL_ENABLE)  # presence only: the value is checked later
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._stream: Any = None
        self._networks: dict[str, tuple[float, Any]] = {}  # name -> (when read, inspect doc)
        self.busy_since: float | None = None  # monotonic start of the request in flight
        self.timed: Callable[[str, float], None] = _untimed  # told each request's call and time

    def _client(self) -> docker.APIClient:
        with self._lock:
            if self._api is None:
                try:
                    # trust_env off: REQUESTS_CA_BUNDLE must not replace our CA
                    api = WireAPIClient(
                        base_url=self.url,
                        version=MIN_API_VERSION,
                        timeout=self.timeout,
                        tls=self._tls(),
                    )
                    api._version = str(api.version(api_version=False)["ApiVersion"])
                    self._api = api
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    raise DockerUnavailable(
                        f"Docker at {self.url or 'the local socket'}: {exc}"
                    ) from exc
            return self._api

    def _tls(self) -> docker.tls.TLSConfig | bool:
        if self.tls is None:
            return False
        pair = (str(self.tls.cert), str(self.tls.key)) if self.tls.cert and self.tls.key else None
        return docker.tls.TLSConfig(
            client_cert=pair,
            ca_cert=str(self.tls.ca) if self.tls.ca else None,
            verify=str(self.tls.ca) if self.tls.ca else True,
        )

    def _drop_client(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
            self._api = None

    def version(self) -> dict[str, Any]:
        """The engine's version document."""
        return dict(self._call("version", lambda api: api.version()))

    def _call(self, call: str, fn: Any, *, missing_ok: bool = False) -> Any:
        """fn(api), timed as `call`; Docker's failures become DockerUnavailable (NotFound too,
        unless missing_ok)."""
        self.busy_since = started = time.monotonic()
        try:
            answer = fn(self._client())
            self.timed(call, time.monotonic() - started)
            return answer
        except docker.errors.NotFound as exc:
            if missing_ok:
                raise
            self._drop_client()
            raise DockerUnavailable(f"Docker at {self.url or 'the local socket'}: {exc}") from exc
        except (docker.errors.DockerException, requests.RequestException) as exc:
            self._drop_client()
            raise DockerUnavailable(f"Docker at {self.url or 'the local socket'}: {exc}") from exc
        finally:
            self.busy_since = None

    def stalled(self) -> float:
        """Seconds the request in flight (on this connection) has waited; 0.0 with none."""
        since = self.busy_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def clone(self) -> DockerSource:
        """The same engine on a connection of its own, for another thread."""
        twin = copy.copy(self)
        twin._api, twin._lock, twin._stream = None, threading.Lock(), None
        twin._networks, twin.busy_since = {}, None
        twin.label_filters = list(self.label_filters)
        return twin

    def as_started(self, container_id: str) -> Created | None:
        """Inspect a just-created container (and its network, when that can tell): what it
        will be once started, when that is known already (docker_parse.container_as_started),
        and its stop signal. None when it is gone."""
        try:
            data = self._call(
                "inspect", lambda api: api.inspect_container(container_id), missing_ok=True
            )
            if not knowable_at_create(data):
                return Created(None, stop_signal_of(data))
            mode = str((data.get("HostConfig") or {}).get("NetworkMode") or "")
            own_bridge = mode not in {"host", "none"} and not mode.startswith("container:")
            name = "bridge" if mode in {"", "default"} else mode
            network = self._network(name) if own_bridge else None
        except docker.errors.NotFound:
            return None
        return Created(container_as_started(data, network), stop_signal_of(data))

    def _network(self, name: str) -> Any:
        """A network's inspect document, read again after NETWORK_CACHE_SECONDS."""
        now = time.monotonic()
        read_at, network = self._networks.get(name, (float("-inf"), None))
        if now - read_at > NETWORK_CACHE_SECONDS:
            network = self._call(
                "inspect-network", lambda api: api.inspect_network(name), missing_ok=True
            )
            if len(self._networks) > 100:
                self._networks.clear()
            self._networks[name] = (now, network)
        return network

    def inspect(self, container_id: str) -> Container | None:
        """The container now, or None when it no longer exists."""
        try:
            return container_from_inspect(
                self._call(
                    "inspect", lambda api: api.inspect_container(container_id), missing_ok=True
                )
            )
        except docker.errors.NotFound:
            return None

    def listed(
        self, container_ids: Sequence[str], starting: Collection[str] = ()
    ) -> dict[str, Container]:
        """The running containers among these ids that the listing describes on its own.

        dockerd answers a listing from its in-memory view without taking the containers'
        locks, so a burst of starts costs one quick request where inspects would each wait
        on dockerd (an inspect of a container waits while its healthcheck runs). A
        healthcheck's verdict comes from a second listing filtered on health=healthy. An id
        missing from the answer needs inspect(): stopped, gone, or with host networking.
        `starting`: ids whose `start` event is the news; Docker resets a healthcheck at the
        start and sends its verdict as an event, so theirs is "not healthy" with no listing.
        """
        found: dict[str, Container] = {}
        wanted = set(container_ids)
        ids = sorted(wanted)
        for start in range(0, len(ids), LISTED_IDS_PER_REQUEST):
            chunk = ids[start : start + LISTED_IDS_PER_REQUEST]
            summaries = self._call("list", lambda api, c=chunk: api.containers(filters={"id": c}))
            healthy = self._healthy(
                [s for s in summaries if not (isinstance(s, dict) and s.get("Id") in starting)],
                {"id": chunk},
            )
            if healthy is None and starting:
                healthy = set()  # only just started: no verdict yet
            for summary in summaries:
                container = container_from_summary(summary, healthy)
                if container is not None and container.id in wanted:
                    found[container.id] = container
        return found

    def _healthy(self, summaries: Any, filters: dict[str, Any]) -> set[str] | None:
        """The ids a `health=healthy` listing with these filters returns, when any of the
        summaries has a healthcheck (else None: no request)."""
        if not any(isinstance(s, dict) and has_healthcheck(s) for s in summaries):
            return None
        answer = self._call(
            "list-healthy", lambda api: api.containers(filters={**filters, "health": "healthy"})
        )
        return {str(s.get("Id")) for s in answer if isinstance(s, dict)}

    def running_containers(self) -> list[Container]:
        """Every running container in scope: from the listing, inspected only when need be."""
        filters = {"status": "running"}
        summaries = self._call(
            "list-running",
            lambda api: api.containers(filters={**filters, "label": self.label_filters}),
        )
        healthy = self._healthy(summaries, {**filters, "label": self.label_filters})
        containers = []
        for summary in summaries:
            container = container_from_summary(summary, healthy)
            if container is None and isinstance(summary, dict) and summary.get("Id"):
                container = self.inspect(str(summary["Id"]))
            if container is not None:
                containers.append(container)
        return containers

    def open_events(self, networks: bool = True) -> Iterator[DockerEvent]:
        """Connect to the events stream (with network connects and disconnects, or not); the
        iterator simply ends when the engine goes away.

        The label filters apply here, not at dockerd: a network event carries no labels, and
        dockerd would drop every one of them (its label filter reads the event's attributes).
        """
        filters: dict[str, Any] = (
            {"type": ["container", "network"], "event": [*EVENT_ACTIONS, *NETWORK_ACTIONS]}
            if networks
            else {"type": ["container"], "event": list(EVENT_ACTIONS)}
        )
        params = {"filters": docker.utils.convert_filters(filters)}
        stream = self._call("events", lambda api: api.stream_json("/events", params))
        self._stream = stream
        return self._follow(stream)

    def _follow(self, stream: Any) -> Iterator[DockerEvent]:
        try:
            for raw in stream:
                event = event_from_raw(raw)
                if event is None or (
                    event.kind == "container"
                    and not matches_filters(event.attributes, self.label_filters)
                ):
                    continue
                yield event
        except (
            docker.errors.DockerException,
            requests.RequestException,
            http.client.HTTPException,
            OSError,
            ValueError,
        ):
            return
        finally:
            if self._stream is stream:  # not a newer stream opened before this one was closed
                self._stream = None

    def close_events(self) -> None:
        """End a running events() iteration from another thread."""
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # closing a dead socket fails in many ways
                stream.close()
