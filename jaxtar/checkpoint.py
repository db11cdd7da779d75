"""Run folders and orbax checkpoints: atomic saves, restores into abstract targets, one run per folder.

A run folder holds ``run.json`` (the run's identity: method, model, data, method config, seed), ``checkpoints/``
(orbax steps, each ``Composite(state=StandardSave, meta=JsonSave)``), ``metrics.jsonl`` and, when finished, the
exported ``model/``. :func:`open_run_dir` refuses a folder that holds another run (or anything else) so nothing is
ever overwritten, and on resume checks that the identity matches.

Across processes (`jaxtar.parallel.initialize_distributed`) process 0 alone claims, locks and writes the run folder
(the others wait for it and share its verdict), while every process takes part in each orbax save and restore of the
global arrays (orbax's multi-host support: process 0 writes the metadata and commits the step; the folder must be
on storage every process sees).

Orbax writes every step under a temporary name and renames it when complete, so a run killed mid-save (even with
``kill -9``) leaves only whole checkpoints behind. Restores always pass an abstract target (shapes, dtypes,
shardings): the tree structure comes back exactly (NamedTuple optimiser states, integer dict keys).

Example:
    >>> import tempfile, jax.numpy as jnp
    >>> run = open_run_dir(tempfile.mkdtemp() + "/run", {"method": "demo"})
    >>> ckpt = Checkpointer(run.checkpoint_dir)
    >>> ckpt.save(3, {"w": jnp.ones(2)}, {"phase": "tar"})
    >>> ckpt.latest_step()
    3
    >>> state, meta = ckpt.restore(3, {"w": jnp.zeros(2)})
    >>> state["w"].tolist(), meta["phase"]
    ([1.0, 1.0], 'tar')
    >>> ckpt.close(); run.close()
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from jaxtar.errors import RunDirError
from jaxtar.files import write_json_atomic, write_text_atomic  # noqa: F401 - re-exported
from jaxtar.parallel import on_main_process
from jaxtar.runlock import RunLock, claim_output_dir

PyTree = Any
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunDir:
    """A run folder and its well-known paths.

    Attributes:
        path: the folder.
        resumed: it already held this run (``--resume`` continues it).
    """

    path: Path
    resumed: bool
    lock: RunLock | None = field(default=None, compare=False, repr=False)

    def close(self) -> None:
        """Releases the folder's lock (another process may then resume the run)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """``"path: stored != new"`` for every differing leaf (keys in the new identity's order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(b) + [k for k in a if k not in b]:
            out += _differences(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {_short(a)} != {_short(b)}"]


def open_run_dir(
    path: str | os.PathLike, identity: dict[str, Any], *, resume: bool = False, optional: tuple[str, ...] = ()
) -> RunDir:
    """Creates and locks a run folder or, with ``resume``, re-opens the same run; refuses everything else.

    The folder stays locked (`jaxtar.runlock`) until :meth:`RunDir.close`: a second writer of the same folder, even
    a second ``--resume``, is refused while this one runs.

    Args:
        path: the output folder.
        identity: JSON-serialisable description of the run (written to ``run.json``; compared on resume).
        resume: allow a folder that already holds this run.
        optional: top-level identity keys compared only when the stored run has them (fields added after older
            run folders were written, so those still resume).

    Raises:
        RunDirError: the folder holds another run (the differing fields are named), holds this run but
            ``resume`` is off, or is a non-empty folder that is not a run folder. Nothing is written then.
        RunLockedError: another live process is writing the folder.

    With several processes, process 0 opens (and locks) the folder; the others wait for it and get a `RunDir`
    without a lock, or the error process 0 raised.
    """
    claimed: list[RunDir] = []

    def claim() -> bool:
        claimed.append(_open_run_dir(path, identity, resume=resume, optional=optional))
        return claimed[0].resumed

    resumed = on_main_process(claim, "open the run folder")
    return claimed[0] if claimed else RunDir(Path(path), resumed=bool(resumed))


def _open_run_dir(
    path: str | os.PathLike, identity: dict[str, Any], *, resume: bool, optional: tuple[str, ...]
) -> RunDir:
    path = Path(path)
    identity = json.loads(json.dumps(identity))  # normalise (tuples -> lists) for comparison
    run_file = path / RUN_FILE

    def holds_this_run(folder: Path) -> bool:
        if not run_file.is_file():
            raise RunDirError(
                f"output folder {str(folder)!r} is not empty and holds no jaxtar run ({RUN_FILE} missing); "
                "refusing to write into it"
            )
        try:
            stored = json.loads(run_file.read_text())
        except json.JSONDecodeError as err:
            raise RunDirError(f"{run_file} is not valid JSON ({err}); refusing to touch {str(folder)!r}") from err
        if not isinstance(stored, dict):
            raise RunDirError(f"{run_file} is not a run identity (a JSON object); refusing to touch {str(folder)!r}")
        missing = [k for k in optional if k not in stored]
        if missing:
            print(f"note: {run_file} predates {missing}; not compared on resume", file=sys.stderr)
        diffs = _differences(stored, {k: v for k, v in identity.items() if k not in missing})
        if diffs:
            shown = "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
            raise RunDirError(
                f"output folder {str(folder)!r} holds another run ({shown}); choose a new folder (nothing was written)"
            )
        if not resume:
            raise RunDirError(
                f"output folder {str(folder)!r} already holds this run; pass --resume to continue it or choose a "
                "new folder (nothing was written)"
            )
        return True

    lock = claim_output_dir(path, accept=holds_this_run)
    try:
        resumed = run_file.is_file()
        if not resumed:
            write_json_atomic(run_file, identity)
    except BaseException:
        lock.release()
        raise
    return RunDir(path, resumed=resumed, lock=lock)


def abstract_like(tree: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves (with the leaves' shardings) for restoring into ``tree``'s structure."""

    def one(x):
        x = jax.numpy.asarray(x) if not hasattr(x, "shape") else x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


class Checkpointer:
    """Saves and restores ``(state pytree, JSON metadata)`` per step with an orbax ``CheckpointManager``.

    Args:
        directory: where steps are written (created if needed).
        max_to_keep: how many recent steps to keep (older ones are deleted after a successful save).
        async_save: write in a background thread (call :meth:`wait` or :meth:`close` before exiting); None: only
            in a single process. Across processes saves are synchronous: orbax's barriers are collectives over
            every device, and one issued from a background thread while the next step's collectives run could
            start in a different order on each process.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> c = Checkpointer(tempfile.mkdtemp())
        >>> c.save(0, {"w": jnp.zeros(1)}, {}); c.wait(); c.all_steps()
        [0]
        >>> c.close()
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool | None = None) -> None:
        import orbax.checkpoint as ocp

        if async_save is None:
            async_save = jax.process_count() == 1

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
        """Saves ``state`` and ``meta`` as ``step`` (a step that already exists is left as it is)."""
        if step in self._manager.all_steps():
            return
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state), meta=self._ocp.args.JsonSave(json.loads(json.dumps(meta)))
        )
        self._manager.save(step, args=args, force=True)

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of ``step``."""
        args = self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())
        return dict(self._manager.restore(step, args=args)["meta"])

    def restore(self, step: int, target: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """``(state, meta)`` of ``step``; ``target`` gives the structure, shapes, dtypes and shardings (arrays or
        ``jax.ShapeDtypeStruct`` s; only its abstract form is used).

        Raises:
            RunDirError: the checkpoint's tree or shapes are not the target's (orbax refuses to pad or truncate), so a
                run never continues from state that is not its own.
        """
        abstract = abstract_like(target)
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardRestore(abstract), meta=self._ocp.args.JsonRestore()
        )
        try:
            out = self._manager.restore(step, args=args)
        except ValueError as err:
            raise RunDirError(f"checkpoint {step} in {self.directory} does not hold this run's state: {err}") from err
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        """Blocks until a background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
