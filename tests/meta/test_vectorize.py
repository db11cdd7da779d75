"""A vmapped adversary group equals a loop over its adversaries (mixed step counts, chunking, divergence)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks.adversary import Adversary, Schedule
from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad
from jaxtar.meta.vectorize import (
    AdversaryGroup,
    group_adversaries,
    grouped_meta_value_and_grad,
    vmap_meta_value_and_grad,
)

KEY = jax.random.key(5)
SCHEDULE = TamperSchedule.tar(every=1, rate=0.5)
ADVERSARIES = (
    Adversary("adamw", lr=0.05, weight_decay=0.01, steps=3, seed=0),
    Adversary("adamw", lr=0.02, weight_decay=0.0, steps=2, seed=1),  # shorter: masked inside the vmapped scan
    Adversary("adamw", lr=0.1, weight_decay=0.05, steps=3, seed=7),
)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def case(hybrid, make_hybrid_data):
    params, batches, tamper = make_hybrid_data(3, seed=4, lead=(len(ADVERSARIES),))
    loops = {}
    for steps in (2, 3):  # one compile per step count; hyper-parameters are inputs
        template = Adversary("adamw", steps=steps)
        loops[steps] = jax.jit(
            lambda p, h, b, k, template=template: meta_value_and_grad(
                hybrid, p, b, tamper, adversary=template, key=k, schedule=SCHEDULE, hyperparams=h
            )
        )
    loop = []
    for i, adv in enumerate(ADVERSARIES):
        hp = {k: jnp.float32(v) for k, v in adv.hyperparams().items()}
        b = jax.tree.map(lambda x, i=i, n=adv.steps: x[i, :n], batches)
        loop.append(loops[adv.steps](params, hp, b, jax.random.fold_in(KEY, adv.seed)))
    group = AdversaryGroup(ADVERSARIES)
    vm = jax.jit(  # chunks of 2 (the third adversary padded), summed by a scan: one compile for every check
        lambda p, h: vmap_meta_value_and_grad(
            hybrid,
            p,
            group,
            batches,
            tamper,
            key=KEY,
            schedule=SCHEDULE,
            hyperparams=h,
            chunk_size=2,
        )
    )
    return dict(params=params, batches=batches, tamper=tamper, group=group, loop=loop, vm=vm)


def test_vmapped_group_equals_loop(case):
    loop, hp = case["loop"], case["group"].hyperparams()
    res = case["vm"](case["params"], hp)
    expected = np.mean([_flat(r.grads) for r in loop], axis=0)
    np.testing.assert_allclose(_flat(res.grads), expected, rtol=2e-5, atol=1e-6)
    for i, ref in enumerate(loop):  # per-adversary outputs
        np.testing.assert_allclose(res.value[i], ref.value, rtol=1e-5)
        np.testing.assert_allclose(res.hyper_grads["learning_rate"][i], ref.hyper_grads["learning_rate"], rtol=2e-5)
        np.testing.assert_allclose(res.hyper_grads["weight_decay"][i], ref.hyper_grads["weight_decay"], rtol=2e-5)
        np.testing.assert_allclose(res.aux.attack_losses[i, : ADVERSARIES[i].steps], ref.aux.attack_losses, rtol=1e-5)
        np.testing.assert_allclose(res.aux.tamper_losses[i, : ADVERSARIES[i].steps], ref.aux.tamper_losses, rtol=1e-5)
    assert float(res.aux.attack_losses[1, 2]) == 0.0  # the masked step of the 2-step adversary


@pytest.mark.parametrize("reduce, chunk", [("none", 2), ("sum", None)])
def test_per_adversary_and_summed_gradients_equal_loop(hybrid, case, reduce, chunk):
    """reduce="none" with a chunk size runs `lax.map(batch_size=)`; reduce="sum" the unchunked vmap."""
    group, loop = case["group"], case["loop"]
    res = jax.jit(
        lambda p, h: vmap_meta_value_and_grad(
            hybrid,
            p,
            group,
            case["batches"],
            case["tamper"],
            key=KEY,
            schedule=SCHEDULE,
            hyperparams=h,
            chunk_size=chunk,
            reduce=reduce,
        )  # fmt: skip
    )(case["params"], group.hyperparams())
    if reduce == "none":
        for i, ref in enumerate(loop):
            np.testing.assert_allclose(_flat(jax.tree.map(lambda g, i=i: g[i], res.grads)), _flat(ref.grads),
                                       rtol=2e-5, atol=1e-6)  # fmt: skip
    else:
        expected = np.sum([_flat(r.grads) for r in loop], axis=0)
        np.testing.assert_allclose(_flat(res.grads), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(res.value, [float(r.value) for r in loop], rtol=1e-5)


def test_groups_of_different_kinds_average_like_a_loop(hybrid, case, make_hybrid_data):
    """AdamW and SGD-momentum adversaries: one vmapped computation per group, the mean over all five as a loop."""
    momentum = (Adversary("sgd_momentum", lr=0.05, steps=3, seed=2), Adversary("sgd_momentum", lr=0.1, steps=3))
    _, batches_m, _ = make_hybrid_data(3, seed=9, lead=(len(momentum),))
    groups = group_adversaries(ADVERSARIES + momentum)
    assert [len(g) for g in groups] == [3, 2]
    res = jax.jit(
        lambda p: grouped_meta_value_and_grad(
            hybrid, p, groups, [case["batches"], batches_m], case["tamper"], key=KEY, schedule=SCHEDULE
        )
    )(case["params"])
    single = jax.jit(
        lambda p, h, b, k: meta_value_and_grad(
            hybrid, p, b, case["tamper"], adversary=momentum[0], key=k, schedule=SCHEDULE, hyperparams=h
        )
    )
    loop = [_flat(r.grads) for r in case["loop"]]
    for i, adv in enumerate(momentum):
        hp = {k: jnp.float32(v) for k, v in adv.hyperparams().items()}
        b = jax.tree.map(lambda x, i=i: x[i], batches_m)
        loop.append(_flat(single(case["params"], hp, b, jax.random.fold_in(KEY, adv.seed)).grads))
    assert float(res.finite_count) == 5
    np.testing.assert_allclose(res.groups[0].hyper_grads["learning_rate"],  # per adversary, as in one group's vmap
                               [r.hyper_grads["learning_rate"] for r in case["loop"]], rtol=2e-5)  # fmt: skip
    np.testing.assert_allclose(_flat(res.grads), np.mean(loop, axis=0), rtol=2e-5, atol=1e-6)
    assert abs(np.mean(loop[:3], axis=0) - np.mean(loop, axis=0)).max() > 1e-3  # the second group matters
    with pytest.raises(ValueError, match="batch pytrees"):
        grouped_meta_value_and_grad(hybrid, case["params"], groups, [case["batches"]], case["tamper"], key=KEY,
                                    schedule=SCHEDULE)  # fmt: skip


def test_divergent_adversary_is_left_out(case):
    loop, hp = case["loop"], case["group"].hyperparams()
    bad = case["vm"](case["params"], dict(hp, learning_rate=hp["learning_rate"].at[1].set(1e30)))
    assert bad.aux.is_finite.tolist() == [True, False, True]
    assert np.all(np.asarray(bad.hyper_grads["learning_rate"][1]) == 0.0)
    expected = np.mean([_flat(loop[0].grads), _flat(loop[2].grads)], axis=0)  # a mean over the finite ones only
    np.testing.assert_allclose(_flat(bad.grads), expected, rtol=2e-5, atol=1e-6)


def test_grouping_and_validation():
    advs = [
        Adversary("adamw", lr=1e-5),
        Adversary("sgd_nesterov", lr=1e-5),
        Adversary("adamw", lr=4e-5, steps=16),
        Adversary("adamw", lr=4e-5, schedule=Schedule("warmup_cosine", warmup_steps=4)),
    ]
    groups = group_adversaries(advs)
    assert [len(g) for g in groups] == [2, 1, 1]
    assert groups[0].max_steps == 64 and groups[0].active_steps().tolist() == [64, 16]
    np.testing.assert_allclose(groups[0].weights(SCHEDULE)[1, 16:], 0.0)
    with pytest.raises(ValueError, match="share"):
        AdversaryGroup((advs[0], advs[1]))
    with pytest.raises(ValueError, match="reduce"):
        vmap_meta_value_and_grad(None, None, groups[1], np.zeros((1, 64, 2)), None, key=KEY, schedule=SCHEDULE,
                                 reduce="max")  # fmt: skip
    with pytest.raises(ValueError, match="separate groups"):  # its last T scan steps are no-ops for the 16-step one
        vmap_meta_value_and_grad(None, None, groups[0], np.zeros((2, 64, 2)), None, key=KEY, schedule=SCHEDULE,
                                 estimator=Estimator("truncated", truncation=4))  # fmt: skip
    assert Estimator("tar").differentiates_unroll is False
