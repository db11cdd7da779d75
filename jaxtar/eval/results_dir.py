"""A results folder: the files a report wrote, listed in a manifest, replaced one by one under the folder's lock.

Every folder a red team writes holds ``.jaxtar-results.json`` (``{"kind": ..., "files": [...]}``), the names of
the files jaxtar wrote there. Overwriting replaces and removes only those files: a non-empty folder without our
manifest is refused even with ``overwrite`` (it holds files we did not write), anything beside our manifest stays
byte-identical, and each file is written under a temporary name in the same folder and renamed into place (no
folder is ever renamed or deleted). The writer holds the folder's lock (`jaxtar.runlock`) for its whole run.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "rt"
    >>> with open_results_dir(folder, writes=["results.md"]) as lock:
    ...     _ = write_results(folder, {"results.md": lambda p: p.write_text("# hi")})
    >>> read_manifest(folder)
    ['results.md']
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> with open_results_dir(folder, overwrite=True, writes=["results.json"]):
    ...     _ = write_results(folder, {"results.json": lambda p: p.write_text("{}")})
    >>> sorted(p.name for p in folder.iterdir())  # results.md was ours and is gone; notes.txt stays
    ['.jaxtar-results.json', '.jaxtar.lock', 'notes.txt', 'results.json']
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from jaxtar.errors import RunDirError
from jaxtar.runlock import LOCK_NAME, RunLock, claim_output_dir, foreign_entries

MANIFEST = ".jaxtar-results.json"
KIND = "jaxtar-results"


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def read_manifest(folder: str | os.PathLike) -> list[str] | None:
    """The file names ``folder``'s results manifest lists (None when it has none).

    Raises:
        RunDirError: the manifest is unreadable, not ours, or lists something other than plain file names.

    Example:
        >>> import tempfile
        >>> read_manifest(tempfile.mkdtemp()) is None
        True
    """
    path = Path(folder) / MANIFEST
    if not os.path.lexists(path):
        return None
    bad = f"{str(path)!r} is not a jaxtar results manifest"
    try:
        record = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError) as err:
        raise RunDirError(f"{bad} ({err}); refusing to touch {str(folder)!r} (nothing was written)") from err
    files = record.get("files") if isinstance(record, dict) and record.get("kind") == KIND else None
    if not isinstance(files, list) or not all(_valid_name(f) for f in files):
        raise RunDirError(f"{bad}; refusing to touch {str(folder)!r} (nothing was written)")
    return list(files)


def check_results_dir(path: str | os.PathLike, overwrite: bool = False, *, writes: Iterable[str] = ()) -> Path:
    """Refuses ``path`` as a results folder unless it is new, empty, or (with ``overwrite``) holds our manifest and
    no unlisted file named like one of ``writes``. Changes nothing; call it before spending compute.

    Args:
        path: the results folder.
        overwrite: replace the files a previous report listed in its manifest.
        writes: the file names the report will write.

    Raises:
        RunDirError: ``path`` is a file, cannot be created, holds files we did not write, or holds results and
            ``overwrite`` is off.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "thesis.tex").write_text("mine")
        >>> check_results_dir(folder, overwrite=True)
        Traceback (most recent call last):
        ...
        jaxtar.errors.RunDirError: results folder '...' holds files jaxtar did not write (thesis.tex) ...
    """
    path = Path(path)
    shown = repr(str(path))
    if path.exists() and not path.is_dir():
        raise RunDirError(f"results folder {shown} is a file, not a folder (nothing was written)")
    if not path.exists():
        parent = next(p for p in path.absolute().parents if p.exists())  # the root always exists
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            why = "is a file" if not parent.is_dir() else "is not writable"
            raise RunDirError(f"cannot create results folder {shown}: {str(parent)!r} {why} (nothing was written)")
        return path
    listed = read_manifest(path)
    entries = [e for e in foreign_entries(path) if e != MANIFEST]
    if listed is None:
        if entries:
            names = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(
                f"results folder {shown} holds files jaxtar did not write ({names}) and no {MANIFEST}; refusing to "
                f"write into it{' even with --overwrite' if overwrite else ''}; choose a new folder, or move this "
                "one away if it is an older jaxtar results folder (written before the manifest; nothing was written)"
            )
        return path
    if not overwrite:
        raise RunDirError(
            f"results folder {shown} already holds red-team results; refusing to overwrite them without --overwrite "
            "(nothing was written)"
        )
    clash = sorted({n for n in writes if n in entries and n not in listed} | {n for n in listed if _is_dir(path / n)})
    if clash:
        raise RunDirError(
            f"results folder {shown} holds {', '.join(clash)}, which jaxtar did not write (not listed in its "
            f"{MANIFEST}); refusing to replace it even with --overwrite; move it or choose a new folder "
            "(nothing was written)"
        )
    return path


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


@contextlib.contextmanager
def open_results_dir(
    path: str | os.PathLike | None, *, overwrite: bool = False, writes: Iterable[str] = ()
) -> Iterator[RunLock | None]:
    """Checks (`check_results_dir`), creates and locks ``path`` for the ``with`` block (None: yields None).

    A folder this call created is removed again if the block fails before writing anything into it.

    Raises:
        RunDirError: as `check_results_dir`, checked again under the lock.
        RunLockedError: another live process is writing ``path``.

    Example:
        >>> import tempfile
        >>> with open_results_dir(tempfile.mkdtemp() + "/rt") as lock:
        ...     lock.held
        True
    """
    if path is None:
        yield None
        return
    path, writes = Path(path), tuple(writes)
    check_results_dir(path, overwrite, writes=writes)
    created = not path.exists()

    def accept(folder: Path) -> bool:
        check_results_dir(folder, overwrite, writes=writes)
        return True

    lock = claim_output_dir(path, accept=accept, what="results folder")
    try:
        yield lock
    except BaseException:
        if created and not foreign_entries(path):
            lock.release()
            with contextlib.suppress(OSError):
                (path / LOCK_NAME).unlink()
                path.rmdir()
        raise
    finally:
        lock.release()


def _replace(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary name beside ``path`` (same suffix, so plots keep their format), then rename."""
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_manifest(folder: Path, files: Iterable[str]) -> None:
    text = json.dumps({"kind": KIND, "files": sorted(files)}, indent=2) + "\n"
    _replace(folder / MANIFEST, lambda p: p.write_text(text))


def write_results(folder: str | os.PathLike, writers: Mapping[str, Callable[[Path], Any]]) -> Path:
    """Writes each ``name -> write(path)`` file into ``folder`` atomically and records them in its manifest; files the
    previous manifest listed and this one does not are removed; nothing else in the folder is touched. The caller
    holds the folder's lock (`open_results_dir`).

    While it runs the manifest lists the old and new files together, so a writer killed half way leaves a folder
    the next ``overwrite`` can still clean up.

    Raises:
        RunDirError: a file to write exists but the manifest does not list it (someone put it there meanwhile).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> sorted(p.name for p in write_results(folder, {"a.md": lambda p: p.write_text("a")}).iterdir())
        ['.jaxtar-results.json', 'a.md']
    """
    folder = Path(folder)
    old = read_manifest(folder) or []
    bad = [n for n in writers if not _valid_name(n)]
    foreign = [n for n in writers if n not in old and os.path.lexists(folder / n)]
    if bad or foreign:
        what = f"invalid file name(s) {bad}" if bad else f"{', '.join(foreign)} exist(s) but jaxtar did not write them"
        raise RunDirError(f"results folder {str(folder)!r}: {what}; refusing to write (nothing was written)")
    _write_manifest(folder, set(old) | set(writers))
    for name, write in writers.items():
        _replace(folder / name, write)
    for name in sorted(set(old) - set(writers)):
        (folder / name).unlink(missing_ok=True)
    _write_manifest(folder, writers)
    return folder
