"""Shared fixtures of the eval tests: the toy world and one tiny Llama saved as an HF folder (session-scoped, so
every test in a worker reuses the same model shape and therefore the same compiled functions)."""

from __future__ import annotations

import pytest

from jaxtar.models import LlamaConfig, create_model, from_pretrained, save_pretrained
from jaxtar.toy import toy_world


@pytest.fixture(scope="session")
def world():
    return toy_world(0)


@pytest.fixture(scope="session")
def tiny_folder(world, tmp_path_factory):
    """A random tiny Llama over the toy vocabulary (tied embeddings, like the toy base model), with its tokenizer."""
    tok = world.tokenizer
    config = LlamaConfig.tiny(
        vocab_size=len(tok), initializer_range=0.1, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model, params = create_model(config, seed=0)
    return save_pretrained(model, params, tmp_path_factory.mktemp("models") / "tiny", tokenizer=tok)


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    """(model, params) loaded from the folder (the same config the CLI tests load)."""
    return from_pretrained(tiny_folder)
