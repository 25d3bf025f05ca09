"""The operator commands (register, deregister, ls, doctor) against real Docker and etcd.

Each command runs as `python -m sidekick ...` in a subprocess, scoped to this test's prefix
and containers, with an environment free of SIDEKICK_* variables.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import requests

from sidekick.hostaddr import local_addresses
from tests.conftest import TEST_LABEL, Containers, EtcdServer, free_port, wait_for
from tests.test_security import _pki, _tls_etcd  # noqa: F401 - the pki and tls_etcd fixtures

pytestmark = pytest.mark.integration

HOST_IP = "10.0.0.7"  # only ever written as a value: no traffic goes there
NODE = "node-a"


def published(port: int) -> dict[str, tuple[str, int]]:
    return {"80/tcp": ("127.0.0.1", port)}


class Result:
    """A finished command: exit code, stdout, stderr lines."""

    def __init__(self, done: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr
        self.err_lines = done.stderr.strip().splitlines()
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


Run = Callable[..., Result]


@pytest.fixture(name="sidekick")
def _sidekick(live_etcd: EtcdServer, scope: str, tmp_path: Path) -> Run:
    """Run a sidekick command scoped to this test: its prefix, its containers, its etcd."""
    env_file = tmp_path / "environment"
    env_file.touch()
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SIDEKICK_") and k not in {"COREOS_PRIVATE_IPV4", "NO_COLOR"}
    }

    def run(
        *args: str,
        etcd_endpoints: str | None = None,
        host_ip: str | None = HOST_IP,
        stdout: Any = None,
        timeout: float = 60,
    ) -> Result:
        command = [
            sys.executable,
            "-m",
            "sidekick",
            *args,
            "--etcd-endpoints",
            etcd_endpoints or live_etcd.url,
            "--prefix",
            f"/{scope}",
            "--environment-file",
            str(env_file),
            "--filter",
            f"label={TEST_LABEL}={scope}",
            "--node",
            NODE,
        ]
        if host_ip is not None:
            command += ["--host-ip", host_ip]
        started = time.monotonic()
        done = subprocess.run(
            command,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            timeout=timeout,
            check=False,
        )
        return Result(done, time.monotonic() - started)

    return run


def etcd_requests(etcd: EtcdServer) -> dict[str, float]:
    """gRPC requests etcd has started, by method (its own /metrics)."""
    text = requests.get(etcd.url + "/metrics", timeout=5).text
    found = re.finditer(
        r'^grpc_server_started_total\{grpc_method="(\w+)",[^}]*\} (\S+)$', text, re.M
    )
    return {match.group(1): float(match.group(2)) for match in found}


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


class TestRegister:
    """`sidekick register` announces once, as plain keys unless --ttl, and takes nothing."""

    def test_by_container_name(self, sidekick, containers: Containers, etcd, scope):
        """A named opted-in container: its key written as a plain key, exit 0."""
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "apache"})
        result = sidekick("register", web.name)
        assert result.code == 0, result
        key = f"/{scope}/apache-{port}"
        assert etcd.entries(f"/{scope}/")[key][:2] == (f"127.0.0.1:{port}", 0)
        assert f"registered {key} = 127.0.0.1:{port} (plain key, no lease)" in result.out

    def test_all_opted_in_containers(self, sidekick, containers, etcd, scope):
        """Without names: every opted-in running container, and no other."""
        a, b, c = free_port(), free_port(), free_port()
        containers.run(ports=published(a), labels={"sidekick.service": "a"})
        containers.run(ports=published(b), labels={"sidekick.service": "b"})
        containers.run(enable=None, ports=published(c), labels={"sidekick.service": "c"})
        result = sidekick("register")
        assert result.code == 0, result
        assert etcd.keys(f"/{scope}/") == {
            f"/{scope}/a-{a}": f"127.0.0.1:{a}",
            f"/{scope}/b-{b}": f"127.0.0.1:{b}",
        }

    def test_service_and_port(self, sidekick, etcd, scope):
        """--service/--port announce a backend that is no container, at the host IP or --ip."""
        assert sidekick("register", "--service", "apache", "--port", "8001").code == 0
        result = sidekick("register", "--service", "db", "--port", "5432", "--ip", "192.0.2.5")
        assert result.code == 0, result
        assert etcd.keys(f"/{scope}/") == {
            f"/{scope}/apache-8001": f"{HOST_IP}:8001",
            f"/{scope}/db-5432": "192.0.2.5:5432",
        }

    def test_ttl_puts_the_key_on_a_lease_that_expires(self, sidekick, etcd, scope):
        """--ttl N: the key is on a new lease of N seconds, and goes when it expires."""
        result = sidekick("register", "--service", "short", "--port", "80", "--ttl", "2")
        assert result.code == 0, result
        key = f"/{scope}/short-80"
        _, lease, _ = etcd.entries(f"/{scope}/")[key]
        assert lease != 0
        assert f"lease {lease:x}, expires in 2 s" in result.out
        wait_for(lambda: key not in etcd.keys(f"/{scope}/"), timeout=6, message="expiry")

    def test_plain_without_ttl_even_with_sidekick_ttl_set(self, sidekick, etcd, scope, tmp_path):
        """SIDEKICK_TTL in the environment file is the agent's: register still writes plain."""
        (tmp_path / "environment").write_text("SIDEKICK_TTL=5\n")
        assert sidekick("register", "--service", "p", "--port", "80").code == 0
        assert etcd.entries(f"/{scope}/")[f"/{scope}/p-80"][1] == 0

    def test_dry_run_writes_nothing(self, sidekick, containers, etcd, scope):
        """--dry-run prints each write it would make (key, value, lease) and writes nothing."""
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "dry"})
        result = sidekick("register", "--dry-run", web.name)
        assert result.code == 0, result
        assert f"dry-run: would put /{scope}/dry-{port} = 127.0.0.1:{port} (plain key" in result.out
        leased = sidekick("register", "--dry-run", "--ttl", "9", "--service", "s", "--port", "81")
        assert f"dry-run: would put /{scope}/s-81 = {HOST_IP}:81 (on a new lease of 9 s)" in (
            leased.out
        )
        assert etcd.keys(f"/{scope}/") == {}

    def test_waits_for_a_container_that_starts_late(self, sidekick, containers, etcd, scope):
        """As ExecStartPost=, the named container may not exist yet: register waits for it."""
        port = free_port()
        name = f"{scope}-late"
        result: list[Result] = []
        worker = threading.Thread(target=lambda: result.append(sidekick("register", name)))
        worker.start()
        time.sleep(1.5)
        containers.run(name=name, ports=published(port), labels={"sidekick.service": "late"})
        worker.join(30)
        assert result and result[0].code == 0, result
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/late-{port}": f"127.0.0.1:{port}"}

    def test_already_announced_plain(self, sidekick, etcd, scope):
        """Registering twice: the second run writes nothing and exits 0."""
        assert sidekick("register", "--service", "twice", "--port", "80").code == 0
        revision = etcd.entries(f"/{scope}/")[f"/{scope}/twice-80"][2]
        result = sidekick("register", "--service", "twice", "--port", "80")
        assert result.code == 0, result
        assert "already announced" in result.out
        assert etcd.entries(f"/{scope}/")[f"/{scope}/twice-80"][2] == revision


class TestRegisterOwnership:
    """register never overwrites a key held by another owner, nor detaches a key from a lease."""

    @pytest.mark.parametrize("ttl", [[], ["--ttl", "5"]])
    def test_same_value_on_a_lease_is_left_on_it(self, sidekick, etcd, scope, ttl):
        """The agent's key (same value, its lease): exit 0, 'already announced', lease kept."""
        key = f"/{scope}/svc-80"
        lease = etcd.grant(60)
        etcd.put(key, f"{HOST_IP}:80", lease=lease)
        before = etcd.entries(f"/{scope}/")[key]
        result = sidekick("register", "--service", "svc", "--port", "80", *ttl)
        assert result.code == 0, result
        assert f"already announced: {key}" in result.out and f"lease {lease:x}" in result.out
        assert etcd.entries(f"/{scope}/")[key] == before
        etcd.revoke(lease)

    def test_foreign_leased_key_is_never_overwritten(self, sidekick, etcd, scope):
        """Another value on another lease: refused with one stderr line, exit 1, key unchanged."""
        key = f"/{scope}/svc-80"
        lease = etcd.grant(60)
        etcd.put(key, "192.0.2.99:80", lease=lease)
        before = etcd.entries(f"/{scope}/")[key]
        result = sidekick("register", "--service", "svc", "--port", "80")
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "refused" in result.err_lines[0]
        assert f"lease {lease:x}" in result.err and "192.0.2.99:80" in result.err
        assert etcd.entries(f"/{scope}/")[key] == before
        etcd.revoke(lease)

    def test_foreign_plain_key_is_never_overwritten(self, sidekick, etcd, scope):
        """Another value as a plain key (another node's register): refused, exit 1."""
        key = f"/{scope}/svc-80"
        etcd.put(key, "192.0.2.98:80")
        before = etcd.entries(f"/{scope}/")[key]
        result = sidekick("register", "--service", "svc", "--port", "80", "--ttl", "5")
        assert result.code == 1, result
        assert "a plain key" in result.err
        assert etcd.entries(f"/{scope}/")[key] == before

    def test_one_refusal_does_not_stop_the_others(self, sidekick, containers, etcd, scope):
        """With several containers, the free keys are written and the held one refused."""
        free, held = free_port(), free_port()
        containers.run(ports=published(free), labels={"sidekick.service": "free"})
        containers.run(ports=published(held), labels={"sidekick.service": "held"})
        etcd.put(f"/{scope}/held-{held}", "192.0.2.97:1")
        result = sidekick("register")
        assert result.code == 1, result
        assert etcd.keys(f"/{scope}/") == {
            f"/{scope}/free-{free}": f"127.0.0.1:{free}",
            f"/{scope}/held-{held}": "192.0.2.97:1",
        }


class TestRegisterExitCodes:
    """Exit 1 nothing to register, 2 bad usage, 3 etcd unreachable; one stderr line each."""

    def test_container_not_found(self, sidekick, etcd, scope):
        """An unknown container: exit 1, one line naming it."""
        result = sidekick("register", "--wait", "0", f"{scope}-nonexistent")
        assert result.code == 1, result
        assert result.err_lines == [f"sidekick: error: no such container: {scope}-nonexistent"]
        assert etcd.keys(f"/{scope}/") == {}

    def test_not_opted_in(self, sidekick, containers):
        """A container without sidekick.enable=true: exit 1, and the line says so."""
        plain = containers.run(enable=None, ports=published(free_port()))
        result = sidekick("register", plain.name)
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "not opted in" in result.err_lines[0]

    def test_no_published_port(self, sidekick, containers):
        """An opted-in container that publishes nothing: exit 1."""
        bare = containers.run(labels={"sidekick.service": "bare"})
        result = sidekick("register", bare.name)
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "publishes no TCP port" in result.err_lines[0]

    def test_nothing_opted_in_at_all(self, sidekick, containers):
        """Without names and with no opted-in container: exit 1, 'nothing to register'."""
        containers.run(enable=None, ports=published(free_port()))
        result = sidekick("register")
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "nothing to register" in result.err_lines[0]

    @pytest.mark.parametrize(
        ("args", "named"),
        [
            (["--service", "apache"], "--service and --port"),
            (["--port", "80"], "--service and --port"),
            (["web", "--service", "a", "--port", "80"], "not both"),
            (["--service", "a/b", "--port", "80"], "--service"),
            (["--service", "a", "--port", "0"], "--port"),
            (["--service", "a", "--port", "80", "--ip", "nope"], "--ip"),
            (["--service", "a", "--port", "80", "--ttl", "1"], "--ttl"),
            (["--wait", "-1", "web"], "--wait"),
        ],
    )
    def test_bad_usage(self, sidekick, etcd, scope, args, named):
        """Each bad usage: exit 2 and one line naming the option."""
        result = sidekick("register", *args)
        assert result.code == 2, result
        assert len(result.err_lines) == 1 and named in result.err_lines[0], result
        assert etcd.keys(f"/{scope}/") == {}

    def test_no_host_ip_for_service(self, sidekick):
        """--service without --ip and without any host IP: exit 2, saying where one comes from."""
        result = sidekick("register", "--service", "a", "--port", "80", host_ip=None)
        assert result.code == 2, result
        assert len(result.err_lines) == 1
        assert "--host-ip" in result.err and "--ip" in result.err

    def test_etcd_unreachable(self, sidekick):
        """A dead etcd endpoint: a few quick retries, then exit 3 with one line."""
        result = sidekick(
            "register", "--service", "a", "--port", "80", etcd_endpoints=dead_endpoint()
        )
        assert result.code == 3, result
        assert len(result.err_lines) == 1 and "etcd unreachable" in result.err_lines[0]
        assert result.seconds < 20


class TestDeregister:
    """`sidekick deregister` deletes only this node's announcement."""

    def test_by_container_name(self, sidekick, containers, etcd, scope):
        """The inverse of register: the container's key is deleted, exit 0."""
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "web"})
        assert sidekick("register", web.name).code == 0
        result = sidekick("deregister", web.name)
        assert result.code == 0, result
        assert f"deregistered /{scope}/web-{port} = 127.0.0.1:{port}" in result.out
        assert etcd.keys(f"/{scope}/") == {}

    def test_all_opted_in_containers(self, sidekick, containers, etcd, scope):
        """Without names: every opted-in running container's key goes (a node drain)."""
        for service in ("a", "b"):
            containers.run(ports=published(free_port()), labels={"sidekick.service": service})
        etcd.put(f"/{scope}/other-1", "192.0.2.1:1")
        assert sidekick("register").code == 0
        result = sidekick("deregister")
        assert result.code == 0, result
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/other-1": "192.0.2.1:1"}

    def test_service_and_port_on_any_lease(self, sidekick, etcd, scope):
        """This node's value is deleted whoever holds it, e.g. a register --ttl lease."""
        assert sidekick("register", "--service", "s", "--port", "80", "--ttl", "30").code == 0
        result = sidekick("deregister", "--service", "s", "--port", "80")
        assert result.code == 0, result
        assert etcd.keys(f"/{scope}/") == {}

    def test_absent_key_is_fine(self, sidekick, etcd, scope):
        """Nothing registered: exit 0 and it says so (ExecStop= after a crash must not fail)."""
        result = sidekick("deregister", "--service", "s", "--port", "80")
        assert result.code == 0, result
        assert f"not registered: /{scope}/s-80" in result.out

    @pytest.mark.parametrize("leased", [False, True])
    def test_foreign_value_is_never_deleted(self, sidekick, etcd, scope, leased):
        """Another node's value, plain or on a lease: refused, exit 1, key kept."""
        key = f"/{scope}/s-80"
        lease = etcd.grant(60) if leased else 0
        etcd.put(key, "192.0.2.99:80", lease=lease)
        before = etcd.entries(f"/{scope}/")[key]
        result = sidekick("deregister", "--service", "s", "--port", "80")
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "refused" in result.err_lines[0]
        assert "not deleted" in result.err_lines[0]
        assert etcd.entries(f"/{scope}/")[key] == before
        if lease:
            etcd.revoke(lease)

    def test_dry_run_deletes_nothing(self, sidekick, etcd, scope):
        """--dry-run prints the delete it would make and makes none."""
        etcd.put(f"/{scope}/s-80", f"{HOST_IP}:80")
        result = sidekick("deregister", "--dry-run", "--service", "s", "--port", "80")
        assert result.code == 0, result
        assert f"dry-run: would delete /{scope}/s-80 = {HOST_IP}:80" in result.out
        assert etcd.keys(f"/{scope}/") == {f"/{scope}/s-80": f"{HOST_IP}:80"}

    def test_stopped_container_points_to_service_port(self, sidekick, containers):
        """A stopped container's ports are unknown: exit 1, the line suggests --service/--port."""
        web = containers.run(ports=published(free_port()), labels={"sidekick.service": "w"})
        web.stop(timeout=1)
        result = sidekick("deregister", web.name)
        assert result.code == 1, result
        assert len(result.err_lines) == 1 and "--service and --port" in result.err_lines[0]

    def test_container_not_found(self, sidekick, scope):
        """An unknown container: exit 1."""
        result = sidekick("deregister", f"{scope}-nonexistent")
        assert result.code == 1, result
        assert result.err_lines == [f"sidekick: error: no such container: {scope}-nonexistent"]

    def test_bad_usage(self, sidekick):
        """--port without --service: exit 2."""
        result = sidekick("deregister", "--port", "80")
        assert result.code == 2, result
        assert len(result.err_lines) == 1 and "--service and --port" in result.err_lines[0]

    def test_etcd_unreachable(self, sidekick):
        """A dead etcd endpoint: exit 3 with one line."""
        result = sidekick(
            "deregister", "--service", "s", "--port", "80", etcd_endpoints=dead_endpoint()
        )
        assert result.code == 3, result
        assert len(result.err_lines) == 1 and "etcd unreachable" in result.err_lines[0]


class TestLs:
    """`sidekick ls` shows every key under the prefix, its owner, TTL and container."""

    def fill(self, sidekick, containers, etcd, scope) -> dict[str, Any]:
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "web"})
        assert sidekick("register", web.name).code == 0
        lease = etcd.grant(60)
        etcd.put(f"/{scope}/other-81", "192.0.2.9:81", lease=lease)
        etcd.put(f"/{scope}/static-82", "192.0.2.10:82")
        return {"port": port, "name": web.name, "lease": lease}

    def test_table_piped(self, sidekick, containers, etcd, scope):
        """Piped: a plain aligned table, one line per key, owner and TTL and container."""
        made = self.fill(sidekick, containers, etcd, scope)
        result = sidekick("ls")
        assert result.code == 0, result
        assert "\033" not in result.out
        *lines, summary = result.out.splitlines()
        assert lines[0].split() == ["KEY", "VALUE", "OWNER", "TTL", "CONTAINER"]
        assert (
            summary == "3 keys; 3 owners (1 lease, 2 plain keys); 1 node (2 keys of no known node)"
        )
        rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
        port, lease = made["port"], made["lease"]
        mine = [f"127.0.0.1:{port}", "plain", f"({NODE})", "-", made["name"]]
        assert rows[f"/{scope}/web-{port}"] == mine
        other = rows[f"/{scope}/other-81"]
        assert other[:3] == ["192.0.2.9:81", "lease", f"{lease:x}"]
        assert 50 <= int(other[3].rstrip("s")) <= 60 and other[4] == "-"
        assert rows[f"/{scope}/static-82"] == ["192.0.2.10:82", "plain", "-", "-"]
        value_column = lines[0].index("VALUE")
        assert all(line[value_column - 2 : value_column] == "  " for line in lines)
        assert all(line[value_column] != " " for line in lines)
        etcd.revoke(lease)

    def test_json(self, sidekick, containers, etcd, scope):
        """--json: one document with every key, its lease in hex (or null), TTL and container."""
        made = self.fill(sidekick, containers, etcd, scope)
        result = sidekick("ls", "--json")
        assert result.code == 0, result
        document = json.loads(result.out)
        assert document["prefix"] == f"/{scope}"
        by_key = {entry["key"]: entry for entry in document["registrations"]}
        mine = by_key[f"/{scope}/web-{made['port']}"]
        assert (mine["lease"], mine["ttl"], mine["container"], mine["this_node"]) == (
            None,
            None,
            made["name"],
            True,
        )
        other = by_key[f"/{scope}/other-81"]
        assert other["lease"] == f"{made['lease']:x}" and 50 <= other["ttl"] <= 60
        assert other["this_node"] is False
        etcd.revoke(made["lease"])

    def test_this_node(self, sidekick, containers, etcd, scope, tmp_path):
        """--this-node: the keys this node's containers announce and those on its agent lease
        (named by the lease file), nothing else, and not one Range request: no prefix read."""
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "web"})
        assert sidekick("register", web.name).code == 0
        agent_lease, other = etcd.grant(60), etcd.grant(60)
        etcd.put(f"/{scope}/old-90", f"{HOST_IP}:90", lease=agent_lease)
        for n in range(20):
            etcd.put(f"/{scope}/other-{n}", "192.0.2.9:1", lease=other)
        etcd.put(f"/{scope}/static-82", "192.0.2.10:82")
        lease_file = tmp_path / "lease"
        lease_file.write_text(f"{agent_lease:x}\n")
        before = etcd_requests(etcd)
        result = sidekick("ls", "--this-node", "--lease-file", str(lease_file))
        after = etcd_requests(etcd)
        assert result.code == 0, result
        *lines, summary = result.out.splitlines()
        rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
        assert sorted(rows) == [f"/{scope}/old-90", f"/{scope}/web-{port}"]
        assert rows[f"/{scope}/old-90"][1:4] == ["lease", f"{agent_lease:x}", f"({NODE})"]
        assert rows[f"/{scope}/web-{port}"][-1] == web.name
        assert summary == "2 keys; 2 owners (1 lease, 1 plain key); 1 node"
        assert after.get("Range", 0) - before.get("Range", 0) == 0
        etcd.revoke(agent_lease)  # a lease file naming a lease that is gone: containers only
        result = sidekick("ls", "--this-node", "--lease-file", str(lease_file), "--json")
        document = json.loads(result.out)
        assert [e["key"] for e in document["registrations"]] == [f"/{scope}/web-{port}"]
        assert document["summary"]["keys"] == 1
        etcd.revoke(other)

    def test_by_node_and_service(self, sidekick, etcd, scope):
        """--by-node and --service read the names back out of the keys ({node} and {service}
        in the key template): exact names, both filters together, a summary of what is shown."""
        template = "{prefix}/{node}-{service}-{port}"
        leases = {node: etcd.grant(60) for node in ("n1", "n10", "n2")}
        for node, service, port in [
            ("n1", "web", 80),
            ("n1", "web2", 81),
            ("n10", "web", 80),
            ("n2", "db", 5432),
        ]:
            etcd.put(f"/{scope}/{node}-{service}-{port}", f"192.0.2.1:{port}", lease=leases[node])

        def keys(*args: str) -> list[str]:
            result = sidekick("ls", "--key-template", template, *args)
            assert result.code == 0, result
            return [line.split()[0] for line in result.out.splitlines()[1:-1]]

        assert keys("--by-node", "n1") == [f"/{scope}/n1-web-80", f"/{scope}/n1-web2-81"]
        assert keys("--service", "web") == [f"/{scope}/n1-web-80", f"/{scope}/n10-web-80"]
        assert keys("--by-node", "n1", "--service", "web2") == [f"/{scope}/n1-web2-81"]
        result = sidekick("ls", "--key-template", template, "--service", "web")
        assert result.out.splitlines()[-1] == "2 keys; 2 owners (2 leases, 0 plain keys); 2 nodes"
        none = sidekick("ls", "--key-template", template, "--by-node", "n3")
        assert (none.code, none.out) == (0, "")
        assert f"no keys under /{scope}/ of node n3" in none.err
        for lease in leases.values():
            etcd.revoke(lease)

    def test_filter_the_template_cannot_tell(self, sidekick):
        """--by-node with a key template without {node}: exit 2, one line naming the option."""
        result = sidekick("ls", "--by-node", "n2")
        assert result.code == 2, result
        assert len(result.err_lines) == 1 and result.err_lines[0].startswith(
            "sidekick: error: --by-node: the key template {prefix}/{service}-{port} has no {node}"
        )

    def test_status_is_an_alias(self, sidekick, etcd, scope):
        """`sidekick status` prints what `sidekick ls` prints."""
        etcd.put(f"/{scope}/a-1", "192.0.2.1:1")
        assert sidekick("status").out == sidekick("ls").out != ""

    def test_coloured_on_a_terminal(self, sidekick, etcd, scope):
        """On a terminal the table is coloured."""
        etcd.put(f"/{scope}/a-1", "192.0.2.1:1")
        primary, secondary = pty.openpty()
        try:
            result = sidekick("ls", stdout=secondary)
            os.close(secondary)
            secondary = -1
            output = b""
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(primary)
            if secondary >= 0:
                os.close(secondary)
        assert result.code == 0, result
        assert b"\033[1mKEY" in output and f"/{scope}/a-1".encode() in output

    def test_empty_prefix(self, sidekick, scope):
        """No keys: exit 0, a note on stderr, nothing on stdout."""
        result = sidekick("ls")
        assert (result.code, result.out) == (0, "")
        assert f"no keys under /{scope}/" in result.err

    def test_bad_configuration(self, sidekick):
        """A bad option: exit 2 with one line naming it."""
        result = sidekick("ls", "--key-template", "/elsewhere/{service}")
        assert result.code == 2, result
        assert len(result.err_lines) == 1 and "--key-template" in result.err_lines[0]

    def test_etcd_unreachable(self, sidekick):
        """A dead etcd endpoint: exit 3 with one line."""
        result = sidekick("ls", etcd_endpoints=dead_endpoint())
        assert result.code == 3, result
        assert len(result.err_lines) == 1 and "etcd unreachable" in result.err_lines[0]


class TestDoctor:
    """`sidekick doctor`: one marked line per check; exit 0 when all hold, 1 otherwise."""

    def test_all_good(self, sidekick, agent_factory, containers, etcd, scope, tmp_path):
        """An agent announcing a good container: every line ok, exit 0, no probe key left."""
        agent_factory(lease_file="agent.lease")
        port = free_port()
        web = containers.run(ports=published(port), labels={"sidekick.service": "web"})
        key = f"/{scope}/web-{port}"
        wait_for(lambda: key in etcd.keys(f"/{scope}/"), message=key)
        own = next(  # an address of this host other nodes could reach (not lo, not a bridge)
            (
                ip
                for ip, nic in local_addresses().items()
                if not nic.bridge
                and not ip_address(ip).is_loopback
                and "%" not in ip
                and not ip_address(ip).is_link_local
            ),
            None,
        )
        host_ip = own or HOST_IP  # a machine with only lo and bridges: one warning, said below
        result = sidekick("doctor", "--lease-file", str(tmp_path / "agent.lease"), host_ip=host_ip)
        assert result.code == 0, result
        lines = result.out.splitlines()
        if own is None:
            assert [line for line in lines if line[0] not in "✓·"] == [
                f"! host IP {HOST_IP} is not an address of this host (fine behind NAT or a load "
                "balancer's address; otherwise check --host-ip / COREOS_PRIVATE_IPV4); "
                "from --host-ip"
            ]
        else:
            assert all(line[0] in "✓·" for line in lines), result.out
            assert f"host IP {own}, from --host-ip" in result.out
        text = result.out
        assert "Docker reachable" in text and "API " in text
        assert f"etcd reachable at {etcd.url}: version 3." in text
        assert "is healthy (GET /health)" in text and f"API answers at {etcd.url}/v3/" in text
        assert "a lease can be granted" in text
        assert f"a key can be written and deleted under /{scope}/" in text
        assert "1 containers in scope: 1 to announce (1 keys), 0 skipped" in text
        lease = etcd.entries(f"/{scope}/")[key][1]
        assert f"1 keys in etcd on lease {lease:x}" in text
        assert f"the agent's lease {lease:x} (in {tmp_path / 'agent.lease'}) is alive" in text
        assert web.name and set(etcd.keys(f"/{scope}/")) == {key}

    def test_no_agent_running(self, sidekick, containers, scope, tmp_path):
        """A container to announce and no agent: its key is missing, said as such, exit 1."""
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "web"})
        result = sidekick("doctor", "--lease-file", str(tmp_path / "none"))
        assert result.code == 1, result
        assert f"1 of 1 keys are not in etcd (/{scope}/web-{port})" in result.out
        assert "is `sidekick run` running on this node?" in result.out
        assert f"no lease id in {tmp_path / 'none'}" in result.out

    def test_loopback_host_ip_warned(self, sidekick):
        """A loopback host IP is a warning in doctor, naming what run does with it."""
        result = sidekick("doctor", host_ip="127.0.0.1")
        assert "! host IP 127.0.0.1 is a loopback address" in result.out
        assert "refuses it without --force-host-ip" in result.out

    def test_etcd_dead(self, sidekick):
        """A dead etcd endpoint: its line is marked failed, exit 1."""
        dead = dead_endpoint()
        result = sidekick("doctor", etcd_endpoints=dead)
        assert result.code == 1, result
        assert f"✗ etcd not reachable: etcd at {dead}: connection refused" in result.out

    def test_bad_configuration(self, sidekick):
        """Configuration that cannot even be read: exit 2 with one line naming the option."""
        result = sidekick("doctor", "--ttl", "1")
        assert result.code == 2, result
        assert result.err_lines == ["sidekick: error: --ttl: must be at least 2, got 1"]

    def test_no_host_ip(self, sidekick):
        """No host IP from anywhere: failed, exit 1."""
        result = sidekick("doctor", host_ip=None)
        assert result.code == 1, result
        assert "✗ --host-ip: no host IP" in result.out

    def test_skipped_containers_with_reasons(self, sidekick, containers, etcd, scope):
        """Bad labels fail with the reason; a key held by another owner fails naming it."""
        evil = containers.run(
            ports=published(free_port()), labels={"sidekick.service": "../../etc"}
        )
        port = free_port()
        containers.run(ports=published(port), labels={"sidekick.service": "taken"})
        etcd.put(f"/{scope}/taken-{port}", "192.0.2.9:1")
        result = sidekick("doctor")
        assert result.code == 1, result
        assert f"✗ container {evil.name} skipped: service name" in result.out
        assert f"/{scope}/taken-{port} is held by a plain key with 192.0.2.9:1" in result.out


class TestOverTLS:
    """The one-shot commands use the same etcd TLS options as the agent."""

    def test_register_ls_doctor_over_tls(self, sidekick, tls_etcd, pki, scope):
        """With --etcd-ca/--etcd-cert/--etcd-key: register writes, ls reads, doctor passes."""
        tls = [
            "--etcd-ca",
            str(pki / "ca.pem"),
            "--etcd-cert",
            str(pki / "client.pem"),
            "--etcd-key",
            str(pki / "client.key"),
        ]
        result = sidekick(
            "register", "--service", "s", "--port", "80", *tls, etcd_endpoints=tls_etcd.url
        )
        assert result.code == 0, result
        assert tls_etcd.keys(f"/{scope}/") == {f"/{scope}/s-80": f"{HOST_IP}:80"}
        listed = sidekick("ls", "--json", *tls, etcd_endpoints=tls_etcd.url)
        assert [r["key"] for r in json.loads(listed.out)["registrations"]] == [f"/{scope}/s-80"]
        doctor = sidekick("doctor", *tls, etcd_endpoints=tls_etcd.url)
        assert doctor.code == 0, doctor
        assert f"etcd reachable at {tls_etcd.url}" in doctor.out
