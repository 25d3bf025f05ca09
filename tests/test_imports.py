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


def test_the_agent_does_not_load_rich_jinja2_or_prometheus_client():
    """prometheus_client: sidekick.prom writes the metrics (its import cost 1.1 MB PSS)."""
    loaded = _modules_after(AGENT_IMPORTS)
    assert "structlog" in loaded and "typer" in loaded  # the check looks at the right process
    assert "sidekick.prom" in loaded
    unwanted = {"rich", "pygments", "jinja2", "prometheus_client"}
    assert not {m for m in loaded if m.split(".")[0] in unwanted}


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
