"""The blocking evaluation: grid, best checkpoint with early stopping, and a run whose answer is known."""

import dataclasses

import numpy as np
import pytest

from jaxtar.eval.blocking import BlockingConfig, best_checkpoint, blocking_eval, desired_accuracy, log_grid
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig


def test_log_grid_values():
    assert log_grid(1e-5, 1e-2, 4) == (1e-05, 0.0001, 0.001, 0.01)
    assert log_grid(1e-4, 1e-2, 3) == (0.0001, 0.001, 0.01)
    assert log_grid(0.5, 0.5, 1) == (0.5,)
    with pytest.raises(ValueError, match="0 < low <= high"):
        log_grid(1e-2, 1e-5, 3)


def test_best_checkpoint_budget_and_early_stopping():
    accs = np.array([[0.5, 0.6, 0.55, 0.58, 0.9], [0.4, 0.3, 0.45, 0.2, 0.1]])
    # patience 2: row 0 stops after 0.55, 0.58 (two non-improvements) -> 0.6 (the late 0.9 is never seen)
    assert best_checkpoint(accs, 5, patience=2).tolist() == [0.6, 0.45]
    assert best_checkpoint(accs, 5, patience=None).tolist() == [0.9, 0.45]
    assert best_checkpoint(accs, 2, patience=None).tolist() == [0.6, 0.4]  # budget: first 2 checkpoints
    assert best_checkpoint(accs, 5, patience=1).tolist() == [0.6, 0.4]
    assert best_checkpoint(np.array([[0.7, 0.7, 0.7]]), 3, patience=2).tolist() == [0.7]  # ties do not improve


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ns": ()}, "ns must not be empty"),
        ({"ns": (0,)}, "positive ints"),
        ({"lrs": (-1.0,)}, "lrs must be > 0"),
        ({"modes": ("lora",)}, "modes must be among"),
        ({"steps": (75,), "eval_every": 50}, "multiples of eval_every"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"reruns": 0}, "reruns must be an int >= 1"),
    ],
)
def test_blocking_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockingConfig(**kwargs)


def _split(n):
    """Every token (the [CLS] position included) is 5 or 6: the label is in the residual stream at O(1) scale."""
    gender = np.tile([0, 1], n // 2).astype(np.int32)
    ids = np.repeat((5 + gender)[:, None], 4, axis=1).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones((n, 4), np.int32), "gender": gender, "profession": gender}


def test_blocking_eval_on_a_leaky_and_a_blind_encoder(fast_compile):
    """An encoder whose inputs carry the label is probed well above chance (>= 0.7 with this small grid and a bias-free
    head); the same encoder with tokens 5 and 6 made identical cannot beat val2's majority rate (exactly 0.5 here),
    whatever the search picks."""
    config = BertConfig.tiny(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                             max_position_embeddings=8, num_labels=3, classifier_bias=False)  # fmt: skip
    model = model_for_config(config)
    leaky = model.init(0)
    emb = leaky["embed"]["embedding"]
    blind = {**leaky, "embed": {"embedding": emb.at[6].set(emb[5])}}
    val1, val2 = _split(40), _split(64)
    cfg = BlockingConfig(ns=(20, 40), lrs=(1e-5, 3e-2), steps=(40, 80), modes=("probe",), batch_size=8, eval_every=20,
                         patience=2, search_runs=2, reruns=2, data_seeds=2, eval_batch_size=32)  # fmt: skip
    res = blocking_eval({"leaky": (model, leaky), "blind": (model, blind)}, val1, val2, cfg, test=val2,
                        num_desired=3, compiler_options=fast_compile)  # fmt: skip
    assert res["chance"] == 0.5 and res["eval_examples"] == 64
    for n in ("20", "40"):
        leak = res["models"]["leaky"]["harmful"][n]
        assert leak["mean"] >= 0.7 and leak["lr"] == 3e-2 and leak["runs"] == 4 and leak["mode"] == "probe"
        assert len(leak["search"]) == 2 * 2  # lrs x step budgets
        assert res["models"]["blind"]["harmful"][n]["mean"] == pytest.approx(0.5)
    pred = np.argmax(np.asarray(model.apply(leaky, val2["input_ids"]).logits), -1)
    expect = float(np.mean(pred == val2["profession"]))
    assert res["models"]["leaky"]["desired_accuracy"] == pytest.approx(expect)
    with pytest.raises(ValueError, match="exceeds the 40 examples"):
        blocking_eval({"leaky": (model, leaky)}, val1, val2, dataclasses.replace(cfg, ns=(41,)))
    with pytest.raises(ValueError, match=r"val2\['gender'\] must lie in"):
        blocking_eval({"leaky": (model, leaky)}, val1, {**val2, "gender": val2["gender"] + 1}, cfg)


def test_desired_accuracy_none_without_head():
    model = model_for_config(BertConfig.tiny(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2))
    split = {"input_ids": np.zeros((2, 4), np.int32), "attention_mask": np.ones((2, 4), np.int32),
             "profession": np.zeros(2, np.int32)}  # fmt: skip
    assert desired_accuracy(model, model.init(0), split, num_desired=3) is None
