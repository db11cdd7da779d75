"""Flax NNX ports of Hugging Face models, used as pure functions of a params dict."""

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
