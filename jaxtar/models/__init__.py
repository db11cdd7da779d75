"""Flax NNX ports of Hugging Face models, used as pure functions of a params dict.

`from_pretrained` / `save_pretrained` move whole checkpoints in and out. `hf_state_dict(model, tree)` maps any tree
shaped like the params -- the params themselves, or a gradient or meta-gradient with respect to them -- to
``{hf_name: numpy array}`` in transformers' names and layout (kernels transposed to torch's ``[out, in]``, stacked
layers split into one tensor per layer; only layout changes, so gradients map exactly): the way to compare a jaxtar
gradient with ``torch_model.get_parameter(name).grad`` from PyTorch.

Example:
    >>> import jax, jax.numpy as jnp
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> grads = jax.grad(lambda p: model.apply(p, jnp.arange(8)[None]).logits.sum())(params)
    >>> grads["layers"]["gate_proj"]["kernel"].shape  # jaxtar: layers stacked, [in, out]
    (2, 64, 128)
    >>> hf = hf_state_dict(model, grads)
    >>> hf["model.layers.1.mlp.gate_proj.weight"].shape  # transformers: one tensor per layer, [out, in]
    (128, 64)
    >>> bool((hf["model.layers.1.mlp.gate_proj.weight"] == grads["layers"]["gate_proj"]["kernel"][1].T).all())
    True
"""

from jaxtar.errors import CheckpointError
from jaxtar.models.bert import BERT_LORA_TARGETS, BertConfig, with_classifier
from jaxtar.models.functional import (
    Model,
    ModelOutput,
    cast_params,
    count_params,
    create_model,
    model_for_config,
)
from jaxtar.models.gpt2 import GPT2_LORA_TARGETS, GPT2Config
from jaxtar.models.hf import from_pretrained, load_tokenizer
from jaxtar.models.hf_save import hf_state_dict, save_pretrained
from jaxtar.models.llama import LlamaConfig
from jaxtar.models.lora import LoraConfig, LoraParams, init_lora, merge_lora

__all__ = [
    "CheckpointError",
    "from_pretrained",
    "hf_state_dict",
    "load_tokenizer",
    "save_pretrained",
    "LlamaConfig",
    "LoraConfig",
    "LoraParams",
    "Model",
    "ModelOutput",
    "cast_params",
    "count_params",
    "create_model",
    "init_lora",
    "merge_lora",
    "model_for_config",
    "GPT2Config",
    "GPT2_LORA_TARGETS",
    "BertConfig",
    "BERT_LORA_TARGETS",
    "with_classifier",
]
