"""Is the node's address (--host-ip, COREOS_PRIVATE_IPV4) one that other nodes can reach?

Runs on: the main thread, once at start-up (`run`) or in `doctor`. local_addresses() reads this
host's interfaces (IPv4 through the SIOCGIFADDR ioctl, IPv6 from /proc/net/if_inet6, bridges
from /sys/class/net/NAME/bridge) without iproute2; judge() is pure.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path
from typing import NamedTuple

SIOCGIFADDR = 0x8915
SYS_NET = Path("/sys/class/net")


class Interface(NamedTuple):
    name: str
    bridge: bool  # a Linux bridge (docker0, br-..., virbr0): other nodes do not reach it


class Verdict(NamedTuple):
    refuse: bool  # loopback or a bridge: wrong for certain; `run` refuses unless forced
    text: str


def local_addresses() -> dict[str, Interface]:
    """This host's addresses -> their interface (empty when nothing can be read)."""
    found: dict[str, Interface] = {}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
                found[socket.inet_ntoa(answer[20:24])] = _interface(name)
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            fields = line.split()
            if len(fields) == 6:
                address = ipaddress.IPv6Address(int(fields[0], 16))
                found[str(address)] = _interface(fields[5])
    return found


def _interface(name: str) -> Interface:
    return Interface(name, (SYS_NET / name / "bridge").exists())


def judge(ip: str, addresses: dict[str, Interface]) -> Verdict | None:
    """What is wrong with announcing `ip` from this host, or None when nothing is."""
    address = ipaddress.ip_address(ip)
    if address.is_loopback:
        return Verdict(True, f"host IP {ip} is a loopback address: other nodes cannot reach it")
    interface = addresses.get(str(address))
    if interface is not None and interface.bridge:
        return Verdict(
            True,
            f"host IP {ip} belongs to the bridge {interface.name} (a container network): "
            "other nodes cannot reach it",
        )
    if addresses and interface is None:
        return Verdict(
            False,
            f"host IP {ip} is not an address of this host (fine behind NAT or a load "
            "balancer's address; otherwise check --host-ip / COREOS_PRIVATE_IPV4)",
        )
    return None
