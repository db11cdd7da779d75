"""What jaxtar writes, at the lowest level: atomic file writes (a temporary file in the same folder renamed into
place, so a killed writer leaves the previous file, or none, never half of one), file modes that follow the umask,
and progress output (a tqdm bar on a terminal, plain periodic lines in a log file or pipe). No JAX here: the config
package writes with them too."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the process umask (0o644 under the usual
    umask 022). Read from /proc where it can be (setting the umask to read it is not thread-safe).

    Example:
        >>> old = os.umask(0o027)
        >>> oct(default_file_mode())
        '0o640'
        >>> _ = os.umask(old)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(path: str | os.PathLike) -> Path:
    """Gives ``path`` the mode a plain write would have (`default_file_mode`): for files created by writers that
    use private modes (safetensors' 0600, ``tempfile.mkstemp``'s 0600).

    Example:
        >>> import tempfile
        >>> fd, name = tempfile.mkstemp(); os.close(fd)
        >>> oct(follow_umask(name).stat().st_mode & 0o777) == oct(default_file_mode())
        True
    """
    path = Path(path)
    os.chmod(path, default_file_mode())
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, sync: bool = False) -> Path:
    """Writes ``text`` to a temporary file in the same folder and renames it into place: a killed writer leaves the
    previous file (or none), never half of one. The file gets the umask's mode (0644 under umask 022). ``sync``
    also fsyncs the file before the rename and the folder after it, so a machine crash cannot lose it either.

    Example:
        >>> import tempfile
        >>> write_text_atomic(tempfile.mkdtemp() + "/a.md", "# hi").read_text()
        '# hi'
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def strict_json(x: Any) -> Any:
    """NaN / inf -> None (recursively), so the output is strict JSON.

    Example:
        >>> strict_json({"a": [1.0, float("nan")]})
        {'a': [1.0, None]}
    """
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes JSON to a temporary file in the same folder and renames it into place.

    Example:
        >>> import tempfile
        >>> write_json_atomic(tempfile.mkdtemp() + "/a.json", {"x": 1}).read_text().strip()
        '{\\n  "x": 1\\n}'
    """
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _in_notebook() -> bool:
    """Whether we run in a Jupyter kernel (where tqdm.auto draws widgets, though its streams are not terminals)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # noqa: BLE001 - any oddity: not a notebook
        return False


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress:
    """A progress reporter for logs and pipes: whole lines, no carriage returns, no bar.

    It prints ``desc: n/total unit (pct) | elapsed, rate, ETA | postfix`` when at least ``every`` of the total has
    passed since its last line and ``min_interval`` seconds have, or when ``max_interval`` seconds have (a slow loop
    still shows it is alive), and a last line on close when ``leave`` (a bar that ended early says where). So a run
    of any length writes at most about ``1 / every`` + elapsed / ``max_interval`` + 1 lines. The interface is the
    part of tqdm's that jaxtar uses: ``update``, ``set_postfix``, ``set_description``, ``close``, ``n``, ``total``,
    a context manager.

    Example:
        >>> import io
        >>> stream = io.StringIO()
        >>> with PlainProgress(4, desc="tar", file=stream, min_interval=0) as bar:
        ...     for _ in range(4):
        ...         bar.update(1)
        >>> [line.split(" | ")[0] for line in stream.getvalue().splitlines()]
        ['tar: 1/4 steps (25 %)', 'tar: 2/4 steps (50 %)', 'tar: 3/4 steps (75 %)', 'tar: 4/4 steps (100 %)']
    """

    def __init__(
        self,
        total: int | None,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "step",
        file: IO[str] | None = None,
        leave: bool = True,
        every: float = 0.1,
        min_interval: float = 10.0,
        max_interval: float = 60.0,
    ) -> None:
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.leave = desc, unit, leave
        self.file = file
        self.every, self.min_interval, self.max_interval = every, min_interval, max_interval
        self.postfix = ""
        self.start = self._last_time = time.monotonic()
        self._last_n = initial
        self._closed = False

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        since = now - self._last_time
        step = self.every * self.total if self.total else float("inf")
        if (self.n - self._last_n >= step and since >= self.min_interval) or since >= self.max_interval:
            self._print(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.leave and self.n != self._last_n:
                self._print(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The line this reporter prints now."""
        now = time.monotonic() if now is None else now
        elapsed, done = now - self.start, self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        units = f"{self.unit}s"
        count = f"{self.n}/{self.total} {units}" if self.total else f"{self.n} {units}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f} %)"
        timing = [f"{_clock(elapsed)} elapsed"]
        if rate:
            timing.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
            if self.total and self.n < self.total:
                timing.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts = [f"{self.desc}: {count}" if self.desc else count, ", ".join(timing)]
        return " | ".join(parts + ([self.postfix] if self.postfix else []))

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.file if self.file is not None else sys.stderr, flush=True)
        self._last_time, self._last_n = now, self.n


def progress_bar(
    total: int | None,
    *,
    initial: int = 0,
    enabled: bool = True,
    desc: str = "",
    unit: str = "step",
    leave: bool = True,
    file: IO[str] | None = None,
) -> Any:
    """The one progress reporter of jaxtar's loops (defences, red-team attacks): a tqdm bar when ``file`` (default
    stderr) is a terminal or a notebook shows it, plain periodic lines (`PlainProgress`) when it is a file or a pipe,
    nothing when not ``enabled``. Either has ``update``, ``set_postfix``, ``set_description`` and ``close`` and is a
    context manager.

    Example:
        >>> import io
        >>> bar = progress_bar(10, desc="attack", file=io.StringIO())  # not a terminal: plain lines
        >>> type(bar).__name__
        'PlainProgress'
    """
    stream = sys.stderr if file is None else file
    if enabled and not _is_terminal(stream) and not _in_notebook():
        return PlainProgress(total, initial=initial, desc=desc, unit=unit, file=file, leave=leave)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit, leave=leave, file=file,
                dynamic_ncols=True)  # fmt: skip


def progress_write(message: str, file: IO[str] | None = None) -> None:
    """Prints a line between progress output (tqdm clears and redraws its bars around it)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=file)
