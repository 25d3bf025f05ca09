"""Pure: Docker's documents as the model's Container records: an inspect, a `docker ps`
entry, a container just created (with its network's inspect), and a signal as Docker writes it.

Nothing here does I/O; missing or odd fields get harmless defaults, never an exception.

Runs on: whichever thread read the document: the loop's work (listings, inspects, events'
signals through intake.route; the main thread, or the events reader in the loop's turn) and
the look-ahead's helper threads (reads at `create`).
"""

from __future__ import annotations

import signal
from collections.abc import Collection, Mapping
from typing import Any

from sidekick.model import PROTOCOLS, Container, NetworkAddress, PortBinding, port_number, port_spec


def container_from_inspect(data: Mapping[str, Any]) -> Container:
    """Read a `docker inspect` document; missing or odd fields get harmless defaults."""
    config = _mapping(data.get("Config"))
    state = _mapping(data.get("State"))
    host_config = _mapping(data.get("HostConfig"))
    network = _mapping(data.get("NetworkSettings"))
    labels = {str(k): str(v) for k, v in _mapping(config.get("Labels")).items()}
    health = _mapping(state.get("Health")).get("Status")
    bindings: list[PortBinding] = []
    for spec, hosts in _mapping(network.get("Ports")).items():
        port, proto = port_spec(spec)
        if port is None or not isinstance(hosts, list):
            continue
        for raw_host in hosts:
            host = _mapping(raw_host)
            host_port = port_number(host.get("HostPort"))
            if host_port is not None:
                host_ip = str(host.get("HostIp") or "")
                bindings.append(PortBinding(port, host_ip, host_port, proto))
    exposed = sorted(
        {p for p in (_tcp_port(spec) for spec in _mapping(config.get("ExposedPorts"))) if p}
    )
    return Container(
        id=str(data.get("Id") or ""),
        name=str(data.get("Name") or "").lstrip("/"),
        image=str(config.get("Image") or data.get("Image") or ""),
        labels=labels,
        running=bool(state.get("Running")) and not bool(state.get("Restarting")),
        paused=bool(state.get("Paused")),
        health=str(health) if health else None,
        host_network=str(host_config.get("NetworkMode") or "") == "host",
        bindings=tuple(bindings),
        exposed_ports=tuple(exposed),
        stop_signal=stop_signal_of(data),
        networks=networks_of(network),
    )


def networks_of(network_settings: Mapping[str, Any]) -> tuple[NetworkAddress, ...]:
    """NetworkSettings.Networks (inspect and listing alike) as addresses by network name."""
    found = []
    for name, raw in _mapping(network_settings.get("Networks")).items():
        attached = _mapping(raw)
        found.append(
            NetworkAddress(
                str(name),
                str(attached.get("IPAddress") or ""),
                str(attached.get("GlobalIPv6Address") or ""),
            )
        )
    return tuple(sorted(found))


def signal_number(text: str | None) -> int | None:
    """A signal as Docker writes it ("15", "SIGWINCH", "WINCH") as its number; None if odd."""
    text = (text or "").strip().upper()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"  # `-p P:80` binds here


def container_as_started(
    created: Mapping[str, Any], network: Mapping[str, Any] | None
) -> Container | None:
    """What a container will be once started, from its inspect right after `create`.

    Labels, name, network mode and fixed published ports do not change between create and
    start, so a `start` needs no second look-up. `network` is the inspect document of the
    container's bridge network (None with host networking): where `-p P:80` binds is its
    host_binding_ipv4 option, and an internal network publishes nothing. None when only the
    started container can tell: a host port Docker picks at start (`-p 80`, `-P`, `-p 0:80`,
    a range), a healthcheck's verdict, networking of another kind or borrowed from another
    container, or more than one network.
    """
    if not knowable_at_create(created):
        return None
    host_config = _mapping(created.get("HostConfig"))
    if str(host_config.get("NetworkMode") or "") == "host":
        return container_from_inspect({**created, "State": {"Running": True}})
    if network is None or network.get("Driver") != "bridge" or network.get("Internal") is not False:
        return None
    default_ip = str(_mapping(network.get("Options")).get(HOST_BINDING_IPV4) or "")
    ports: dict[str, list[dict[str, str]]] = {}
    for spec, hosts in _mapping(host_config.get("PortBindings")).items():
        for raw_host in hosts:
            host = _mapping(raw_host)
            ports.setdefault(str(spec), []).append(
                {
                    "HostIp": str(host.get("HostIp") or default_ip),
                    "HostPort": str(host.get("HostPort")),
                }
            )
    return container_from_inspect(
        {**created, "State": {"Running": True}, "NetworkSettings": {"Ports": ports}}
    )


def knowable_at_create(created: Mapping[str, Any]) -> bool:
    """Whether container_as_started can tell from this inspect (and its network's) what the
    container will announce: no healthcheck, one network or the host's, only fixed ports."""
    config = _mapping(created.get("Config"))
    host_config = _mapping(created.get("HostConfig"))
    test = _mapping(config.get("Healthcheck")).get("Test")
    if isinstance(test, list) and test and test[0] != "NONE":
        return False
    if str(host_config.get("NetworkMode") or "") == "host":
        return True
    attached = _mapping(_mapping(created.get("NetworkSettings")).get("Networks"))
    if len(attached) > 1 or host_config.get("PublishAllPorts"):
        return False
    for hosts in _mapping(host_config.get("PortBindings")).values():
        if not isinstance(hosts, list):
            return False
        if any(port_number(_mapping(host).get("HostPort")) is None for host in hosts):
            return False
    return True


def stop_signal_of(inspected: Mapping[str, Any]) -> int | None:
    """What `docker stop` sends this container first (its image's or `--stop-signal`)."""
    return signal_number(str(_mapping(inspected.get("Config")).get("StopSignal") or "SIGTERM"))


def container_from_summary(
    summary: Any, healthy: Collection[str] | None = None
) -> Container | None:
    """A `docker ps` entry as a Container, or None when only an inspect can tell.

    The listing has the labels, the published ports and the state, so a reconcile needs no
    inspect per container, except for what the listing lacks: a host-network container's
    exposed ports, and a healthcheck's verdict (its status text is for people), which
    `healthy` gives when known (the ids a `health=healthy` listing returned).
    """
    if not isinstance(summary, Mapping):
        return None
    network_mode = str(_mapping(summary.get("HostConfig")).get("NetworkMode") or "")
    checked = has_healthcheck(summary)
    if summary.get("State") != "running" or network_mode == "host":
        return None
    if checked and healthy is None:
        return None
    verdict = None
    if checked and healthy is not None:
        verdict = "healthy" if summary.get("Id") in healthy else "not healthy"
    bindings, exposed = [], set()
    for raw_port in summary.get("Ports") or []:
        port = _mapping(raw_port)
        private, public = (
            port_number(port.get("PrivatePort")),
            port_number(port.get("PublicPort")),
        )
        proto = str(port.get("Type") or "")
        if private is not None and proto == "tcp":
            exposed.add(private)
        if proto in PROTOCOLS and private is not None and public is not None:
            bindings.append(PortBinding(private, str(port.get("IP") or ""), public, proto))
    names = summary.get("Names")
    own = [str(n) for n in names if str(n).count("/") == 1] if isinstance(names, list) else []
    return Container(
        id=str(summary.get("Id") or ""),
        name=own[0].lstrip("/") if own else "",
        image=str(summary.get("Image") or ""),
        labels={str(k): str(v) for k, v in _mapping(summary.get("Labels")).items()},
        running=True,
        paused=False,
        health=verdict,
        host_network=False,
        bindings=tuple(bindings),
        exposed_ports=tuple(sorted(exposed)),
        networks=networks_of(_mapping(summary.get("NetworkSettings"))),
    )


def has_healthcheck(summary: Mapping[str, Any]) -> bool:
    """Whether a `docker ps` entry is of a container with a healthcheck (its status says
    "(healthy)", "(unhealthy)" or "(health: starting)")."""
    return "health" in str(summary.get("Status") or "")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tcp_port(spec: Any) -> int | None:
    port, proto = port_spec(spec)
    return port if proto == "tcp" else None
