"""The agent's lease id on disk, so a restarted agent resumes its lease instead of racing it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DEFAULT_LEASE_FILE = Path("/run/sidekick/lease")


class LeaseFile:
    """Reads and writes one lease id; a missing or unusable file is simply no lease."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> int | None:
        if self.path is None:
            return None
        try:
            return int(self.path.read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def write(self, lease: int) -> str | None:
        """Store the id atomically; returns an error message instead of raising."""
        if self.path is None:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(f"{lease:x}\n")
            tmp.replace(self.path)
        except OSError as exc:
            return f"{self.path}: {exc.strerror}"
        return None

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
