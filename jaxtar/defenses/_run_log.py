"""What a defence run shows and writes while it trains: metrics.jsonl (+ TensorBoard), the progress bar, and the
signal handling that turns Ctrl-C / SIGTERM into a checkpoint.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> log = MetricsLog(path, start_step=0, tensorboard=False)
    >>> log.write({"step": 1, "phase": "tar", "loss": 0.5}); log.close()
    >>> _ = path.write_text(path.read_text() + '{"step": 2, "pha')  # a kill mid-write
    >>> [json.loads(line)["step"] for line in read_metrics_lines(path)]  # (a note on stderr names the line)
    [1]
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from jaxtar import files
from jaxtar.checkpoint import write_json_atomic, write_text_atomic
from jaxtar.errors import RunDirError


class Signals:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps (the second one aborts)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step...", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _summary_writer_class():
    """tensorboardX's or torch's SummaryWriter when the packages are installed (checked without importing torch)."""
    from importlib.util import find_spec

    if find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    if find_spec("tensorboard") is not None and find_spec("torch") is not None:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    return None


def read_metrics_lines(path: Path) -> list[str]:
    """The lines of a ``metrics.jsonl``, without a torn last line (a kill mid-write); any other unreadable line is a
    `RunDirError` naming the file and line."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a metrics record with an integer 'step'")
        except ValueError as err:
            if number == len(lines) and not text.endswith("\n"):  # only an unfinished last line is torn
                print(f"note: dropping the torn last line of {path} (line {number})", file=sys.stderr)
                break
            raise RunDirError(f"{path}, line {number}: {err}; the run's metrics are damaged") from err
        out.append(line)
    return out


class MetricsLog:
    """metrics.jsonl and TensorBoard when installed. On a resume from the checkpoint of ``phase`` at ``start_step``
    (None: no checkpoint) the lines the resumed run will write again are dropped first: those after the
    checkpoint, and those at its step from a later phase (a next phase's start validation)."""

    def __init__(self, path: Path, start_step: int, tensorboard: bool, phase: str | None = None) -> None:
        self.path = path

        def kept_line(record: dict[str, Any]) -> bool:
            return record["step"] < start_step or (record["step"] == start_step and record.get("phase") == phase)

        if path.exists():  # (and a torn last line)
            kept = "".join(line + "\n" for line in read_metrics_lines(path) if kept_line(json.loads(line)))
            if kept != path.read_text():
                write_text_atomic(path, kept)
        self._file = None
        self._tensorboard = tensorboard
        self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:  # opened on the first line: a run that writes nothing changes nothing
            self._file = self.path.open("a")
            SummaryWriter = _summary_writer_class() if self._tensorboard else None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(f"{record['phase']}/{k}", v, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """The defence loop's progress: a tqdm bar on a terminal, plain periodic lines in a log or pipe
    (`jaxtar.files.progress_bar`, shared with the red team)."""
    return files.progress_bar(total, initial=initial, enabled=enabled, desc=desc)


def last_record(path: Path) -> dict[str, Any]:
    """The last training-metrics line of ``metrics.jsonl`` (validation lines, marked ``"validation": true``,
    skipped), or {}."""
    records = [json.loads(line) for line in read_metrics_lines(path)] if path.exists() else []
    return next((r for r in reversed(records) if not r.get("validation")), {})


def read_result(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None


def write_result(folder: Path, result: dict[str, Any]) -> None:
    """``result.json`` (atomically), left untouched when it already says the same (a resumed, finished run)."""
    if read_result(folder) != result:
        write_json_atomic(folder / "result.json", result)
