"""TAR's data: the train-time adversary suite (`train_suite`) and every batch of a run as a function of the global
step (`TarData`: adversary rows [A, K, B, T] with their hyper-parameters, held-out tamper rows, retain rows).

Example:
    >>> from jaxtar.config import TarConfig
    >>> [a.name for a in train_suite(TarConfig(setting="cyber"))][:2]
    ['tar-cyber-forget-2e-05', 'tar-cyber-forget-4e-05']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxtar.attacks import Adversary, LoraSpec, Schedule, sample_adversary, tar_train_adversaries
from jaxtar.config import DefenceConfig, TarConfig
from jaxtar.data.rows import RowTable, gather, materialise
from jaxtar.defenses import _inputs
from jaxtar.defenses._batches import RowStream, tokens_in
from jaxtar.defenses._steps import place_batch
from jaxtar.parallel import to_host


def train_suite(config: TarConfig) -> tuple[Adversary, ...]:
    """The train-time adversaries: `tar_train_adversaries(setting)` with K steps, the batch size and (optionally)
    other learning rates.

    ``adversary_lora_rank`` turns every one into a LoRA attack, ``adversary_schedule`` gives every one the schedule.

    Example:
        >>> [a.lr for a in train_suite(TarConfig(setting="cyber", adversary_lrs=(1e-3,)))]
        [0.001, 0.001]
        >>> [a.name for a in train_suite(TarConfig(setting="cyber", adversary_lora_rank=4))][:1]
        ['tar-cyber-forget-2e-05-lora4']
    """
    suite = tar_train_adversaries(config.setting, steps=config.inner_steps, batch_size=config.adversary_batch_size)
    if config.adversary_lrs is not None:
        sources = list(dict.fromkeys(a.data for a in suite))
        suite = tuple(
            dataclasses.replace(suite[0], lr=lr, data=src, name=f"tar-{config.setting}-{src}-{lr:g}")
            for src in sources
            for lr in config.adversary_lrs
        )
    kind, tag = {}, ""
    if config.adversary_lora_rank is not None:
        rank = config.adversary_lora_rank
        kind["lora"], tag = LoraSpec(rank=rank, alpha=2.0 * rank, dropout=0.0), f"-lora{rank}"
    if config.adversary_schedule == "warmup_cosine":
        kind["schedule"], tag = Schedule("warmup_cosine", warmup_steps=config.inner_steps // 8), tag + "-cosine"
    return tuple(dataclasses.replace(a, name=a.name + tag, **kind) for a in suite)


class TarData:
    """Every batch of a TAR run as a function of the global step (no iterator state: resumable by construction).

    Args:
        config: the run's config.
        tokenizer: the model's tokenizer.
        suite: the train-time adversaries.
        reference: ``table -> reference log-prob columns`` of DPO's frozen reference model
            (`preference_reference`); only needed with ``tamper_loss: dpo``.
    """

    def __init__(
        self,
        config: DefenceConfig,
        tokenizer: Any,
        suite: tuple[Adversary, ...],
        reference: Callable[[RowTable], dict[str, np.ndarray]] | None = None,
    ):
        tar, data, seed = config.tar, config.data, config.run.seed
        self.config, self.suite, self.seed = tar, suite, seed
        roles = sorted({src for a in suite for src in a.sources})
        self.streams: dict[str, RowStream] = {}
        held_out = []  # entropy / CE-ascent tamper loss: x_TR = the held-out shares of data.tamper_roles
        for role in data.tamper_roles if tar.tamper_loss != "dpo" else ():
            if getattr(data, role) is None:
                raise _inputs.InputError(
                    f"the {tar.tamper_loss} tamper loss holds out data.{role} (tamper_roles): set it"
                )
            rest, held = _inputs.held_out_tables(tokenizer, getattr(data, role), data, seed)
            held_out.append(held)
            if role in roles:
                self.streams[role] = RowStream(rest, seed, 100 + roles.index(role))
        for i, role in enumerate(roles):
            if role in self.streams:
                continue
            source = getattr(data, role, None)
            if source is None:
                raise _inputs.InputError(f"the {tar.setting!r} adversaries train on data.{role}, which is not set")
            kind = "sft" if role == "harmful" else "text"
            self.streams[role] = RowStream(_inputs.role_table(tokenizer, source, data, kind), seed, 100 + i)
        if tar.tamper_loss != "dpo":
            tamper = RowTable.concat(held_out)
        else:  # every pair's reference log-probs are computed here, once
            if data.preferences is None:
                raise _inputs.InputError("the DPO tamper loss needs preference pairs: set data.preferences")
            if reference is None:
                raise ValueError("the DPO tamper loss needs the reference model: pass `reference`")
            pairs = _inputs.role_table(tokenizer, data.preferences, data, "preference")
            tamper = RowTable.join([pairs, RowTable.of_arrays(reference(pairs))])
        self.streams["tamper"] = RowStream(tamper, seed, 1)
        if data.retain is None:
            raise _inputs.InputError("the retain loss needs data.retain")
        self.streams["retain_loss"] = RowStream(_inputs.role_table(tokenizer, data.retain, data), seed, 2)
        if tar.sft_steps:
            source = data.sft or data.retain
            kind = "sft" if source == data.harmful else "text"
            self.streams["sft"] = RowStream(_inputs.role_table(tokenizer, source, data, kind), seed, 3)
        self.max_length = data.max_length

    def adversaries(self, step: int) -> list[Adversary]:
        """The A adversaries of outer step ``step`` (switch points drawn here)."""
        rng = np.random.default_rng([self.seed, step, 7])
        return [sample_adversary(self.suite, rng) for _ in range(self.config.adversaries_per_step)]

    def batches(self, step: int, lazy: bool = False) -> dict[str, Any]:
        """``{"adversary": [A, K, B, T], "tamper", "retain", "hyperparams": {[A]}}`` of outer step ``step``: numpy
        arrays, or with ``lazy`` row columns tokenised where they are read (`jaxtar.data.rows.TableRows`)."""
        tar = self.config
        k, b, a_count = tar.inner_steps, tar.adversary_batch_size, tar.adversaries_per_step
        advs = self.adversaries(step)
        sources = sorted({src for adv in advs for src in adv.sources})
        which = np.empty((a_count, k, b), np.int64)  # adversary a's step j reads table which[a, j] ...
        index = np.empty((a_count, k, b), np.int64)  # ... at rows index[a, j]
        for a, adv in enumerate(advs):
            slot = step * a_count + a
            chunks = {src: self.streams[src].indices(slot * k * b, k * b).reshape(k, b) for src in set(adv.sources)}
            for j, src in enumerate(adv.step_sources()):
                which[a, j], index[a, j] = sources.index(src), chunks[src][j]
        names = list(advs[0].hyperparams())
        hyper = {n: np.asarray([adv.hyperparams()[n] for adv in advs], np.float32) for n in names}
        batches = {
            "adversary": gather([self.streams[s].table for s in sources], which, index),
            "tamper": self.streams["tamper"].take(step * tar.tamper_batch_size, tar.tamper_batch_size).lazy,
            "retain": self.streams["retain_loss"].take(step * tar.retain_batch_size, tar.retain_batch_size).lazy,
            "hyperparams": hyper,
        }
        return batches if lazy else materialise(batches)

    def sft_batches(self, step: int, lazy: bool = False) -> dict[str, Any]:
        """The SFT phase's batch at global step ``step`` (``lazy``: see :meth:`batches`)."""
        b = self.config.sft_batch_size
        rows = self.streams["sft"].take(step * b, b)
        return {"sft": rows.lazy if lazy else rows.rows}

    def tokens_per_step(self) -> int:
        """Token positions through the model per outer step (attack fwd+bwd, tamper records, retain + base)."""
        tar, t = self.config, self.max_length
        records = tar.inner_steps // tar.tamper_every
        tamper_rows = tar.tamper_batch_size * (2 if tar.tamper_loss == "dpo" else 1)
        per_adv = tar.inner_steps * tar.adversary_batch_size + records * tamper_rows
        return tokens_in(tar.adversaries_per_step * per_adv + 2 * tar.retain_batch_size, t)


def preference_reference(
    model: Any, params: Any, mesh: Any = None, batch_size: int = 32
) -> Callable[[RowTable], dict[str, np.ndarray]]:
    """``table -> {"reference_chosen_logps": [N], "reference_rejected_logps": [N]}``: the summed response log-probs
    of every preference row of a table under ``params`` (DPO's frozen reference, the starting model), computed once
    in batches placed like a step's (on a ``mesh`` each process tokenises only the rows of its own shards).

    Example:
        >>> reference = preference_reference(model, params)  # doctest: +SKIP
        >>> TarData(config, tokenizer, train_suite(config.tar), reference)  # doctest: +SKIP
    """
    import jax

    from jaxtar.objectives.lm import sequence_log_probs

    if mesh is not None:  # a multiple of the devices a batch is split over
        split = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = math.ceil(batch_size / split) * split

    @jax.jit
    def score(p: Any, ids: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array) -> jax.Array:
        return sequence_log_probs(model.apply(p, ids, attention_mask).logits, ids, loss_mask)

    columns = ("input_ids", "attention_mask", "loss_mask")

    def reference(table: RowTable) -> dict[str, np.ndarray]:
        n, parts = table.num_rows, []
        for start in range(0, n, batch_size):
            index = np.arange(start, start + batch_size)
            index[index >= n] = 0  # the last batch is padded with row 0: one compilation
            rows = gather([table], np.zeros_like(index), index)
            rows = place_batch(rows, mesh)
            parts.append(
                {  # one side at a time: one [B, T, vocab] logits array alive at once
                    f"reference_{side}_logps": to_host(score(params, *(rows[f"{side}_{k}"] for k in columns)))
                    for side in ("chosen", "rejected")
                }
            )
        return {k: np.concatenate([p[k] for p in parts])[:n].astype(np.float32) for k in parts[0]}

    return reference


def check_suite(suite: tuple[Adversary, ...]) -> Adversary:
    """The one static structure (optimiser, schedule, clipping, LoRA) the suite's adversaries share, which the
    outer step is compiled for; `InputError` if they differ (they run as one vmap)."""
    keys = {a.static_key() for a in suite}
    if len(keys) != 1:
        raise _inputs.InputError(f"TAR's train-time adversaries must share one optimiser/schedule to vmap: {keys}")
    return suite[0]
