"""The blocking evaluation: grid, best checkpoint with early stopping, and a run whose answer is known; the TPE search
(seeded, its winner the best trial, the grid's attacker runs, better than a coarse grid on a known optimum)."""

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from jaxtar.cli import build_parser
from jaxtar.commands.mlac import blocking_settings
from jaxtar.errors import ConfigError
from jaxtar.eval.blocking import BlockingConfig, best_checkpoint, blocking_eval, desired_accuracy, log_grid
from jaxtar.eval.blocking_search import best_trial, study_seed, tpe_search
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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"search": "random"}, r"search must be one of \('grid', 'tpe'\), got 'random'"),
        ({"search": "TPE"}, "search must be one of"),
        ({"tpe_trials": 0}, "tpe_trials must be an int >= 1, got 0"),
        ({"tpe_trials": 2.5}, "tpe_trials must be an int >= 1"),
        ({"tpe_batch": 0}, "tpe_batch must be an int >= 1, got 0"),
        ({"search": "tpe", "lrs": (1e-3,)}, "give two different lrs"),
    ],
)
def test_blocking_config_rejects_bad_search(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BlockingConfig(**kwargs)


def test_search_flags_reach_the_config():
    """``jaxtar redteam-classifier --search tpe --tpe-trials 8 --tpe-batch 2``; the default stays the grid."""
    flags = lambda *f: blocking_settings(build_parser().parse_args(["redteam-classifier", *f, "--output", "o"]))
    cfg = flags("--search", "tpe", "--tpe-trials", "8", "--tpe-batch", "2")["blocking"]
    assert (cfg.search, cfg.tpe_trials, cfg.tpe_batch) == ("tpe", 8, 2)
    assert flags()["blocking"].search == "grid"
    with pytest.raises(ConfigError, match="search must be one of"):
        flags("--search", "bayes")
    with pytest.raises(ConfigError, match="tpe_trials must be an int >= 1"):
        flags("--search", "tpe", "--tpe-trials", "0")


def test_tpe_search_beats_a_coarse_grid_on_a_known_optimum():
    """Objective -(log10 lr - best(n))^2 (and a worse second budget): the coarse grid 1e-5, 1e-3, 1e-1 misses the
    optima by 0.5 and 0.6 decades; 16 TPE trials over the same range get within 0.3, reproducibly for a seed, with
    every call of the objective the same size (a short last round padded)."""
    best = {20: -2.5, 50: -3.6}
    calls = []

    def objective(points):
        calls.append(len(points))
        err = np.array([(np.log10(lr) - best[n]) ** 2 for n, lr in points])
        return np.stack([-err, -err - 0.1], axis=1)

    run = lambda seed, trials=16: tpe_search(objective, (20, 50), low=1e-5, high=1e-1, trials=trials, batch=4,
                                             seed=seed)  # fmt: skip
    out = run(0)
    assert out == run(0) and out != run(1)
    grid = log_grid(1e-5, 1e-1, 3)
    for n, trials in out.items():
        assert [t["trial"] for t in trials] == list(range(16))
        assert all(1e-5 <= t["lr"] <= 1e-1 and t["score"] == t["scores"][0] == max(t["scores"]) for t in trials)
        grid_best = max(-((np.log10(lr) - best[n]) ** 2) for lr in grid)
        assert grid_best == pytest.approx(-((0.5 if n == 20 else 0.6) ** 2))
        winner = best_trial(trials)
        assert winner["score"] == max(t["score"] for t in trials) >= grid_best
        assert abs(np.log10(winner["lr"]) - best[n]) < 0.3
    calls.clear()
    assert [len(t) for t in run(0, trials=10).values()] == [10, 10] and calls == [8, 8, 8]
    assert study_seed(0, 20) != study_seed(0, 50) and study_seed((0, 1), 20) != study_seed((0, 0), 20)


def test_tpe_search_without_optuna_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    split = _split(4)
    with pytest.raises(ConfigError, match=r"pip install 'jaxtar\[sweep\]'"):
        blocking_eval({"m": (None, {})}, split, split, BlockingConfig(ns=(2,), search="tpe"))


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
    assert res["chance"] == 0.5 and res["eval_examples"] == 64 and res["search_method"] == "grid"
    for n in ("20", "40"):
        leak = res["models"]["leaky"]["harmful"][n]
        assert leak["mean"] >= 0.7 and leak["lr"] == 3e-2 and leak["runs"] == 4 and leak["mode"] == "probe"
        assert len(leak["search"]) == 2 * 2  # lrs x step budgets
        assert [(t["trial"], t["lr"]) for t in leak["trials"]] == [(0, 1e-5), (1, 3e-2)]  # one per grid lr
        assert leak["trials"][1]["score"] == max(r["score"] for r in leak["search"])
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


def test_blocking_eval_with_tpe(fast_compile):
    """Two copies of one encoder, one seed: identical trials and winners (fresh studies per model, nothing global);
    the winner is the best recorded trial at its best budget; a trial's score is the grid's at that lr (the same
    attacker runs and seeds). Search and final runs have the same batch shape (1 n x 3 trials x 2 search runs = 2 data
    seeds x 3 reruns), so the attacker compiles once per evaluation."""
    config = BertConfig.tiny(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                             max_position_embeddings=8, num_labels=3, classifier_bias=False)  # fmt: skip
    model = model_for_config(config)
    params = model.init(0)
    copy = jax.tree.map(lambda x: x + 0, params)
    val1, val2 = _split(40), _split(64)
    cfg = BlockingConfig(ns=(20,), lrs=(1e-5, 3e-2), steps=(40, 80), modes=("probe",), batch_size=8, eval_every=20,
                         patience=2, search_runs=2, reruns=3, data_seeds=2, eval_batch_size=32, search="tpe",
                         tpe_trials=6, tpe_batch=3)  # fmt: skip
    res = blocking_eval({"a": (model, params), "b": (model, copy)}, val1, val2, cfg, compiler_options=fast_compile)
    assert res["search_method"] == "tpe" and res["config"]["search"] == "tpe" and json.dumps(res)
    a, b = res["models"]["a"]["harmful"]["20"], res["models"]["b"]["harmful"]["20"]
    assert a == b
    trials = a["trials"]
    assert [t["trial"] for t in trials] == list(range(6)) and len(a["search"]) == 6 * 2  # trials x step budgets
    assert len({t["lr"] for t in trials}) == 6 and all(1e-5 <= t["lr"] <= 3e-2 for t in trials)
    assert all(t["score"] in {k / 64 for k in range(65)} for t in trials)  # a mean of two accuracies on 64 examples
    winner = best_trial(trials)
    assert (a["lr"], a["steps"], a["mode"]) == (winner["lr"], winner["steps"], "probe") and a["runs"] == 6
    assert winner["score"] == max(r["score"] for r in a["search"])
    for t in trials:  # each trial is its best budget's row of the search table
        rows = [r for r in a["search"] if r["trial"] == t["trial"]]
        assert [r["steps"] for r in rows] == [40, 80] and t["score"] == max(r["score"] for r in rows)
    lrs = (trials[0]["lr"], trials[1]["lr"], trials[2]["lr"])
    grid = blocking_eval({"a": (model, params)}, val1, val2, dataclasses.replace(cfg, search="grid", lrs=lrs),
                         compiler_options=fast_compile)["models"]["a"]["harmful"]["20"]  # fmt: skip
    assert [(r["lr"], r["steps"], r["score"]) for r in grid["search"]] == [
        (r["lr"], r["steps"], r["score"]) for r in a["search"][:6]
    ]
    assert grid["trials"] == [{**t, "trial": i} for i, t in enumerate(trials[:3])]
