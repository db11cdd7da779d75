"""The baselines of TAR's tables as defences of the one runner (docs/methods.md#baselines): max-entropy and
min-posterior training, LLMU (Yao et al. 2023) and RMU (Li et al. 2024, WMDP). Each is one phase of schedule-free
AdamW on a forget term plus a retain term (losses in `jaxtar.objectives.baselines`), built like random mapping's:

    max_entropy:   lambda_forget * (-H(p) on forget)               + lambda_retain * CE(retain)
    min_posterior: lambda_forget * (-log(1 - p(token)) on forget)  + lambda_retain * CE(retain)
    llmu:          w_ascent * (-CE(forget)) + w_random * CE(forget input -> benign tokens)
                   + w_normal * (KL(p_original || p) or CE on retain)
    rmu:           MSE(h_l(forget), c u) + alpha * MSE(h_l(retain), h_l^original(retain)),  only some weights train

``llmu`` (with its KL term) and ``rmu`` read the original weights, held once by the runner (``frozen_base``). The
exported model is the schedule-free x-average, like random mapping's, so the red team attacks it as it does TAR.

Example:
    >>> from jaxtar.config import load_config
    >>> cfg = load_config("toy", {"baseline.method": "rmu", "run.output_dir": "out/rmu"})
    >>> result = run_baseline(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtar.config import DefenceConfig
from jaxtar.config.defence import BaselineConfig
from jaxtar.defenses import _inputs
from jaxtar.defenses._batches import RowStream, tokens_in
from jaxtar.defenses._fit import check_positions, training_bytes
from jaxtar.defenses._loop import (
    Phase,
    cached_step,
    check_divides,
    jit_step,
    schedule_free_adamw,
    schedule_free_params,
)
from jaxtar.defenses.decoder import decoder_defence, given_model
from jaxtar.defenses.runner import RunResult, run_defence
from jaxtar.objectives import (
    activation_mse,
    batch_cross_entropy,
    gradient_ascent_loss,
    kl_to_reference,
    max_entropy_loss,
    min_posterior_loss,
    random_completion_loss,
    rmu_steering_vector,
)

PyTree = Any


def uses_frozen_base(config: BaselineConfig) -> bool:
    """Whether the method reads the original weights: RMU (retain activations) and LLMU with its KL term.

    Example:
        >>> uses_frozen_base(BaselineConfig(method="rmu")), uses_frozen_base(BaselineConfig(method="max_entropy"))
        (True, False)
    """
    return config.method == "rmu" or (config.method == "llmu" and config.llmu_normal_loss == "kl")


def rmu_layers(config: BaselineConfig) -> tuple[int, ...]:
    """The layers whose weights RMU trains: ``rmu_update_layers``, or ``rmu_layer`` and the two below it.

    Example:
        >>> rmu_layers(BaselineConfig()), rmu_layers(BaselineConfig(rmu_layer=1)), rmu_layers(
        ...     BaselineConfig(rmu_update_layers=(0, 3)))
        ((5, 6, 7), (0, 1), (0, 3))
    """
    if config.rmu_update_layers is not None:
        return tuple(config.rmu_update_layers)
    return tuple(i for i in range(config.rmu_layer - 2, config.rmu_layer + 1) if i >= 0)


def rmu_gradient_mask(params: PyTree, layers: tuple[int, ...], names: tuple[str, ...]) -> PyTree:
    """0/1 factors, broadcastable to each leaf, that keep the gradient of the stacked per-layer weights ``names``
    (``params["layers"][name]``, leading axis = layer) at ``layers`` and zero everything else.

    Example:
        >>> p = {"embed": jnp.ones(2), "layers": {"down_proj": {"kernel": jnp.ones((3, 2, 2))}}}
        >>> m = rmu_gradient_mask(p, (1,), ("down_proj",))
        >>> float(m["embed"]), m["layers"]["down_proj"]["kernel"].ravel().tolist()
        (0.0, [0.0, 1.0, 0.0])
    """

    def factor(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        if len(keys) >= 2 and keys[0] == "layers" and keys[1] in names:
            keep = np.isin(np.arange(leaf.shape[0]), layers).astype(np.float32)
            return jnp.asarray(keep.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf.dtype)
        return jnp.zeros((), leaf.dtype)

    return jax.tree_util.tree_map_with_path(factor, params)


def baseline_objective(
    model: Any, config: BaselineConfig, compute_dtype: str | None = None
) -> Callable[[PyTree, dict, PyTree], tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss(params, batches, frozen) -> (total, metrics)`` of ``config.method``.

    ``batches``: ``{"forget", "retain"}`` row dicts (LLMU also ``"completion"``: benign rows as many as the forget
    rows); ``frozen``: the original weights (RMU, LLMU with KL; None otherwise). ``metrics`` holds the unweighted
    terms: ``forget_loss``, ``retain_loss`` (LLMU also ``random_completion``), and the plain next-token CE on the
    forget and retain rows (``forget_ce``, ``retain_ce``) for monitoring.

    Example:
        >>> loss = baseline_objective(model, BaselineConfig(method="min_posterior"))  # doctest: +SKIP
        >>> total, metrics = loss(params, {"forget": rows, "retain": rows}, None)  # doctest: +SKIP
    """
    dtype = None if compute_dtype is None else getattr(jnp, compute_dtype)
    unmasked, method = config.unmasked_losses, config.method
    control = None
    if method == "rmu":
        control = rmu_steering_vector(jax.random.key(config.rmu_seed), model.config.hidden_size,
                                      config.rmu_steering_coefficient)  # fmt: skip

    def run(params, rows, hidden=False):
        return model.apply(params, rows["input_ids"], rows["attention_mask"], output_hidden_states=hidden, dtype=dtype)

    def loss(params, batches, frozen):
        f, r = batches["forget"], batches["retain"]
        out_f, out_r = run(params, f, method == "rmu"), run(params, r, method == "rmu")
        metrics = {"forget_ce": batch_cross_entropy(out_f.logits, f), "retain_ce": batch_cross_entropy(out_r.logits, r)}
        if method == "max_entropy":
            forget = max_entropy_loss(out_f.logits, f, unmasked=unmasked)
            retain = metrics["retain_ce"]
            total = config.lambda_forget * forget + config.lambda_retain * retain
        elif method == "min_posterior":
            forget = min_posterior_loss(out_f.logits, f, threshold=config.min_posterior_threshold, unmasked=unmasked)
            retain = metrics["retain_ce"]
            total = config.lambda_forget * forget + config.lambda_retain * retain
        elif method == "llmu":
            forget = gradient_ascent_loss(out_f.logits, f, unmasked=unmasked)
            metrics["random_completion"] = random_completion_loss(out_f.logits, f, batches["completion"],
                                                                  unmasked=unmasked)  # fmt: skip
            if config.llmu_normal_loss == "kl":
                reference = jax.lax.stop_gradient(run(frozen, r).logits)
                retain = kl_to_reference(out_r.logits, reference, r, unmasked=unmasked)
            else:
                retain = metrics["retain_ce"]
            total = (config.llmu_ascent_weight * forget + config.llmu_random_weight * metrics["random_completion"]
                     + config.llmu_normal_weight * retain)  # fmt: skip
        else:  # rmu
            layer = config.rmu_layer + 1  # hidden_states[0] is the embedding output
            original = jax.lax.stop_gradient(run(frozen, r, True).hidden_states[layer])
            forget = activation_mse(out_f.hidden_states[layer], control, f, unmasked=unmasked)
            retain = activation_mse(out_r.hidden_states[layer], original, r, unmasked=unmasked)
            total = forget + config.rmu_alpha * retain
        return total, {"forget_loss": forget, "retain_loss": retain, **metrics}

    return loss


def make_baseline_step(
    model: Any, config: BaselineConfig, compute_dtype: str | None = None, mesh: Mesh | None = None
) -> tuple[Callable, optax.GradientTransformation]:
    """The jitted step ``(params, opt_state, batches, key, frozen) -> (params, opt_state, metrics)`` and its
    schedule-free AdamW optimiser (``key`` is unused; ``frozen``: the original weights or None). RMU's gradient
    is zero outside ``rmu_params`` of `rmu_layers` (with weight decay 0 those weights stay exactly as they were). On a
    ``mesh`` the new params and optimiser state keep their FSDP placement (`jaxtar.defenses._steps.jit_step`)."""
    objective = baseline_objective(model, config, compute_dtype)
    optimizer = schedule_free_adamw(
        config.lr, config.warmup_steps, config.b1, config.b2, config.eps, config.weight_decay, None
    )
    layers, names = rmu_layers(config), tuple(config.rmu_params)

    def step(params, opt_state, batches, key, frozen):
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params, batches, frozen)
        if config.method == "rmu":
            grads = jax.tree.map(lambda g, m: g * m, grads, rmu_gradient_mask(grads, layers, names))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
        return optax.apply_updates(params, updates), opt_state, metrics

    return jit_step(step, mesh=mesh), optimizer


def _check_rmu(config: BaselineConfig, model: Any, params: PyTree) -> None:
    num_layers = getattr(model.config, "num_layers", None)
    layers = params.get("layers", {}) if isinstance(params, dict) else {}
    if num_layers is None or not layers:
        raise _inputs.InputError("rmu needs a model with stacked decoder layers (params['layers'])")
    for name, value in (("rmu_layer", (config.rmu_layer,)), ("rmu_update_layers", rmu_layers(config))):
        if any(i >= num_layers for i in value):
            raise _inputs.InputError(
                f"baseline.{name} = {value if len(value) > 1 else value[0]}: the model has {num_layers} layers "
                f"(0..{num_layers - 1})"
            )
    missing = [n for n in config.rmu_params if n not in layers]
    if missing:
        raise _inputs.InputError(
            f"baseline.rmu_params: the model's layers have no {missing}; they have {sorted(layers)}"
        )


def build_baseline_phases(
    config: DefenceConfig, model: Any, params: PyTree, tokenizer: Any, mesh: Mesh | None = None
) -> tuple[list[Phase], None]:
    """The single phase of a baseline run, named after its method (data tokenised and checked here). ``mesh``:
    data x fsdp only (there are no adversaries)."""
    bc, data, seed = config.baseline, config.data, config.run.seed
    check_positions(model, data.max_length)
    if mesh is not None and mesh.shape["adversary"] > 1:
        raise _inputs.InputError("the baselines have no adversaries to split: run.mesh_adversary must be 1")
    check_divides(mesh, {"forget_batch_size": bc.forget_batch_size, "retain_batch_size": bc.retain_batch_size})
    if bc.method == "rmu":
        _check_rmu(bc, model, params)
    for role in ("forget", "retain"):
        if getattr(data, role) is None:
            raise _inputs.InputError(f"the {bc.method} baseline needs data.{role}")
    forget = RowStream(_inputs.role_table(tokenizer, data.forget, data), seed, 11)
    retain_rows = _inputs.role_table(tokenizer, data.retain, data)
    retain = RowStream(retain_rows, seed, 12)
    completion = RowStream(retain_rows, seed, 13) if bc.method == "llmu" else None
    bf, br = bc.forget_batch_size, bc.retain_batch_size

    def batches(step: int) -> dict[str, Any]:
        out = {"forget": forget.take(step * bf, bf).lazy, "retain": retain.take(step * br, br).lazy}
        if completion is not None:
            out["completion"] = completion.take(step * bf, bf).lazy
        return out

    step, optimizer = cached_step(make_baseline_step, model, bc, config.model.compute_dtype, mesh)
    rows = bf + br + (bf if completion is not None else 0)
    memory = training_bytes(model, rows, data.max_length, extra_param_copies=int(uses_frozen_base(bc)))
    return [Phase(bc.method, bc.steps, step, batches, optimizer.init, schedule_free_params,
                  tokens_in(rows, data.max_length), predicted_bytes=memory)], None  # fmt: skip


BASELINE = decoder_defence("baseline", build_baseline_phases)
BASELINE_WITH_BASE = decoder_defence("baseline", build_baseline_phases, frozen_base=True)


def run_baseline(
    config: DefenceConfig, *, model: Any = None, params: PyTree = None, tokenizer: Any = None
) -> RunResult:
    """A whole baseline run of ``config.baseline.method`` (load, train or resume, checkpoint, export
    ``output_dir/model``).

    Args:
        config: the run (``run.output_dir`` required; ``baseline`` and ``data`` sections used).
        model, params, tokenizer: use these instead of loading ``config.model`` (all three or none).
    """
    defence = BASELINE_WITH_BASE if uses_frozen_base(config.baseline) else BASELINE
    return run_defence(defence, config, given_model(model, params, tokenizer))
