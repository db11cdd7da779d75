"""MLAC's blocking evaluation: how well can an attacker fine-tune a model for the harmful task on n examples?

For every model and every n (default {20, 50, 100, 200}) an attacker puts a fresh random head on the model's
pooled output and trains it with Adam on n examples of ``val1`` - either a **linear probe** (the encoder frozen;
its pooled features are computed once) or a **full fine-tune** (encoder + head) - and is scored on ``val2`` every
``eval_every`` steps. Its score is the best ``val2`` accuracy over checkpoints (the attacker-favourable protocol of
the paper: the attacker's own test split picks the checkpoint and the hyper-parameters).

Hyper-parameters come from a documented grid by default: learning rates (default log-spaced 1e-5 ... 1e-2), step
budgets (100 ... 1000) and probe vs full. With ``search="tpe"`` the learning rate is instead drawn by Optuna's TPE
sampler, as in the MLAC paper: ``tpe_trials`` per (mode, n), log-uniform between min(lrs) and max(lrs), asked
``tpe_batch`` at a time per n so that each round is one vectorised run (`jaxtar.eval.blocking_search`; needs
``pip install 'jaxtar[sweep]'``). A step budget costs nothing extra: the learning rate is constant, so a budget of s
steps is the prefix of the longest run (same seeds), and early stopping (stop after ``patience`` evaluations without
improvement) only depends on the prefix too. Two stages per (model, n):

1. search: every (mode, lr) - each grid lr, or each TPE trial's - runs ``search_runs`` times (different data
   subsets / head inits / batch orders; the same seeds for every lr); the (mode, lr, budget) with the best mean
   best-checkpoint accuracy wins (a TPE trial's value is its best budget's);
2. final: the winner runs ``data_seeds x reruns`` times (subset of val1 by data seed; head init and batch order by
   rerun) and the mean and standard deviation of the best-checkpoint accuracy are reported.

Runs are vectorised: one ``vmap`` (in chunks of ``chunk_size`` via ``lax.map``) over learning rates, n, data seeds
and reruns; n is a traced value (batches are drawn from the first n examples of the seeded permutation), so one
compilation per (architecture, mode) serves every model, n and learning rate. Batches are drawn with replacement.

Example:
    >>> cfg = BlockingConfig(ns=(20, 50), lrs=(1e-4, 1e-3), steps=(50, 100), reruns=2, data_seeds=2)
    >>> cfg.lrs, len(cfg.ns) * len(cfg.lrs) * len(cfg.steps)  # the grid searched for every n
    ((0.0001, 0.001), 8)
    >>> result = blocking_eval({"mlac": (model, params), "pretrained": (model0, params0)}, val1, val2,
    ...                        cfg)  # doctest: +SKIP
    >>> result["models"]["mlac"]["harmful"]["20"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtar.config.blocking import MODES, BlockingConfig, log_grid  # noqa: F401 - re-exported
from jaxtar.data.rows import materialise, take_rows
from jaxtar.models import Model, model_for_config
from jaxtar.parallel import batch_shardings, param_shardings, shard

Params = dict[str, Any]


# --------------------------------------------------------------------------------------------- the vmapped runs
def _inputs(arrays: Mapping[str, np.ndarray], label_key: str, limit: int | None = None) -> dict[str, jax.Array]:
    keys = ("input_ids", "attention_mask", label_key)
    return {k: jnp.asarray(np.asarray(arrays[k])[:limit]) for k in keys}


def _make_runner(model: Model, mode: str, cfg: BlockingConfig, compiler_options: dict | None) -> Callable:
    """``run(base, pool, evalset, n, lr, data_key, run_key) -> accuracies [R, num_evals]`` (all args batched on R
    except base / pool / evalset). ``base`` is the encoder params (full) or None (probe: pool / evalset hold
    pooled features under ``"x"``)."""
    trunk = model_for_config(dataclasses.replace(model.config, num_labels=0))
    y_key, bs, every, evals = cfg.label_key, cfg.batch_size, cfg.eval_every, cfg.num_evals

    def logits(t: Params, batch: dict) -> jax.Array:
        x = (
            batch["x"]
            if mode == "probe"
            else trunk.apply(t["trunk"], batch["input_ids"], batch["attention_mask"]).pooled_output
        )
        return jnp.dot(x, t["head"].astype(x.dtype), preferred_element_type=jnp.float32)

    def loss(t: Params, batch: dict) -> jax.Array:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(t, batch), batch[y_key]))

    def accuracy(t: Params, evalset: dict) -> jax.Array:
        m = evalset[y_key].shape[0]
        pad = -m % cfg.eval_batch_size
        padded = jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), evalset)
        chunks = jax.tree.map(lambda a: a.reshape((-1, cfg.eval_batch_size) + a.shape[1:]), padded)
        hits = jax.lax.map(lambda c: jnp.argmax(logits(t, c), -1) == c[y_key], chunks).reshape(-1)
        return jnp.sum(jnp.where(jnp.arange(m + pad) < m, hits, False)) / m

    def one(base, pool, evalset, n, lr, data_key, run_key):
        perm = jax.random.permutation(data_key, pool[y_key].shape[0])
        k_head, k_batch = jax.random.split(run_key)
        dim = (pool["x"] if mode == "probe" else base["pooler"]["kernel"]).shape[-1]
        head = cfg.head_init_std * jax.random.normal(k_head, (dim, cfg.num_classes), jnp.float32)
        t = {"head": head} if mode == "probe" else {"trunk": base, "head": head.astype(base["pooler"]["kernel"].dtype)}
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr)

        def step(carry, key):
            t, s = carry
            idx = perm[jax.random.randint(key, (bs,), 0, n)]
            g = jax.grad(loss)(t, jax.tree.map(lambda a: a[idx], pool))
            u, s = opt.update(g, s, t)
            return (optax.apply_updates(t, u), s), None

        def segment(carry, keys):
            carry, _ = jax.lax.scan(step, carry, keys)
            return carry, accuracy(carry[0], evalset)

        keys = jax.random.split(k_batch, evals * every).reshape(evals, every)
        _, accs = jax.lax.scan(segment, (t, opt.init(t)), keys)
        return accs

    def run(base, pool, evalset, n, lr, data_key, run_key):
        batched = (n, lr, data_key, run_key)
        f = lambda xs: one(base, pool, evalset, *xs)
        return jax.lax.map(f, batched, batch_size=min(cfg.chunk_size, n.shape[0]))

    return jax.jit(run, compiler_options=compiler_options)


def best_checkpoint(accs: np.ndarray, budget_evals: int, patience: int | None) -> np.ndarray:
    """Best accuracy over the first ``budget_evals`` checkpoints, stopping early after ``patience`` checkpoints
    without a strict improvement.

    Args:
        accs: accuracies [R, J] at checkpoints 1..J.
        budget_evals: checkpoints within the step budget.
        patience: None disables early stopping.

    Example:
        >>> best_checkpoint(np.array([[0.5, 0.6, 0.55, 0.58, 0.9]]), 5, patience=2).tolist()
        [0.6]
    """
    accs = np.asarray(accs)[:, :budget_evals]
    out = np.empty(accs.shape[0])
    for r, row in enumerate(accs):
        best, since = -np.inf, 0
        for a in row:
            if a > best:
                best, since = a, 0
            else:
                since += 1
            if patience is not None and since >= patience:
                break
        out[r] = best
    return out


# --------------------------------------------------------------------------------------------------- protocol
class _Attacks:
    """Per-model state: features (probe), trunk params (full), the cached runners."""

    def __init__(self, cfg: BlockingConfig, val1: Mapping, val2: Mapping, compiler_options: dict | None):
        self.cfg, self.opts, self.runners = cfg, compiler_options, {}
        self.cached: dict[str, tuple[Params, tuple]] = {}  # mode -> (params, data): the last model's features
        self.pool, self.evalset = _inputs(val1, cfg.label_key), _inputs(val2, cfg.label_key, cfg.eval_examples)

    def runner(self, model: Model, mode: str) -> Callable:
        key = (model.config, mode)
        if key not in self.runners:
            self.runners[key] = _make_runner(model, mode, self.cfg, self.opts)
        return self.runners[key]

    def data(self, model: Model, params: Params, mode: str) -> tuple[Any, dict, dict]:
        """The runner's (base, pool, evalset); the probe's features are computed once per (params, mode) and reused
        by every later call (a TPE search calls once per round)."""
        cached = self.cached.get(mode)
        if cached is not None and cached[0] is params:
            return cached[1]
        trunk = {k: v for k, v in params.items() if k != "classifier"}
        if mode == "full":
            return trunk, self.pool, self.evalset
        tm = model_for_config(dataclasses.replace(model.config, num_labels=0))
        feats = jax.jit(lambda p, i, m: tm.apply(p, i, m).pooled_output)
        y = self.cfg.label_key
        mk = lambda d: {"x": feats(trunk, d["input_ids"], d["attention_mask"]), y: d[y]}
        self.cached[mode] = (params, (None, mk(self.pool), mk(self.evalset)))
        return self.cached[mode][1]

    def run(self, model, params, mode, ns, lrs, data_seeds, run_seeds) -> np.ndarray:
        base, pool, evalset = self.data(model, params, mode)
        root = jax.random.key(self.cfg.seed)
        dkeys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(root, 1), s))(jnp.asarray(data_seeds))
        rkeys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(root, 2), s))(jnp.asarray(run_seeds))
        f = self.runner(model, mode)
        out = f(base, pool, evalset, jnp.asarray(ns, jnp.int32), jnp.asarray(lrs, jnp.float32), dkeys, rkeys)
        return np.asarray(out)


def _scores(accs: np.ndarray, cfg: BlockingConfig) -> list[float]:
    """The mean best-checkpoint accuracy of ``search_runs`` runs [search_runs, J] for every step budget."""
    return [float(best_checkpoint(accs, s // cfg.eval_every, cfg.patience).mean()) for s in cfg.steps]


def _search(att: _Attacks, model: Model, params: Params, mode: str) -> dict[int, list[dict]]:
    """Stage 1 for one mode: n -> rows ``{"mode", "lr", "steps", "score", "trial"}`` (trial: the lr's index in the
    grid, or the TPE trial's number)."""
    cfg, runs = att.cfg, range(att.cfg.search_runs)

    def evaluate(points: list[tuple[int, float]]) -> np.ndarray:  # every (n, lr) x search_runs in one vmapped call
        grid = [(n, lr, r) for n, lr in points for r in runs]
        accs = att.run(model, params, mode, *zip(*grid), [10_000 + r for _, _, r in grid])
        return np.array([_scores(a, cfg) for a in accs.reshape(len(points), len(runs), -1)])

    if cfg.search == "grid":
        points = list(itertools.product(cfg.ns, cfg.lrs))
        trials = {n: [] for n in cfg.ns}
        for (n, lr), scores in zip(points, evaluate(points)):
            trials[n].append({"trial": len(trials[n]), "lr": lr, "scores": scores})
    else:
        from jaxtar.eval.blocking_search import tpe_search

        trials = tpe_search(evaluate, cfg.ns, low=min(cfg.lrs), high=max(cfg.lrs), trials=cfg.tpe_trials,
                            batch=cfg.tpe_batch, seed=(cfg.seed, MODES.index(mode)))  # fmt: skip
    return {n: [{"mode": mode, "lr": t["lr"], "steps": steps, "score": float(score), "trial": t["trial"]}
                for t in trials[n] for steps, score in zip(cfg.steps, t["scores"])] for n in cfg.ns}  # fmt: skip


def _trials(rows: list[dict]) -> list[dict]:
    """One entry per searched (mode, lr): its best step budget (the first of ties), in search order."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["mode"], r["trial"])
        if key not in best or r["score"] > best[key]["score"]:
            best[key] = {k: r[k] for k in ("mode", "trial", "lr", "steps", "score")}
    return list(best.values())


def _evaluate_model(att: _Attacks, model: Model, params: Params, log: Callable[[str], None]) -> dict[str, Any]:
    cfg = att.cfg
    search: dict[int, list[dict]] = {n: [] for n in cfg.ns}
    for mode in cfg.modes:  # stage 1
        for n, rows in _search(att, model, params, mode).items():
            search[n] += rows
    winners = {n: max(search[n], key=lambda r: r["score"]) for n in cfg.ns}
    log(f"  {cfg.search} search done: { ({n: (w['mode'], w['lr'], w['steps']) for n, w in winners.items()}) }")
    harmful: dict[str, Any] = {}
    reps = list(itertools.product(range(cfg.data_seeds), range(cfg.reruns)))
    for mode in cfg.modes:  # stage 2: the winners, data_seeds x reruns each
        ns = [n for n in cfg.ns if winners[n]["mode"] == mode]
        if not ns:
            continue
        grid = [(n, winners[n]["lr"], d, d * cfg.reruns + r) for n in ns for d, r in reps]
        accs = att.run(model, params, mode, *zip(*grid))
        for i, n in enumerate(ns):
            w = winners[n]
            best = best_checkpoint(
                accs[i * len(reps) : (i + 1) * len(reps)], w["steps"] // cfg.eval_every, cfg.patience
            )
            harmful[str(n)] = {"mean": float(best.mean()), "std": float(best.std()), "runs": len(best),
                               "mode": mode, "lr": w["lr"], "steps": w["steps"], "search": search[n],
                               "trials": _trials(search[n])}  # fmt: skip
    return {"harmful": {str(n): harmful[str(n)] for n in cfg.ns}}


def desired_accuracy(
    model: Model,
    params: Params,
    arrays: Mapping[str, Any],
    num_desired: int,
    label_key: str = "profession",
    batch_size: int = 256,
    mesh: Any = None,
) -> float | None:
    """Accuracy of the model's own desired-task head (its first ``num_desired`` outputs); None without a head.

    The rows are scored in equal chunks of about ``batch_size`` (one compilation). On a ``mesh`` (`jaxtar.parallel`)
    each chunk is split across its data x fsdp devices and ``params`` are FSDP-sharded; across processes each
    process reads (and, for token columns made on demand, tokenises) only the rows of its own shards, and every
    process gets the same count.

    Example:
        >>> accuracy = desired_accuracy(model, params, test_arrays, num_desired=28)  # doctest: +SKIP
    """
    if model.config.num_labels < num_desired or "classifier" not in params:
        return None
    labels = np.asarray(arrays[label_key])
    n = len(labels)
    split = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    size = ceil(ceil(n, ceil(n, batch_size)), split) * split  # rows per chunk: about batch_size, a multiple of split
    if mesh is not None:
        params = shard(params, param_shardings(params, mesh))

    @jax.jit
    def correct(p, batch):
        logits = model.apply(p, batch["input_ids"], batch["attention_mask"]).logits[:, :num_desired]
        return jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) & batch["real"])

    total = 0
    for start in range(0, n, size):
        real = np.arange(start, min(start + size, n))
        rows = np.concatenate([real, np.full(size - len(real), start)])  # padded with copies of the chunk's first row
        batch = {k: take_rows(arrays[k], rows) for k in ("input_ids", "attention_mask")}
        batch.update(labels=labels[rows], real=np.arange(size) < len(real))
        batch = materialise(batch) if mesh is None else shard(batch, batch_shardings(batch, mesh))
        total += int(correct(params, batch))
    return total / n


def blocking_eval(
    models: Mapping[str, tuple[Model, Params]],
    val1: Mapping[str, np.ndarray],
    val2: Mapping[str, np.ndarray],
    cfg: BlockingConfig,
    *,
    test: Mapping[str, np.ndarray] | None = None,
    num_desired: int = 28,
    desired_key: str = "profession",
    compiler_options: dict | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the blocking evaluation (module docstring) for every model.

    Args:
        models: name -> (model, params); only the encoder is attacked (a classifier, if any, is dropped).
        val1: the attacker's training pool (``input_ids``, ``attention_mask``, the harmful labels).
        val2: the attacker's test split.
        cfg: the grid and repetition counts.
        test: optional split for the desired-task accuracy of models that have a desired head.
        num_desired: outputs of the desired head (the first columns of the classifier).
        desired_key: the desired-task label column in ``test``.
        compiler_options: passed to ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}`` for fast compiles).
        log: progress messages.

    Returns:
        A JSON-ready dict: ``config``, ``search_method`` (grid or tpe), ``chance`` (majority-class rate of val2)
        and per model ``harmful`` (per n: mean, std, runs, the winning mode / lr / steps, the search table -
        one row per (mode, lr, step budget), with its ``trial`` - and ``trials``, one per (mode, lr) at its best
        budget, the winner's among them) and ``desired_accuracy``.
    """
    if not models:
        raise ValueError("blocking_eval needs at least one model")
    for name, split in (("val1", val1), ("val2", val2)):
        missing = [k for k in ("input_ids", "attention_mask", cfg.label_key) if k not in split]
        if missing:
            raise ValueError(f"{name} lacks {missing}")
        labels = np.asarray(split[cfg.label_key])
        if labels.min() < 0 or labels.max() >= cfg.num_classes:
            raise ValueError(
                f"{name}[{cfg.label_key!r}] must lie in [0, {cfg.num_classes}), got [{labels.min()}, {labels.max()}]"
            )
    if cfg.search == "tpe":  # before any attacker runs: a missing optuna says how to install it
        from jaxtar.eval.blocking_search import require_optuna

        require_optuna()
    pool_size = len(val1[cfg.label_key])
    if max(cfg.ns) > pool_size:
        raise ValueError(f"n = {max(cfg.ns)} exceeds the {pool_size} examples of val1")
    att = _Attacks(cfg, val1, val2, compiler_options)
    y2 = np.asarray(att.evalset[cfg.label_key])
    out: dict[str, Any] = {"config": dataclasses.asdict(cfg), "search_method": cfg.search,
                           "chance": float(np.bincount(y2).max() / len(y2)), "eval_examples": len(y2),
                           "models": {}}  # fmt: skip
    for name, (model, params) in models.items():
        t0 = time.perf_counter()
        log(f"blocking eval of {name!r}")
        res = _evaluate_model(att, model, params, log)
        res["desired_accuracy"] = (
            None if test is None else desired_accuracy(model, params, test, num_desired, desired_key)
        )
        res["seconds"] = time.perf_counter() - t0
        out["models"][name] = res
    return out
