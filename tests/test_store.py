"""Store against a real etcd: a node's own keys at a cost that ignores the fleet, and which
failures are settings (EtcdConfigError) rather than outages (EtcdUnavailable)."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sidekick.config import Endpoint, EtcdSecurity
from sidekick.model import KeyState
from sidekick.store import (
    MAX_TXN_OPS,
    EtcdConfigError,
    EtcdError,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
    Store,
)
from tests.conftest import EtcdServer, free_port
from tests.test_security import (  # noqa: F401 - the pki, tls_etcd and auth_etcd fixtures
    AGENT_PASSWORD,
    AuthEtcd,
    TlsEtcd,
    _auth_etcd,
    _pki,
    _tls_etcd,
)

pytestmark = pytest.mark.integration


def store_for(url: str, security: EtcdSecurity | None = None, timeout: float = 3) -> Store:
    scheme, rest = url.split("://")
    host, port = rest.rsplit(":", 1)
    return Store([Endpoint(scheme, host, int(port))], timeout, security)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_many(etcd: EtcdServer, items: dict[str, str], lease: int = 0) -> None:
    """Many puts, MAX_TXN_OPS to a transaction."""
    keys = list(items)
    for start in range(0, len(keys), MAX_TXN_OPS):
        success = []
        for key in keys[start : start + MAX_TXN_OPS]:
            put: dict[str, Any] = {"key": b64(key), "value": b64(items[key])}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        etcd.post("kv/txn", {"success": success})


def delete_prefix(etcd: EtcdServer, prefix: str) -> None:
    end = bytearray(prefix.encode())
    end[-1] += 1
    etcd.post("kv/deleterange", {"key": b64(prefix), "range_end": base64.b64encode(end).decode()})


class Recorder:
    """Counts a store's HTTP requests by path and keeps each answer's body."""

    def __init__(self, store: Store) -> None:
        self.paths: list[str] = []
        self.bodies: list[bytes] = []
        for client in store._clients:
            client.session.post = self._wrap(client.session.post)  # type: ignore[method-assign]

    def _wrap(self, post: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(url: str, *args: Any, **kwargs: Any) -> Any:
            answer = post(url, *args, **kwargs)
            self.paths.append(url.split("/v3", 1)[1])
            self.bodies.append(answer.content)
            return answer

        return recorded

    def clear(self) -> None:
        self.paths.clear()
        self.bodies.clear()

    def sizes(self) -> list[int]:
        """Each answer's size with the numbers that grow with every write (revisions, raft
        term, TTL) left out: what the read carried, not when it ran."""
        pattern = rb'"(revision|raft_term|TTL)":"-?\d+"'
        return [len(re.sub(pattern, b"", body)) for body in self.bodies]


@pytest.fixture(name="prefix")
def _prefix(etcd: EtcdServer, scope: str) -> Iterator[str]:
    yield f"/{scope}/"
    delete_prefix(etcd, f"/{scope}/")


class TestReadPrefixInPages:
    """read_prefix(prefix, page=N): the keys of one read, in answers of at most N keys."""

    def test_same_keys_as_one_answer(self, etcd: EtcdServer, prefix: str) -> None:
        put_many(etcd, {f"{prefix}k{n:03d}": f"v{n}" for n in range(250)})
        etcd.put(prefix.rstrip("/") + "x/outside", "no")  # past the prefix's range end
        store = store_for(etcd.url)
        recorder = Recorder(store)
        whole = store.read_prefix(prefix)
        recorder.clear()
        assert store.read_prefix(prefix, page=100) == whole
        assert len(whole[0]) == 250
        assert recorder.paths == ["/kv/range"] * 3

    def test_one_revision_for_every_page(self, etcd: EtcdServer, prefix: str) -> None:
        """A key put between two pages is not in the read: every page is read at the first
        page's revision."""
        put_many(etcd, {f"{prefix}k{n:03d}": "v" for n in range(30)})
        store = store_for(etcd.url)
        post = store._post

        def put_after_first(path: str, payload: dict[str, Any], subject: str | None = None) -> Any:
            answer = post(path, payload, subject)
            if "revision" not in payload:
                etcd.put(f"{prefix}k999", "late")
            return answer

        store._post = put_after_first  # type: ignore[method-assign]
        keys, revision = store.read_prefix(prefix, page=10)
        assert sorted(keys) == [f"{prefix}k{n:03d}" for n in range(30)]
        assert f"{prefix}k999" in store_for(etcd.url).read_prefix(prefix)[0]
        assert revision < store_for(etcd.url).read_prefix(prefix)[1]


class TestLeaseKeys:
    """lease_keys: the TTL and exactly the keys on one lease, in one request."""

    def test_only_the_keys_on_the_lease(self, etcd: EtcdServer, prefix: str) -> None:
        """Keys of another lease and plain keys under the same prefix are not listed."""
        mine, other = etcd.grant(30), etcd.grant(30)
        put_many(etcd, {f"{prefix}a": "1", f"{prefix}b": "2"}, lease=mine)
        put_many(etcd, {f"{prefix}c": "3"}, lease=other)
        put_many(etcd, {f"{prefix}plain": "4"})
        store = store_for(etcd.url)
        recorder = Recorder(store)
        ttl, keys = store.lease_keys(mine)
        assert 0 < ttl <= 30
        assert sorted(keys) == [f"{prefix}a", f"{prefix}b"]
        assert recorder.paths == ["/lease/timetolive"]
        assert store.lease_keys(other)[1] == [f"{prefix}c"]
        etcd.revoke(mine)
        etcd.revoke(other)

    def test_lease_without_keys(self, etcd: EtcdServer) -> None:
        """A live lease holding nothing: its TTL and no keys."""
        lease = etcd.grant(30)
        ttl, keys = store_for(etcd.url).lease_keys(lease)
        assert 0 < ttl <= 30
        assert keys == []
        etcd.revoke(lease)

    def test_revoked_lease(self, etcd: EtcdServer, prefix: str) -> None:
        """A revoked lease: -1 and no keys."""
        lease = etcd.grant(30)
        put_many(etcd, {f"{prefix}a": "1"}, lease=lease)
        etcd.revoke(lease)
        assert store_for(etcd.url).lease_keys(lease) == (-1, [])


class TestReadKeys:
    """read_keys: the state of the keys asked for, MAX_TXN_OPS to a transaction."""

    def test_300_keys_some_absent(self, etcd: EtcdServer, prefix: str) -> None:
        """Present keys come back with value, lease and mod_revision; absent keys do not."""
        lease = etcd.grant(30)
        wanted = [f"{prefix}k{i:03}" for i in range(300)]
        put_many(etcd, {key: f"v{key[-3:]}" for key in wanted[:100]}, lease=lease)
        put_many(etcd, {key: f"p{key[-3:]}" for key in wanted[100:200]})  # plain keys
        # wanted[200:] are absent
        store = store_for(etcd.url)
        recorder = Recorder(store)
        found = store.read_keys(wanted)
        expected = {
            key: KeyState(value=value, lease=held, mod_revision=revision)
            for key, (value, held, revision) in etcd.entries(prefix).items()
        }
        assert len(expected) == 200
        assert found == expected
        assert found[wanted[0]].lease == lease and found[wanted[150]].lease == 0
        assert recorder.paths == ["/kv/txn"] * math.ceil(300 / MAX_TXN_OPS)
        etcd.revoke(lease)

    def test_requests_per_batch(self, etcd: EtcdServer, prefix: str) -> None:
        """ceil(n / 128) transactions: 128 keys in one, 129 in two, none for no keys."""
        store = store_for(etcd.url)
        recorder = Recorder(store)
        for count in (0, 1, MAX_TXN_OPS, MAX_TXN_OPS + 1):
            recorder.clear()
            assert store.read_keys([f"{prefix}absent{i}" for i in range(count)]) == {}
            assert len(recorder.paths) == math.ceil(count / MAX_TXN_OPS), count

    @pytest.mark.parametrize(
        "answer",
        [
            {"responses": "odd"},
            {"responses": [{"response_range": {"kvs": [{"key": "not base64!"}]}}]},
            {"responses": [{"response_range": {"kvs": [{"key": "L2E=", "lease": "x"}]}}]},
        ],
    )
    def test_odd_answer(self, etcd: EtcdServer, answer: dict[str, Any]) -> None:
        """An answer that is not etcd's shape is an EtcdError, not a crash."""
        store = store_for(etcd.url)
        store._post = lambda *args, **kwargs: answer  # type: ignore[method-assign]
        with pytest.raises(EtcdError, match="unexpected answer"):
            store.read_keys(["/a"])

    def test_metrics_count_the_transactions(self, etcd: EtcdServer, prefix: str) -> None:
        """etcd's own Txn counter grows by ceil(n / 128) for a read of n keys."""
        keys = [f"{prefix}m{i}" for i in range(300)]
        put_many(etcd, {key: "x" for key in keys[::2]})
        before = txn_count(etcd)
        assert len(store_for(etcd.url).read_keys(keys)) == 150
        assert txn_count(etcd) - before == 3

    def test_cost_ignores_other_keys_under_the_prefix(self, etcd: EtcdServer, prefix: str) -> None:
        """5,000 foreign keys under the prefix change neither the requests nor their answers."""
        lease = etcd.grant(60)
        mine = {f"{prefix}node-a/svc-{i}": f"10.0.0.1:{8000 + i}" for i in range(10)}
        put_many(etcd, mine, lease=lease)
        wanted = [*mine, f"{prefix}node-a/not-yet"]
        store = store_for(etcd.url)
        recorder = Recorder(store)

        def node_read() -> tuple[int, list[str], dict[str, KeyState]]:
            ttl, keys = store.lease_keys(lease)
            return ttl, sorted(keys), store.read_keys(wanted)

        _, keys_before, states_before = node_read()
        paths_before, sizes_before = list(recorder.paths), recorder.sizes()
        foreign = {
            f"{prefix}node-{n}/svc-{i}": f"10.1.{n}.{i}:80" for n in range(500) for i in range(10)
        }
        put_many(etcd, foreign)
        recorder.clear()
        _, keys_after, states_after = node_read()
        assert (keys_after, states_after) == (keys_before, states_before)
        assert recorder.paths == paths_before == ["/lease/timetolive", "/kv/txn"]
        assert recorder.sizes() == sizes_before
        # the prefix read the agent no longer makes would have carried every foreign key
        recorder.clear()
        assert len(store.read_prefix(prefix)[0]) == len(mine) + len(foreign)
        assert recorder.sizes()[0] > 100 * sum(sizes_before)
        etcd.revoke(lease)


def txn_count(etcd: EtcdServer) -> int:
    text = requests.get(etcd.url + "/metrics", timeout=5).text
    found = re.search(r'grpc_server_started_total\{[^}]*grpc_method="Txn"[^}]*\} (\d+)', text)
    return int(found.group(1)) if found else 0


class TestTLSErrors:
    """A TLS handshake either side refuses is an EtcdTLSError naming the certificate settings."""

    def test_good_settings_work(self, tls_etcd: TlsEtcd, pki: Path) -> None:
        """The CA and a client certificate of that CA: requests pass."""
        security = EtcdSecurity(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        store = store_for(tls_etcd.url, security)
        lease = store.grant(30)
        ttl, keys = store.lease_keys(lease)
        assert 0 < ttl <= 30 and keys == []

    def test_no_client_certificate(self, tls_etcd: TlsEtcd, pki: Path) -> None:
        """etcd 3.5 ends the handshake with a "bad certificate" alert."""
        store = store_for(tls_etcd.url, EtcdSecurity(ca=pki / "ca.pem"))
        with pytest.raises(EtcdTLSError) as caught:
            store.grant(5)
        message = str(caught.value)
        assert message.startswith(f"etcd at {tls_etcd.url} refused the TLS handshake")
        assert f"client certificate: none; CA: {pki / 'ca.pem'}" in message
        assert "bad certificate" in message
        assert "\n" not in message

    def test_client_certificate_of_another_ca(self, tls_etcd: TlsEtcd, pki: Path) -> None:
        """A client certificate from a CA etcd does not trust: the same alert, the file named."""
        security = EtcdSecurity(
            ca=pki / "ca.pem", cert=pki / "rogue-server.pem", key=pki / "rogue-server.key"
        )
        with pytest.raises(EtcdTLSError) as caught:
            store_for(tls_etcd.url, security).read_keys(["/a"])
        message = str(caught.value)
        assert "refused the TLS handshake" in message
        assert f"client certificate: {pki / 'rogue-server.pem'}" in message
        assert "bad certificate" in message

    def test_unknown_server_ca(self, tls_etcd: TlsEtcd, pki: Path) -> None:
        """A server certificate our CA did not sign: we refuse it."""
        security = EtcdSecurity(
            ca=pki / "rogue-ca.pem", cert=pki / "client.pem", key=pki / "client.key"
        )
        store = store_for(tls_etcd.url, security)
        with pytest.raises(EtcdTLSError) as caught:
            store.lease_keys(1)
        message = str(caught.value)
        assert f"etcd at {tls_etcd.url} presented a certificate we do not accept" in message
        assert f"CA: {pki / 'rogue-ca.pem'}" in message
        assert "CERTIFICATE_VERIFY_FAILED" in message
        with pytest.raises(EtcdTLSError):
            store.health()

    def test_missing_ca_file(self, tls_etcd: TlsEtcd, pki: Path, tmp_path: Path) -> None:
        """A CA file that is not there is a TLS setting error, not a crash."""
        store = store_for(tls_etcd.url, EtcdSecurity(ca=tmp_path / "gone.pem"))
        with pytest.raises(EtcdTLSError, match=r"gone\.pem"):
            store.grant(5)

    def test_several_endpoints(self, tls_etcd: TlsEtcd, pki: Path) -> None:
        """Every endpoint refusing TLS is a TLS error; one refusing while another is down is an
        outage, as retrying may still work."""
        dead = Endpoint("https", "127.0.0.1", free_port())
        live = Endpoint("https", "127.0.0.1", tls_etcd.client_port)
        alias = Endpoint("https", "127.0.0.1", tls_etcd.client_port)
        security = EtcdSecurity(ca=pki / "ca.pem")
        with pytest.raises(EtcdTLSError):
            Store([live, alias], 3, security).grant(5)
        with pytest.raises(EtcdUnavailable) as caught:
            Store([live, dead], 3, security).grant(5)
        assert not isinstance(caught.value, EtcdConfigError)


class TestAuthErrors:
    """Refused credentials and roles are EtcdConfigError naming the user and the keys."""

    def test_wrong_password(self, auth_etcd: AuthEtcd) -> None:
        """The user is named; the password is not."""
        wrong = "not-it-9"
        store = store_for(auth_etcd.url, EtcdSecurity(user="agent", password=wrong))
        with pytest.raises(EtcdConfigError) as caught:
            store.read_keys([f"{auth_etcd.prefix}/a"])
        assert "authentication failed for user agent" in str(caught.value)
        assert wrong not in str(caught.value)

    def test_no_user_where_auth_is_on(self, auth_etcd: AuthEtcd) -> None:
        """No user where auth is on: a config error (key reads need a user; leases do not)."""
        with pytest.raises(EtcdConfigError, match="requires authentication"):
            store_for(auth_etcd.url).read_keys([f"{auth_etcd.prefix}/a"])

    def test_role_without_permission(self, auth_etcd: AuthEtcd) -> None:
        """Keys outside the role: EtcdPermissionDenied naming the user and the keys."""
        store = store_for(auth_etcd.url, EtcdSecurity(user="agent", password=AGENT_PASSWORD))
        own = f"{auth_etcd.prefix}/a"
        assert store.read_keys([own]) == {}  # the role covers its prefix
        with pytest.raises(EtcdPermissionDenied) as caught:
            store.read_keys(["/elsewhere/a", "/elsewhere/b"])
        assert "user agent" in str(caught.value)
        assert "/elsewhere/a" in str(caught.value)
        with pytest.raises(EtcdPermissionDenied, match="prefix /elsewhere/ to user agent"):
            store.read_prefix("/elsewhere/")

    def test_lease_keys_under_auth(self, auth_etcd: AuthEtcd) -> None:
        """A user's own lease and keys read back through its role."""
        store = store_for(auth_etcd.url, EtcdSecurity(user="agent", password=AGENT_PASSWORD))
        lease = store.grant(30)
        key = f"{auth_etcd.prefix}/svc"
        store._post("/kv/put", {"key": b64(key), "value": b64("v"), "lease": str(lease)})
        ttl, keys = store.lease_keys(lease)
        assert ttl > 0 and keys == [key]
        assert store.read_keys([key])[key].lease == lease


class TestOutage:
    """A dead port is an outage, never a config error."""

    @pytest.mark.parametrize("scheme", ["http", "https"])
    def test_dead_port(self, scheme: str, pki: Path) -> None:
        """Connection refused: EtcdUnavailable for reads and leases alike."""
        store = Store(
            [Endpoint(scheme, "127.0.0.1", free_port())], 2, EtcdSecurity(ca=pki / "ca.pem")
        )
        for call in (lambda: store.lease_keys(1), lambda: store.read_keys(["/a"])):
            with pytest.raises(EtcdUnavailable) as caught:
                call()
            assert not isinstance(caught.value, EtcdConfigError)
