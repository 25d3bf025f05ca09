"""`sidekick doctor`: the checklist of what must hold for the agent to work.

Each check is one `Check` line. `run_checks` yields them as it goes (so a check that waits for a
timeout shows where it stands); `container_checks`, `render` and `exit_code` are pure.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from sidekick import hostaddr
from sidekick.config import Config, ConfigError, Endpoint, require_host_ip
from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.leasefile import DEFAULT_LEASE_FILE, LeaseFile
from sidekick.model import Container, Delete, KeyState, Put, Registration
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
    containers: Sequence[Container],
    config: Config,
    actual: Mapping[str, KeyState] | None,
    ttls: Mapping[int, int] | None = None,
) -> list[Check]:
    """A summary of the containers in scope, then every problem on a line of its own.

    `actual` holds the keys the containers want, as etcd has them (None when etcd could not be
    read); `ttls` the seconds left on the leases that hold them. A container whose labels
    cannot be honoured fails, one not ready yet warns; a wanted key another owner holds with
    another value fails, and so does a wanted key etcd lacks: no agent is announcing it. The
    full list of keys is `sidekick register --dry-run`'s or `sidekick ls --this-node`'s job.
    """
    if not containers:
        scope = "is running" if config.all_containers else "opts in (label sidekick.enable=true)"
        return [Check(INFO, f"no running container in scope {scope}")]
    skipped, wanted = [], []
    for container in sorted(containers, key=lambda c: c.name):
        assessment = assess(container, config)
        if not assessment.registrations:
            status = FAIL if assessment.problem else WARN if assessment.transient else INFO
            skipped.append(
                Check(status, f"container {container.name} skipped: {assessment.reason}")
            )
        wanted += [(container.name, r) for r in assessment.registrations]
    announced = len({name for name, _ in wanted})
    checks = [
        Check(
            INFO,
            f"{len(containers)} containers in scope: {announced} to announce "
            f"({len(wanted)} keys), {len(skipped)} skipped",
        ),
        *skipped,
    ]
    if actual is not None:
        checks += _key_checks(wanted, actual, ttls or {})
    return checks


def _key_checks(
    wanted: Sequence[tuple[str, Registration]],
    actual: Mapping[str, KeyState],
    ttls: Mapping[int, int],
) -> list[Check]:
    """Is each wanted key in etcd with this node's value, and on a live lease?"""
    checks, missing, by_lease = [], [], Counter[int]()
    for name, registration in wanted:
        held = actual.get(registration.key)
        if held is None:
            missing.append(registration.key)
        elif held.value != registration.value:
            checks.append(
                Check(
                    FAIL,
                    f"container {name}: {registration.key} is held by {holder(held.lease)} "
                    f"with {held.value}; the agent would leave it (it wants {registration.value})",
                )
            )
        else:
            by_lease[held.lease] += 1
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        checks.append(
            Check(
                FAIL,
                f"{len(missing)} of {len(wanted)} keys are not in etcd ({shown}): "
                "is `sidekick run` running on this node?",
            )
        )
    for lease, count in sorted(by_lease.items()):
        if lease == 0:
            checks.append(Check(INFO, f"{count} keys in etcd as plain keys: no lease keeps them"))
        elif ttls.get(lease, -1) > 0:
            checks.append(
                Check(OK, f"{count} keys in etcd on lease {lease:x} ({ttls[lease]} s left)")
            )
        else:
            checks.append(Check(FAIL, f"{count} keys on lease {lease:x}, which is gone"))
    return checks


def lease_file_check(path: Path, store: Store) -> Check:
    """Does the agent's lease file name a live lease?"""
    lease = LeaseFile(path).read()
    if lease is None:
        return Check(
            INFO,
            f"no lease id in {path}: no agent has run here since boot (or it uses another "
            "--lease-file)",
        )
    try:
        ttl = store.time_to_live(lease)
    except EtcdError as exc:
        return Check(FAIL, f"cannot ask etcd about the agent's lease {lease:x}: {brief(exc)}")
    if ttl > 0:
        return Check(OK, f"the agent's lease {lease:x} (in {path}) is alive: {ttl} s left")
    return Check(WARN, f"the agent's lease {lease:x} (in {path}) is gone: is the agent running?")


def run_checks(
    config: Config,
    docker: DockerSource,
    store_for: Callable[[Sequence[Endpoint]], Store],
    lease_file: Path = DEFAULT_LEASE_FILE,
) -> Iterator[Check]:
    """Every check, in the order an operator would look (no retries: doctor says how it is now)."""
    yield Check(
        OK,
        f"configuration valid: prefix {config.prefix}, node {config.node}, ttl {config.ttl} s, "
        f"key {config.key_template} = {config.value_template}",
    )
    try:
        ip = require_host_ip(config)
        verdict = hostaddr.judge(ip, hostaddr.local_addresses())
        if verdict is None:
            yield Check(OK, f"host IP {ip}, from {config.host_ip_source}")
        else:
            refused = (
                " (`sidekick run` refuses it without --force-host-ip)" if verdict.refuse else ""
            )
            yield Check(WARN, f"{verdict.text}; from {config.host_ip_source}{refused}")
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

    store = store_for(live) if live else None
    if store is not None:
        yield from _write_checks(store, config)
        yield lease_file_check(lease_file, store)
    else:
        yield Check(FAIL, "no etcd endpoint works: lease and write checks not run")

    if not docker_up:
        yield Check(INFO, "containers not checked: Docker not reachable")
        return
    try:
        containers = docker.running_containers()
    except DockerUnavailable as exc:
        yield Check(FAIL, f"cannot list containers: {brief(exc)}")
        return
    actual: dict[str, KeyState] | None = None
    ttls: dict[int, int] = {}
    if store is not None:
        try:
            actual, ttls = _own_keys(store, containers, config)
        except EtcdError as exc:
            yield Check(FAIL, f"cannot read this node's keys under {config.prefix}/: {brief(exc)}")
    yield from container_checks(containers, config, actual, ttls)


def _own_keys(
    store: Store, containers: Sequence[Container], config: Config
) -> tuple[dict[str, KeyState], dict[int, int]]:
    """The keys these containers want as etcd has them (never the whole prefix), and the
    seconds left on the leases that hold them."""
    keys = [r.key for c in containers for r in assess(c, config).registrations]
    actual = store.read_keys(keys)
    leases = sorted({state.lease for state in actual.values() if state.lease})
    return actual, {lease: store.time_to_live(lease) for lease in leases}


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
