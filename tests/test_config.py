"""Unit tests for sidekick.config: sources, precedence, defaults and one-line errors.

Every call passes `environ` explicitly and the default environment file is redirected to a
path that does not exist, so nothing of this machine leaks in.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from sidekick import config as config_module
from sidekick.config import (
    DEFAULT_KEY_TEMPLATE,
    DEFAULT_VALUE_TEMPLATE,
    Config,
    ConfigError,
    Endpoint,
    load_config,
    read_environment_file,
    require_host_ip,
)

WriteFile = Callable[[str], Path]


@pytest.fixture(name="default_file", autouse=True)
def fixture_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default environment file, moved to a path that does not exist."""
    path = tmp_path / "no-such-environment"
    monkeypatch.setattr(config_module, "DEFAULT_ENVIRONMENT_FILE", path)
    return path


@pytest.fixture(name="env_file")
def fixture_env_file(tmp_path: Path) -> WriteFile:
    """Write an environment file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "environment"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def load(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    return load_config(dict(flags or {}), environ=dict(environ or {}))


def error_of(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(flags, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


class TestDefaults:
    def test_defaults(self, default_file: Path) -> None:
        """With no flag, variable or file every option has its documented default."""
        assert load({}, {}) == Config(
            prefix="/test",
            etcd_endpoints=(Endpoint("http", "127.0.0.1", 2379),),
            etcd_timeout=5.0,
            docker_url=None,
            host_ip=None,
            host_ip_source="none",
            environment_file=default_file,
            ttl=30,
            keepalive_interval=10.0,
            resync=60.0,
            all_containers=False,
            filters=(),
            key_template=DEFAULT_KEY_TEMPLATE,
            value_template=DEFAULT_VALUE_TEMPLATE,
            keep_on_exit=False,
            node=socket.gethostname(),
            log_format="auto",
            log_level="info",
        )

    def test_default_templates(self) -> None:
        """The default layout is the seed's: {prefix}/{service}-{port} -> {ip}:{port}."""
        assert (DEFAULT_KEY_TEMPLATE, DEFAULT_VALUE_TEMPLATE) == (
            "{prefix}/{service}-{port}",
            "{ip}:{port}",
        )

    def test_timings_follow_the_ttl(self) -> None:
        """keepalive defaults to ttl/3 and the etcd timeout to min(5, (ttl - keepalive)/2)."""
        config = load({"ttl": "6"}, {})
        assert (config.ttl, config.keepalive_interval, config.etcd_timeout) == (6, 2.0, 2.0)

    def test_smallest_ttl(self) -> None:
        """ttl 2 is accepted, with keepalive 2/3 s."""
        config = load({"ttl": 2}, {})
        assert config.ttl == 2
        assert config.keepalive_interval == pytest.approx(2 / 3)
        assert config.etcd_timeout == pytest.approx(2 / 3)

    def test_timeout_follows_explicit_keepalive(self) -> None:
        """An explicit keepalive shortens the default etcd timeout to fit the ttl."""
        config = load({"ttl": "10", "keepalive_interval": "8"}, {})
        assert (config.keepalive_interval, config.etcd_timeout) == (8.0, 1.0)

    def test_timeout_that_just_fits(self) -> None:
        """keepalive + 2 x timeout == ttl is accepted."""
        assert load({"etcd_timeout": "10"}, {}).etcd_timeout == 10.0

    def test_config_is_frozen(self) -> None:
        """A Config cannot be changed after it is built."""
        config = load({}, {})
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.ttl = 5  # type: ignore[misc]


class TestPrecedence:
    @pytest.mark.parametrize(
        ("name", "given", "expected"),
        [
            ("prefix", ("/flag", "/env", "/file"), ("/flag", "/env", "/file", "/test")),
            ("ttl", ("40", "50", "60"), (40, 50, 60, 30)),
            ("resync", ("7", "8", "9"), (7.0, 8.0, 9.0, 60.0)),
            ("log_level", ("error", "warning", "debug"), ("error", "warning", "debug", "info")),
            (
                "node",
                ("flag-node", "env-node", "file-node"),
                ("flag-node", "env-node", "file-node", socket.gethostname()),
            ),
        ],
    )
    def test_flag_then_env_then_file_then_default(
        self, env_file: WriteFile, name: str, given: tuple[str, str, str], expected: tuple[Any, ...]
    ) -> None:
        """A flag beats SIDEKICK_*, which beats the environment file, which beats the default."""
        flag, env, file = given
        variable = "SIDEKICK_" + name.upper()
        flags = {"environment_file": env_file(f"{variable}={file}\n")}
        environ = {variable: env}
        assert getattr(load({**flags, name: flag}, environ), name) == expected[0]
        assert getattr(load(flags, environ), name) == expected[1]
        assert getattr(load(flags, {}), name) == expected[2]
        assert getattr(load({"environment_file": env_file("")}, {}), name) == expected[3]

    def test_empty_variable_falls_through(self, env_file: WriteFile) -> None:
        """An empty SIDEKICK_* variable counts as unset: the file's value is used."""
        path = env_file("SIDEKICK_PREFIX=/file\n")
        assert load({"environment_file": path}, {"SIDEKICK_PREFIX": ""}).prefix == "/file"

    def test_flag_none_falls_through(self) -> None:
        """A flag given as None (not on the command line) leaves the variable in charge."""
        assert load({"prefix": None}, {"SIDEKICK_PREFIX": "/env"}).prefix == "/env"

    def test_all_variable(self) -> None:
        """--all is SIDEKICK_ALL, and a flag False beats the variable."""
        assert load({}, {"SIDEKICK_ALL": "true"}).all_containers is True
        assert load({"all_containers": False}, {"SIDEKICK_ALL": "true"}).all_containers is False

    def test_environment_file_from_variable(self, env_file: WriteFile) -> None:
        """SIDEKICK_ENVIRONMENT_FILE chooses the environment file."""
        path = env_file("SIDEKICK_PREFIX=/from-file\n")
        config = load({}, {"SIDEKICK_ENVIRONMENT_FILE": str(path)})
        assert (config.prefix, config.environment_file) == ("/from-file", path)

    def test_environment_file_flag_beats_variable(
        self, env_file: WriteFile, tmp_path: Path
    ) -> None:
        """--environment-file beats SIDEKICK_ENVIRONMENT_FILE."""
        path = env_file("SIDEKICK_PREFIX=/flag-file\n")
        environ = {"SIDEKICK_ENVIRONMENT_FILE": str(tmp_path / "absent")}
        assert load({"environment_file": str(path)}, environ).prefix == "/flag-file"

    def test_missing_default_file_is_fine(self, default_file: Path) -> None:
        """A missing default /etc/environment is not an error."""
        assert load({}, {}).environment_file == default_file

    def test_docker_host(self) -> None:
        """DOCKER_HOST gives the Docker URL unless --docker-url or SIDEKICK_DOCKER_URL is set."""
        environ = {"DOCKER_HOST": "tcp://127.0.0.1:2375"}
        assert load({}, environ).docker_url == "tcp://127.0.0.1:2375"
        env_and_var = {**environ, "SIDEKICK_DOCKER_URL": "unix:///var/run/d.sock"}
        assert load({}, env_and_var).docker_url == "unix:///var/run/d.sock"
        assert load({"docker_url": "unix:///x.sock"}, environ).docker_url == "unix:///x.sock"


class TestEnvironmentFile:
    def test_parsing(self, env_file: WriteFile) -> None:
        """KEY=VALUE lines; comments, blanks, `export`, quotes and lines without = handled."""
        path = env_file(
            "# comment\n"
            "; another\n"
            "\n"
            "COREOS_PRIVATE_IPV4=172.17.8.101\n"
            "export SIDEKICK_PREFIX='/quoted'\n"
            '  SIDEKICK_NODE = "node-7"  \n'
            "NOT A PAIR\n"
            "EMPTY=\n"
            "URL=http://a=b\n"
        )
        assert read_environment_file(path) == {
            "COREOS_PRIVATE_IPV4": "172.17.8.101",
            "SIDEKICK_PREFIX": "/quoted",
            "SIDEKICK_NODE": "node-7",
            "EMPTY": "",
            "URL": "http://a=b",
        }

    def test_file_feeds_options(self, env_file: WriteFile) -> None:
        """SIDEKICK_* and COREOS_PRIVATE_IPV4 from the file reach the Config."""
        path = env_file(
            "COREOS_PRIVATE_IPV4=172.17.8.101\nSIDEKICK_TTL=12\nSIDEKICK_ALL=yes\n"
            "SIDEKICK_ETCD_ENDPOINTS=http://10.0.0.1:2379,http://10.0.0.2:2379\n"
            "SIDEKICK_FILTERS=label=team=a,label=b\n"
        )
        config = load({"environment_file": path}, {})
        assert config.host_ip == "172.17.8.101"
        assert config.host_ip_source == "COREOS_PRIVATE_IPV4 (environment file)"
        assert config.ttl == 12
        assert config.all_containers is True
        assert config.etcd_endpoints == (
            Endpoint("http", "10.0.0.1", 2379),
            Endpoint("http", "10.0.0.2", 2379),
        )
        assert config.filters == (("label", "team=a"), ("label", "b"))

    def test_variable_of_the_file_is_named_in_errors(self, env_file: WriteFile) -> None:
        """A bad value from the file names the variable and the file as its source."""
        path = env_file("SIDEKICK_TTL=1\n")
        message = error_of({"environment_file": path})
        assert message.startswith("SIDEKICK_TTL (environment file): ")


class TestHostIp:
    @pytest.mark.parametrize(
        ("flags", "environ", "file", "source"),
        [
            ({"host_ip": "10.1.1.1"}, {}, "", "--host-ip"),
            ({}, {"SIDEKICK_HOST_IP": "10.1.1.1"}, "", "SIDEKICK_HOST_IP"),
            ({}, {}, "SIDEKICK_HOST_IP=10.1.1.1\n", "SIDEKICK_HOST_IP (environment file)"),
            ({}, {"COREOS_PRIVATE_IPV4": "10.1.1.1"}, "", "COREOS_PRIVATE_IPV4"),
            (
                {},
                {},
                "COREOS_PRIVATE_IPV4=10.1.1.1\n",
                "COREOS_PRIVATE_IPV4 (environment file)",
            ),
        ],
    )
    def test_sources(
        self,
        env_file: WriteFile,
        flags: dict[str, str],
        environ: dict[str, str],
        file: str,
        source: str,
    ) -> None:
        """Each source of the host IP works and is recorded in host_ip_source."""
        config = load({**flags, "environment_file": env_file(file)}, environ)
        assert (config.host_ip, config.host_ip_source) == ("10.1.1.1", source)

    def test_precedence(self, env_file: WriteFile) -> None:
        """--host-ip > SIDEKICK_HOST_IP > COREOS_PRIVATE_IPV4 env > COREOS_PRIVATE_IPV4 file."""
        flags = {"environment_file": env_file("COREOS_PRIVATE_IPV4=10.0.0.4\n")}
        environ = {"SIDEKICK_HOST_IP": "10.0.0.2", "COREOS_PRIVATE_IPV4": "10.0.0.3"}
        assert load({**flags, "host_ip": "10.0.0.1"}, environ).host_ip == "10.0.0.1"
        assert load(flags, environ).host_ip == "10.0.0.2"
        assert load(flags, {"COREOS_PRIVATE_IPV4": "10.0.0.3"}).host_ip == "10.0.0.3"
        assert load(flags, {}).host_ip == "10.0.0.4"

    @pytest.mark.parametrize(
        ("given", "address"),
        [
            ("  172.17.8.101 ", "172.17.8.101"),
            ("2001:DB8:0::1", "2001:db8::1"),
            ("[fd00::5]", "fd00::5"),
            ("127.0.0.1", "127.0.0.1"),
        ],
    )
    def test_normalised(self, given: str, address: str) -> None:
        """The host IP is stripped of spaces and brackets and written canonically."""
        assert load({"host_ip": given}, {}).host_ip == address

    def test_require_host_ip(self) -> None:
        """require_host_ip returns the configured address."""
        assert require_host_ip(load({"host_ip": "10.1.1.1"}, {})) == "10.1.1.1"

    def test_require_host_ip_without_one(self, default_file: Path) -> None:
        """Without a host IP require_host_ip names --host-ip, the variables and the file."""
        config = load({}, {})
        with pytest.raises(ConfigError) as caught:
            require_host_ip(config)
        message = str(caught.value)
        assert message.startswith("--host-ip: ")
        assert "SIDEKICK_HOST_IP" in message
        assert "COREOS_PRIVATE_IPV4" in message
        assert str(default_file) in message
        assert "\n" not in message

    def test_bad_coreos_variable_is_named(self) -> None:
        """A bad COREOS_PRIVATE_IPV4 is reported under that name."""
        message = error_of({}, {"COREOS_PRIVATE_IPV4": "nothost"})
        assert message.startswith("COREOS_PRIVATE_IPV4: ")


class TestGoodValues:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("true", True),
            ("TRUE", True),
            ("1", True),
            ("yes", True),
            ("on", True),
            (True, True),
            ("false", False),
            ("0", False),
            ("no", False),
            ("Off", False),
            (False, False),
        ],
    )
    def test_booleans(self, value: Any, expected: bool) -> None:
        """--all and --keep-on-exit take the usual spellings of true and false."""
        config = load({"all_containers": value, "keep_on_exit": value}, {})
        assert (config.all_containers, config.keep_on_exit) == (expected, expected)

    def test_endpoints(self) -> None:
        """A comma-separated list of URLs, https and IPv6 included; the port defaults to 2379."""
        flags = {"etcd_endpoints": "http://a:1, https://b ,http://[::1]:2380/"}
        config = load(flags, {})
        assert config.etcd_endpoints == (
            Endpoint("http", "a", 1),
            Endpoint("https", "b", 2379),
            Endpoint("http", "::1", 2380),
        )
        assert [e.url for e in config.etcd_endpoints] == [
            "http://a:1",
            "https://b:2379",
            "http://[::1]:2380",
        ]

    def test_endpoints_as_list(self) -> None:
        """A list of endpoint flags is accepted as well as a comma-separated string."""
        config = load({"etcd_endpoints": ["http://a:1", "http://b:2,http://c:3"]}, {})
        assert [e.url for e in config.etcd_endpoints] == ["http://a:1", "http://b:2", "http://c:3"]

    def test_filters(self) -> None:
        """--filter label=K and label=K=V become Docker label filters."""
        config = load({"filters": ["label=team=a", "label=sidekick.test"]}, {})
        assert config.filters == (("label", "team=a"), ("label", "sidekick.test"))
        assert config.label_filters() == ["team=a", "sidekick.test"]

    @pytest.mark.parametrize(
        ("given", "prefix"), [("/test/", "/test"), ("/a/b.c-d_e", "/a/b.c-d_e"), ("/x//", "/x")]
    )
    def test_prefix(self, given: str, prefix: str) -> None:
        """A trailing slash is dropped from the prefix."""
        assert load({"prefix": given}, {}).prefix == prefix

    def test_every_placeholder(self) -> None:
        """Templates may use every placeholder."""
        key = "{prefix}/{node}/{service}/{container}/{container_id}/{container_port}/{ip}/{port}"
        value = "{ip}:{port} {{literal}}"
        config = load({"key_template": key, "value_template": value}, {})
        assert (config.key_template, config.value_template) == (key, value)

    def test_log_choices_are_case_insensitive(self) -> None:
        """--log-format JSON and --log-level DEBUG are accepted and lowered."""
        config = load({"log_format": "JSON", "log_level": "DEBUG"}, {})
        assert (config.log_format, config.log_level) == ("json", "debug")


class TestBadValues:
    @pytest.mark.parametrize(
        ("flags", "option"),
        [
            ({"ttl": "1"}, "--ttl"),
            ({"ttl": 1}, "--ttl"),
            ({"ttl": "0"}, "--ttl"),
            ({"ttl": "-5"}, "--ttl"),
            ({"ttl": "abc"}, "--ttl"),
            ({"ttl": "2.5"}, "--ttl"),
            ({"keepalive_interval": "30"}, "--keepalive-interval"),
            ({"ttl": "10", "keepalive_interval": "12"}, "--keepalive-interval"),
            ({"keepalive_interval": "0"}, "--keepalive-interval"),
            ({"keepalive_interval": "nan"}, "--keepalive-interval"),
            ({"keepalive_interval": "soon"}, "--keepalive-interval"),
            ({"etcd_timeout": "15"}, "--etcd-timeout"),
            ({"ttl": "6", "etcd_timeout": "3"}, "--etcd-timeout"),
            ({"etcd_timeout": "0"}, "--etcd-timeout"),
            ({"etcd_timeout": "inf"}, "--etcd-timeout"),
            ({"resync": "0"}, "--resync"),
            ({"resync": "-1"}, "--resync"),
            ({"resync": "often"}, "--resync"),
            ({"etcd_endpoints": "127.0.0.1:2379"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "localhost:2379"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "ftp://x"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://h:99999"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://h:0"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://h:port"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://h/v3/kv"}, "--etcd-endpoints"),
            ({"etcd_endpoints": "http://a:1,ftp://b"}, "--etcd-endpoints"),
            ({"etcd_endpoints": ""}, "--etcd-endpoints"),
            ({"etcd_endpoints": " , "}, "--etcd-endpoints"),
            ({"prefix": "test"}, "--prefix"),
            ({"prefix": "/a/../b"}, "--prefix"),
            ({"prefix": "/a/./b"}, "--prefix"),
            ({"prefix": "/"}, "--prefix"),
            ({"prefix": ""}, "--prefix"),
            ({"prefix": "/a//b"}, "--prefix"),
            ({"prefix": "/te st"}, "--prefix"),
            ({"prefix": "/tést"}, "--prefix"),
            ({"prefix": "/test\n"}, "--prefix"),
            ({"key_template": "{prefix}/{nope}"}, "--key-template"),
            ({"key_template": "{prefix}/{}"}, "--key-template"),
            ({"key_template": "{prefix}/{0}"}, "--key-template"),
            ({"key_template": "{prefix}/{service.upper}"}, "--key-template"),
            ({"key_template": "{prefix}/{service[0]}"}, "--key-template"),
            ({"key_template": "{prefix}/{service"}, "--key-template"),
            ({"key_template": "{prefix}/{service:d}"}, "--key-template"),
            ({"key_template": "{prefix}/{port!r}"}, "--key-template"),
            ({"key_template": "{prefix}/{port:{service}}"}, "--key-template"),
            ({"key_template": "/test/{service}-{port}"}, "--key-template"),
            ({"key_template": "{service}-{port}"}, "--key-template"),
            ({"key_template": "{prefix}{service}-{port}"}, "--key-template"),
            ({"value_template": "{ip}:{nope}"}, "--value-template"),
            ({"value_template": "{ip}:{port:>999999999}"}, "--value-template"),
            ({"filters": "foo"}, "--filter"),
            ({"filters": ["label=a", "foo"]}, "--filter"),
            ({"filters": ["label="]}, "--filter"),
            ({"filters": ["label==x"]}, "--filter"),
            ({"filters": ["name=web"]}, "--filter"),
            ({"log_format": "xml"}, "--log-format"),
            ({"log_level": "verbose"}, "--log-level"),
            ({"host_ip": "0.0.0.0"}, "--host-ip"),
            ({"host_ip": "::"}, "--host-ip"),
            ({"host_ip": "nothost"}, "--host-ip"),
            ({"host_ip": "10.0.0.0/8"}, "--host-ip"),
            ({"host_ip": "fe80::1%eth0"}, "--host-ip"),
            ({"all_containers": "maybe"}, "--all"),
            ({"keep_on_exit": "2"}, "--keep-on-exit"),
            ({"node": "bad name"}, "--node"),
            ({"node": "-x"}, "--node"),
            ({"node": "a/b"}, "--node"),
            ({"node": "node\n"}, "--node"),
        ],
    )
    def test_bad_flag(self, flags: dict[str, Any], option: str) -> None:
        """A bad flag value is a one-line ConfigError starting with the flag."""
        assert error_of(flags, {}).startswith(option + ": ")

    @pytest.mark.parametrize(
        ("environ", "variable"),
        [
            ({"SIDEKICK_TTL": "1"}, "SIDEKICK_TTL"),
            ({"SIDEKICK_KEEPALIVE_INTERVAL": "31"}, "SIDEKICK_KEEPALIVE_INTERVAL"),
            ({"SIDEKICK_ETCD_TIMEOUT": "20"}, "SIDEKICK_ETCD_TIMEOUT"),
            ({"SIDEKICK_RESYNC": "0"}, "SIDEKICK_RESYNC"),
            ({"SIDEKICK_ETCD_ENDPOINTS": "127.0.0.1:2379"}, "SIDEKICK_ETCD_ENDPOINTS"),
            ({"SIDEKICK_PREFIX": "test"}, "SIDEKICK_PREFIX"),
            ({"SIDEKICK_KEY_TEMPLATE": "{x}"}, "SIDEKICK_KEY_TEMPLATE"),
            ({"SIDEKICK_FILTERS": "foo"}, "SIDEKICK_FILTERS"),
            ({"SIDEKICK_LOG_FORMAT": "xml"}, "SIDEKICK_LOG_FORMAT"),
            ({"SIDEKICK_HOST_IP": "nothost"}, "SIDEKICK_HOST_IP"),
            ({"SIDEKICK_ALL": "maybe"}, "SIDEKICK_ALL"),
            ({"SIDEKICK_NODE": "a b"}, "SIDEKICK_NODE"),
        ],
    )
    def test_bad_variable(self, environ: dict[str, str], variable: str) -> None:
        """A bad SIDEKICK_* variable is a one-line ConfigError starting with the variable."""
        assert error_of({}, environ).startswith(variable + ": ")

    def test_missing_explicit_environment_file(self, tmp_path: Path) -> None:
        """An --environment-file that does not exist is an error naming the flag."""
        message = error_of({"environment_file": tmp_path / "absent"}, {})
        assert message == f"--environment-file: {tmp_path / 'absent'} does not exist"

    def test_missing_environment_file_variable(self, tmp_path: Path) -> None:
        """A SIDEKICK_ENVIRONMENT_FILE that does not exist is an error naming the variable."""
        message = error_of({}, {"SIDEKICK_ENVIRONMENT_FILE": str(tmp_path / "absent")})
        assert message.startswith("SIDEKICK_ENVIRONMENT_FILE: ")

    def test_the_flag_wins_over_a_bad_variable(self) -> None:
        """A good flag hides a bad variable of the same option."""
        assert load({"ttl": "10"}, {"SIDEKICK_TTL": "1"}).ttl == 10


class TestUsageErrors:
    """A misspelt flag or command is one `sidekick: error:` line with the suggestion, exit 2."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["rgister"], "No such command 'rgister'. Did you mean 'register'"),
            (["run", "--tll", "3"], "No such option: --tll (Possible options: --all, --ttl)"),
        ],
    )
    def test_one_line(self, args: list[str], expected: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "sidekick", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("sidekick: error: ")
        assert expected in line


class TestHelp:
    """Each command lists the options it uses, each with its SIDEKICK_* variable."""

    def _help(self, command: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "sidekick", command, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def test_render_lists_no_agent_options(self) -> None:
        text = self._help("render")
        for flag in ("--keep-on-exit", "--resync", "--all ", "--host-ip", "--ttl", "--filter"):
            assert flag not in text
        assert "--etcd-endpoints" in text

    def test_agent_options_only_on_run(self) -> None:
        for command in ("register", "deregister", "ls", "doctor"):
            assert "--keep-on-exit" not in self._help(command)
        assert "--keep-on-exit" in self._help("run")

    @pytest.mark.parametrize("command", ["run", "register", "deregister", "ls", "doctor", "render"])
    def test_no_option_names_its_variable_twice(self, command: str) -> None:
        """typer's own "[env var: X]" is not repeated by a hand-written "(env: X)"."""
        for line in self._help(command).splitlines():
            variables = re.findall(r"SIDEKICK_\w+", line)
            assert len(variables) == len(set(variables)), line

    def test_every_shared_option_names_its_variable(self) -> None:
        text = self._help("run")
        for variable in (
            "SIDEKICK_ETCD_ENDPOINTS",
            "SIDEKICK_TTL",
            "SIDEKICK_ALL",
            "SIDEKICK_FILTER",
        ):
            assert variable in text


class TestHostIpRefused:
    """`run` refuses a loopback or bridge host IP (other nodes cannot reach it) unless forced."""

    @pytest.mark.parametrize(("ip", "words"), [("127.0.0.1", "loopback"), ("::1", "loopback")])
    def test_refused(self, ip: str, words: str, tmp_path: Path) -> None:
        (tmp_path / "env").touch()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidekick",
                "run",
                "--host-ip",
                ip,
                "--environment-file",
                str(tmp_path / "env"),
                "--lease-file",
                "",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"sidekick: error: host IP {ip} is a {words} address")
        assert "--force-host-ip" in line
