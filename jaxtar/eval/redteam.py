"""Red teaming: run a suite of fine-tuning attacks against models and score them before and after.

What the attacks train on and which models they attack (`RedTeamData`, model specs) is `jaxtar.eval.redteam_inputs`.

Each (model, adversary, seed) run starts from the model's weights, trains with the adversary's optimiser, schedule,
data and (optional) LoRA spec using the engine's attack step (`jaxtar.attacks.unroll.make_step`), and scores forget /
retain multiple choice and loss probes before and after, and with ``eval_every=N`` also every N steps during the
attack (the recovery curve, `jaxtar.eval.durability`: steps to recover, forget AUC). Long attacks run in fixed-size
chunks (`lax.scan` over `chunk_steps` steps, the last chunk masked), so every adversary group compiles once; the
compiled functions are cached per (model shape, adversary group) and reused across models of the same shape and
across seeds. Scoring during an attack happens at chunk boundaries: a group's chunk shrinks to ``eval_every`` when
that is smaller (`jaxtar.eval.durability.attack_chunk`).

Randomness of a run comes from its adversary's ``seed``: the data order, the retain->forget switch step when the
adversary leaves it open, the LoRA initialisation (key ``fold_in(key(0), seed)``) and the LoRA dropout of step k
(key ``fold_in(fold_in(fold_in(key(0), seed), 1), k)``).

Example:
    >>> results = red_team({"base": "out/base", "tar": (model, params)}, "toy", RedTeamData.toy(),
    ...                    out_dir="rt")  # doctest: +SKIP
    >>> results.summary("tar").worst_forget_after  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.attacks import Adversary, model_attack_problem, sample_switch_step
from jaxtar.attacks.optimizers import make_optimizer
from jaxtar.attacks.unroll import Carry, make_step
from jaxtar.data.batching import BatchIterator, stack_batches
from jaxtar.errors import ConfigError, InputError
from jaxtar.eval.durability import (
    DEFAULT_RECOVER_MARGIN,
    RecoveryCurve,
    attack_chunk,
    check_eval_every,
    check_recover_margin,
)
from jaxtar.eval.judge import JudgeTask
from jaxtar.eval.mcq import EvalSet, Scores, canonical_model, evaluate
from jaxtar.eval.redteam_inputs import ROLE_HINTS, ModelSpec, RedTeamData, check_models, load_model
from jaxtar.eval.report import (
    ALL_RESULT_FILES,
    DEFAULT_MAX_RETAIN_DROP,
    AttackRun,
    RedTeamResults,
    check_max_retain_drop,
    write_report,
)
from jaxtar.eval.results_dir import check_results_dir, open_results_dir
from jaxtar.eval.suites import load_suite, name_adversaries
from jaxtar.files import progress_bar, progress_write
from jaxtar.meta.vectorize import group_adversaries
from jaxtar.models import Model, merge_lora
from jaxtar.objectives.lm import batch_cross_entropy
from jaxtar.parallel import gather_json, is_main_process, on_main_process


# ---------------------------------------------------------------------------------------------------- attacks
class _AttackFeed:
    """Per-step batches of one run: each data role its own seeded iterator; retain->forget switches at a step."""

    def __init__(self, arrays: Mapping[str, Mapping[str, np.ndarray]], adversary: Adversary) -> None:
        self.switch_step = adversary.switch_step
        if adversary.switches and self.switch_step is None:
            self.switch_step = sample_switch_step(np.random.default_rng(adversary.seed), adversary.steps)
        self.sources = adversary.step_sources(self.switch_step)
        seed = lambda role: zlib.crc32(f"{role}:{adversary.seed}".encode())
        self.iters = {r: BatchIterator(arrays[r], adversary.batch_size, seed(r)) for r in dict.fromkeys(self.sources)}
        self.step = 0

    def take(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` steps' batches ``[count, B, T]`` (steps past the attack repeat its last source)."""
        batches = []
        for _ in range(count):
            batches.append(next(self.iters[self.sources[min(self.step, len(self.sources) - 1)]]))
            self.step += 1
        return stack_batches(batches)


def attack_batches(arrays: Mapping[str, Mapping[str, np.ndarray]], adversary: Adversary) -> dict[str, np.ndarray]:
    """All ``[steps, B, T]`` batches a run of ``adversary`` trains on (the same ones `red_team` uses).

    Example:
        >>> data = RedTeamData.toy()
        >>> attack_batches(data.arrays(data.tokenizer), Adversary(steps=3, batch_size=2))["input_ids"].shape
        (3, 2, 64)
    """
    return _AttackFeed(arrays, adversary).take(adversary.steps)


class _GroupRunner:
    """Compiled init / chunk / final-weights functions for one model shape and adversary group."""

    def __init__(self, model: Model, reference: Adversary, chunk: int) -> None:
        opt = make_optimizer(reference)
        lora = reference.lora is not None

        def loss(params, batch, lora_params):
            rng = batch["rng"] if lora_params is not None else None
            out = model.apply(params, batch["input_ids"], batch["attention_mask"], lora=lora_params, lora_rng=rng)
            return batch_cross_entropy(out.logits, batch)

        problem = model_attack_problem(reference, loss, model=model)

        def init(defended, key, hp):
            trainable = problem.attack_init(defended, key)
            return Carry(trainable, opt.init(trainable, hp), jnp.zeros((), jnp.int32), None)

        def run(defended, carry, batches, hp, active, key):
            rngs = jax.vmap(lambda s: jax.random.fold_in(key, s))(carry.step + jnp.arange(chunk))
            return jax.lax.scan(make_step(problem, opt, defended, hp, active), carry, {**batches, "rng": rngs})

        def weights(defended, carry):
            w = opt.eval_params(carry.opt_state, carry.trainable)
            return merge_lora(defended, w) if lora else w

        self.chunk = chunk
        self.init, self.run, self.weights = jax.jit(init), jax.jit(run), jax.jit(weights)


_RUNNERS: dict[tuple, _GroupRunner] = {}


def _runner(model: Model, reference: Adversary, chunk: int) -> _GroupRunner:
    steps = reference.steps if reference.schedule.kind == "sgdr" else None  # only SGDR's cycle count reads it
    key = (repr(model.config), reference.static_key(), steps, chunk)
    if key not in _RUNNERS:
        _RUNNERS[key] = _GroupRunner(canonical_model(model), reference, chunk)
    return _RUNNERS[key]


def run_attack(
    model: Model,
    params: Any,
    adversary: Adversary,
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    *,
    chunk_steps: int = 50,
    reference: Adversary | None = None,
    progress: Any = None,
    eval_every: int | None = None,
    on_eval: Callable[[int, Any], Any] | None = None,
) -> tuple[Any, np.ndarray, int | None]:
    """One attack in chunks of ``chunk_steps``; returns (attacked weights, losses [steps], switch step).

    ``reference`` is the adversary group's shared structure (default: ``adversary`` itself); ``progress`` a bar.
    LoRA attacks return the base weights with the trained adapters merged in. With ``eval_every``, ``on_eval(step,
    weights)`` is called with the attacked weights after every ``eval_every`` steps before the last (the chunks
    shrink to line up: `jaxtar.eval.durability.attack_chunk`).

    Example:
        >>> weights, losses, _ = run_attack(model, params, Adversary(lr=1e-3, steps=40),
        ...                                 data.arrays(tokenizer))  # doctest: +SKIP
    """
    reference = adversary if reference is None else reference
    runner = _runner(model, reference, attack_chunk(chunk_steps, reference.steps, eval_every))
    key = jax.random.fold_in(jax.random.key(0), adversary.seed)
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in adversary.hyperparams().items()}
    carry = runner.init(params, key, hp)
    feed, active, losses = _AttackFeed(arrays, adversary), jnp.asarray(adversary.steps, jnp.int32), []
    for start in range(0, adversary.steps, runner.chunk):
        carry, chunk_losses = runner.run(params, carry, feed.take(runner.chunk), hp, active, jax.random.fold_in(key, 1))
        losses.append(np.asarray(chunk_losses))
        if progress is not None:
            progress.update(min(runner.chunk, adversary.steps - start))
            progress.set_postfix(loss=f"{float(losses[-1][min(runner.chunk, adversary.steps - start) - 1]):.3f}")
        end = start + runner.chunk
        if on_eval is not None and eval_every and end < adversary.steps and end % eval_every == 0:
            on_eval(end, runner.weights(params, carry))
    return runner.weights(params, carry), np.concatenate(losses)[: adversary.steps], feed.switch_step


# ---------------------------------------------------------------------------------------------------- driver
def evaluate_models(
    models: Mapping[str, ModelSpec], data: RedTeamData | EvalSet, *, batch_size: int = 32
) -> dict[str, Scores]:
    """MCQ accuracies and loss probes of each model, without attacks (``jaxtar eval``).

    Example:
        >>> evaluate_models({"base": "out/base"}, RedTeamData.toy())["base"].forget_acc  # doctest: +SKIP
    """
    check_models(models)
    eval_set = data.eval_set if isinstance(data, RedTeamData) else data
    tokenizer = data.tokenizer if isinstance(data, RedTeamData) else None
    out = {}
    for name, spec in models.items():
        model, params, tok = load_model(name, spec, tokenizer)
        out[name] = evaluate(model, params, eval_set.prepare(tok), batch_size=batch_size)
    return out


def _scores(model: Model, params: Any, tokenizer: Any, prepared: Any, judge: JudgeTask | None, bs: int) -> Scores:
    scores = evaluate(model, params, prepared, batch_size=bs)
    if judge is None:
        return scores
    return dataclasses.replace(scores, judge_score=judge.run(model, params, tokenizer).mean)


def _recorder(model: Model, prepared: Any, batch_size: int, points: list) -> Callable[[int, Any], None]:
    """An ``on_eval`` for `run_attack` that appends ``(step, Scores)`` to ``points`` (no judge during attacks)."""
    return lambda step, weights: points.append((step, evaluate(model, weights, prepared, batch_size=batch_size)))


def red_team(
    models: Mapping[str, ModelSpec],
    suite: str | Sequence[Adversary],
    data: RedTeamData | None = None,
    *,
    seeds: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    chunk_steps: int = 50,
    eval_batch_size: int = 32,
    judge: JudgeTask | None = None,
    progress: bool = True,
    max_retain_drop: float | None = DEFAULT_MAX_RETAIN_DROP,
    eval_every: int | None = None,
    recover_margin: float = DEFAULT_RECOVER_MARGIN,
    reference_model: str | None = None,
) -> RedTeamResults:
    """Attack every model with every adversary (x seed); score before and after; optionally write the report.

    Args:
        models: name -> HF folder, (model, params) or (model, params, tokenizer).
        suite: a suite name / file (`load_suite`) or adversaries.
        data: attack data and eval set (default: the toy world).
        seeds: run each distinct adversary once per seed (None: the seeds the suite carries).
        out_dir: write results.json, results.md and plots here, locked for the whole run (`jaxtar.eval.results_dir`:
            a folder holding anything is refused; with ``overwrite``, one of our results folders is accepted and only
            the files its manifest lists are replaced).
        chunk_steps: steps per compiled chunk.
        eval_batch_size: prompts per scoring batch.
        judge: also generate for these prompts and record the judge's mean score (e.g. refusal rate) before and
            after each attack, as `Scores.judge_score`.
        progress: progress bars (`jaxtar.files.progress_bar`: plain lines in a log or pipe) and one line per finished
            run.
        max_retain_drop: the capability guard of the report's second worst case: an attack counts as a recovery only
            if the model's retain accuracy after it dropped by at most this fraction of its retain accuracy before
            (default 0.10, TamperBench's; None: no guard). The unguarded worst case is always reported too.
        eval_every: also score every this many attack steps (forget / retain accuracy and loss probes, no judge):
            each run's recovery curve (step 0 = the before-scores, the last point = the after-scores), steps to
            recover and forget AUC, in the table, results.json and recovery.png (`jaxtar.eval.durability`). At most
            ``chunk_steps`` or a multiple of it. None: before and after only.
        recover_margin: an attack has recovered once forget accuracy reaches the reference model's pre-attack
            forget accuracy minus this (absolute accuracy, default 0.05).
        reference_model: the model whose pre-attack forget accuracy is the recovery level: the undefended base
            (None: the first model; a model's own level would be wrong for a defended model, which starts near
            chance and would "recover" at step 0).

    Example:
        >>> res = red_team({"base": (model, params)}, "toy", seeds=(0, 1), out_dir="redteam-out")  # doctest: +SKIP
        >>> res.summary("base").worst_forget_after >= res.summary("base").mean_forget_after  # doctest: +SKIP
        True
    """
    adversaries = name_adversaries(load_suite(suite) if isinstance(suite, (str, os.PathLike)) else tuple(suite), seeds)
    if not adversaries:
        raise ConfigError("the adversary suite is empty")
    data = RedTeamData.toy() if data is None else data
    missing = sorted({r for a in adversaries for r in a.sources} - set(data.texts))
    if missing:
        hints = "".join(f"; {ROLE_HINTS[r]}" for r in missing if r in ROLE_HINTS)
        raise InputError(
            f"the suite needs data role(s) {missing}; the data {data.name!r} has {sorted(data.texts)}{hints}"
        )
    if seeds is not None and len({int(s) for s in seeds}) != len(seeds):
        raise InputError(f"seeds must be distinct, got {list(seeds)}")
    try:
        max_retain_drop = check_max_retain_drop(max_retain_drop)
    except ValueError as err:
        raise InputError(str(err)) from None
    if chunk_steps < 1 or eval_batch_size < 1:
        raise InputError(f"chunk_steps and eval_batch_size must be >= 1, got {chunk_steps} and {eval_batch_size}")
    try:
        eval_every, recover_margin = check_eval_every(eval_every, chunk_steps), check_recover_margin(recover_margin)
    except ValueError as err:
        raise InputError(str(err)) from None
    if reference_model is not None and reference_model not in models:
        raise InputError(f"reference model {reference_model!r} is not one of the models {list(models)}")
    check_models(models)
    progress = progress and is_main_process()  # bars and run lines from process 0 only
    if jax.process_count() > 1 and out_dir is not None:  # every process agrees before any compute
        on_main_process(lambda: check_results_dir(Path(out_dir), overwrite, writes=ALL_RESULT_FILES) and None,
                        "use the results folder")  # fmt: skip
    writer = out_dir if is_main_process() else None  # process 0 writes; the others run their share of the grid
    with open_results_dir(writer, overwrite=overwrite, writes=ALL_RESULT_FILES) as lock:  # before any compute
        results = _attack_all(models, adversaries, data, suite, seeds, chunk_steps, eval_batch_size, judge, progress,
                              eval_every)  # fmt: skip
        metadata = {**results.metadata, "data_sources": dict(data.sources)}
        results = dataclasses.replace(results, metadata=metadata, max_retain_drop=max_retain_drop,
                                      reference_model=reference_model, recover_margin=recover_margin)  # fmt: skip
        if out_dir is not None:
            on_main_process(lambda: write_report(results, out_dir, lock=lock) and None, "write the red-team report")
    return results


def _attack_all(models, adversaries, data, suite, seeds, chunk_steps, eval_batch_size, judge, progress, eval_every):
    """The compute of `red_team` (its inputs already checked): every model x adversary, scored before and after (and
    every ``eval_every`` steps)."""
    groups = group_adversaries(adversaries)
    reference = {a: g.reference for g in groups for a in g.adversaries}
    ordered = [a for g in groups for a in g.adversaries]  # group order: compiled functions stay hot
    # across processes, (model, adversary) job j runs on process j % P, which also scores that model before
    jobs = [(name, adv) for name in models for adv in ordered]
    share = {(name, id(adv)) for j, (name, adv) in enumerate(jobs) if j % jax.process_count() == jax.process_index()}
    t0 = time.time()
    before: dict[str, Scores] = {}
    runs: list[AttackRun] = []
    for name, spec in models.items():
        mine = [adv for adv in ordered if (name, id(adv)) in share]
        if not mine:  # another process runs (and scores) this model
            continue
        model, params, tokenizer = load_model(name, spec, data.tokenizer)
        prepared, arrays = data.eval_set.prepare(tokenizer), data.arrays(tokenizer)
        before[name] = _scores(model, params, tokenizer, prepared, judge, eval_batch_size)
        for adv in mine:
            start, points = time.time(), [(0, before[name])]
            on_eval = None if eval_every is None else _recorder(model, prepared, eval_batch_size, points)
            with progress_bar(adv.steps, desc=f"{name} | {adv.name} | seed {adv.seed}", enabled=progress,
                              leave=False) as bar:  # fmt: skip
                weights, losses, switch = run_attack(model, params, adv, arrays, chunk_steps=chunk_steps,
                                                     reference=reference[adv], progress=bar, eval_every=eval_every,
                                                     on_eval=on_eval)  # fmt: skip
            after = _scores(model, weights, tokenizer, prepared, judge, eval_batch_size)
            del weights
            curve = None if eval_every is None else RecoveryCurve.from_scores([*points, (adv.steps, after)])
            run = AttackRun(name, adv.name, adv.seed, dataclasses.asdict(adv), before[name], after,
                            tuple(float(x) for x in losses), switch, time.time() - start, curve)  # fmt: skip
            runs.append(run)
            if progress:
                progress_write(run.describe())
        del params
    if jax.process_count() > 1:  # every process's share, on every process
        shares = gather_json({"before": {k: v.to_dict() for k, v in before.items()},
                              "runs": [r.to_dict() for r in runs]})  # fmt: skip
        before = {k: Scores.from_dict(v) for share_ in shares for k, v in share_["before"].items()}
        runs = [AttackRun.from_dict(r) for share_ in shares for r in share_["runs"]]
    order = {(a.name, a.seed): i for i, a in enumerate(adversaries)}
    runs.sort(key=lambda r: (list(models).index(r.model), order[(r.adversary, r.seed)]))
    device = jax.devices()[0]
    metadata = dict(
        suite=str(suite) if isinstance(suite, (str, os.PathLike)) else "custom",
        data=data.name,
        seeds=None if seeds is None else [int(s) for s in seeds],
        adversaries=[dataclasses.asdict(a) for a in adversaries],
        device=f"{device.platform}:{getattr(device, 'device_kind', '')}",
        jax_version=jax.__version__,
        chunk_steps=chunk_steps,
        **({} if eval_every is None else {"eval_every": eval_every}),
        **({} if jax.process_count() == 1 else {"processes": jax.process_count()}),
        seconds=round(time.time() - t0, 2),
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return RedTeamResults(before=before, runs=tuple(runs), chance=data.eval_set.chance, metadata=metadata)
