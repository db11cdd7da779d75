"""jaxtar's error family: every problem with what the user asked for is a :class:`JaxtarError`.

The command line turns a ``JaxtarError`` (and an ``OSError``: a folder that cannot be written, a file that cannot be
read) into one line on stderr and exit code 2, in one place (``jaxtar.cli.main``); a defence that diverges exits 3.
Library callers catch ``JaxtarError`` or one of its kinds. Each kind keeps the builtin base it had before the family
existed (``RunDirError`` is still a ``FileExistsError``, ``DataSourceError`` a ``RuntimeError``), so older ``except``
clauses keep working.

Example:
    >>> issubclass(ConfigError, JaxtarError) and issubclass(JaxtarError, ValueError)
    True
    >>> try:
    ...     raise RunLockedError("runs/tar is in use by pid 12 on host a")
    ... except JaxtarError as err:
    ...     print(exit_code(err), err)
    2 runs/tar is in use by pid 12 on host a
"""

from __future__ import annotations


class JaxtarError(ValueError):
    """Base of every error jaxtar raises for bad input or a refused action (the CLI exits 2 with its message)."""


class ConfigError(JaxtarError):
    """A configuration could not be loaded: unknown preset / section / field, wrong type or invalid value."""


class InputError(JaxtarError):
    """A model, tokenizer, data source or size that cannot be used as configured."""


class CheckpointError(JaxtarError):
    """A checkpoint that cannot be loaded or written as asked; the message says why and what to do."""


class DataSourceError(JaxtarError, RuntimeError):
    """A dataset could not be loaded (offline, gated, missing file) or lacks a field we need."""


class RunDirError(JaxtarError, FileExistsError):
    """An output folder that may not be written: it holds another run or foreign files, or is unreadable."""


class RunLockedError(RunDirError):
    """An output folder another live process is writing (its lock names the holder)."""


class DivergedError(JaxtarError):
    """Training produced non-finite weights or loss; the last finite checkpoint was kept (the CLI exits 3)."""


def exit_code(err: BaseException) -> int:
    """The CLI's exit code for ``err``: 3 for a diverged run, 2 for any other jaxtar error or ``OSError``, else 1."""
    if isinstance(err, DivergedError):
        return 3
    if isinstance(err, JaxtarError | OSError):
        return 2
    return 1
