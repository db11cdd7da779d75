"""Memory planner: predicted peak memory of a meta-gradient per estimator, and which estimator / chunking fits.

The model follows docs/meta-gradients.md#cost-model. Per adversary, with P trainable parameters, f optimiser-state
arrays per parameter, one attack step's forward activations A (estimated from the config), a tamper evaluation's
activations A_t, K steps, m tamper records and D defended parameters (4-byte floats):

    weights W = 2 D (defended params in, meta-gradient out)     carry S = (1 + f) P     gradient G = P
    exact        W + K (S + X) + m X_t + S + G + 8 A + 2 A_t     (X, X_t: the dots policy `EXACT_POLICY` keeps)
    remat        W + K (S + X) + m X_t + S + G + 8 A + 2 A_t     (per-step checkpoint; one step's backward live)
    remat √K     W + n S + k' (S + X) + m' X_t + S + G + 8 A + 2 A_t
    mixed        W + K (S + G) + 12 A + 2 A_t                    (inputs + gradient per step, records recomputed)
    truncated T  W + T (S + X) + m X_t + S + G + 8 A + 2 A_t     (as exact, over the last T steps)
    first_order  W + S + G + 2 A + 1.6 m A_t
    tar          W + S + G + D + 1.5 A + A_t                     (one accumulator, nothing stored per step)

X is what the checkpoint policy keeps per step beyond its inputs, X_t what it keeps per tamper record: nothing for
"nothing_saveable"; G for "attack_grad_saveable"; G plus every dot output without batch dimensions for
"dots_with_no_batch_dims_saveable" (per step the projections' and LM head's, forward and backward; per record the
forward ones); also the batched attention dots for "dots_saveable"; every residual (G + 7.5 A per step, 2 A_t per
record) for "everything_saveable". The dot sizes come from `Workload.for_llama`; a Workload without them estimates
them as fixed fractions of A and A_t (`_DOT_FRACTIONS`, from Llama shapes at T <= 128). The two-level plan stores
the inputs of its n outer groups plus k' steps and m' records (one group's and the ungrouped ones'), grouped exactly
as `jaxtar.attacks.unroll.run_plan` groups them (`two_level_group`).

The activation multiples were calibrated once against XLA's CPU allocation (`compiled_peak_bytes`) for a 2-layer
d=64 Llama with B=4, T=32, K=8 (remat 26.4 MB measured vs 27.9 predicted, mixed 34.3 vs 36.2, tar 6.8 vs 6.8,
first_order 15.7 vs 16.5). The dots formulas (exact, truncated, the dots policies; AdamW, records every 4 unless
noted) came within -18 % to +20 %: d=64 K=8 exact 49.4 MB measured vs 50.2 predicted (records every step), K=16
exact 77.0 vs 70.9, truncated T=8 57.9 vs 47.6; the d=256 benchmark Llama K=4 / 8 / 16 exact 1098 / 2115 / 3133 MB
vs 1319 / 1819 / 2817. Other shapes and backends can differ by tens of percent (the SmolLM2-135M shape at K=4: remat
and mixed 7-14 % under), so plan with headroom. A chunk of c vmapped adversaries multiplies everything but the
shared defended params by c.

Chunked LM losses (`Workload.for_llama(..., loss_chunk=c)`, the ``*_from_hidden`` losses of `jaxtar.objectives` at
``chunk=c``) count one c-token chunk's logits instead of the whole batch's, and no LM-head dot per step or record.
Measured on the same CPU for a 1-layer d=64 Llama at V=16384, B=4, T=32, K=4 (AdamW, a record every step), chunks
of 32 tokens: exact 366 -> 250 MB (predicted 493 -> 249), remat 261 -> 246 (394 -> 214), tar 78 -> 64 (119 -> 74).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtar.attacks.unroll import count_records, grouping, plan_runs, two_level_group
from jaxtar.meta.spec import EXACT_POLICY, Estimator

STATE_FACTOR = {
    "sgd": 0,
    "sgd_momentum": 1,
    "sgd_nesterov": 1,
    "adam": 2,
    "adamw": 2,
    "adadelta": 2,
    "schedule_free_adamw": 3,
    "lion": 1,
}
# Activation multiples (see the module docstring for the calibration).
_RR, _ONE_STEP, _FWD_OVER_REV = 7.5, 8.0, 12.0
# Dot outputs as fractions of A (step: without / with batch dims) and A_t (record: the same), when not given.
_DOT_FRACTIONS = (0.65, 0.25, 0.4, 0.1)
# Candidate plans, cheapest first in FLOPs (docs/meta-gradients.md#cost-model):
# exact ≈3, mixed ≈3.3, remat ≈4, √K remat ≈5.
EXACT_CANDIDATES = (
    Estimator("exact"),
    Estimator("mixed"),
    Estimator("remat"),
    Estimator("remat", two_level=True),
)


@dataclass(frozen=True)
class Workload:
    """Sizes that drive memory (counts of scalars; activations in bytes, per adversary).

    The `*_dot_bytes` (outputs of one attack step's dots, forward and backward, without / with batch dimensions, and
    of one tamper record's forward dots) size what `exact`, `truncated` and the dots-saving remat policies keep per
    step; `for_llama` fills them in, and when they are None they are estimated from the activations.

    Example:
        >>> w = Workload(defended_params=1000, trainable_params=1000, step_activation_bytes=4000,
        ...              tamper_activation_bytes=2000, steps=4, records=1, state_factor=2)
        >>> predict_peak_bytes(w, Estimator("tar")).total < predict_peak_bytes(w, Estimator("exact")).total
        True
    """

    defended_params: int
    trainable_params: int
    step_activation_bytes: int
    tamper_activation_bytes: int
    steps: int
    records: int
    state_factor: float
    adversaries: int = 1
    bytes_per_param: int = 4
    step_dot_bytes: int | None = None
    step_batched_dot_bytes: int | None = None
    tamper_dot_bytes: int | None = None
    tamper_batched_dot_bytes: int | None = None
    batch_size: int | None = None  # attack batch rows (a mesh's data x fsdp must divide them), when known
    gathered_params: int | None = None  # weights a step gathers at once under fsdp (two layers + embeddings)

    def __post_init__(self) -> None:
        for name in ("defended_params", "trainable_params", "steps", "records", "adversaries"):
            if getattr(self, name) < (0 if name == "records" else 1):
                raise ValueError(f"Workload.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def for_llama(
        cls,
        config: Any,
        *,
        batch_size: int,
        seq_len: int,
        steps: int,
        records: int = 1,
        optimizer: str = "adamw",
        lora_rank: int | None = None,
        adversaries: int = 1,
        tamper_batch_size: int | None = None,
        loss_chunk: int | None = None,
    ) -> Workload:
        """Estimate from a `LlamaConfig`-like object (vocab_size, hidden_size, intermediate_size, num_layers,
        num_heads, num_kv_heads, head_dim, tie_word_embeddings).

        ``loss_chunk``: the losses run ``chunk`` tokens' logits at a time (the ``*_from_hidden`` losses of
        `jaxtar.objectives` with ``chunk=loss_chunk``): the logits terms count one chunk's logits
        (`logits_bytes`), and no LM-head dot output is kept per step or record (the chunks recompute theirs).
        """
        c = config
        d, i, n_l, v = c.hidden_size, c.intermediate_size, c.num_layers, c.vocab_size
        hd = c.head_dim or d // c.num_heads
        q, kv = c.num_heads * hd, c.num_kv_heads * hd
        per_layer = 2 * d + d * (q + 2 * kv) + q * d + 3 * d * i
        embed = v * d * (1 if c.tie_word_embeddings else 2)
        defended = n_l * per_layer + embed + d
        trainable = defended
        if lora_rank is not None:
            trainable = n_l * lora_rank * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + i) + (i + d))

        def acts(b: int) -> int:
            per_token_layer = 8 * d + 2 * q + 2 * kv + 4 * i + 2 * c.num_heads * seq_len
            return 4 * b * seq_len * n_l * per_token_layer + 3 * logits_bytes(v, b * seq_len, loss_chunk)

        head_fwd, head_bwd = (v, d) if loss_chunk is None else (0, 0)  # the LM head's dots kept per token
        fwd_dots, bwd_dots = n_l * (q + 2 * kv + 2 * d + 2 * i) + head_fwd, n_l * (5 * d + q + i) + head_bwd
        fwd_attn, bwd_attn = n_l * c.num_heads * (seq_len + hd), n_l * c.num_heads * (seq_len + 3 * hd)
        tb = tamper_batch_size or batch_size

        return cls(
            defended_params=defended,
            trainable_params=trainable,
            step_activation_bytes=acts(batch_size),
            tamper_activation_bytes=acts(tamper_batch_size or batch_size),
            steps=steps,
            records=records,
            state_factor=STATE_FACTOR[optimizer],
            adversaries=adversaries,
            step_dot_bytes=4 * batch_size * seq_len * (fwd_dots + bwd_dots),
            step_batched_dot_bytes=4 * batch_size * seq_len * (fwd_attn + bwd_attn),
            tamper_dot_bytes=4 * tb * seq_len * fwd_dots,
            tamper_batched_dot_bytes=4 * tb * seq_len * fwd_attn,
            batch_size=batch_size,
            gathered_params=2 * per_layer + embed,
        )


def logits_bytes(vocab_size: int, tokens: int, chunk: int | None = None) -> int:
    """Bytes of one float32 logits buffer of an LM loss over ``tokens`` positions: ``[tokens, V]``, or ``[chunk, V]``
    when the loss runs ``chunk`` tokens at a time. `Workload.for_llama` counts three per attack step (the forward's
    logits and the backward's softmax and its gradient).

    Example:
        >>> logits_bytes(128_256, 8 * 2048) // 2**20, logits_bytes(128_256, 8 * 2048, chunk=1024) // 2**20
        (8016, 501)
    """
    if chunk is not None and chunk < 1:
        raise ValueError(f"the loss chunk must be None or >= 1 tokens, got {chunk}")
    return 4 * vocab_size * (tokens if chunk is None else min(chunk, tokens))


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes and its parts."""

    total: int
    shared: int
    per_adversary: int
    chunk: int
    estimator: Estimator


def predict_peak_bytes(w: Workload, estimator: Estimator, chunk: int | None = None) -> MemoryEstimate:
    """Predicted peak device memory of one meta-gradient (all chunks run one after another)."""
    b = w.bytes_per_param
    c = min(chunk or w.adversaries, w.adversaries)
    big_d, p = w.defended_params * b, w.trainable_params * b
    s, g, a, a_t = (1 + w.state_factor) * p, p, w.step_activation_bytes, w.tamper_activation_bytes
    k, m = w.steps, w.records
    kind = estimator.kind
    if kind in ("exact", "truncated", "remat"):  # exact and truncated are per-step remat under EXACT_POLICY
        x, x_t = _policy_keeps(w, estimator.remat_policy if kind == "remat" else EXACT_POLICY, g)
        outer, steps, records = _remat_stored(w, kind == "remat" and estimator.two_level)
        if kind == "truncated":
            steps = min(estimator.truncation, steps)
        per = outer * s + steps * (s + x) + records * x_t + s + g + _ONE_STEP * a + 2 * a_t
    elif kind == "mixed":
        per = k * (s + g) + _FWD_OVER_REV * a + 2 * a_t
    elif kind == "first_order":
        per = s + g + 2 * a + 1.6 * m * a_t
    else:  # tar
        per = s + g + big_d + 1.5 * a + a_t
    per += big_d  # each adversary's own meta-gradient
    shared = big_d + (big_d if c < w.adversaries else 0)  # defended params (+ the chunk-sum accumulator)
    return MemoryEstimate(int(shared + c * per), int(shared), int(per), c, estimator)


def _policy_keeps(w: Workload, policy: str, g: float) -> tuple[float, float]:
    """Bytes a remat checkpoint policy keeps per step and per tamper record beyond the step's inputs."""
    if policy == "nothing_saveable":
        return 0.0, 0.0
    if policy == "attack_grad_saveable":
        return g, 0.0
    if policy == "everything_saveable":
        return g + _RR * w.step_activation_bytes, 2.0 * w.tamper_activation_bytes
    given = (w.step_dot_bytes, w.step_batched_dot_bytes, w.tamper_dot_bytes, w.tamper_batched_dot_bytes)
    base = (w.step_activation_bytes,) * 2 + (w.tamper_activation_bytes,) * 2
    step, step_b, rec, rec_b = (x if x is not None else f * b for x, f, b in zip(given, _DOT_FRACTIONS, base))
    if policy == "dots_saveable":
        return g + step + step_b, rec + rec_b
    return g + step, rec  # dots_with_no_batch_dims_saveable


def _remat_stored(w: Workload, two_level: bool) -> tuple[int, int, int]:
    """(outer group inputs, step inputs, records) a remat plan keeps at once, grouped as `run_plan` groups them."""
    every = max(1, w.steps // w.records) if w.records else None
    runs = plan_runs(0, w.steps, every)
    group = two_level_group(runs, w.steps) if two_level else None
    outer = steps = records = 0
    live_steps = live_records = 0  # the largest group's, recomputed one group at a time
    for run in runs:
        gr = grouping(run, group)
        if gr:
            q, r = divmod(run.count, gr)
            outer += q
            live_steps, live_records = max(live_steps, gr * run.length), max(live_records, gr * run.record)
        else:
            r = run.count
        steps += r * run.length
        records += r * run.record
    initial = max(0, w.records - count_records(runs))  # a record before the first step (MLAC's k = 0)
    return outer, steps + live_steps, records + live_records + initial


def choose_plan(
    w: Workload,
    device_bytes: int,
    *,
    exact: bool = True,
    headroom: float = 0.85,
    candidates: tuple[Estimator, ...] | None = None,
) -> MemoryEstimate:
    """The cheapest estimator (in FLOPs) and the largest adversary chunk that fit `headroom * device_bytes`.

    Args:
        w: the workload.
        device_bytes: memory of one device.
        exact: consider only exact estimators (else `tar` then `first_order`).
        headroom: fraction of device memory the plan may use.
        candidates: override the candidate list (in preference order).

    Raises:
        ValueError: nothing fits even one adversary at a time.

    Example:
        >>> w = Workload(10**6, 10**6, 10**7, 10**7, steps=64, records=16, state_factor=2)
        >>> choose_plan(w, 16 * 2**30).estimator.kind
        'exact'
    """
    budget = headroom * device_bytes
    if candidates is None:
        candidates = EXACT_CANDIDATES if exact else (Estimator("tar"), Estimator("first_order"))
    for est in candidates:
        for chunk in range(w.adversaries, 0, -1):
            plan = predict_peak_bytes(w, est, chunk)
            if plan.total <= budget:
                return plan
    smallest = min(predict_peak_bytes(w, e, 1).total for e in candidates)
    raise ValueError(
        f"no plan fits {device_bytes / 2**30:.2f} GiB (x{headroom}); the smallest needs {smallest / 2**30:.2f} GiB: "
        "shard the params (fsdp), use LoRA, fewer steps, or a first-order estimator"
    )


def compiled_peak_bytes(compiled: Any) -> int:
    """Bytes XLA allocates for a compiled function (`jax.jit(f).lower(...).compile()`): its temporary buffer plus
    arguments plus outputs, minus donated aliases (`memory_analysis().peak_memory_in_bytes` leaves out the buffers
    of loop bodies on CPU, so it is not used)."""
    ma = compiled.memory_analysis()
    total = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
    return int(total - ma.alias_size_in_bytes)


# ------------------------------------------------------------------------------ per-component, per-device view
COMPONENTS = ("params", "gradients", "optimiser states", "attack state", "stored steps", "activations", "frozen base",
              "fsdp gathers")  # fmt: skip


def mesh_fits(w: Workload, mesh: tuple[int, int, int], chunk: int | None = None) -> str | None:
    """Why a ``(data, fsdp, adversary)`` mesh cannot split the workload (None when it can): the attack batch rows
    split across data x fsdp, the chunk of adversaries across the adversary axis.

    Example:
        >>> w = Workload(10**6, 10**6, 10**7, 10**7, steps=4, records=1, state_factor=2, batch_size=8)
        >>> mesh_fits(w, (2, 2, 1)), mesh_fits(w, (3, 1, 1))
        (None, 'data x fsdp = 3 does not divide the attack batch of 8 rows')
    """
    data, fsdp, adversary = mesh
    c = min(chunk or w.adversaries, w.adversaries)
    if min(mesh) < 1:
        return f"mesh sizes must be >= 1, got {mesh}"
    if w.batch_size is not None and w.batch_size % (data * fsdp):
        return f"data x fsdp = {data * fsdp} does not divide the attack batch of {w.batch_size} rows"
    if c % adversary:
        return f"the adversary axis ({adversary}) does not divide the chunk of {c} adversaries"
    return None


def peak_components(
    w: Workload, estimator: Estimator, chunk: int | None = None, mesh: tuple[int, int, int] = (1, 1, 1)
) -> dict[str, float]:
    """`predict_peak_bytes` by component (`COMPONENTS`), per device of a ``(data, fsdp, adversary)`` mesh.

    On one device the parts sum to ``predict_peak_bytes(w, estimator, chunk).total``. On a mesh, parameter-sized
    arrays (weights, gradients, the attack's params and moments, stored carries) are divided by fsdp; what grows
    with the batch (activations, kept dot outputs) by data x fsdp; the chunk's adversaries are split across the
    adversary axis. Under fsdp each adversary's step also gathers full weights (`Workload.gathered_params`: two
    layers and the embeddings) -- "fsdp gathers".

    Example:
        >>> w = Workload(10**6, 10**6, 10**7, 10**7, steps=4, records=1, state_factor=2)
        >>> one = peak_components(w, Estimator("exact"))
        >>> round(sum(one.values())) == predict_peak_bytes(w, Estimator("exact")).total
        True
        >>> sum(peak_components(w, Estimator("exact"), mesh=(2, 2, 1)).values()) < sum(one.values())
        True
    """
    data, fsdp, adversary = mesh
    b = w.bytes_per_param
    c = min(chunk or w.adversaries, w.adversaries)
    big_d, p = w.defended_params * b, w.trainable_params * b
    s, g, a, a_t = (1 + w.state_factor) * p, p, w.step_activation_bytes, w.tamper_activation_bytes
    kind = estimator.kind
    attack = stored_p = stored_a = 0.0
    grads = big_d  # each adversary's own meta-gradient
    if kind in ("exact", "truncated", "remat"):
        (x_p, x_a), (xt_p, xt_a) = _policy_split(w, estimator.remat_policy if kind == "remat" else EXACT_POLICY, g)
        outer, steps, records = _remat_stored(w, kind == "remat" and estimator.two_level)
        if kind == "truncated":
            steps = min(estimator.truncation, steps)
        attack, acts = s + g, _ONE_STEP * a + 2 * a_t
        stored_p, stored_a = outer * s + steps * (s + x_p) + records * xt_p, steps * x_a + records * xt_a
    elif kind == "mixed":
        stored_p, acts = w.steps * (s + g), _FWD_OVER_REV * a + 2 * a_t
    elif kind == "first_order":
        attack, acts = s + g, 2 * a + 1.6 * w.records * a_t
    else:  # tar: one accumulator besides the meta-gradient
        attack, acts, grads = s + g, 1.5 * a + a_t, 2 * big_d
    per_dev = -(-c // adversary)
    split = data * fsdp
    gathers = per_dev * (w.gathered_params or 0) * b if fsdp > 1 else 0.0
    return {
        "params": big_d / fsdp,
        "gradients": (per_dev * grads + (big_d if c < w.adversaries else 0)) / fsdp,
        "optimiser states": 0.0,
        "attack state": per_dev * attack / fsdp,
        "stored steps": per_dev * (stored_p / fsdp + stored_a / split),
        "activations": per_dev * acts / split,
        "frozen base": 0.0,
        "fsdp gathers": gathers,
    }


def _policy_split(w: Workload, policy: str, g: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """`_policy_keeps` split into (parameter-sized, batch-sized) bytes, per step and per record."""
    x, x_t = _policy_keeps(w, policy, g)
    x_p = 0.0 if policy == "nothing_saveable" else g
    return (x_p, x - x_p), (0.0, x_t)


def training_components(
    w: Workload, *, optimizer_arrays: int, extra_param_copies: int = 0, mesh: tuple[int, int, int] = (1, 1, 1)
) -> dict[str, float]:
    """A plain training step's bytes by component (`COMPONENTS`), per device: params, gradient,
    ``optimizer_arrays`` optimiser arrays and ``extra_param_copies`` frozen copies (all divided by fsdp), and two
    steps' worth of activations (divided by data x fsdp) -- `jaxtar.defenses._fit.training_bytes` on one device.

    Example:
        >>> w = Workload(1000, 1000, 4000, 4000, steps=1, records=1, state_factor=2)
        >>> sum(training_components(w, optimizer_arrays=3).values())
        28000.0
    """
    data, fsdp, _ = mesh
    d = w.defended_params * w.bytes_per_param / fsdp
    return {
        "params": d,
        "gradients": d,
        "optimiser states": optimizer_arrays * d,
        "attack state": 0.0,
        "stored steps": 0.0,
        "activations": 2 * w.step_activation_bytes / (data * fsdp),
        "frozen base": extra_param_copies * d,
        "fsdp gathers": (w.gathered_params or 0) * w.bytes_per_param if fsdp > 1 else 0.0,
    }
