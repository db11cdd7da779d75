"""The toy world's base model: a tiny Llama that knows both domains well above chance, trained, shipped, cached.

`train_toy_base_model` trains one (or teaches the world to an existing model: ``start_from``); `toy_base_model_path`
finds the shipped copy (``jaxtar/assets/toy``), else a cached one, else trains it. The offline demo and the toy presets
start from it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtar.data.batching import BatchIterator, tokenize_texts
from jaxtar.models import LlamaConfig, create_model, from_pretrained, load_tokenizer, save_pretrained
from jaxtar.objectives import batch_cross_entropy
from jaxtar.toy.mcq import mcq_letter_accuracy
from jaxtar.toy.world import TOY_WORLD_VERSION, toy_world

METADATA_FILE = "toy_world.json"


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """Hyper-parameters of :func:`train_toy_base_model` (the defaults reach 100 % / 97.5 % on world seed 0).

    Attributes:
        hidden_size: model width ``d``.
        intermediate_size: MLP width.
        num_layers: decoder layers.
        num_heads: attention heads (as many KV heads).
        steps: AdamW steps.
        batch_size: sequences per step.
        seq_len: padded sequence length (every toy text fits).
        learning_rate: peak learning rate (linear warmup, cosine decay to 5 %).
        warmup_steps: warmup steps.
        weight_decay: AdamW weight decay.
        answer_weight: loss weight of the answer letter in quiz texts (1 = plain next-token CE).
        seed: parameter-init and data-order seed.

    With ``start_from`` (:func:`train_toy_base_model`) the model's shape fields are ignored.
    """

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 800
    batch_size: int = 32
    seq_len: int = 48
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    answer_weight: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} / num_heads {self.num_heads} must be an even integer")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.learning_rate <= 0 or self.answer_weight <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate and answer_weight must be > 0, weight_decay >= 0")


@dataclasses.dataclass(frozen=True, eq=False)
class ToyBaseModel:
    """A trained toy base model: where it was saved, the model and its parameters, and its MCQ accuracy."""

    path: Path
    model: Any
    params: Any
    forget_accuracy: float
    retain_accuracy: float
    train_seconds: float


def toy_model_config(tokenizer: Any, config: ToyTrainConfig = ToyTrainConfig()) -> Any:
    """The ``LlamaConfig`` of the toy model for ``tokenizer`` (vocabulary rounded up to a multiple of 64)."""
    return LlamaConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def answer_weighted_batch(tokenizer: Any, texts: Sequence[str], seq_len: int, answer_weight: float) -> dict:
    """Right-padded rows whose ``loss_mask`` weighs the letter after ``Answer:`` by ``answer_weight``."""
    data = tokenize_texts(tokenizer, texts, seq_len, append_eos=True)
    ids = data["input_ids"]
    answer, colon = tokenizer.convert_tokens_to_ids("Answer"), tokenizer.convert_tokens_to_ids(":")
    is_answer = np.zeros_like(ids, dtype=bool)
    is_answer[:, 2:] = (ids[:, :-2] == answer) & (ids[:, 1:-1] == colon)
    weights = data["loss_mask"].astype(np.float32) * np.where(is_answer, answer_weight, 1.0).astype(np.float32)
    return {**data, "loss_mask": weights}


def train_toy_base_model(
    world: Any,
    out_dir: str | Path,
    config: ToyTrainConfig = ToyTrainConfig(),
    *,
    overwrite: bool = False,
    start_from: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> ToyBaseModel:
    """Trains the toy base model on both domains' texts with AdamW and saves it as an HF folder with the tokenizer.

    Args:
        world: a :class:`~jaxtar.toy.world.ToyWorld`.
        out_dir: output folder (``jaxtar.models.save_pretrained`` layout plus ``toy_world.json``).
        config: hyper-parameters.
        overwrite: replace an existing non-empty ``out_dir``.
        start_from: fine-tune this model (HF folder, ``.gguf`` file, Hub id or named model) with its own tokenizer
            instead of training a new toy-shaped model with the world's tokenizer.
        log: progress printer (None: silent).

    Returns:
        A :class:`ToyBaseModel` with the held-out-template MCQ accuracy of both domains.

    Example:
        >>> from jaxtar.toy import toy_world
        >>> base = train_toy_base_model(toy_world(0), "runs/toy-base")  # doctest: +SKIP
    """
    import jax.numpy as jnp
    import optax

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass overwrite=True to replace it")
    start = time.perf_counter()
    if start_from is None:
        tok = world.tokenizer
        model, params = create_model(toy_model_config(tok, config), seed=config.seed)
    else:
        from jaxtar.toy.named_models import resolve_model

        source = resolve_model(start_from)
        model, params = from_pretrained(source)
        tok = load_tokenizer(source)
    data = answer_weighted_batch(
        tok, list(world.forget_texts + world.retain_texts), config.seq_len, config.answer_weight
    )
    batches = BatchIterator(data, config.batch_size, seed=config.seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.steps, config.learning_rate * 0.05
    )
    optimizer = optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=config.weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(p, s, batch):
        loss, grads = jax.value_and_grad(
            lambda q: batch_cross_entropy(model.apply(q, batch["input_ids"], batch["attention_mask"]).logits, batch)
        )(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    for i in range(config.steps):
        params, opt_state, loss = step(params, opt_state, {k: jnp.asarray(v) for k, v in next(batches).items()})
        if log is not None and ((i + 1) % 100 == 0 or i + 1 == config.steps):
            elapsed = time.perf_counter() - start
            log(f"toy base model: step {i + 1}/{config.steps} loss {float(loss):.3f} ({elapsed:.0f} s)")
    forget = mcq_letter_accuracy(model, params, tok, world.forget_mcq)
    retain = mcq_letter_accuracy(model, params, tok, world.retain_mcq)
    seconds = time.perf_counter() - start
    path = save_pretrained(model, params, out_dir, tokenizer=tok, overwrite=overwrite)
    metadata = {
        "toy_world_version": world.version,
        "world_seed": world.seed,
        "train_config": dataclasses.asdict(config),
        "start_from": None if start_from is None else str(start_from),
        "forget_mcq_accuracy": forget,
        "retain_mcq_accuracy": retain,
        "train_seconds": round(seconds, 1),
    }
    (Path(path) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    if log is not None:
        log(f"toy base model: forget MCQ {forget:.1%}, retain MCQ {retain:.1%}, {seconds:.0f} s -> {path}")
    return ToyBaseModel(Path(path), model, params, forget, retain, seconds)


def shipped_toy_model_dir(version: int, seed: int) -> Path:
    """Where the package ships the pre-trained toy base model for ``(version, seed)`` (may not exist)."""
    return Path(__file__).resolve().parent.parent / "assets" / "toy" / f"base-v{version}-seed{seed}"


def toy_base_model_path(
    seed: int = 0,
    *,
    cache_dir: str | Path | None = None,
    train_if_missing: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """The toy base model folder for world ``seed``: the shipped copy, else a cached one, else trained now.

    A folder is used only if its ``toy_world.json`` names the current ``TOY_WORLD_VERSION`` and the seed.

    Args:
        seed: toy-world seed.
        cache_dir: where to train/cache non-shipped models (default ``~/.cache/jaxtar/toy``).
        train_if_missing: train (about two minutes on two CPU cores) when no folder is found.
        log: progress printer for training.

    Raises:
        FileNotFoundError: no folder found and ``train_if_missing`` is False.

    Example:
        >>> from jaxtar.models import from_pretrained
        >>> model, params = from_pretrained(toy_base_model_path())  # doctest: +SKIP
    """

    def matches(folder: Path) -> bool:
        try:
            meta = json.loads((folder / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return False
        return meta.get("toy_world_version") == TOY_WORLD_VERSION and meta.get("world_seed") == seed

    shipped = shipped_toy_model_dir(TOY_WORLD_VERSION, seed)
    if matches(shipped):
        return shipped
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "jaxtar" / "toy"
    cached = cache / f"base-v{TOY_WORLD_VERSION}-seed{seed}"
    if matches(cached):
        return cached
    if not train_if_missing:
        raise FileNotFoundError(
            f"no toy base model for toy-world version {TOY_WORLD_VERSION}, seed {seed} in {shipped} or {cached}; "
            "call toy_base_model_path(train_if_missing=True) or run scripts/build_toy_world.py"
        )
    return train_toy_base_model(toy_world(seed), cached, overwrite=True, log=log).path
