"""Random mapping: TAR's initial safeguard for knowledge restriction (docs/methods.md#random-mapping).

A seeded random matrix ``R [vocab, hidden]`` (never materialised: `jaxtar.objectives.random_mapping_vectors`)
assigns each token a random direction; on forget text every hidden state (embeddings + each layer) is pushed to
``|cos(h, R[token])| = 1`` while next-token cross-entropy on retain text keeps capability:

    loss = lambda_rm * mean_layers mean_tokens (1 - |cos(h, R[token])|) + lambda_retain * CE(retain)

with schedule-free AdamW (optax's ``contrib.schedule_free_adamw``, with warmup). The exported model is the
schedule-free x-average.

Example:
    >>> from jaxtar.config import load_config
    >>> result = run_random_mapping(load_config("toy", {"run.output_dir": "out/rm"}))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxtar.config import DefenceConfig, RandomMappingConfig
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
from jaxtar.objectives import batch_cross_entropy, random_mapping_loss_from_ids

PyTree = Any


def random_mapping_objective(
    model: Any, config: RandomMappingConfig, compute_dtype: str | None = None
) -> Callable[[PyTree, dict], tuple[jax.Array, tuple[jax.Array, jax.Array]]]:
    """``loss(params, batches) -> (total, (random-mapping loss, retain CE))`` with ``batches = {"forget", "retain"}``.

    Example:
        >>> loss = random_mapping_objective(model, RandomMappingConfig())  # doctest: +SKIP
        >>> total, (rm, ce) = loss(params, {"forget": rows, "retain": rows})  # doctest: +SKIP
    """
    dtype = None if compute_dtype is None else getattr(jnp, compute_dtype)
    mapping_key = jax.random.key(config.mapping_seed)

    def loss(params, batches):
        f, r = batches["forget"], batches["retain"]
        hidden = model.apply(params, f["input_ids"], f["attention_mask"], output_hidden_states=True, dtype=dtype)
        rm = random_mapping_loss_from_ids(
            hidden.hidden_states, f["input_ids"], mapping_key, f["attention_mask"], unmasked=config.unmasked_losses
        )
        ce = batch_cross_entropy(model.apply(params, r["input_ids"], r["attention_mask"], dtype=dtype).logits, r)
        return config.lambda_random_mapping * rm + config.lambda_retain * ce, (rm, ce)

    return loss


def make_random_mapping_step(
    model: Any, config: RandomMappingConfig, compute_dtype: str | None = None, mesh: Mesh | None = None
) -> tuple[Callable, optax.GradientTransformation]:
    """The jitted step ``(params, opt_state, batches, key, frozen) -> (params, opt_state, metrics)`` and its
    schedule-free AdamW optimiser (``key`` and ``frozen`` are unused; the signature is the loop's). On a
    ``mesh`` the new params and optimiser state keep their FSDP placement (`jaxtar.defenses._steps.jit_step`)."""
    objective = random_mapping_objective(model, config, compute_dtype)
    optimizer = schedule_free_adamw(
        config.lr, config.warmup_steps, config.b1, config.b2, config.eps, config.weight_decay, None
    )

    def step(params, opt_state, batches, key, frozen):
        (loss, (rm, ce)), grads = jax.value_and_grad(objective, has_aux=True)(params, batches)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": loss, "random_mapping": rm, "retain_ce": ce, "grad_norm": optax.global_norm(grads)}
        return optax.apply_updates(params, updates), opt_state, metrics

    return jit_step(step, mesh=mesh), optimizer


def build_random_mapping_phases(
    config: DefenceConfig, model: Any, params: PyTree, tokenizer: Any, mesh: Mesh | None = None
) -> tuple[list[Phase], None]:
    """The single random-mapping phase of a run (data tokenised and checked here). ``mesh``: data x fsdp only (there
    are no adversaries); the step follows the shardings `jaxtar.defenses._loop.run_phases` gives its inputs."""
    rm, data, seed = config.random_mapping, config.data, config.run.seed
    check_positions(model, data.max_length)
    if mesh is not None and mesh.shape["adversary"] > 1:
        raise _inputs.InputError("random mapping has no adversaries to split: run.mesh_adversary must be 1")
    check_divides(mesh, {"forget_batch_size": rm.forget_batch_size, "retain_batch_size": rm.retain_batch_size})
    for role in ("forget", "retain"):
        if getattr(data, role) is None:
            raise _inputs.InputError(f"random mapping needs data.{role}")
    forget = RowStream(_inputs.role_table(tokenizer, data.forget, data), seed, 11)
    retain = RowStream(_inputs.role_table(tokenizer, data.retain, data), seed, 12)
    bf, br = rm.forget_batch_size, rm.retain_batch_size

    def batches(step: int) -> dict[str, Any]:
        return {"forget": forget.take(step * bf, bf).lazy, "retain": retain.take(step * br, br).lazy}

    step, optimizer = cached_step(make_random_mapping_step, model, rm, config.model.compute_dtype, mesh)
    tokens = tokens_in(bf + br, data.max_length)
    memory = training_bytes(model, bf + br, data.max_length)
    return [Phase("random_mapping", rm.steps, step, batches, optimizer.init, schedule_free_params, tokens,
                  predicted_bytes=memory)], None  # fmt: skip


def run_random_mapping(
    config: DefenceConfig, *, model: Any = None, params: PyTree = None, tokenizer: Any = None
) -> RunResult:
    """A whole random-mapping run (load, train or resume, checkpoint, export ``output_dir/model``).

    Args:
        config: the run (``run.output_dir`` required; ``random_mapping`` and ``data`` sections used).
        model, params, tokenizer: use these instead of loading ``config.model`` (all three or none).
    """
    return run_defence(RANDOM_MAPPING, config, given_model(model, params, tokenizer))


RANDOM_MAPPING = decoder_defence("random_mapping", build_random_mapping_phases)
