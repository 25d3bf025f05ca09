"""`sidekick doctor`: the checklist of what must hold for the agent to work.

Each check is one `Check` line. `run_checks` yields them as it goes (so a check that waits for a
timeout shows where it stands); `container_checks`, `render` and `exit_code` are pure.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple, TextIO

from sidekick.config import Config, ConfigError, Endpoint, require_host_ip
from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.model import Container, Delete, KeyState, Put
from sidekick.oneshot import assess, brief, holder
from sidekick.store import EtcdError, Store

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
MARKS = {OK: "✓", WARN: "!", FAIL: "✗", INFO: "·"}
ASCII_MARKS = {OK: "[ok]", WARN: "[warn]", FAIL: "[FAIL]", INFO: "[info]"}
COLORS = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m", INFO: "\033[2m"}
RESET = "\033[0m"
PROBE_DIR = ".sidekick-doctor"  # one level below the prefix: confd's `getvs "/test/*"` skips it


class Check(NamedTuple):
    status: str  # OK, WARN, FAIL or INFO
    text: str


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed, else 1 (warnings and notes do not fail)."""
    return 1 if any(check.status == FAIL for check in checks) else 0


def can_encode(stream: TextIO) -> bool:
    """Whether the stream takes the marks (a C locale without UTF-8 does not)."""
    try:
        "".join(MARKS.values()).encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def render(check: Check, color: bool = False, unicode: bool = True) -> str:
    """One line: the mark, then the text; the mark coloured on a terminal."""
    mark = (MARKS if unicode else ASCII_MARKS)[check.status]
    if color:
        mark = f"{COLORS[check.status]}{mark}{RESET}"
    return f"{mark} {check.text}"


def container_checks(
    containers: Sequence[Container], config: Config, actual: Mapping[str, KeyState] | None
) -> list[Check]:
    """One line per container in scope: what it would announce, or why it is skipped.

    A container whose labels cannot be honoured, or whose key another owner holds with another
    value (`actual`, when etcd could be read), fails; one that is not ready yet is a warning.
    """
    if not containers:
        scope = "is running" if config.all_containers else "opts in (label sidekick.enable=true)"
        return [Check(INFO, f"no running container in scope {scope}")]
    checks = []
    for container in sorted(containers, key=lambda c: c.name):
        assessment = assess(container, config)
        if not assessment.registrations:
            status = FAIL if assessment.problem else WARN if assessment.transient else INFO
            checks.append(Check(status, f"container {container.name} skipped: {assessment.reason}"))
            continue
        for registration in assessment.registrations:
            held = (actual or {}).get(registration.key)
            if held is not None and held.value != registration.value:
                checks.append(
                    Check(
                        FAIL,
                        f"container {container.name}: {registration.key} is held by "
                        f"{holder(held.lease)} with {held.value}; the agent would leave it "
                        f"(it wants {registration.value})",
                    )
                )
            else:
                checks.append(
                    Check(
                        OK,
                        f"container {container.name} would be announced: "
                        f"{registration.key} = {registration.value}",
                    )
                )
    return checks


def run_checks(
    config: Config,
    docker: DockerSource,
    store_for: Callable[[Sequence[Endpoint]], Store],
) -> Iterator[Check]:
    """Every check, in the order an operator would look (no retries: doctor says how it is now)."""
    yield Check(
        OK,
        f"configuration valid: prefix {config.prefix}, node {config.node}, ttl {config.ttl} s, "
        f"key {config.key_template} = {config.value_template}",
    )
    try:
        ip = require_host_ip(config)
        yield Check(OK, f"host IP {ip}, from {config.host_ip_source}")
    except ConfigError as exc:
        yield Check(FAIL, str(exc))

    docker_up = True
    try:
        info = docker.version()
        yield Check(
            OK,
            f"Docker reachable at {docker.url or 'the local socket'}: engine "
            f"{info.get('Version', '?')}, API {info.get('ApiVersion', '?')}",
        )
    except DockerUnavailable as exc:
        docker_up = False
        yield Check(FAIL, f"Docker not reachable: {brief(exc)}")

    live: list[Endpoint] = []
    for endpoint in config.etcd_endpoints:
        checks = list(_endpoint_checks(store_for([endpoint]), endpoint))
        if all(check.status == OK for check in checks):
            live.append(endpoint)
        yield from checks

    actual: dict[str, KeyState] | None = None
    if live:
        store = store_for(live)
        yield from _write_checks(store, config)
        try:
            actual, _ = store.read_prefix(config.prefix + "/")
        except EtcdError as exc:
            yield Check(FAIL, f"cannot read the keys under {config.prefix}/: {brief(exc)}")
    else:
        yield Check(FAIL, "no etcd endpoint works: lease and write checks not run")

    if docker_up:
        try:
            yield from container_checks(docker.running_containers(), config, actual)
        except DockerUnavailable as exc:
            yield Check(FAIL, f"cannot list containers: {brief(exc)}")
    else:
        yield Check(INFO, "containers not checked: Docker not reachable")


def _endpoint_checks(store: Store, endpoint: Endpoint) -> Iterator[Check]:
    """Reachable with its version; healthy (GET /health); the v3 API path answers."""
    try:
        version = store.version()
    except EtcdError as exc:
        yield Check(FAIL, f"etcd not reachable: {brief(exc)}")
        return
    yield Check(OK, f"etcd reachable at {endpoint.url}: version {version}")
    try:
        health = store.health()
        if str(health.get("health")) == "true":
            yield Check(OK, f"etcd at {endpoint.url} is healthy (GET /health)")
        else:
            reason = health.get("reason") or "no quorum?"
            yield Check(FAIL, f"etcd at {endpoint.url} is not healthy (GET /health): {reason}")
    except EtcdError as exc:
        yield Check(FAIL, f"etcd at {endpoint.url}: GET /health failed: {brief(exc)}")
    try:
        status = store.status()
        leader = int(status.get("leader", 0))
        yield Check(
            OK,
            f"etcd v3 API answers at {endpoint.url}{store.api_path} "
            f"(leader {leader:x}, raft term {status.get('raftTerm', '?')})",
        )
    except EtcdError as exc:
        yield Check(
            FAIL,
            f"etcd v3 API does not answer at {endpoint.url}{store.api_path} "
            f"(etcd 3.4 or newer is needed): {brief(exc)}",
        )


def _write_checks(store: Store, config: Config) -> Iterator[Check]:
    """A lease can be granted; a key can be written and deleted under the prefix; then revoked.

    The probe key is one level below the prefix, on the probe lease, so it never shows up in
    confd's `getvs "{prefix}/*"` and goes by itself if the delete fails.
    """
    try:
        lease = store.grant(config.ttl)
    except EtcdError as exc:
        yield Check(FAIL, f"cannot grant a lease: {brief(exc)}")
        return
    yield Check(OK, f"a lease can be granted (ttl {config.ttl} s, revoked after the next check)")
    key = f"{config.prefix}/{PROBE_DIR}/{config.node}-{secrets.token_hex(4)}"
    try:
        written, revision = store.txn([Put(key, "probe", 0)], lease)
        if not written:
            yield Check(FAIL, f"could not write {key}: it exists already")
        else:
            deleted, _ = store.txn([Delete(key, revision)], 0)
            if deleted:
                yield Check(OK, f"a key can be written and deleted under {config.prefix}/")
            else:
                yield Check(FAIL, f"{key} changed before it could be deleted")
    except EtcdError as exc:
        yield Check(FAIL, f"cannot write and delete {key}: {brief(exc)}")
    try:
        store.revoke(lease)
    except EtcdError as exc:
        yield Check(FAIL, f"lease {lease:x} was granted but cannot be revoked: {brief(exc)}")
