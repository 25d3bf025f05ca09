"""`sidekick render`'s options, checked before it starts: RenderOptions and --wait.

Runs on: the main thread, at start-up (the CLI). Pure but for the checks that --template is
a file and --dest's directory exists.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sidekick.config import ConfigError

DEFAULT_WATCH_TIMEOUT = 10.0
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = frozenset({"values", "entries", "prefix", "getv", "getvs"})
DEFAULT_WAIT = "0.05"  # 0.2 s held at most: see README, measured in docs/benchmarks.md
MAX_PER_MIN = 4  # --wait MIN without MAX holds a change at most 4 x MIN
_SECONDS_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")


@dataclass(frozen=True)
class Wait:
    """--wait MIN[:MAX]: render once no change came for `least` seconds, but hold no change
    longer than `most` (docker-gen's -wait). Wait(0, 0) renders at once."""

    least: float = 0.0
    most: float = 0.0

    def due(self, first: float, last: float) -> float:
        """When changes that came from `first` to `last` (monotonic) are rendered."""
        return min(last + self.least, first + self.most)


def parse_wait(text: str, name: str = "--wait") -> Wait:
    """MIN or MIN:MAX in seconds (`ms` and `s` suffixes allowed); MAX defaults to 4 x MIN.
    A ConfigError names the option (`name`) at fault."""
    least_text, sep, most_text = text.strip().partition(":")
    least, most = _seconds(least_text), _seconds(most_text) if sep else None
    if least is None or (sep and most is None):
        raise ConfigError(
            f"{name}: expected MIN[:MAX] in seconds, e.g. 0.1 or 0.1:0.4, got {text!r}"
        )
    if most is None:
        most = least * MAX_PER_MIN
    if most < least:
        raise ConfigError(f"{name}: MAX ({most:g}) must not be less than MIN ({least:g})")
    return Wait(least, most)


def _seconds(text: str) -> float | None:
    """`0.5`, `500ms` or `0.5s` in seconds; None when it is none of those."""
    match = _SECONDS_RE.fullmatch(text.strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


@dataclass(frozen=True)
class RenderOptions:
    """What `sidekick render` does, validated."""

    dest: Path
    template: Path | None = None  # None: the nginx template shipped in the package
    variables: Mapping[str, str] = field(default_factory=dict)
    check_cmd: str | None = None
    reload_cmd: str | None = None
    reload_signal: str | None = None
    reload_container: str | None = None
    mode: int = 0o644
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT
    once: bool = False
    wait: Wait = Wait()


def make_options(
    *,
    dest: Path,
    template: Path | None = None,
    variables: Sequence[str] = (),
    check_cmd: str | None = None,
    reload_cmd: str | None = None,
    reload_signal: str | None = None,
    reload_container: str | None = None,
    mode: str = "0644",
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
    once: bool = False,
    wait: str = DEFAULT_WAIT,
    wait_name: str = "--wait",
) -> RenderOptions:
    """RenderOptions from command-line values; a ConfigError names the option at fault."""
    parsed: dict[str, str] = {}
    for item in variables:
        name, sep, value = item.partition("=")
        if not sep or not _VAR_RE.fullmatch(name) or name in _RESERVED:
            raise ConfigError(
                f"--set: expected NAME=VALUE with NAME an identifier other than "
                f"{', '.join(sorted(_RESERVED))}, got {item!r}"
            )
        parsed[name] = value
    if template is not None and not template.is_file():
        raise ConfigError(f"--template: {template} is not a file")
    if not dest.parent.is_dir():
        raise ConfigError(f"--dest: directory {dest.parent} does not exist")
    if dest.is_dir():
        raise ConfigError(f"--dest: {dest} is a directory")
    if check_cmd is not None and "{src}" not in check_cmd:
        raise ConfigError(f"--check-cmd: must name the new file as {{src}}, got {check_cmd!r}")
    if reload_cmd and (reload_signal or reload_container):
        raise ConfigError("--reload-cmd: give either a command or --reload-signal, not both")
    if bool(reload_signal) != bool(reload_container):
        raise ConfigError("--reload-signal and --reload-container go together")
    signal_name = None
    if reload_signal:
        signal_name = reload_signal.upper().removeprefix("SIG")
        if signal_name not in signal.Signals.__members__ and f"SIG{signal_name}" not in (
            signal.Signals.__members__
        ):
            raise ConfigError(f"--reload-signal: unknown signal {reload_signal!r}")
    try:
        file_mode = int(mode, 8)
    except ValueError:
        raise ConfigError(f"--mode: not an octal mode: {mode!r}") from None
    if not 0 <= file_mode <= 0o7777:
        raise ConfigError(f"--mode: not a file mode: {mode!r}")
    if watch_timeout < 0.5:
        raise ConfigError(f"--watch-timeout: must be at least 0.5, got {watch_timeout:g}")
    coalescing = parse_wait(wait, wait_name)
    return RenderOptions(
        dest=dest,
        template=template,
        variables=parsed,
        check_cmd=check_cmd,
        reload_cmd=reload_cmd,
        reload_signal=signal_name,
        reload_container=reload_container,
        mode=file_mode,
        watch_timeout=watch_timeout,
        once=once,
        wait=coalescing,
    )
