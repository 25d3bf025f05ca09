"""The one-shot commands: `sidekick register` and `sidekick deregister`, for unit files and shells.

The decisions are pure functions (the first half of this module): which registrations a
target stands for, why a container announces nothing, and which keys to write, delete or
refuse given what etcd holds. The second half reads Docker and etcd, applies the decision in
guarded transactions and reports one line per key.

Ownership is the agent's rule, applied to a writer without a lease to keep alive: a key that
holds another value is never overwritten or deleted, whoever holds it; a key that already holds
exactly this node's value is the same backend and is left where it is. `model.plan` is not used
for writing because it adopts such a key onto the writer's lease: a plain `register` would
detach a key from the agent's lease, and a `register --ttl` would steal it onto a lease that
nobody renews.

Exit codes: 0 done, 1 nothing registered or something refused, 2 bad usage, 3 etcd unreachable.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TextIO, TypeVar

import tenacity

from sidekick import retry
from sidekick.config import Config, ConfigError, require_host_ip, unreachable
from sidekick.docker_source import DockerSource, DockerUnavailable
from sidekick.model import (
    LABEL_ENABLE,
    LABEL_PORT,
    LABEL_SERVICE,
    MAX_SERVICE_LENGTH,
    SERVICE_RE,
    Clash,
    Container,
    Delete,
    KeyState,
    Put,
    Registration,
    announce,
    matches_filters,
    merge,
    opted_in,
)
from sidekick.store import MAX_TXN_OPS, EtcdError, EtcdUnavailable, Store

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_ETCD = 0, 1, 2, 3
RETRY_ATTEMPTS = 4  # one try and three retries ...
RETRY_DEADLINE = 15.0  # ... started within this many seconds
TXN_ATTEMPTS = 3  # re-reads after a transaction lost a race
WAIT_POLL = 0.25  # seconds between looks at a container that is not ready yet

T = TypeVar("T")


class UsageError(ValueError):
    """The command line asks for something impossible (exit 2)."""


# -- pure: what a target stands for ----------------------------------------------------------


class Target(NamedTuple):
    """What the command line names: containers, or one backend that is not a container."""

    names: tuple[str, ...] = ()
    service: str | None = None
    port: int | None = None
    ip: str | None = None

    @property
    def is_service(self) -> bool:
        return self.service is not None or self.port is not None


def check_target(target: Target) -> None:
    """Refuse a command line that mixes or half-gives the two ways of naming a backend."""
    if target.is_service and target.names:
        raise UsageError("give container names or --service/--port, not both")
    if target.is_service and (target.service is None or target.port is None):
        raise UsageError("--service and --port go together")
    if target.ip is not None and not target.is_service:
        raise UsageError("--ip goes with --service and --port")
    if target.port is not None and not 1 <= target.port <= 65535:
        raise UsageError(f"--port: must be 1-65535, got {target.port}")
    if target.service is not None and (
        not SERVICE_RE.fullmatch(target.service) or len(target.service) > MAX_SERVICE_LENGTH
    ):
        raise UsageError(
            f"--service: must match [A-Za-z0-9][A-Za-z0-9._-]* "
            f"(at most {MAX_SERVICE_LENGTH} characters), got {target.service!r}"
        )


def service_registration(target: Target, config: Config) -> Registration:
    """The one registration of `--service NAME --port PORT [--ip IP]`, as the agent would write it.

    The backend is modelled as a host-network container that opts in with exactly that
    service and port, so the templates, the IPv6 brackets and the prefix check are the
    agent's own. `{container}` is the service name; `{container_id}` is empty.
    """
    check_target(target)
    if target.service is None or target.port is None:
        raise UsageError("--service and --port go together")
    if target.ip is not None:
        try:
            address = ipaddress.ip_address(target.ip.strip("[]"))
        except ValueError:
            raise UsageError(f"--ip: not an IP address: {target.ip!r}") from None
        if unreachable(address):
            raise UsageError(f"--ip: {target.ip} is not an address other nodes can reach")
        ip = str(address)
    else:
        try:
            ip = require_host_ip(config)
        except ConfigError as exc:
            raise UsageError(f"{exc} (or pass --ip)") from None
    backend = Container(
        id="",
        name=target.service,
        image="",
        labels={
            LABEL_ENABLE: "true",
            LABEL_SERVICE: target.service,
            LABEL_PORT: str(target.port),
        },
        running=True,
        paused=False,
        health=None,
        host_network=True,
        bindings=(),
        exposed_ports=(),
    )
    announcement = announce(backend, dataclasses.replace(config, host_ip=ip))
    if announcement.problem is not None or len(announcement.registrations) != 1:
        raise UsageError(announcement.problem or "the templates give no key for this backend")
    return announcement.registrations[0]


class Assessment(NamedTuple):
    """A container's registrations now, or why it has none (and whether waiting may help)."""

    registrations: tuple[Registration, ...] = ()
    reason: str = ""
    transient: bool = False  # not running, paused or not healthy yet: may change by itself
    problem: bool = False  # its labels cannot be honoured (the agent logs a warning)


def assess(container: Container, config: Config) -> Assessment:
    """What the agent would announce for this container now, and if nothing, why."""
    if not matches_filters(container.labels, config.label_filters()):
        shown = " ".join(f"--filter label={f}" for f in config.label_filters())
        return Assessment(reason=f"outside {shown}")
    enabled = opted_in(container, config.all_containers)
    if isinstance(enabled, str):
        return Assessment(reason=enabled, problem=True)
    if not enabled:
        if LABEL_ENABLE in container.labels:
            return Assessment(reason=f"opted out ({LABEL_ENABLE}={container.labels[LABEL_ENABLE]})")
        return Assessment(reason=f"not opted in (no label {LABEL_ENABLE}=true, and no --all)")
    if not container.running:
        return Assessment(reason="not running", transient=True)
    if container.paused:
        return Assessment(reason="paused", transient=True)
    if container.health is not None and container.health != "healthy":
        return Assessment(reason=f"health is {container.health}", transient=True)
    announcement = announce(container, config)
    if announcement.problem is not None:
        return Assessment(reason=announcement.problem, problem=True)
    if not announcement.registrations:
        return Assessment(reason="publishes no TCP port")
    return Assessment(registrations=announcement.registrations)


def registrations_while_up(container: Container, config: Config) -> Assessment:
    """The registrations a container has while it serves, even if it is paused or unhealthy now.

    For deregister: a stopped container has no published ports left to read, so it is refused
    with a hint instead.
    """
    if not container.running:
        return Assessment(
            reason="is not running, so its published ports are unknown: deregister it before "
            "`docker stop`, or name the backend with --service and --port"
        )
    return assess(container._replace(paused=False, health=None), config)


# -- pure: the decision against what etcd holds ----------------------------------------------


class Present(NamedTuple):
    """A key that already holds the wanted value; it is left as it is."""

    key: str
    value: str
    lease: int


class RegisterPlan(NamedTuple):
    puts: tuple[Put, ...] = ()
    present: tuple[Present, ...] = ()
    refused: tuple[Clash, ...] = ()


class DeregisterPlan(NamedTuple):
    deletes: tuple[tuple[Delete, KeyState], ...] = ()
    absent: tuple[str, ...] = ()
    refused: tuple[Clash, ...] = ()


def plan_register(
    wanted: Mapping[str, str], actual: Mapping[str, KeyState], leased: bool
) -> RegisterPlan:
    """The writes of a one-shot register, which never takes a key from another owner.

    - absent: written (guarded: it must still be absent);
    - the same value on a lease: already announced (by the agent, or an earlier
      `register --ttl`): left on its lease, never detached or moved;
    - the same value as a plain key: left, unless `leased` (`--ttl`), when it moves onto the
      new lease (guarded by its mod_revision) so that it expires as asked;
    - another value, plain or leased: refused.
    """
    puts, present, refused = [], [], []
    for key, value in sorted(wanted.items()):
        state = actual.get(key)
        if state is None:
            puts.append(Put(key, value, 0))
        elif state.value != value:
            refused.append(Clash(key, value, state.value, state.lease))
        elif leased and state.lease == 0:
            puts.append(Put(key, value, state.mod_revision))
        else:
            present.append(Present(key, value, state.lease))
    return RegisterPlan(tuple(puts), tuple(present), tuple(refused))


def plan_deregister(wanted: Mapping[str, str], actual: Mapping[str, KeyState]) -> DeregisterPlan:
    """Delete a key only while it holds this node's value (on any lease); refuse any other."""
    deletes, absent, refused = [], [], []
    for key, value in sorted(wanted.items()):
        state = actual.get(key)
        if state is None:
            absent.append(key)
        elif state.value == value:
            deletes.append((Delete(key, state.mod_revision), state))
        else:
            refused.append(Clash(key, value, state.value, state.lease))
    return DeregisterPlan(tuple(deletes), tuple(absent), tuple(refused))


# Markers of the usual connection failures in requests' and docker-py's long messages.
_CAUSES = (
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("No such file or directory", "no such socket"),
    ("Permission denied", "permission denied"),
    ("Connection reset", "connection reset"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
)


def brief(exc: BaseException) -> str:
    """An error on one readable line: "etcd at URL: connection refused", not a urllib3 dump."""
    text = " ".join(str(exc).split())
    head, sep, rest = text.partition(": ")  # URLs hold "://", never ": "
    for marker, cause in _CAUSES:
        if marker in rest:
            return f"{head}: {cause}"
    if not sep and any(marker in text for marker, _ in _CAUSES):
        return next(cause for marker, cause in _CAUSES if marker in text)
    return text if len(text) <= 300 else text[:297] + "..."


def holder(lease: int) -> str:
    """Who holds a key, in words."""
    return f"lease {lease:x}" if lease else "a plain key"


def batches(ops: Sequence[T], size: int = MAX_TXN_OPS) -> list[Sequence[T]]:
    return [ops[i : i + size] for i in range(0, len(ops), size)]


# -- I/O: Docker and etcd, with a short bounded retry ----------------------------------------


def retrying(*kinds: type[Exception]) -> tenacity.Retrying:
    """Retry a peer that did not answer: a few quick attempts, then the error goes up."""
    return retry.retrying(
        kinds,
        wait=retry.backoff(2.0, jitter=0.2, shortest=0.2),
        attempts=RETRY_ATTEMPTS,
        seconds=RETRY_DEADLINE,
    )


def with_retry(fn: Callable[[], T], *kinds: type[Exception]) -> T:
    return retrying(*kinds)(fn)


class Report:
    """stdout for what was done, one `sidekick: error:` line on stderr per failure."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.failed = False

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def error(self, message: str) -> None:
        self.failed = True
        print(f"sidekick: error: {message}", file=self.err, flush=True)

    def warning(self, message: str) -> None:
        print(f"sidekick: warning: {message}", file=self.err, flush=True)


def _inspect_until_ready(
    docker: DockerSource, name: str, config: Config, wait: float
) -> Assessment | None:
    """A named container's assessment, waiting up to `wait` s while it is missing or starting."""
    deadline = time.monotonic() + wait
    while True:
        container = with_retry(lambda: docker.inspect(name), DockerUnavailable)
        assessment = assess(container, config) if container is not None else None
        ready = assessment is not None and not assessment.transient
        if ready or time.monotonic() >= deadline:
            return assessment
        time.sleep(WAIT_POLL)


def _wanted(
    target: Target,
    config: Config,
    docker: Callable[[], DockerSource],
    report: Report,
    *,
    wait: float,
    deregistering: bool,
) -> dict[str, Registration] | int:
    """The target's registrations by key, or the exit code when there are none."""
    try:
        check_target(target)
        wanted = _collect(target, config, docker, report, wait=wait, deregistering=deregistering)
    except UsageError as exc:
        report.error(str(exc))
        return EXIT_USAGE
    if not wanted:
        if not report.failed:
            verb = "deregister" if deregistering else "register"
            scope = "" if config.all_containers else f" with {LABEL_ENABLE}=true"
            report.error(f"nothing to {verb}: no running container{scope} publishes a port")
        return EXIT_NOTHING
    return wanted


def _collect(
    target: Target,
    config: Config,
    docker: Callable[[], DockerSource],
    report: Report,
    *,
    wait: float,
    deregistering: bool,
) -> dict[str, Registration]:
    """The registrations the target stands for; every container that has none is reported."""
    if target.is_service:
        registration = service_registration(target, config)
        return {registration.key: registration}
    evaluate = registrations_while_up if deregistering else assess
    source = docker()
    found: list[tuple[Registration, ...]] = []
    try:
        for name in dict.fromkeys(target.names):  # each once, in the order given
            if deregistering:
                container = with_retry(functools.partial(source.inspect, name), DockerUnavailable)
                assessment = None if container is None else evaluate(container, config)
            else:
                assessment = _inspect_until_ready(source, name, config, wait)
            if assessment is None:
                waited = f" (waited {wait:g} s)" if wait and not deregistering else ""
                report.error(f"no such container: {name}{waited}")
            elif not assessment.registrations:
                waited = f" after {wait:g} s" if assessment.transient and wait else ""
                report.error(f"container {name} {_verb(assessment)}{assessment.reason}{waited}")
            else:
                found.append(assessment.registrations)
        if not target.names:
            for container in with_retry(source.running_containers, DockerUnavailable):
                assessment = evaluate(container, config)
                if assessment.problem:
                    report.warning(f"container {container.name} skipped: {assessment.reason}")
                found.append(assessment.registrations)
    except DockerUnavailable as exc:
        report.error(brief(exc))
    desired = merge(found)
    for kept, dropped in desired.duplicates:
        report.warning(duplicate_text(kept, dropped))
    return desired.registrations


def duplicate_text(kept: Registration, dropped: Registration) -> str:
    """One line on a key two registrations give: two containers, or one container's TCP and
    UDP ports of one number (the key template has no {proto})."""
    if kept.container_id == dropped.container_id and kept.proto != dropped.proto:
        return (
            f"{dropped.key}: container {kept.container_name} gives it to a {kept.proto.upper()} "
            f"and a {dropped.proto.upper()} port; the {kept.proto.upper()} port keeps it "
            "(put {proto} in --key-template to announce both)"
        )
    return (
        f"{dropped.key}: containers {kept.container_name} and {dropped.container_name} "
        f"give the same key; {kept.container_name} keeps it"
    )


def _verb(assessment: Assessment) -> str:
    return "" if assessment.reason.startswith("is ") else "has nothing to announce: "


def _apply(store: Store, ops: Sequence[Put | Delete], lease: int) -> tuple[list[str], bool]:
    """Apply ops in guarded transactions: (the keys written or deleted, all done).

    A transaction that lost a race (one of its keys changed since it was read) writes nothing;
    the caller reads again and plans afresh.
    """
    done: list[str] = []
    for batch in batches(ops):
        succeeded, _ = store.txn(batch, lease)
        if not succeeded:
            return done, False
        done += [op.key for op in batch]
    return done, True


def register(
    target: Target,
    config: Config,
    store: Store,
    docker: Callable[[], DockerSource],
    report: Report,
    *,
    lease_ttl: int | None = None,
    dry_run: bool = False,
    wait: float = 0.0,
) -> int:
    """Announce the target's registrations once; returns the exit code.

    Without `lease_ttl` the keys are plain; with it they go on one new lease of that many
    seconds, which nobody renews. With `wait`, named containers that do not exist yet, or are
    not running or not healthy yet, are looked at again until they are ready or time is up.
    """
    wanted = _wanted(target, config, docker, report, wait=wait, deregistering=False)
    if isinstance(wanted, int):
        return wanted
    values = {key: r.value for key, r in wanted.items()}
    ttl = lease_ttl or 0
    lease = 0
    written: list[str] = []
    todo = RegisterPlan()

    def report_done() -> None:
        done = RegisterPlan(
            puts=tuple(Put(key, values[key], 0) for key in written),
            present=tuple(p for p in todo.present if p.key not in written),
            refused=todo.refused,
        )
        _report_register(done, report, wanted, ttl, lease=lease, dry_run=False)

    try:
        for _attempt in range(TXN_ATTEMPTS):
            actual, _ = with_retry(lambda: store.read_prefix(config.prefix + "/"), EtcdUnavailable)
            todo = plan_register(values, actual, leased=ttl > 0)
            if dry_run:
                _report_register(todo, report, wanted, ttl, lease=0, dry_run=True)
                report.say("dry-run: nothing written")
                return EXIT_NOTHING if report.failed else EXIT_OK
            if todo.puts and ttl and not lease:
                lease = with_retry(lambda: store.grant(ttl), EtcdUnavailable)
            keys, complete = _apply(store, todo.puts, lease)
            written += keys
            if complete:
                break
        else:
            report.error("the keys kept changing while being written; gave up on the rest")
        if lease and not written:
            store.revoke(lease)
    except EtcdError as exc:
        todo = todo._replace(present=(), refused=())
        report_done()
        report.error(etcd_message(exc))
        return EXIT_ETCD
    report_done()
    return EXIT_NOTHING if report.failed else EXIT_OK


def etcd_message(exc: EtcdError) -> str:
    if isinstance(exc, EtcdUnavailable):
        return f"etcd unreachable (gave up after retries): {brief(exc)}"
    return f"etcd refused the request: {brief(exc)}"


def _report_register(
    todo: RegisterPlan,
    report: Report,
    wanted: Mapping[str, Registration],
    ttl: int,
    *,
    lease: int,
    dry_run: bool,
) -> None:
    for put in todo.puts:
        if not ttl:
            how = "plain key, no lease"
        elif dry_run:
            how = f"on a new lease of {ttl} s"
        else:
            how = f"lease {lease:x}, expires in {ttl} s"
        verb = "dry-run: would put" if dry_run else "registered"
        report.say(f"{verb} {put.key} = {put.value} ({how}){_of(wanted[put.key])}")
    for present in todo.present:
        report.say(
            f"already announced: {present.key} = {present.value} "
            f"(held by {holder(present.lease)}; left as it is){_of(wanted[present.key])}"
        )
    for clash in todo.refused:
        report.error(
            f"refused: {clash.key} holds {clash.held_value} ({holder(clash.held_lease)}), "
            f"not this node's {clash.wanted}; not overwritten "
            "(if it is stale, delete it with etcdctl del)"
        )


def _of(registration: Registration) -> str:
    return f" for container {registration.container_name}" if registration.container_id else ""


def deregister(
    target: Target,
    config: Config,
    store: Store,
    docker: Callable[[], DockerSource],
    report: Report,
    *,
    dry_run: bool = False,
) -> int:
    """Delete the target's keys once, only while they hold this node's value; the exit code."""
    wanted = _wanted(target, config, docker, report, wait=0.0, deregistering=True)
    if isinstance(wanted, int):
        return wanted
    values = {key: r.value for key, r in wanted.items()}
    deleted: dict[str, KeyState] = {}
    todo = DeregisterPlan()
    try:
        for _attempt in range(TXN_ATTEMPTS):
            actual, _ = with_retry(lambda: store.read_prefix(config.prefix + "/"), EtcdUnavailable)
            todo = plan_deregister(values, actual)
            if dry_run:
                _report_deregister(todo, report, dry_run=True)
                report.say("dry-run: nothing deleted")
                return EXIT_NOTHING if report.failed else EXIT_OK
            keys, complete = _apply(store, [op for op, _ in todo.deletes], 0)
            deleted.update({op.key: state for op, state in todo.deletes if op.key in keys})
            if complete:
                break
        else:
            report.error("the keys kept changing while being deleted; gave up on the rest")
    except EtcdError as exc:
        report.error(etcd_message(exc))
        return EXIT_ETCD
    done = DeregisterPlan(
        deletes=tuple((Delete(k, s.mod_revision), s) for k, s in deleted.items()),
        absent=tuple(k for k in todo.absent if k not in deleted),
        refused=todo.refused,
    )
    _report_deregister(done, report, dry_run=False)
    return EXIT_NOTHING if report.failed else EXIT_OK


def _report_deregister(todo: DeregisterPlan, report: Report, *, dry_run: bool) -> None:
    verb = "dry-run: would delete" if dry_run else "deregistered"
    for op, state in todo.deletes:
        was = f"on lease {state.lease:x}" if state.lease else "a plain key"
        report.say(f"{verb} {op.key} = {state.value} ({was})")
    for key in todo.absent:
        report.say(f"not registered: {key} (nothing to delete)")
    for clash in todo.refused:
        report.error(
            f"refused: {clash.key} holds {clash.held_value} ({holder(clash.held_lease)}), "
            f"not this node's {clash.wanted}; not deleted"
        )
