"""Pure decisions: a container's record to registrations, and the plan that makes etcd right.

Nothing here does I/O. Every function takes plain data and returns plain data; a container
whose labels cannot be honoured is rejected with a reason instead of raising.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from sidekick import templating
from sidekick.config import NETWORK_RE, Config, unreachable

LABEL_ENABLE = "sidekick.enable"
LABEL_SERVICE = "sidekick.service"
LABEL_PORT = "sidekick.port"
LABEL_ADDRESS = "sidekick.address"
LABEL_NETWORK = "sidekick.network"
PROTOCOLS = ("tcp", "udp")

SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_SERVICE_LENGTH = 128
_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9._/\-\[\]:@]+$")


class PortBinding(NamedTuple):
    """One published port: container port -> host address and port."""

    container_port: int
    host_ip: str
    host_port: int
    proto: str = "tcp"


class NetworkAddress(NamedTuple):
    """A container's addresses on one Docker network ("" when it has none of that family)."""

    network: str
    ipv4: str = ""
    ipv6: str = ""


class Container(NamedTuple):
    """The few facts about a container that registration depends on."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    running: bool
    paused: bool
    health: str | None  # None when the container has no HEALTHCHECK
    host_network: bool
    bindings: tuple[PortBinding, ...]
    exposed_ports: tuple[int, ...]  # TCP only: UDP ports are announced only when labelled
    stop_signal: int | None = None  # what `docker stop` sends first; None: not known (listing)
    networks: tuple[NetworkAddress, ...] = ()  # sorted by name

    @property
    def short_id(self) -> str:
        return self.id[:12]


class Registration(NamedTuple):
    """One key this node announces for one container port."""

    key: str
    value: str
    container_id: str
    container_name: str
    proto: str = "tcp"


class Announcement(NamedTuple):
    """What a container should have in etcd now, or why it is refused."""

    registrations: tuple[Registration, ...] = ()
    problem: str | None = None  # a warning to log once; nothing is registered
    by_network: bool = False  # its address is (or would be) a network's: connect/disconnect count


class KeyState(NamedTuple):
    """A key as read from etcd."""

    value: str
    lease: int
    mod_revision: int


class Put(NamedTuple):
    key: str
    value: str
    expect_mod_revision: int  # 0: the key must not exist


class Delete(NamedTuple):
    key: str
    expect_mod_revision: int


class Clash(NamedTuple):
    """A key this node wants that someone else holds; it is left alone."""

    key: str
    wanted: str
    held_value: str
    held_lease: int


class Plan(NamedTuple):
    puts: tuple[Put, ...] = ()
    deletes: tuple[Delete, ...] = ()
    clashes: tuple[Clash, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


# -- port specs, as Docker and the sidekick.port label write them -----------------------------


def port_spec(spec: Any) -> tuple[int | None, str]:
    """ "80/tcp", "53/udp" or "80" -> (port, protocol); (None, "") for anything else."""
    number, _, proto = str(spec).strip().partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS or not number.isdigit():
        return None, ""
    return port_number(number), proto


def port_number(value: Any) -> int | None:
    """A port, 1 to 65535, from a number or its text; None for anything else."""
    try:
        port = int(str(value))
    except ValueError:
        return None
    return port if 1 <= port <= 65535 else None


# -- Container -> Announcement ----------------------------------------------------------------


def matches_filters(labels: Mapping[str, str], label_filters: Iterable[str]) -> bool:
    """True when the labels satisfy every `--filter label=K[=V]` (Docker's semantics)."""
    for spec in label_filters:
        key, sep, value = spec.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def opted_in(container: Container, all_containers: bool) -> bool | str:
    """True or False, or a problem string when the enable label is not a boolean."""
    raw = container.labels.get(LABEL_ENABLE)
    if raw is None:
        return all_containers
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    return f"label {LABEL_ENABLE}={_show(raw)} is not true or false"


def service_name(container: Container) -> str:
    """The sidekick.service label, else the basename of the image repository."""
    if LABEL_SERVICE in container.labels:
        return container.labels[LABEL_SERVICE]
    image = container.image.split("@", 1)[0]
    repository, _, tag = image.rpartition(":")
    if repository and "/" not in tag:
        image = repository
    return image.rsplit("/", 1)[-1]


Endpoint = tuple[int, str, int, str]  # (container port, address, announced port, protocol)


def address_mode(container: Container, config: Config) -> str | None:
    """ "host" or "container" (label sidekick.address, else --address); None when the label
    is neither. A host-network container has no address of its own: always "host"."""
    raw = container.labels.get(LABEL_ADDRESS)
    mode = config.address if raw is None else raw.strip().lower()
    if mode not in {"host", "container"}:
        return None
    return "host" if container.host_network else mode


def announce(container: Container, config: Config) -> Announcement:
    """The registrations a container should have now (none while stopped, paused or unhealthy)."""
    enabled = opted_in(container, config.all_containers)
    if isinstance(enabled, str):
        return Announcement(problem=enabled)
    if not enabled or not container.running or container.paused:
        return Announcement()
    if container.health is not None and container.health != "healthy":
        return Announcement()
    service = service_name(container)
    if not SERVICE_RE.fullmatch(service) or len(service) > MAX_SERVICE_LENGTH:
        origin = f"label {LABEL_SERVICE}" if LABEL_SERVICE in container.labels else "image name"
        return Announcement(
            problem=f"service name {_show(service)} from {origin} must match "
            f"[A-Za-z0-9][A-Za-z0-9._-]* (at most {MAX_SERVICE_LENGTH} characters)"
        )
    mode = address_mode(container, config)
    if mode is None:
        raw = container.labels[LABEL_ADDRESS]
        return Announcement(problem=f"label {LABEL_ADDRESS}={_show(raw)} is not host or container")
    by_network = mode == "container"
    wanted = _wanted_ports(container)
    if isinstance(wanted, str):
        return Announcement(problem=wanted, by_network=by_network)
    if by_network:
        endpoints = _network_endpoints(container, wanted, config.network)
    else:
        endpoints = _endpoints(container, wanted, config.host_ip)
    if isinstance(endpoints, str):
        return Announcement(problem=endpoints, by_network=by_network)
    if not endpoints:
        if LABEL_ENABLE in container.labels:  # opted in by label, so say why nothing happens
            verb = "exposes" if by_network else "publishes"
            return Announcement(problem=f"opted in but {verb} no TCP port", by_network=by_network)
        return Announcement(by_network=by_network)
    registrations = _registrations(container, service, endpoints, config)
    if isinstance(registrations, str):
        return Announcement(problem=registrations, by_network=by_network)
    return Announcement(registrations, by_network=by_network)


def _registrations(
    container: Container, service: str, endpoints: list[Endpoint], config: Config
) -> tuple[Registration, ...] | str:
    """One registration per key and protocol. The IPv4 and IPv6 addresses of one port give
    one key (IPv4's); a TCP and a UDP port that give the same key both stay, so that merge()
    reports the duplicate instead of one being dropped unseen."""
    registrations: dict[tuple[str, str], Registration] = {}
    for container_port, ip, port, proto in endpoints:
        fields = {
            "prefix": config.prefix,
            "service": service,
            "port": port,
            "ip": f"[{ip}]" if ":" in ip else ip,
            "node": config.node,
            "container": container.name,
            "container_id": container.short_id,
            "container_port": container_port,
            "proto": proto,
        }
        try:
            key = templating.fill(config.key_template, fields, container.labels)
            value = templating.fill(config.value_template, fields, container.labels)
        except templating.TemplateError as exc:
            return str(exc)
        if not key_is_confined(key, config.prefix):
            return f"key {_show(key)} would fall outside {config.prefix}/"
        if (key, proto) not in registrations:
            registrations[key, proto] = Registration(
                key, value, container.id, container.name, proto
            )
    return tuple(registrations.values())


def _wanted_ports(container: Container) -> set[tuple[int, str]] | str | None:
    """The ports sidekick.port names ("8080", "53/udp", "80/tcp"), or None without the label."""
    raw = container.labels.get(LABEL_PORT)
    if raw is None:
        return None
    ports: set[tuple[int, str]] = set()
    for part in raw.split(","):
        port, proto = port_spec(part)
        if port is None:
            return f"label {LABEL_PORT}={_show(raw)} is not a list of ports 1-65535"
        ports.add((port, proto))
    return ports


def _network_endpoints(
    container: Container, wanted: set[tuple[int, str]] | None, network: str | None
) -> list[Endpoint] | str:
    """The container's own address on its network and its own ports (nothing published)."""
    have = _escaped(", ".join(n.network for n in container.networks) or "none", 200)
    name = container.labels.get(LABEL_NETWORK, network)
    if name is not None and not NETWORK_RE.fullmatch(name):
        return f"label {LABEL_NETWORK}={_show(name)} is not a Docker network name"
    if name is None:
        if len(container.networks) != 1:
            return (
                f"is on {len(container.networks)} networks ({have}): name one with "
                f"--network or label {LABEL_NETWORK}"
            )
        name = container.networks[0].network
        if not NETWORK_RE.fullmatch(name):
            return f"is on network {_show(name)}, which is not a Docker network name"
    attached = next((n for n in container.networks if n.network == name), None)
    addresses = [a for a in (attached.ipv4, attached.ipv6) if a] if attached else []
    if not addresses:
        return f"has no address on network {name} (its networks: {have})"
    ports = sorted(wanted) if wanted is not None else [(p, "tcp") for p in container.exposed_ports]
    endpoints = []
    for raw in addresses:
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            return f"has {_show(raw)} on network {name}, which is not an IP address"
        if unreachable(address):
            return f"has {_show(raw)} on network {name}, which other nodes cannot reach"
        endpoints += [(port, str(address), port, proto) for port, proto in ports]
    return sorted(set(endpoints), key=_endpoint_order)


def _endpoint_order(endpoint: Endpoint) -> tuple[bool, int, str, int, str]:
    container_port, address, port, proto = endpoint
    return (":" in address, port, proto, container_port, address)


def _endpoints(
    container: Container, wanted: set[tuple[int, str]] | None, host_ip: str | None
) -> list[Endpoint] | str:
    """Published ports at the node's address, IPv4 first, TCP before UDP, in a stable order."""
    if container.host_network:
        ports = (
            sorted(wanted) if wanted is not None else [(p, "tcp") for p in container.exposed_ports]
        )
        if ports and host_ip is None:
            return "host-network container needs the node's address (--host-ip)"
        return [(port, str(host_ip), port, proto) for port, proto in ports]
    if wanted is None:  # every published TCP port; UDP only when labelled
        bindings = [b for b in container.bindings if b.proto == "tcp"]
    else:
        bindings = [b for b in container.bindings if (b.container_port, b.proto) in wanted]
    if wanted is not None:
        missing = sorted(wanted - {(b.container_port, b.proto) for b in bindings})
        if missing:
            port, proto = missing[0]
            shown = f"{port}/udp" if proto == "udp" else str(port)
            return f"label {LABEL_PORT} names port {shown}, which is not published"
    endpoints = []
    for binding in bindings:
        try:
            address = ipaddress.ip_address(binding.host_ip.strip("[]") or "::")
            if address.is_unspecified and host_ip is not None:  # Docker's "all addresses"
                address = ipaddress.ip_address(host_ip)
        except ValueError:
            return f"published on {_show(binding.host_ip)}, which is not an IP address"
        if unreachable(address):  # all addresses with no --host-ip, or an IPv6 zone (fe80::1%eth0)
            if address.is_unspecified:
                return "port published on all addresses, and no --host-ip is known"
            return f"published on {_show(binding.host_ip)}, a scoped address"
        endpoints.append((binding.container_port, str(address), binding.host_port, binding.proto))
    return sorted(set(endpoints), key=_endpoint_order)


def key_is_confined(key: str, prefix: str) -> bool:
    """True when a key sits strictly under the prefix, with no empty, `.` or `..` segment."""
    if not key.startswith(prefix.rstrip("/") + "/") or not _SAFE_KEY_RE.fullmatch(key):
        return False
    rest = key[len(prefix.rstrip("/")) + 1 :].split("/")
    return all(part not in {"", ".", ".."} for part in rest)


def _show(text: str, limit: int = 60) -> str:
    """A label value safe to put in a one-line log message."""
    return repr(_escaped(text, limit))


def _escaped(text: str, limit: int) -> str:
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."


# -- Desired state and the plan ---------------------------------------------------------------


class Desired(NamedTuple):
    registrations: dict[str, Registration]
    duplicates: tuple[tuple[Registration, Registration], ...]  # (kept, dropped)


def merge(announcements: Iterable[Iterable[Registration]]) -> Desired:
    """All registrations of this node by key; on a duplicate key the first container wins."""
    by_key: dict[str, Registration] = {}
    duplicates = []
    for registrations in announcements:
        for registration in registrations:
            kept = by_key.setdefault(registration.key, registration)
            if kept is not registration:
                duplicates.append((kept, registration))
    return Desired(by_key, tuple(duplicates))


def plan(desired: Mapping[str, str], actual: Mapping[str, KeyState], lease: int) -> Plan:
    """The fewest writes that make etcd hold `desired` on `lease`.

    A plain key (no lease) that already holds the wanted value is adopted onto our lease
    without a change of value. A key on another lease is never written: with the wanted value
    it is announced already (its owner keeps it), with another value it is a clash. Keys on
    our lease that are no longer wanted are deleted. Every operation names the mod_revision
    it expects, so a concurrent change makes the write fail instead of clobber.
    """
    puts, deletes, clashes = [], [], []
    for key, value in sorted(desired.items()):
        state = actual.get(key)
        if state is None:
            puts.append(Put(key, value, 0))
        elif state.value == value:
            if state.lease == 0:  # a plain key (etcdctl, `sidekick register`): adopt it
                puts.append(Put(key, value, state.mod_revision))
            # on another live lease it is announced already, by its owner: leave it to them
        elif state.lease == lease:
            puts.append(Put(key, value, state.mod_revision))
        else:
            clashes.append(Clash(key, value, state.value, state.lease))
    for key, state in sorted(actual.items()):
        if state.lease == lease and key not in desired:
            deletes.append(Delete(key, state.mod_revision))
    return Plan(tuple(puts), tuple(deletes), tuple(clashes))
