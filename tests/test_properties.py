"""Property tests (hypothesis) for the pure functions under hostile input.

For any inspect-like document the model either announces keys confined to the prefix with
values that are IP:port, or rejects the container with a one-line reason; it never raises.
The plan never touches a key another lease holds with another value, and applying it to
etcd's state gives what is desired for every key that is not a clash.
"""

from __future__ import annotations

import ipaddress
import re
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidekick.config import Config, ConfigError, load_config
from sidekick.docker_parse import container_from_inspect
from sidekick.model import (
    LABEL_ADDRESS,
    LABEL_ENABLE,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_SERVICE,
    Announcement,
    KeyState,
    Registration,
    announce,
    key_is_confined,
    merge,
    plan,
)

# Examples per property: 300 for inspect data and the plan, 200 for templates and keys;
# the whole file runs in about 5 s.
INSPECT_EXAMPLES = 300
TEMPLATE_EXAMPLES = 200
KEY_EXAMPLES = 200
PLAN_EXAMPLES = 300
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

# -- strategies ---------------------------------------------------------------------------

hashable_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
)
junk = st.one_of(
    hashable_junk,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
nasty_pieces = st.sampled_from(
    [
        "..",
        ".",
        "/",
        "../x",
        "a/b",
        "/test/x",
        "\x00",
        "\n",
        "\r\n",
        "\t",
        " ",
        "{prefix}",
        "{",
        "}",
        "%",
        ":",
        "[",
        "]",
        "@",
        "é",
        "\u202e",
        "\ufeff",
        "アパッチ",
        "\U0001f600",
        "apache",
        "true",
        "80",
    ]
)
long_text = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(100, 3000))
hostile_text = st.one_of(
    st.text(max_size=20),
    st.lists(nasty_pieces, max_size=6).map("".join),
    long_text,
)
port_number_like = st.one_of(
    st.integers(-10, 70_000),
    st.integers(),
    st.sampled_from(["80", "0", "65535", "65536", "-1", "080", " 80", "8_0", "+80", "٣", "²"]),
    st.text(max_size=6),
)
port_spec = st.one_of(
    st.builds(
        lambda port, proto: f"{port}{proto}",
        port_number_like,
        st.sampled_from(["/tcp", "/udp", "/sctp", "", "/TCP", "/tcp/x"]),
    ),
    hostile_text,
)
host_ip = st.one_of(
    st.sampled_from(
        [
            "",
            "0.0.0.0",
            "::",
            "[::]",
            "0:0::0",
            "127.0.0.1",
            "::1",
            "[::1]",
            "172.17.8.203",
            "::ffff:1.2.3.4",
            "fe80::1%eth0",
            "fe80::1%x;\ninclude /etc/passwd;",
            "not-an-ip",
            "999.1.1.1",
            "1.2.3.4/24",
        ]
    ),
    st.ip_addresses().map(str),
    hostile_text,
    junk,
)
binding = st.one_of(
    st.fixed_dictionaries({}, optional={"HostIp": host_ip, "HostPort": port_number_like}),
    junk,
)
ports = st.one_of(
    st.dictionaries(port_spec, st.one_of(st.lists(binding, max_size=4), junk), max_size=5),
    junk,
)
label_value = st.one_of(hostile_text, junk)
any_ip_text = st.ip_addresses().map(str)
network_name = st.one_of(st.sampled_from(["bridge", "overlay", "flannel", "a" * 300]), hostile_text)
attached = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "IPAddress": st.one_of(any_ip_text, host_ip),
            "GlobalIPv6Address": st.one_of(any_ip_text, host_ip),
        },
    ),
    junk,
)
networks = st.one_of(st.dictionaries(network_name, attached, max_size=3), junk)
labels = st.one_of(
    st.builds(
        lambda chosen, extra: {**extra, **chosen},
        st.fixed_dictionaries(
            {},
            optional={
                LABEL_ENABLE: st.one_of(
                    st.sampled_from(["true", "TRUE", " yes ", "1", "false", "maybe", ""]),
                    label_value,
                ),
                LABEL_SERVICE: st.one_of(
                    st.sampled_from(["web", "a" * 128, "a" * 129, "web\n", "../x", "a/b"]),
                    label_value,
                ),
                LABEL_PORT: st.one_of(
                    st.lists(port_spec, min_size=1, max_size=4).map(
                        lambda ps: ",".join(map(str, ps))
                    ),
                    label_value,
                ),
                LABEL_ADDRESS: st.one_of(st.sampled_from(["host", "container", "x"]), label_value),
                LABEL_NETWORK: st.one_of(network_name, label_value),
                "zone": label_value,
                "weight": label_value,
            },
        ),
        st.dictionaries(st.one_of(hostile_text, hashable_junk), label_value, max_size=5),
    ),
    # thousands of labels
    st.integers(1000, 3000).map(lambda n: {f"x.{i}": "v" * (i % 50) for i in range(n)}),
    junk,
)
image = st.one_of(
    st.sampled_from(
        [
            "dash/apache:latest",
            "reg:5000/team/apache:1.2",
            "apache@sha256:" + "a" * 64,
            "",
            ":",
            "/",
            "a/",
            "reg:5000/",
            "@",
            "x:y/z:",
        ]
    ),
    hostile_text,
    junk,
)
state = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "Running": st.one_of(st.just(True), st.booleans(), junk),
            "Paused": st.one_of(st.just(False), junk),
            "Restarting": st.one_of(st.just(False), junk),
            "Health": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "Status": st.one_of(
                            st.sampled_from(["healthy", "starting", "unhealthy", "none"]),
                            hostile_text,
                            junk,
                        )
                    },
                ),
                junk,
            ),
        },
    ),
    junk,
)
inspect_data = st.fixed_dictionaries(
    {},
    optional={
        "Id": st.one_of(
            st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), hostile_text
        ),
        "Name": st.one_of(st.sampled_from(["/web", "/..", "/a/../../b"]), hostile_text, junk),
        "Image": image,
        "Config": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "Image": image,
                    "Labels": labels,
                    "ExposedPorts": st.one_of(
                        st.dictionaries(port_spec, st.just({}), max_size=5), junk
                    ),
                },
            ),
            junk,
        ),
        "State": state,
        "HostConfig": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "NetworkMode": st.one_of(
                        st.sampled_from(["default", "bridge", "host", "none"]), junk
                    )
                },
            ),
            junk,
        ),
        "NetworkSettings": st.one_of(
            st.fixed_dictionaries({}, optional={"Ports": ports, "Networks": networks}),
            junk,
        ),
    },
)


def _doc(
    labels: Any, health: Any, mode: str, ports: Any, exposed: Any, attached_to: Any
) -> dict[str, Any]:
    return {
        "Id": "0123456789ab" * 5 + "cdef",
        "Name": "/web",
        "Config": {"Image": "dash/apache:latest", "Labels": labels, "ExposedPorts": exposed},
        "State": {"Running": True, "Paused": False, "Health": health},
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Ports": ports, "Networks": attached_to},
    }


def _with_faults(doc: dict[str, Any], faults: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """doc with each (path, value) fault written in, where the path still leads somewhere."""
    for path, value in faults:
        target: Any = doc
        for step in path[:-1]:
            target = target.get(step) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target[path[-1]] = value
    return doc


service_names = st.one_of(st.sampled_from(["web", "apache", "a.b_c-1", "a" * 128]), hostile_text)
good_specs = st.sampled_from(["80/tcp", "443/tcp", "8080/tcp", "53/udp"])
good_ip = st.one_of(
    st.sampled_from(["", "0.0.0.0", "::", "127.0.0.1", "172.17.8.203", "::1"]),
    st.ip_addresses().map(str),
)
good_ports = st.dictionaries(
    good_specs,
    st.lists(
        st.fixed_dictionaries(
            {"HostIp": good_ip, "HostPort": st.integers(1, 65535).map(str)},
        ),
        min_size=1,
        max_size=3,
    ),
    min_size=1,
    max_size=3,
)
good_labels = st.builds(
    lambda chosen, extra: {**extra, **chosen},
    st.fixed_dictionaries(
        {LABEL_ENABLE: st.sampled_from(["true", "TRUE", " yes ", "1", "on"])},
        optional={
            LABEL_SERVICE: st.sampled_from(["web", "apache", "a.b_c-1", "a" * 128]),
            LABEL_PORT: st.lists(
                st.sampled_from(["80", "443", "8080", "53/udp", "80/udp", "443/tcp"]),
                min_size=1,
                max_size=3,
            ).map(",".join),
            LABEL_ADDRESS: st.sampled_from(["host", "container", "Container "]),
            LABEL_NETWORK: st.sampled_from(["overlay", "bridge"]),
            "zone": st.sampled_from(["a", "eu-west-1", "rack/7"]),
            "weight": st.sampled_from(["1", "5", "10"]),
        },
    ),
    st.one_of(
        st.dictionaries(hostile_text, hostile_text, max_size=4),
        st.integers(1000, 3000).map(lambda n: {f"x.{i}": "v" * (i % 50) for i in range(n)}),
    ),
)
# Each fault replaces one field of a good document with something hostile.
FAULTS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("Id",): st.one_of(hostile_text, junk),
    ("Name",): st.one_of(st.sampled_from(["/..", "/a/../../b", "/a b"]), hostile_text, junk),
    ("Image",): image,
    ("Config",): junk,
    ("Config", "Image"): image,
    ("Config", "Labels"): labels,
    ("Config", "Labels", LABEL_ENABLE): label_value,
    ("Config", "Labels", LABEL_SERVICE): service_names,
    ("Config", "Labels", LABEL_PORT): st.one_of(
        st.lists(port_number_like, min_size=1, max_size=4).map(lambda ps: ",".join(map(str, ps))),
        label_value,
    ),
    ("Config", "ExposedPorts"): st.one_of(
        st.dictionaries(port_spec, st.just({}), max_size=5), junk
    ),
    ("State",): junk,
    ("State", "Running"): junk,
    ("State", "Paused"): junk,
    ("State", "Restarting"): junk,
    ("State", "Health"): state,
    ("HostConfig", "NetworkMode"): st.one_of(hostile_text, junk),
    ("Config", "Labels", LABEL_ADDRESS): label_value,
    ("Config", "Labels", LABEL_NETWORK): st.one_of(network_name, label_value),
    ("Config", "Labels", "zone"): st.one_of(
        st.sampled_from(["..", ".", "../../x", "a/../..", "", "a b", "a\nb", "/x", "x/"]),
        label_value,
    ),
    ("Config", "Labels", "weight"): label_value,
    ("NetworkSettings", "Networks"): networks,
    ("NetworkSettings", "Networks", "overlay"): attached,
    ("NetworkSettings", "Ports"): ports,
    ("NetworkSettings", "Ports", "80/tcp"): st.one_of(st.lists(binding, max_size=4), junk),
    ("NetworkSettings", "Ports", "8080/tcp"): st.lists(
        st.fixed_dictionaries(
            {
                "HostIp": st.sampled_from(
                    [
                        "fe80::1%eth0",
                        "fe80::1%x;\ninclude /etc/passwd;",
                        "0:0::0",
                        "::ffff:1.2.3.4",
                        "1.2.3.4/24",
                        "999.1.1.1",
                        "[::1",
                    ]
                ),
                "HostPort": st.integers(1, 65535).map(str),
            }
        ),
        min_size=1,
        max_size=2,
    ),
    ("NetworkSettings", "Ports", "443/tcp"): st.lists(
        st.fixed_dictionaries({"HostIp": host_ip, "HostPort": port_number_like}), max_size=3
    ),
}
fault = st.sampled_from(sorted(FAULTS)).flatmap(lambda path: st.tuples(st.just(path), FAULTS[path]))
# A running, opted-in container with 0-3 hostile fields: reaches every path of announce.
plausible_data = st.builds(
    _with_faults,
    st.builds(
        _doc,
        labels=good_labels,
        health=st.sampled_from([None, {"Status": "healthy"}]),
        mode=st.sampled_from(["bridge", "default", "host"]),
        ports=good_ports,
        exposed=st.dictionaries(good_specs, st.just({}), max_size=3),
        attached_to=st.dictionaries(
            st.sampled_from(["overlay", "bridge"]),
            st.fixed_dictionaries(
                {"IPAddress": st.sampled_from(["10.2.3.4", ""])},
                optional={"GlobalIPv6Address": st.sampled_from(["fd00::4", ""])},
            ),
            max_size=2,
        ),
    ),
    st.lists(fault, max_size=3),
)
any_data = st.one_of(plausible_data, inspect_data)
key_templates = st.sampled_from(
    [
        "{prefix}/{service}-{port}",
        "{prefix}/{node}/{service}-{port}",
        "{prefix}/{container}/{container_port}",
        "{prefix}/{ip}/{port}",
        "{prefix}/{service}/{container_id}",
        "{prefix}/{service}",
        "{prefix}/{service}-{port}-{proto}",
        "{prefix}/{label:zone}/{service}-{port}",
        "{prefix}/{service}-{label:weight}{label:zone}",
    ]
)
configs = st.builds(
    Config,
    prefix=st.sampled_from(["/test", "/a/b", "/lb.1"]),
    host_ip=st.sampled_from([None, "10.0.0.5", "fd00::5", "127.0.0.1"]),
    all_containers=st.booleans(),
    key_template=key_templates,
    node=st.sampled_from(["node1", "n.2-x_y"]),
    address=st.sampled_from(["host", "container"]),
    network=st.sampled_from([None, "overlay", "bridge"]),
)

# -- checks -------------------------------------------------------------------------------

VALUE_RE = re.compile(r"(?:(?P<v4>[0-9.]+)|\[(?P<v6>[0-9a-f:.]+)\]):(?P<port>[0-9]{1,5})")


def assert_is_address(value: str) -> None:
    """value is IP:port or [IPv6]:port, canonical, with a port 1-65535."""
    match = VALUE_RE.fullmatch(value)
    assert match is not None, value
    if match["v4"] is not None:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(match["v4"])
        assert str(address) == match["v4"]
    else:
        address = ipaddress.IPv6Address(match["v6"])
        assert str(address) == match["v6"]
    assert not address.is_unspecified
    assert 1 <= int(match["port"]) <= 65535


def assert_sound(result: Announcement, config: Config, check_values: bool = True) -> None:
    """Either confined registrations or a one-line problem, never both."""
    assert isinstance(result, Announcement)
    if result.problem is not None:
        assert isinstance(result.problem, str)
        assert result.registrations == ()
        assert "\n" not in result.problem
        assert "\x00" not in result.problem
        assert len(result.problem) < 400
        return
    # one key per port and protocol: only a TCP and a UDP port may share one (merge reports it)
    keys = [(r.key, r.proto) for r in result.registrations]
    assert len(keys) == len(set(keys))
    for registration in result.registrations:
        assert key_is_confined(registration.key, config.prefix), registration.key
        assert registration.key.startswith(config.prefix + "/")
        if check_values:
            assert_is_address(registration.value)


class TestHostileInspectData:
    @settings(max_examples=INSPECT_EXAMPLES, deadline=None, suppress_health_check=SLOW_DATA)
    @given(data=any_data, config=configs)
    def test_announce_never_raises(self, data: dict[str, Any], config: Config) -> None:
        """Any inspect-like dict gives confined keys with IP:port values, or a problem."""
        container = container_from_inspect(data)
        assert_sound(announce(container, config), config)

    @settings(max_examples=INSPECT_EXAMPLES, deadline=None, suppress_health_check=SLOW_DATA)
    @given(
        service=service_names,
        port_label=st.one_of(st.none(), hostile_text),
        bindings=st.lists(
            st.tuples(
                st.one_of(st.sampled_from([80, 443]), port_number_like),
                st.one_of(good_ip, host_ip),
                st.one_of(st.integers(1, 65535), port_number_like),
            ),
            max_size=6,
        ),
        config=configs,
    )
    def test_opted_in_running_container(
        self,
        service: str,
        port_label: str | None,
        bindings: list[tuple[Any, Any, Any]],
        config: Config,
    ) -> None:
        """A running, opted-in container with hostile labels and bindings is still sound."""
        container_labels = {LABEL_ENABLE: "true", LABEL_SERVICE: service}
        if port_label is not None:
            container_labels[LABEL_PORT] = port_label
        published: dict[str, list[dict[str, Any]]] = {}
        for container_port, ip, port in bindings:
            published.setdefault(f"{container_port}/tcp", []).append(
                {"HostIp": ip, "HostPort": port}
            )
        data = {
            "Id": "0" * 64,
            "Name": "/web",
            "Config": {"Image": "dash/apache", "Labels": container_labels},
            "State": {"Running": True},
            "NetworkSettings": {"Ports": published},
        }
        result = announce(container_from_inspect(data), config)
        assert_sound(result, config)
        if result.registrations:
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", service)

    @settings(max_examples=INSPECT_EXAMPLES, deadline=None, suppress_health_check=SLOW_DATA)
    @given(
        bindings=st.lists(
            st.tuples(
                st.sampled_from(["80/tcp", "443/tcp", "80"]),
                host_ip,
                st.one_of(st.integers(1, 65535), port_number_like),
            ),
            min_size=1,
            max_size=4,
        ),
        config=configs,
    )
    def test_published_addresses(
        self, bindings: list[tuple[str, Any, Any]], config: Config
    ) -> None:
        """Any HostIp/HostPort of a good container gives IP:port values or a problem."""
        published: dict[str, list[dict[str, Any]]] = {}
        for spec, ip, port in bindings:
            published.setdefault(spec, []).append({"HostIp": ip, "HostPort": port})
        data = {
            "Id": "0" * 64,
            "Name": "/web",
            "Config": {"Image": "dash/apache", "Labels": {LABEL_ENABLE: "true"}},
            "State": {"Running": True},
            "NetworkSettings": {"Ports": published},
        }
        assert_sound(announce(container_from_inspect(data), config), config)


class TestLabelsInKeys:
    @settings(max_examples=INSPECT_EXAMPLES, deadline=None, suppress_health_check=SLOW_DATA)
    @given(
        zone=st.one_of(
            st.sampled_from(["a", "eu-1", "rack/7", "..", "../..", "a/../../b", "/", "x/", ""]),
            hostile_text,
        ),
        weight=hostile_text,
        key_template=st.sampled_from(
            [
                "{prefix}/{label:zone}/{service}-{port}",
                "{prefix}/{service}-{port}.{label:zone}",
                "{prefix}/{label:zone}{label:weight}/{proto}/{port}",
            ]
        ),
        address=st.sampled_from(["host", "container"]),
        prefix=st.sampled_from(["/test", "/a/b"]),
    )
    def test_no_key_leaves_the_prefix(
        self, zone: str, weight: str, key_template: str, address: str, prefix: str
    ) -> None:
        """Whatever the labels hold, every key stays under the prefix; a plain zone is used."""
        data = {
            "Id": "0" * 64,
            "Name": "/web",
            "Config": {
                "Image": "dash/apache",
                "Labels": {
                    LABEL_ENABLE: "true",
                    LABEL_PORT: "80,53/udp",
                    "zone": zone,
                    "weight": weight,
                },
            },
            "State": {"Running": True},
            "NetworkSettings": {
                "Ports": {
                    "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                    "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
                },
                "Networks": {"overlay": {"IPAddress": "10.2.0.9"}},
            },
        }
        config = Config(prefix=prefix, key_template=key_template, address=address, node="n1")
        result = announce(container_from_inspect(data), config)
        assert_sound(result, config)
        for registration in result.registrations:
            assert zone in registration.key
        plain = re.fullmatch(r"[a-z0-9]{1,128}", zone) and re.fullmatch(r"[a-z0-9]{0,128}", weight)
        if plain:
            assert len(result.registrations) == 2, result


class TestHostileTemplates:
    template_pieces = st.one_of(
        st.sampled_from(
            [
                "{service}",
                "{port}",
                "{ip}",
                "{node}",
                "{container}",
                "{container_id}",
                "{container_port}",
                "{prefix}",
                "{port:d}",
                "{service:d}",
                "{port!r}",
                "{port:>3}",
                "{port:{service}}",
                "{proto}",
                "{label:zone}",
                "{label:weight}",
                "{label:Zone}",
                "{label:a..b}",
                "{label:}",
                "{label:zone:x}",
                "{label}",
                "{json}",
                "{json:weight,zone}",
                "{json:x y}",
                "{service[0]}",
                "{x}",
                "{}",
                "{",
                "}",
                "{{",
                "}}",
                "/",
                "..",
                "-",
                ":",
            ]
        ),
        st.text(alphabet=string.printable, max_size=3),
    )

    @settings(
        max_examples=TEMPLATE_EXAMPLES,
        deadline=None,
        # tmp_path only holds an empty environment file, the same for every example
        suppress_health_check=[*SLOW_DATA, HealthCheck.function_scoped_fixture],
    )
    @given(
        key_tail=st.lists(template_pieces, max_size=6).map("".join),
        value=st.lists(template_pieces, max_size=6).map("".join),
        data=any_data,
    )
    def test_accepted_templates_never_raise(
        self, tmp_path: Path, key_tail: str, value: str, data: dict[str, Any]
    ) -> None:
        """A template load_config accepts never makes announce raise; keys stay confined."""
        environment_file = tmp_path / "environment"
        environment_file.touch()
        flags = {
            "key_template": "{prefix}/" + key_tail,
            "value_template": value,
            "host_ip": "10.0.0.5",
            "all_containers": "true",
            "environment_file": environment_file,
        }
        try:
            config = load_config(flags, environ={})
        except ConfigError as exc:
            assert str(exc).startswith(("--key-template: ", "--value-template: "))
            return
        seed = {
            "Id": "0" * 64,
            "Name": "/web",
            "Config": {"Image": "dash/apache", "Labels": {LABEL_ENABLE: "true"}},
            "State": {"Running": True},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "::", "HostPort": "8001"}]}},
        }
        for doc in (seed, data):
            assert_sound(announce(container_from_inspect(doc), config), config, False)


class TestKeyConfinement:
    @settings(max_examples=KEY_EXAMPLES, deadline=None)
    @given(
        prefix=st.sampled_from(["/test", "/a/b"]),
        rest=st.lists(st.one_of(nasty_pieces, st.text(max_size=4)), max_size=8).map("".join),
    )
    def test_confined_keys_are_safe(self, prefix: str, rest: str) -> None:
        """A key that passes key_is_confined is a plain path strictly under the prefix."""
        key = prefix + "/" + rest
        if not key_is_confined(key, prefix):
            return
        segments = key[len(prefix) + 1 :].split("/")
        assert all(segment not in {"", ".", ".."} for segment in segments)
        assert all(c.isascii() and c.isprintable() and not c.isspace() for c in key)


LEASE = 7
plan_keys = st.sampled_from([f"/test/k{i}" for i in range(8)])
plan_values = st.sampled_from(["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])
key_states = st.builds(
    KeyState, plan_values, st.sampled_from([0, LEASE, 8, 9]), st.integers(1, 10_000)
)


class TestPlanProperties:
    @settings(max_examples=PLAN_EXAMPLES, deadline=None)
    @given(
        desired=st.dictionaries(plan_keys, plan_values),
        actual=st.dictionaries(plan_keys, key_states),
    )
    def test_plan_is_safe_and_complete(
        self, desired: dict[str, str], actual: dict[str, KeyState]
    ) -> None:
        """No write to another lease's different value; applying the plan gives `desired`."""
        result = plan(desired, actual, LEASE)
        written = [p.key for p in result.puts] + [d.key for d in result.deletes]
        assert len(written) == len(set(written))  # etcd refuses a key twice in one txn
        for put in result.puts:
            held = actual.get(put.key)
            assert put.expect_mod_revision == (0 if held is None else held.mod_revision)
            assert put.value == desired[put.key]
            if held is not None:
                assert held.lease == LEASE or (held.lease == 0 and held.value == put.value)
                assert held != KeyState(put.value, LEASE, held.mod_revision)  # no idle write
        for delete in result.deletes:
            assert actual[delete.key].lease == LEASE
            assert delete.key not in desired
            assert delete.expect_mod_revision == actual[delete.key].mod_revision
        clashed = {c.key for c in result.clashes}
        for clash in result.clashes:
            held = actual[clash.key]
            assert (clash.wanted, clash.held_value, clash.held_lease) == (
                desired[clash.key],
                held.value,
                held.lease,
            )
            assert held.lease != LEASE
            assert held.value != clash.wanted

        after = {key: (state.value, state.lease) for key, state in actual.items()}
        for put in result.puts:
            after[put.key] = (put.value, LEASE)
        for delete in result.deletes:
            del after[delete.key]
        left_to_owner = {
            key
            for key, value in desired.items()
            if key in actual and actual[key].lease not in {0, LEASE} and actual[key].value == value
        }
        for key, value in desired.items():
            if key in clashed or key in left_to_owner:
                assert after[key] == (actual[key].value, actual[key].lease)
            else:
                assert after[key] == (value, LEASE)
        ours = {key for key, (_, lease) in after.items() if lease == LEASE}
        assert ours == set(desired) - clashed - left_to_owner
        for key, state in actual.items():
            if state.lease not in {0, LEASE}:  # another lease's key is never written
                assert after[key] == (state.value, state.lease)
        assert bool(result) == bool(result.puts or result.deletes)

    @settings(max_examples=PLAN_EXAMPLES, deadline=None)
    @given(
        desired=st.dictionaries(plan_keys, plan_values),
        actual=st.dictionaries(plan_keys, key_states),
    )
    def test_plan_is_idempotent(self, desired: dict[str, str], actual: dict[str, KeyState]) -> None:
        """After applying a plan, planning again writes nothing."""
        after = dict(actual)
        first = plan(desired, actual, LEASE)
        for put in first.puts:
            after[put.key] = KeyState(put.value, LEASE, 99_999)
        for delete in first.deletes:
            del after[delete.key]
        second = plan(desired, after, LEASE)
        assert not second
        assert second.clashes == first.clashes

    @settings(max_examples=PLAN_EXAMPLES, deadline=None)
    @given(
        groups=st.lists(
            st.lists(st.tuples(plan_keys, plan_values, st.sampled_from("abc")), max_size=4),
            max_size=4,
        )
    )
    def test_merge_first_wins(self, groups: list[list[tuple[str, str, str]]]) -> None:
        """merge keeps the first registration of each key and reports every other one."""
        announcements = [
            [Registration(key, value, cid * 64, cid) for key, value, cid in group]
            for group in groups
        ]
        flat = [r for group in announcements for r in group]
        desired = merge(announcements)
        first: dict[str, Registration] = {}
        for registration in flat:
            first.setdefault(registration.key, registration)
        assert desired.registrations == first
        assert len(desired.duplicates) == len(flat) - len(first)
        for kept, dropped in desired.duplicates:
            assert kept is first[kept.key]
            assert dropped.key == kept.key
