"""The offline toy world: a deterministic synthetic benchmark (world), its vocabulary (templates), its tiny Llama
base model (base_model) and that model's multiple-choice scoring (mcq).

It sits above ``models/`` (it trains a model) and below ``eval/`` and the defences, which use it as their offline
data and starting checkpoint.

Example:
    >>> from jaxtar.toy import toy_world
    >>> from jaxtar.data import BatchIterator, tokenize_texts
    >>> world = toy_world(0)
    >>> batches = BatchIterator(tokenize_texts(world.tokenizer, world.forget_texts, 48), batch_size=8, seed=0)
    >>> next(batches)["input_ids"].shape
    (8, 48)
"""

from jaxtar.toy.base_model import (
    ToyBaseModel,
    ToyTrainConfig,
    shipped_toy_model_dir,
    toy_base_model_path,
    toy_model_config,
    train_toy_base_model,
)
from jaxtar.toy.mcq import mcq_letter_accuracy, mcq_letter_predictions
from jaxtar.toy.world import MAX_LENGTH, TOY_WORLD_VERSION, Fact, ToyWorld, quiz_text, toy_world

__all__ = [
    "MAX_LENGTH",
    "TOY_WORLD_VERSION",
    "Fact",
    "ToyBaseModel",
    "ToyTrainConfig",
    "ToyWorld",
    "mcq_letter_accuracy",
    "mcq_letter_predictions",
    "quiz_text",
    "shipped_toy_model_dir",
    "toy_base_model_path",
    "toy_model_config",
    "toy_world",
    "train_toy_base_model",
]
