"""What the agent and the commands ask of etcd: leases, this node's keys, guarded transactions.

Runs on: whichever thread owns the instance (the lease thread has its own clone()). The
transport (endpoints with failover, users, TLS, errors sorted into outages and settings) is
sidekick.gateway's; its errors are re-exported here.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any, TextIO

from sidekick.config import Endpoint, EtcdSecurity
from sidekick.gateway import (
    EtcdConfigError,
    EtcdError,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
    Gateway,
)
from sidekick.model import Delete, KeyState, Put

__all__ = [
    "MAX_TXN_OPS",
    "DryRunStore",
    "EtcdConfigError",
    "EtcdError",
    "EtcdPermissionDenied",
    "EtcdTLSError",
    "EtcdUnavailable",
    "Store",
    "b64",
    "prefix_range_end",
    "unb64",
]

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


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


class Store(Gateway):
    """etcd v3 through the grpc-gateway: leases, this node's keys, guarded transactions."""

    dry_run = False  # DryRunStore: reads for real, writes nothing (the logs say "would")

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

    def read_prefix(self, prefix: str, page: int = 0) -> tuple[dict[str, KeyState], int]:
        """Every key under `prefix`, and the revision the read saw.

        With `page`, in range requests of at most `page` keys, every one at the first one's
        revision: the same consistent read, in answers that stay small (100,000 keys in one
        answer are some 20 MB of JSON, decoded all at once).
        """
        keys: dict[str, KeyState] = {}
        request: dict[str, Any] = {"key": b64(prefix), "range_end": prefix_range_end(prefix)}
        if page:
            request["limit"] = str(page)
        while True:
            answer = self._post("/kv/range", request, subject=f"prefix {prefix}")
            with _parsing("/kv/range"):
                keys.update(_key_states(answer))
                header = answer.get("header", {})
                revision = int(request.get("revision") or header.get("revision", 0))
                kvs = answer.get("kvs", [])
                if not (page and answer.get("more") and kvs):
                    return keys, revision
                last = base64.b64decode(kvs[-1]["key"])  # the next page starts past it
                request = {**request, "key": base64.b64encode(last + b"\0").decode()}
                request["revision"] = str(revision)

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
