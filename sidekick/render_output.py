"""The rendered file and its consumer: a new text staged beside the live file, checked
(`--check-cmd`, e.g. `nginx -t`) and only then renamed over it, so a file that fails the check
never goes live; then the consumer reloaded (`--reload-cmd`, or a signal to a container
through the Docker API).

A reload that fails is owed: the renderer tries it again on the next change and on a timer
(1 s, doubling up to 30 s) until it succeeds. `Output.health()` says, in /healthz's shape,
when the latest render was refused or a reload is owed.

Runs on: the render thread (the main one); health() and the metrics' gauges also on the
metrics server's thread (they only read).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sidekick import retry
from sidekick.metrics import RenderMetrics
from sidekick.render_options import RenderOptions
from sidekick.render_template import RenderError

COMMAND_TIMEOUT = 60.0
RELOAD_RETRY_FIRST, RELOAD_RETRY_CAP = 1.0, 30.0


class ReloadError(RenderError):
    """The reload command or signal failed."""


class Output:
    """Checks, swaps in and reloads each new text; keeps why the latest one is refused
    (`refused`) and why the owed reload failed (`reload_failing`), each in one line."""

    def __init__(
        self,
        options: RenderOptions,
        log: Any,
        metrics: RenderMetrics,
        docker_url: str | None = None,
    ) -> None:
        self.options = options
        self.log = log
        self.metrics = metrics
        self.docker_url = docker_url
        self.rejected: str | None = None  # the text whose check failed last
        self.refused: str | None = None  # why the latest render is not live, one line
        self.reload_failing: str | None = None  # why the owed reload failed last, one line
        self._reload_failures = 0
        self.reload_due = 0.0  # monotonic time of the owed reload's next try
        metrics.refused.set_function(lambda: float(self.refused is not None))
        metrics.reload_failing.set_function(lambda: float(self.reload_failing is not None))

    def template_failed(self, error: RenderError) -> None:
        """The template raised: the old file stays, and `refused` says why."""
        self.log.error("render failed; the old file stays", error=str(error))
        self.metrics.failures.labels("template").inc()
        self.refused = _one_line(f"render failing: {error}")

    def go_live(self, text: str) -> tuple[bool, bool]:
        """(the file is live, a new file went live now); records why a text is refused."""
        if text == self._live_text():
            self.log.debug("unchanged")
            self.refused = None
            return True, False
        if text == self.rejected:
            self.log.debug("same text as the one refused; not checked again")
            return False, False
        refusal = self._install(text)
        if refusal is not None:
            self.metrics.failures.labels("check").inc()
            self.rejected, self.refused = text, _one_line(f"check failing: {refusal}")
            return False, False
        self.rejected = self.refused = None
        self.metrics.renders.inc()
        return True, True

    def _live_text(self) -> str | None:
        try:
            return self.options.dest.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _install(self, text: str) -> str | None:
        """Stage `text` beside dest, check it, rename it over dest. None when it went live,
        else the check's output."""
        dest = self.options.dest
        fd, staged_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        staged = Path(staged_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fchmod(out.fileno(), self.options.mode)
                os.fsync(out.fileno())
            if self.options.check_cmd is not None:
                command = self.options.check_cmd.replace("{src}", shlex.quote(str(staged)))
                ok, output = _shell(command)
                if not ok:
                    self.log.error(
                        "check failed; the new file is not installed",
                        command=command,
                        output=output,
                    )
                    return output
            # The data is on disk before the rename; the rename itself need not be (no fsync
            # of the directory, which costs up to 150 ms on a busy disk): after a crash the old
            # file or the new one is there, whole, and the next start renders it again.
            os.replace(staged, dest)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    def reload(self) -> None:
        """Reload the consumer; ReloadError when that fails."""
        if self.options.reload_cmd:
            ok, output = _shell(self.options.reload_cmd)
            if not ok:
                raise ReloadError(f"reload command failed: {output}")
            self.log.info("reloaded", command=self.options.reload_cmd)
        elif self.options.reload_container and self.options.reload_signal:
            import docker  # noqa: PLC0415 - only this reload needs docker-py
            import docker.errors  # noqa: PLC0415

            try:
                client = docker.DockerClient(base_url=self.docker_url or None, timeout=10)
                client.api.kill(self.options.reload_container, signal=self.options.reload_signal)
            except docker.errors.DockerException as exc:
                raise ReloadError(f"reload signal failed: {exc}") from exc
            self.log.info(
                "reloaded",
                container=self.options.reload_container,
                signal=self.options.reload_signal,
            )
        if self.reload_failing is not None:
            self.log.info("reload succeeded", failed_attempts=self._reload_failures)
        self.reload_failing, self._reload_failures = None, 0

    def reload_failed(self, error: str) -> None:
        """Owe the reload: logged when it starts failing, tried again when due or on a change."""
        self._reload_failures += 1
        self.metrics.failures.labels("reload").inc()
        delay = reload_retry_delay(self._reload_failures)
        self.reload_due = time.monotonic() + delay
        if self.reload_failing is None:
            self.log.error("reload failed", error=error, retry_in=delay)
        else:
            self.log.debug("reload failed again", error=error, retry_in=delay)
        self.reload_failing = _one_line(error)

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for /healthz: not ok while the latest render is refused (the old file
        stays live) or a reload is owed."""
        problems = [self.refused] if self.refused is not None else []
        if self.reload_failing is not None:
            problems.append(f"reload failing: {self.reload_failing}")
        return (not problems, "; ".join(problems) or "ok")


def reload_retry_delay(failures: int) -> float:
    """Seconds before an owed reload is tried again after `failures` failures in a row."""
    return retry.delay(min(failures, 32), RELOAD_RETRY_CAP, jitter=0.0, shortest=RELOAD_RETRY_FIRST)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shell(command: str) -> tuple[bool, str]:
    """Run a shell command; (succeeded, the tail of its output)."""
    try:
        proc = subprocess.run(  # noqa: S602 - the operator's own command line, as confd runs it
            command,
            shell=True,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {COMMAND_TIMEOUT:g} s"
    output = " ".join((proc.stdout + proc.stderr).split())[-600:]
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {output}"
    return True, output
