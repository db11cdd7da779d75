"""Tokenisation to fixed-length rows and the resumable batch iterator."""

import numpy as np
import pytest

from jaxtar.data.batching import (
    BatchIterator,
    epoch_permutation,
    pack_texts,
    tokenize_preferences,
    tokenize_prompt_response,
    tokenize_texts,
)
from jaxtar.data.sources import PreferencePair
from jaxtar.toy import toy_world


@pytest.fixture(scope="module")
def tok():
    return toy_world(0).tokenizer


def test_padding_truncation_and_masks(tok):
    texts = ["the host of", "the host of the pathogen is studied"]
    ids = [tok(t)["input_ids"] for t in texts]
    right = tokenize_texts(tok, texts, 6, append_eos=True)
    assert right["input_ids"].dtype == np.int32 and right["input_ids"].shape == (2, 6)
    assert right["input_ids"][0].tolist() == ids[0] + [tok.eos_token_id, tok.pad_token_id]
    assert right["input_ids"][1].tolist() == ids[1][:6]  # the end is cut
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    np.testing.assert_array_equal(right["loss_mask"], right["attention_mask"])
    left = tokenize_texts(tok, texts, 6, padding_side="left")
    assert left["input_ids"][0].tolist() == [tok.pad_token_id] * 2 + ids[0]
    assert left["attention_mask"][0].tolist() == [0, 0, 1, 1, 1, 1]
    no_bos = tokenize_texts(tok, texts[:1], 6, add_special_tokens=False)
    assert no_bos["input_ids"][0, 0] != tok.bos_token_id
    with pytest.raises(ValueError, match="padding_side"):
        tokenize_texts(tok, texts, 6, padding_side="middle")
    with pytest.raises(TypeError):
        tokenize_texts(tok, "one string", 6)


def test_packing_keeps_the_token_stream(tok):
    texts = [f"the {w} of" for w in ("host", "origin", "toxin", "host", "origin")]
    packed = pack_texts(tok, texts, 7)
    stream = [t for text in texts for t in tok(text)["input_ids"] + [tok.eos_token_id]]
    assert packed["input_ids"].shape == (len(stream) // 7, 7)
    assert packed["input_ids"].reshape(-1).tolist() == stream[: packed["input_ids"].size]
    assert packed["attention_mask"].all()
    short = pack_texts(tok, texts[:1], 64)
    assert short["input_ids"].shape == (1, 64) and short["attention_mask"].sum() == len(tok(texts[0])["input_ids"]) + 1


def test_prompt_response_masks_only_the_response(tok):
    prompt, response = "the host of the pathogen", "is studied"
    p_ids, r_ids = tok(prompt)["input_ids"], tok(response, add_special_tokens=False)["input_ids"]
    b = tokenize_prompt_response(tok, [prompt], [response], 12)
    n = len(p_ids) + len(r_ids) + 1
    assert b["input_ids"][0, :n].tolist() == p_ids + r_ids + [tok.eos_token_id]
    assert b["loss_mask"][0].tolist() == [0] * len(p_ids) + [1] * (len(r_ids) + 1) + [0] * (12 - n)
    tight = tokenize_prompt_response(tok, [prompt], [response], 6)  # prompt keeps its end, at most 3 tokens
    assert tight["input_ids"][0].tolist() == p_ids[-3:] + r_ids + [tok.eos_token_id]
    assert tight["loss_mask"][0].tolist() == [0, 0, 0, 1, 1, 1]
    pref = tokenize_preferences(tok, [PreferencePair(prompt, "is studied", "is")], 12)
    assert set(pref) == {
        f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "loss_mask")
    }
    assert pref["chosen_loss_mask"].sum() == 3 and pref["rejected_loss_mask"].sum() == 2


def test_iterator_is_deterministic_epoch_complete_and_resumable():
    n = 10
    data = {"input_ids": np.arange(n * 3).reshape(n, 3), "loss_mask": np.ones((n, 3))}
    it = BatchIterator(data, batch_size=4, seed=3)
    stream = np.concatenate([next(it)["input_ids"][:, 0] // 3 for _ in range(10)])  # 40 examples = 4 epochs
    for epoch in range(4):
        chunk = stream[epoch * n : (epoch + 1) * n]
        assert sorted(chunk.tolist()) == list(range(n))  # every example exactly once per epoch
        np.testing.assert_array_equal(chunk, epoch_permutation(n, 3, epoch))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # a fresh order each epoch
    # a "killed" run resumes from its saved integer position and yields the same batches
    killed = BatchIterator(data, 4, seed=3)
    for _ in range(3):
        next(killed)
    resumed = BatchIterator(data, 4, seed=3)
    resumed.load_state_dict(killed.state_dict())
    np.testing.assert_array_equal(
        np.concatenate([next(resumed)["input_ids"][:, 0] // 3 for _ in range(7)]), stream[12:]
    )
    other_seed = BatchIterator(data, 4, seed=4)
    assert not np.array_equal(next(other_seed)["input_ids"], BatchIterator(data, 4, seed=3).peek()["input_ids"])
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(killed.state_dict())


def test_stacked_batches_for_the_inner_loop():
    data = {"input_ids": np.arange(20).reshape(10, 2), "attention_mask": np.ones((10, 2), np.int32)}
    it = BatchIterator(data, batch_size=3, seed=0)
    stacked = it.next_stacked(4)
    assert stacked["input_ids"].shape == (4, 3, 2) and stacked["attention_mask"].shape == (4, 3, 2)
    assert it.position == 12
    flat = BatchIterator(data, 3, seed=0)
    np.testing.assert_array_equal(stacked["input_ids"][2], [next(flat) for _ in range(3)][2]["input_ids"])
    ordered = BatchIterator(data, 4, shuffle=False, position=8)
    assert next(ordered)["input_ids"][:, 0].tolist() == [16, 18, 0, 2]
    with pytest.raises(ValueError, match="same leading size"):
        BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, 2)
