"""The one runner of every defence: load and validate the inputs, open (and lock) the run folder, run the phases a
:class:`Defence` builds through `jaxtar.defenses._loop.run_phases`, export the model.

A defence is a small :class:`Defence` value — how to load its model, how to build its phases, what identifies its
data — and nothing here names a method: TAR and random mapping (``jaxtar.defenses.tar.TAR``, ``...RANDOM_MAPPING``)
and MLAC (``jaxtar.defenses.mlac_run.MLAC``) are such values.
Everything that can be checked is checked before the run folder exists (sizes, memory, data), so a refused run
writes nothing.

Across processes (`jaxtar.parallel.initialize_distributed`) every process loads the inputs and runs the phases on
the mesh over all processes' devices; process 0 alone writes the run folder — ``config.yaml``, metrics, the exported
model (from the gathered weights), ``summary.json`` — while the others wait for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

from jaxtar.checkpoint import RunDir, open_run_dir, write_json_atomic
from jaxtar.defenses._fit import check_memory
from jaxtar.defenses._loop import Phase, Selected, place, run_phases
from jaxtar.defenses._run_log import read_result
from jaxtar.defenses._steps import use_compilation_cache
from jaxtar.defenses.provenance import PROVENANCE_FILE, provenance
from jaxtar.errors import InputError
from jaxtar.parallel import check_mesh_size, is_main_process, make_mesh, on_main_process, to_host

PyTree = Any


class Loaded(NamedTuple):
    """A defence's starting point: the model, its weights and tokenizer, a content hash of the weights and where
    they came from (a path or Hub id; None for weights handed in directly)."""

    model: Any
    params: PyTree
    tokenizer: Any
    sha256: str
    source: str | None = None


@dataclass(frozen=True)
class Defence:
    """A defence method as the runner sees it.

    Attributes:
        name: the method's name in ``run.json`` and its config section (``tar``, ``random_mapping``, ``mlac``).
        load: ``(config, mesh) -> Loaded``: the model to defend, from the config (loaded straight into the
            mesh's FSDP shards where the defence can; the runner places it otherwise).
        build: ``(config, model, params, tokenizer, mesh) -> phases``; validates every input (raising
            `jaxtar.errors.JaxtarError` kinds) before the folder exists.
        data_identity: ``config -> {role: identity}`` of the data (pinned revisions, file hashes): a resume must match.
        write_config: ``(config, path)`` writes the run's ``config.yaml``.
        frozen_base: pass frozen weights to every step (TAR's representation anchor, held once, sharded): the
            starting weights, or ``load_anchor(config, loaded)`` when that returns a `Loaded`.
        load_anchor: ``(config, loaded, mesh) -> Loaded | None``: other frozen weights (None: the starting ones),
            loaded onto ``mesh`` (None: one device).
        finish: ``(config, run_dir, result, loaded, mesh) -> dict`` after a complete run (e.g. test-set metrics,
            ``result`` a `jaxtar.defenses._loop.LoopResult`); the runner writes it to ``summary.json`` and returns
            it in `RunResult.summary` (a finished run resumed reads it back instead).
    """

    name: str
    load: Callable[[Any, Mesh | None], Loaded]
    build: Callable[..., list[Phase]]
    data_identity: Callable[[Any], dict[str, str]]
    write_config: Callable[[Any, Path], Any]
    frozen_base: bool = False
    load_anchor: Callable[[Any, Loaded, Any], Loaded | None] | None = None
    finish: Callable[..., dict[str, Any]] | None = None


@dataclass(frozen=True)
class RunResult:
    """What a defence run returns.

    Attributes:
        output_dir: the run folder.
        model_dir: the exported HF checkpoint (None when not exported or interrupted).
        model: the model (``jaxtar.models.Model``).
        params: the final parameters (the exported form).
        tokenizer: the tokenizer.
        steps: completed steps.
        interrupted: stopped by SIGINT / SIGTERM (a checkpoint was saved; ``--resume`` continues).
        metrics: the last metrics line.
        selected: each best-validation phase's chosen step and score.
        summary: what the defence's ``finish`` hook reported.
    """

    output_dir: Path
    model_dir: Path | None
    model: Any
    params: PyTree
    tokenizer: Any
    steps: int
    interrupted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, Selected] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _mesh(run: Any) -> Mesh | None:
    sizes = (run.mesh_data, run.mesh_fsdp, run.mesh_adversary)
    if jax.process_count() > 1:
        check_mesh_size(sizes)  # a multi-process run always has a mesh, over every device
    elif sizes == (1, 1, 1):
        return None
    try:
        return make_mesh(*sizes)
    except ValueError as e:
        raise InputError(f"run.mesh_*: {e}") from e


def run_defence(defence: Defence, config: Any, loaded: Loaded | None = None) -> RunResult:
    """Runs ``defence`` as ``config`` says (``config.run``: the folder, resume, mesh, logging; see `RunConfig`).

    Args:
        defence: the method.
        config: its configuration (``run`` section, ``identity(name)``).
        loaded: start from these weights instead of loading ``config``'s model.

    Raises:
        JaxtarError: bad input (nothing written), a folder in use or holding another run, a diverged run.
    """
    if config.run.output_dir is None:
        raise InputError("run.output_dir is required (--output DIR)")
    if config.run.compilation_cache:
        use_compilation_cache(config.run.output_dir)
    mesh = _mesh(config.run)
    loaded = defence.load(config, mesh) if loaded is None else loaded
    model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
    identity = config.identity(defence.name)
    identity["inputs"] = {"model_sha256": loaded.sha256, "data": defence.data_identity(config)}  # resume must match
    anchor = defence.load_anchor(config, loaded, mesh) if defence.frozen_base and defence.load_anchor else None
    if anchor is not None:
        identity["inputs"]["anchor_sha256"] = anchor.sha256
    params = place(params, mesh)  # the base model is held once, sharded (no full copy left on one device)
    frozen = None if not defence.frozen_base else params if anchor is None else place(anchor.params, mesh)
    phases = defence.build(config, model, params, tokenizer, mesh)  # every input validated before the folder
    resident = sum(x.nbytes for x in jax.tree.leaves(params))
    resident += 0 if anchor is None else sum(x.nbytes for x in jax.tree.leaves(frozen))
    check_memory({p.name: p.predicted_bytes for p in phases}, mesh, config.run.force, resident)
    with open_run_dir(config.run.output_dir, identity, resume=config.run.resume, optional=("inputs",)) as run_dir:
        if not run_dir.resumed and is_main_process():
            defence.write_config(config, run_dir.path / "config.yaml")
        already_done = _complete(run_dir, phases[-1].stop)
        result = run_phases(phases, params, frozen, run_dir, config.run, mesh)
        model_dir = run_dir.model_dir if already_done else None
        if already_done:
            if is_main_process():
                print(f"{run_dir.path} was already complete ({result.steps} steps); nothing changed", file=sys.stderr)
        elif not result.interrupted and config.run.export:
            record = json.dumps(provenance(defence.name, loaded.source, loaded.sha256), indent=2) + "\n"
            model_dir = export_model(model, result.params, run_dir.model_dir, tokenizer=tokenizer,
                                     overwrite=run_dir.resumed, extra_files={PROVENANCE_FILE: record})  # fmt: skip
            if is_main_process():
                print(f"wrote {model_dir}", file=sys.stderr)
        summary, summary_path = {}, run_dir.path / "summary.json"
        if defence.finish is not None and not result.interrupted:
            if already_done and summary_path.is_file():  # a finished run resumed: reported, not redone
                summary = json.loads(summary_path.read_text())
            else:
                summary = defence.finish(config, run_dir, result, loaded, mesh)
                on_main_process(lambda: write_json_atomic(summary_path, summary), "write summary.json")
    return RunResult(run_dir.path, model_dir, model, result.params, tokenizer, result.steps, result.interrupted,
                     result.metrics, result.selected, summary)  # fmt: skip


def export_model(model: Any, params: Any, folder: str | Path, **kwargs: Any) -> Path:
    """`jaxtar.models.save_pretrained` once per run: with several processes the weights are gathered on every process
    (`jaxtar.parallel.to_host`, a collective) and process 0 writes while the others wait for it (and raise its
    error); ``kwargs`` go to ``save_pretrained``. Returns the folder.

    Example:
        >>> export_model(model, params, "runs/x/baseline", tokenizer=tokenizer)  # doctest: +SKIP
    """
    from jaxtar.models import save_pretrained

    weights = params if jax.process_count() == 1 else to_host(params)
    written = on_main_process(lambda: str(save_pretrained(model, weights, folder, **kwargs)), f"write {folder}")
    return Path(written)


def _complete(run_dir: RunDir, total: int) -> bool:
    finished = read_result(run_dir.path) or {}
    return finished.get("steps") == total and run_dir.model_dir.is_dir()
