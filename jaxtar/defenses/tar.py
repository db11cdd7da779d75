"""TAR: tamper-resistance training by adversarial meta-learning (Tamirisa et al. 2024; docs/methods.md#tar-outer-loop).

One outer step (`make_tar_step`), a pure jitted function of ``(params, opt_state, batches, key, frozen)``:

1. for each of A adversaries sampled from the train-time suite (types x learning rates; retain->forget with a
   Beta(6, 3) switch point), run K inner AdamW steps on its SFT data from the current weights and record the tamper
   loss ``L_TR`` on a held-out forget batch after every s-th step with weight ``exp(rate * (j - K))``; the
   meta-gradient of the weighted sum comes from the engine (`jaxtar.meta`, estimator ``tar`` = the paper's
   first-order accumulation; ``exact``/``remat``/``mixed`` = second-order TAR); the A adversaries are one ``vmap``
   and their gradients are averaged;
2. ``g = lambda_retain * grad L_retain(params) + lambda_TR * g_TR`` with ``L_retain = CE + lambda_rep * mean_layers
   mean_tokens ||h - h_base||`` (``frozen`` = the starting weights, under ``stop_gradient``: held once);
3. a schedule-free AdamW step (with warmup).

``L_TR`` is the negative next-token entropy (knowledge restriction) or sigmoid DPO against cached reference
log-probs (refusal; followed by an SFT phase). `run_tar` is the whole run: data, checkpoints, resume, export.

Example:
    >>> from jaxtar.config import load_config
    >>> result = run_tar(load_config("toy", {"run.output_dir": "out/tar"}))  # doctest: +SKIP
    >>> result.model_dir  # doctest: +SKIP
    PosixPath('out/tar/model')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxtar.attacks import (
    Adversary,
    model_attack_problem,
)
from jaxtar.config import DefenceConfig, TarConfig
from jaxtar.defenses._batches import tokens_in
from jaxtar.defenses._fit import check_positions, tar_bytes, training_bytes
from jaxtar.defenses._loop import (
    Phase,
    cached_step,
    check_divides,
    jit_step,
    schedule_free_adamw,
    schedule_free_params,
)
from jaxtar.defenses.decoder import decoder_defence, given_model, load_retain_anchor
from jaxtar.defenses.runner import RunResult, run_defence
from jaxtar.defenses.tar_data import TarData, check_suite, preference_reference, train_suite
from jaxtar.meta import AdversaryGroup, Estimator, TamperSchedule, vmap_meta_value_and_grad
from jaxtar.objectives import (
    batch_cross_entropy,
    batch_cross_entropy_from_hidden,
    dpo_loss_from_hidden,
    dpo_loss_from_logits,
    negative_entropy_loss,
    negative_entropy_loss_from_hidden,
    representation_distance_loss,
)

PyTree = Any


def _dtype(name: str | None):
    return None if name is None else getattr(jnp, name)


def tar_losses(model: Any, config: TarConfig, compute_dtype: str | None = None) -> dict[str, Callable]:
    """The three losses of TAR as pure functions (``attack``, ``tamper``: ``(params, batch, lora)``; ``retain``:
    ``(params, frozen, batch) -> (loss, (ce, representation))``)."""
    dtype, chunk = _dtype(compute_dtype), config.loss_chunk_size

    def apply(params, batch, prefix="", lora=None, hidden=False):
        ids, mask = batch[prefix + "input_ids"], batch[prefix + "attention_mask"]
        return model.apply(params, ids, mask, lora=lora, output_hidden_states=hidden, dtype=dtype)

    def cross_entropy(params, out, batch):  # chunked: from the hidden states (XLA drops the unused full logits)
        if chunk is None:
            return batch_cross_entropy(out.logits, batch)
        return batch_cross_entropy_from_hidden(out.last_hidden_state, model.lm_head(params), batch, chunk=chunk)

    def attack(params, batch, lora):
        return cross_entropy(params, apply(params, batch, lora=lora), batch)

    def entropy(params, batch, lora):
        out, mask = apply(params, batch, lora=lora), batch["attention_mask"]
        if chunk is None:
            return negative_entropy_loss(out.logits, mask, unmasked=config.unmasked_losses)
        return negative_entropy_loss_from_hidden(out.last_hidden_state, model.lm_head(params), mask,
                                                 unmasked=config.unmasked_losses, chunk=chunk)  # fmt: skip

    def ce_ascent(params, batch, lora):  # the defender maximises the attacked model's loss on the forget text
        return -cross_entropy(params, apply(params, batch, lora=lora), batch)

    def dpo(params, batch, lora):
        chosen, rejected = apply(params, batch, "chosen_", lora), apply(params, batch, "rejected_", lora)
        if chunk is None:
            return dpo_loss_from_logits(chosen.logits, rejected.logits, batch, config.dpo_beta).loss
        return dpo_loss_from_hidden(chosen.last_hidden_state, rejected.last_hidden_state, model.lm_head(params), batch,
                                    config.dpo_beta, chunk=chunk).loss  # fmt: skip

    def retain(params, frozen, batch):
        out = apply(params, batch, hidden=True)
        ce = cross_entropy(params, out, batch)
        if config.lambda_representation == 0:
            return ce, (ce, jnp.zeros(()))
        base = apply(jax.lax.stop_gradient(frozen), batch, hidden=True)
        rep = representation_distance_loss(
            out.hidden_states, base.hidden_states, batch["attention_mask"], unmasked=config.unmasked_losses
        )
        return ce + config.lambda_representation * rep, (ce, rep)

    tamper = {"entropy": entropy, "ce_ascent": ce_ascent, "dpo": dpo}[config.tamper_loss]
    return {"attack": attack, "tamper": tamper, "retain": retain}


def _global_norm(tree: PyTree) -> jax.Array:
    return optax.global_norm(tree)


def make_tar_step(
    model: Any, config: TarConfig, template: Adversary, compute_dtype: str | None = None, mesh: Mesh | None = None
) -> tuple[Callable, optax.GradientTransformation]:
    """The jitted TAR outer step and its optimiser.

    Args:
        model: a decoder (``jaxtar.models.Model``).
        config: TAR hyper-parameters (K, s, rate, lambdas, A, estimator, outer optimiser).
        template: the static structure shared by the suite's adversaries (optimiser kind, schedule, clipping,
            LoRA); their learning rates etc. arrive per step in ``batches["hyperparams"]``.
        compute_dtype: activation dtype.
        mesh: a `jaxtar.parallel.make_mesh` mesh: the adversaries are split along its "adversary" axis, and the new
            params and optimiser state keep the FSDP sharding of `jaxtar.parallel.param_shardings` (place the inputs
            with it; batches follow `jaxtar.parallel.batch_shardings`). None: one device.

    Returns:
        ``(step, optimiser)`` with ``step(params, opt_state, batches, key, frozen) -> (params, opt_state, metrics)``
        and ``batches = {"adversary": [A, K, B, T] rows, "tamper": rows, "retain": rows, "hyperparams": {[A]}}``.
    """
    losses = tar_losses(model, config, compute_dtype)
    template = dataclasses.replace(template, steps=config.inner_steps)
    problem = model_attack_problem(template, losses["attack"], losses["tamper"], model=model)
    group = AdversaryGroup((template,) * config.adversaries_per_step)
    schedule = TamperSchedule.tar(every=config.tamper_every, rate=config.tamper_rate)
    estimator = Estimator(config.estimator, truncation=config.truncation)
    optimizer = schedule_free_adamw(
        config.lr, config.warmup_steps, config.b1, config.b2, config.eps, config.weight_decay, config.max_grad_norm
    )

    def step(params, opt_state, batches, key, frozen):
        meta = vmap_meta_value_and_grad(
            problem, params, group, batches["adversary"], batches["tamper"], key=key, schedule=schedule,
            estimator=estimator, hyperparams=batches["hyperparams"], reduce="mean",
            chunk_size=config.adversary_chunk_size, mesh=mesh,
        )  # fmt: skip
        (retain, (ce, rep)), g_retain = jax.value_and_grad(losses["retain"], has_aux=True)(
            params, frozen, batches["retain"]
        )
        grads = jax.tree.map(
            lambda r, t: config.lambda_retain * r + config.lambda_tr * t.astype(r.dtype), g_retain, meta.grads
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ok = meta.aux.is_finite  # [A]: a diverged adversary's gradient is zeroed; its values are left out here
        tamper_value = _finite_mean(meta.value, ok)
        metrics = {
            "loss": config.lambda_tr * jnp.where(jnp.any(ok), tamper_value, 0.0) + config.lambda_retain * retain,
            "tamper_value": tamper_value,
            "tamper_loss": _finite_mean(meta.aux.tamper_losses, ok),
            "tamper_final": _finite_mean(meta.aux.tamper_losses[:, -1], ok),
            "attack_first": _finite_mean(meta.aux.attack_losses[:, 0], ok),
            "attack_final": _finite_mean(meta.aux.attack_losses[:, -1], ok),
            "retain_ce": ce,
            "representation": rep,
            "grad_norm_tamper": _global_norm(meta.grads),
            "grad_norm_retain": _global_norm(g_retain),
            "finite_fraction": jnp.mean(meta.aux.is_finite.astype(jnp.float32)),
            "adversary_lr": jnp.mean(batches["hyperparams"]["learning_rate"]),
        }
        return params, opt_state, metrics

    return jit_step(step, mesh=mesh), optimizer


def _finite_mean(x: jax.Array, ok: jax.Array) -> jax.Array:
    """The mean over the finite adversaries (rows of ``x`` where ``ok``); NaN when none is finite."""
    rows = jnp.reshape(x, (ok.shape[0], -1))
    return jnp.sum(jnp.where(ok[:, None], rows, 0.0)) / (jnp.sum(ok) * rows.shape[1])


def make_sft_step(
    model: Any, lr: float, compute_dtype: str | None = None, mesh: Mesh | None = None
) -> tuple[Callable, Any]:
    """The refusal setting's post-TAR SFT step: AdamW(lr) on next-token CE (masked to responses when given); on a
    ``mesh`` the new params and optimiser state keep their FSDP placement (`jaxtar.defenses._steps.jit_step`)."""
    dtype = _dtype(compute_dtype)
    optimizer = optax.adamw(lr, weight_decay=0.0)

    def step(params, opt_state, batches, key, frozen):
        def loss(p):
            b = batches["sft"]
            return batch_cross_entropy(model.apply(p, b["input_ids"], b["attention_mask"], dtype=dtype).logits, b)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"sft_ce": value}

    return jit_step(step, mesh=mesh), optimizer


# On a mesh (`Phase.batch_axes`): the adversary rows [A, K, B, T] and the hyper-parameters [A] of `TarData.batches`
TAR_BATCH_AXES = {"adversary": (2, 0), "hyperparams": (1, 0)}


def build_tar_phases(
    config: DefenceConfig, model: Any, params: PyTree, tokenizer: Any, mesh: Mesh | None = None
) -> tuple[list[Phase], TarData]:
    """The TAR phase (and the SFT phase when ``tar.sft_steps > 0``) of a run; `mesh`: see `make_tar_step`."""
    tar = config.tar
    check_positions(model, config.data.max_length)
    batch_sizes = {"adversary_batch_size": tar.adversary_batch_size, "tamper_batch_size": tar.tamper_batch_size,
                   "retain_batch_size": tar.retain_batch_size,
                   "sft_batch_size": tar.sft_batch_size if tar.sft_steps else None}  # fmt: skip
    adversaries = {"adversaries_per_step": tar.adversaries_per_step, "adversary_chunk_size": tar.adversary_chunk_size}
    check_divides(mesh, batch_sizes, adversaries)
    suite = train_suite(tar)
    template = check_suite(suite)
    reference = preference_reference(model, params, mesh) if tar.tamper_loss == "dpo" else None
    data = TarData(config, tokenizer, suite, reference)
    step, optimizer = cached_step(make_tar_step, model, tar, template, config.model.compute_dtype, mesh)
    phases = [
        Phase(
            "tar",
            tar.outer_steps,
            step,
            functools.partial(data.batches, lazy=True),
            optimizer.init,
            schedule_free_params if tar.export_iterate == "x" else (lambda params, opt_state: params),
            data.tokens_per_step(),
            batch_axes=TAR_BATCH_AXES,
            predicted_bytes=tar_bytes(model, tar, config.data.max_length, template.optimizer),
        )
    ]
    if tar.sft_steps:
        sft_step, sft_opt = cached_step(make_sft_step, model, tar.sft_lr, config.model.compute_dtype, mesh)
        sft_batches = functools.partial(data.sft_batches, lazy=True)
        phases.append(
            Phase("sft", tar.outer_steps + tar.sft_steps, sft_step, sft_batches, sft_opt.init,
                  tokens_per_step=tokens_in(tar.sft_batch_size, config.data.max_length),
                  predicted_bytes=training_bytes(model, tar.sft_batch_size, config.data.max_length))
        )  # fmt: skip
    return phases, data


def run_tar(config: DefenceConfig, *, model: Any = None, params: PyTree = None, tokenizer: Any = None) -> RunResult:
    """A whole TAR run: load, train (or resume), checkpoint, export ``output_dir/model`` as an HF checkpoint.

    Args:
        config: the run (``run.output_dir`` is required).
        model, params, tokenizer: use these instead of loading ``config.model`` (all three or none).

    Returns:
        A :class:`RunResult` (``interrupted`` when stopped by SIGINT / SIGTERM after saving a checkpoint).

    Raises:
        ConfigError / InputError / RunDirError: bad input, nothing written.
    """
    return run_defence(TAR, config, given_model(model, params, tokenizer))


TAR = decoder_defence("tar", build_tar_phases, frozen_base=True, load_anchor=load_retain_anchor,
                      estimator_of=lambda config: config.tar.estimator)  # fmt: skip
