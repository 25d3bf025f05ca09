"""What the agent's process imports: nothing it never uses (resident memory is per node)."""

from __future__ import annotations

import subprocess
import sys

AGENT_IMPORTS = "import sidekick.cli, sidekick.agent, sys; print(' '.join(sorted(sys.modules)))"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(out.split())


# prometheus_client: sidekick.prom writes the metrics
NEVER_IN_THE_AGENT = {
    "rich",
    "pygments",
    "jinja2",
    "asyncio",
    "charset_normalizer",
    "chardet",
    "prometheus_client",
}


def test_the_agent_does_not_load_what_it_never_uses():
    loaded = _modules_after(AGENT_IMPORTS)
    # the check looks at the right process: every dependency the agent uses is there
    assert {"structlog", "typer", "requests", "docker", "etcd3gw.client", "sidekick.prom"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in NEVER_IN_THE_AGENT}


def test_what_the_agent_leaves_out_still_works_for_others():
    """Imported after sidekick, asyncio, charset detection and rich are the real modules, and
    structlog's async loggers (which hold sidekick's stand-in for asyncio) still log."""
    code = """
import sys
import sidekick.cli, structlog
import asyncio, charset_normalizer, requests, rich.console

async def logged():
    await structlog.get_logger().ainfo("from a coroutine")
    return "ran"

assert type(sys.modules["asyncio"]).__name__ == "module"
assert asyncio.run(logged()) == "ran"
assert charset_normalizer.detect("café".encode())["encoding"]
assert rich.console.Console is not None
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "ok"
    assert "from a coroutine" in out.stdout


def test_rich_is_still_there_for_help():
    """Only structlog is kept from rich: typer's --help still draws with it."""
    out = subprocess.run(
        [sys.executable, "-m", "sidekick", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"COLUMNS": "80", "TERM": "dumb", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "╭─ Commands" in out


def test_the_asyncio_stand_in_loads_asyncio_only_for_a_public_name():
    """Introspection (a dunder) does not load asyncio; a public name loads the real one."""
    code = """
import sys
import sidekick, structlog.stdlib
stand_in = structlog.stdlib.asyncio
assert not hasattr(stand_in, "__wrapped__") and not hasattr(stand_in, "__path__")
assert "asyncio" not in sys.modules
loop = stand_in.new_event_loop()
assert type(loop).__module__.startswith("asyncio.") and "asyncio" in sys.modules
loop.close()
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
