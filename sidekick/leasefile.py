"""The agent's lease id on disk, locked for the agent's life, so a restarted agent resumes its
lease and a second agent on the same file is refused instead of sharing (and revoking) it.

Runs on: the main thread (lock, at start-up) and the lease thread (read, write, remove).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

DEFAULT_LEASE_FILE = Path("/run/sidekick/lease")


class LeaseFileBusy(Exception):
    """Another live agent holds the lock on this lease file."""


class LeaseFile:
    """Reads and writes one lease id; a missing or unusable file is simply no lease.

    lock() takes an exclusive flock on the file for the life of the process: the kernel
    releases it when the process dies, kill -9 included, so a restarted agent takes it again.
    The id is written in place (the lock belongs to the file, not to its name).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None

    def lock(self) -> None:
        """Hold the file exclusively; LeaseFileBusy when another agent does (OSError when the
        file cannot be made)."""
        if self.path is None or self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseFileBusy(
                f"--lease-file {self.path} is held by another running agent; "
                "give each agent its own --lease-file"
            ) from None
        self._fd = fd

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def read(self) -> int | None:
        if self.path is None:
            return None
        try:
            text = os.pread(self._fd, 64, 0).decode() if self._fd else self.path.read_text()
            return int(text.strip(), 16)
        except (OSError, ValueError):
            return None

    def write(self, lease: int) -> str | None:
        """Store the id; returns an error message instead of raising."""
        if self.path is None:
            return None
        data = f"{lease:x}\n".encode()
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_bytes(data)
            else:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, data, 0)
                os.fsync(self._fd)
        except OSError as exc:
            return f"{self.path}: {exc.strerror}"
        return None

    def remove(self) -> None:
        """Forget the id (the lease was revoked); the locked file itself stays, empty."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            if self._fd is None:
                self.path.unlink()
            else:
                os.ftruncate(self._fd, 0)
