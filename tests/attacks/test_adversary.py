"""Adversary specs: validation, hyper-parameters, grouping keys, data schedules, and the named suites."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxtar.attacks import (
    OPTIMIZERS,
    Adversary,
    LoraSpec,
    Schedule,
    get_suite,
    mlac_attackers,
    red_team_suite,
    refusal_red_team,
    sample_adversary,
    sample_switch_step,
    tar_train_adversaries,
)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="rmsprop"), "optimizer must be one of"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(b1=1.0), "b1 must be in"),
        (dict(clip_norm=0.0), "clip_norm"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(data="Forget"), "lower_snake_case"),
        (dict(data="forget", switch_step=3), "switch_step only applies"),
        (dict(data="retain_to_forget", steps=8, switch_step=9), r"switch_step must be in \[0, steps=8\]"),
        (dict(optimizer="schedule_free_adamw", b1=0.0), "b1 > 0"),
        (dict(schedule=Schedule("warmup_cosine", warmup_steps=64), steps=64), "steps .64. > warmup_steps"),
        (dict(lora="r16"), "LoraSpec or None"),
    ],
)
def test_adversary_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Adversary(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="step"), "kind must be one of"),
        (dict(kind="linear_warmup"), "warmup_steps > 0"),
        (dict(kind="sgdr"), "cycle_steps"),
        (dict(kind="constant", cycle_steps=4), "only applies to 'sgdr'"),
        (dict(kind="warmup_cosine", warmup_steps=10, decay_steps=10), "must exceed"),
    ],
)
def test_schedule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_lora_spec():
    spec = LoraSpec(rank=16, alpha=32.0, dropout=0.05)
    assert spec.scale == 2.0 and len(spec.targets) == 7
    cfg = spec.to_config()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.targets) == (16, 32.0, 0.05, spec.targets)
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match="targets"):
        LoraSpec(targets=())


def test_hyperparams_and_static_keys():
    expected = {
        "sgd": {"learning_rate", "weight_decay"},
        "sgd_nesterov": {"learning_rate", "weight_decay", "momentum"},
        "adamw": {"learning_rate", "weight_decay", "b1", "b2", "eps", "eps_root"},
        "adadelta": {"learning_rate", "weight_decay", "rho", "eps"},
        "lion": {"learning_rate", "weight_decay", "b1", "b2"},
    }
    for kind, names in expected.items():
        assert set(Adversary(kind).hyperparams()) == names
    assert Adversary("adam", clip_norm=100.0).hyperparams()["clip_norm"] == 100.0
    base = Adversary("adamw", lr=2e-5)
    # numeric hyper-parameters and step counts may differ within a vmapped group; structure may not
    assert dataclasses.replace(base, lr=4e-5, weight_decay=0.1, steps=8).static_key() == base.static_key()
    assert dataclasses.replace(base, clip_norm=1.0).static_key() != base.static_key()
    assert dataclasses.replace(base, lora=LoraSpec()).static_key() != base.static_key()
    assert set(OPTIMIZERS) >= {"sgd", "adadelta", "schedule_free_adamw", "lion"}


def test_data_schedule_and_switch_sampling():
    adv = Adversary(data="retain_to_forget", steps=6)
    assert adv.sources == ("retain", "forget")
    assert adv.step_sources(switch_step=2) == ("retain",) * 2 + ("forget",) * 4
    with pytest.raises(ValueError, match="needs a switch step"):
        adv.step_sources()
    assert Adversary(data="ood", steps=3).step_sources() == ("ood",) * 3
    draws = [sample_switch_step(np.random.default_rng(i), 64) for i in range(400)]
    assert all(0 <= d <= 64 for d in draws)
    np.testing.assert_allclose(np.mean(draws), 64 * 6 / 9 - 0.5, atol=1.5)  # Beta(6, 3) mean, floored


def test_tar_train_suites():
    bio = tar_train_adversaries("bio")
    assert len(bio) == 9 and {a.data for a in bio} == {"forget", "forget_alt", "retain_to_forget"}
    assert sorted({a.lr for a in bio}) == [2e-6, 2e-5, 4e-5]
    assert all((a.optimizer, a.b1, a.b2, a.eps, a.weight_decay, a.steps) == ("adamw", 0.9, 0.999, 1e-8, 0.01, 64)
               for a in bio)  # fmt: skip
    cyber = tar_train_adversaries("cyber")
    assert sorted((a.data, a.lr) for a in cyber) == [
        ("forget", 2e-5), ("forget", 4e-5), ("retain_to_forget", 2e-5), ("retain_to_forget", 4e-5)
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    picks = [sample_adversary(cyber, rng) for _ in range(200)]
    assert all(p.switch_step is not None for p in picks if p.switches)
    assert 70 < sum(p.data == "forget" for p in picks) < 130
    with pytest.raises(ValueError, match="setting"):
        tar_train_adversaries("chem")


def test_red_team_suites():
    suite = red_team_suite("bio")
    assert len(suite) == 84 and len({(a.name, a.seed) for a in suite}) == 84
    one = red_team_suite("bio", seeds=(0,))
    assert {a.optimizer for a in one} == {"adamw", "adadelta", "sgd_nesterov", "schedule_free_adamw"}
    assert {a.schedule.kind for a in one} == {"constant", "linear_warmup", "warmup_cosine", "sgdr"}
    assert {a.steps for a in one} == {500, 1000, 5000} and {a.batch_size for a in one} == {32, 64}
    assert {a.data for a in one} == {"forget", "retain_to_forget", "ood", "retain"}
    assert all(2e-6 <= a.lr <= 4e-5 for a in one)
    lora = [a for a in one if a.lora is not None]
    assert lora and all((a.lora.rank, a.lora.alpha, a.lora.dropout) == (16, 32.0, 0.05) for a in lora)
    qi = next(a for a in one if a.name == "bio-qi2024-cosine")
    assert (qi.lr, qi.steps, qi.batch_size, qi.schedule.warmup_steps, qi.schedule.kind) == (
        2e-5, 1000, 64, 100, "warmup_cosine"
    )  # fmt: skip
    refusal = refusal_red_team()
    assert [(a.lr, a.schedule.warmup_steps, a.batch_size) for a in refusal] == [
        (1e-5, 10, 32), (1e-5, 0, 32), (1e-5, 0, 16), (2e-5, 0, 32), (4e-5, 0, 32)
    ]  # fmt: skip
    mlac = mlac_attackers()
    assert [(a.optimizer, a.steps, a.clip_norm, a.lr) for a in mlac] == [("adam", 16, 100.0, 3e-4)] * 3
    assert len(get_suite("tar-bio")) == 9
    with pytest.raises(ValueError, match="unknown adversary suite"):
        get_suite("nope")
