"""An exclusive lock on an output folder, so two processes never write one run folder at once.

The lock is ``<folder>/.jaxtar.lock``: an ``fcntl.flock`` held for as long as the writer runs, with the holder's pid,
host and start time written inside for the message the second writer gets. The kernel releases a ``flock`` when its
holder dies (even by ``kill -9``), so a lock file left behind by a dead process is stale by construction and the
next writer simply takes it over; no pid guessing is needed on one machine. The file stays in the folder after
release (deleting a lock file others may be waiting on is racy) and is ignored wherever a folder is checked for
foreign files.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder):
    ...     try:
    ...         RunLock(folder).acquire()
    ...     except RunLockedError as err:
    ...         print("refused:", "is in use by pid" in str(err))
    refused: True
    >>> RunLock(folder).acquire().release()  # free again once the holder is done
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from jaxtar.errors import RunDirError, RunLockedError

LOCK_NAME = ".jaxtar.lock"


class RunLock:
    """An exclusive, non-blocking lock on ``folder`` (which must exist); a context manager.

    Args:
        folder: the output folder to lock.

    Raises (from :meth:`acquire`):
        RunLockedError: another live process holds the lock; the message names its pid and host.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Takes the lock or raises :class:`RunLockedError` at once (never waits)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"output folder {str(self.folder)!r} is in use by {holder}; wait for it to finish or stop it "
                "(nothing was written)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (the file stays; see the module docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on host {record['host']} (since {record['since']})"
    except (ValueError, KeyError, OSError):
        return "another process"


def is_lock_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run-folder lock (ignored when a folder is checked for foreign files).

    Example:
        >>> is_lock_file("runs/tar/.jaxtar.lock"), is_lock_file("runs/tar/run.json")
        (True, False)
    """
    return Path(path).name == LOCK_NAME


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Names in ``folder`` other than its lock file, sorted (``[]`` for a missing or empty folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not is_lock_file(p))


def is_new_or_empty(folder: str | os.PathLike) -> bool:
    """Whether an output may go to ``folder`` without touching anything: absent, or a folder holding at most a lock.

    Example:
        >>> import tempfile
        >>> is_new_or_empty(tempfile.mkdtemp()), is_new_or_empty(__file__)
        (True, False)
    """
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not foreign_entries(folder))


def claim_output_dir(
    path: str | os.PathLike, *, accept: Callable[[Path], bool] | None = None, what: str = "output folder"
) -> RunLock:
    """Creates ``path`` if needed and locks it for this process; refuses a folder that holds anything (besides a
    lock file) unless ``accept(path)`` approves its contents. Checked before the lock is taken (so a foreign folder
    is never written to) and again under it (so of two racing writers exactly one proceeds).

    Args:
        path: the output folder.
        accept: ``folder -> bool`` for a non-empty folder that may be reused (a run to resume, our own results to
            overwrite); None accepts only a new or empty folder.
        what: how messages name the folder.

    Returns:
        The held :class:`RunLock` (release it, or use it as a context manager, when the writer is done).

    Raises:
        RunDirError: ``path`` is a file, a non-empty folder ``accept`` refuses, or cannot be created.
        RunLockedError: another live process holds the folder.

    Example:
        >>> import tempfile
        >>> with claim_output_dir(tempfile.mkdtemp() + "/new") as lock:
        ...     lock.held
        True
    """
    path = Path(path)

    def check() -> None:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{what} {str(path)!r} is a file, not a folder (nothing was written)")
        entries = foreign_entries(path)
        if entries and not (accept is not None and accept(path)):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(f"{what} {str(path)!r} is not empty ({shown}); choose a new folder (nothing was written)")

    check()
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {what} {str(path)!r}: {err.strerror or err}") from err
    lock_existed = (path / LOCK_NAME).exists()
    lock = RunLock(path)
    try:
        lock.acquire()
        check()
    except BaseException as err:
        if lock.held:
            lock.release()
            if not lock_existed:
                lock.path.unlink(missing_ok=True)
        if created and not isinstance(err, RunLockedError):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return lock
