"""sidekick: announce Docker containers in etcd on a lease."""

import sys

__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """structlog draws tracebacks with rich when it can import it (typer installs rich), which
    costs every agent ~6 MB resident for a renderer its one-line logs never use; structlog
    falls back to plain tracebacks. rich stays importable for typer's --help afterwards."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's "not here"
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()
