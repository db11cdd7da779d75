"""The public meta-gradient API without its old friction: losses of (params, batch) or (params, batch, lora), the
adversary given once, batches of the wrong length refused, zeroed non-finite meta-gradients counted and warned
about in eager use, a jitted front door, and the README's "Python tour of the primitive" run as written."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks import Adversary, LoraSpec, Schedule, full_parameter_problem, model_attack_problem, unroll
from jaxtar.meta import (
    AdversaryGroup,
    TamperSchedule,
    group_adversaries,
    grouped_meta_value_and_grad,
    jit_meta_value_and_grad,
    meta_value_and_grad,
    vmap_meta_value_and_grad,
)

KEY = jax.random.key(0)
ADV = Adversary("sgd_momentum", lr=0.2, momentum=0.5, steps=3)
SCHEDULE = TamperSchedule(every=1, weighting="uniform")


def _attack2(w, b):
    return jnp.sum((w - b) ** 2 * (1.0 + 0.1 * w))


def _tamper2(w, b):
    return jnp.sum(jnp.sin(w) * b)


def _data():
    w0 = jnp.asarray([0.3, -0.2, 0.5])
    batches = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)), jnp.float32)
    return w0, batches, jnp.asarray([1.0, 2.0, -1.0])


def test_two_and_three_argument_losses_give_the_same_attack_and_meta_gradient():
    """(params, batch) losses, (params, batch, lora) losses and `lora=None` defaults build the same problem: equal
    attacked weights and meta-gradients (and non-zero ones, so equality means something)."""
    w0, batches, tamper = _data()
    three = model_attack_problem(ADV, lambda p, b, lora: _attack2(p, b), lambda p, b, lora: _tamper2(p, b))
    two = model_attack_problem(ADV, _attack2, _tamper2)
    default = model_attack_problem(ADV, lambda p, b, lora=None: _attack2(p, b), lambda p, b, *rest: _tamper2(p, b))
    results = [
        meta_value_and_grad(prob, w0, batches, tamper, adversary=ADV, key=KEY, schedule=SCHEDULE)
        for prob in (three, two, default)
    ]
    attacked = [unroll(prob, w0, ADV, batches, key=KEY).trainable for prob in (three, two, default)]
    assert float(jnp.max(jnp.abs(attacked[0] - w0))) > 0.05
    assert float(jnp.linalg.norm(results[0].grads)) > 0.1
    for res, weights in zip(results[1:], attacked[1:]):
        np.testing.assert_array_equal(weights, attacked[0])
        np.testing.assert_array_equal(res.grads, results[0].grads)
        assert float(res.value) == float(results[0].value)


@pytest.mark.parametrize(
    "loss, match",
    [(lambda p: 0.0, r"\(p\)"), (lambda p, b, lora, extra: 0.0, r"\(p, b, lora, extra\)"),
     (lambda p, b, *, scale: 0.0, r"keyword-only \['scale'\]"), ("not a function", "must be callable")],
    ids=["one-arg", "four-args", "required-keyword", "not-callable"],
)  # fmt: skip
def test_other_loss_signatures_are_refused_at_the_boundary(loss, match):
    with pytest.raises(TypeError, match=match):
        model_attack_problem(ADV, loss)
    with pytest.raises(TypeError, match="tamper_loss must take"):
        model_attack_problem(ADV, _attack2, lambda p: 0.0)


def test_a_lora_adversary_refuses_two_argument_losses():
    lora_adv = Adversary("adamw", lr=1e-3, steps=2, lora=LoraSpec(rank=2))
    with pytest.raises(TypeError, match=r"tamper_loss must take \(params, batch, lora\)"):
        model_attack_problem(lora_adv, lambda p, b, lora: 0.0, _tamper2)
    with pytest.raises(TypeError, match="attack_loss, tamper_loss must take"):
        model_attack_problem(lora_adv, _attack2, _tamper2)


def test_the_adversary_is_given_once():
    """The problem remembers its adversary: unroll and the jitted front door need no second copy and give the same
    numbers as the explicit calls; an explicit adversary of another structure, or none at all, is refused."""
    w0, batches, tamper = _data()
    prob = model_attack_problem(ADV, _attack2, _tamper2)
    assert prob.adversary is ADV
    np.testing.assert_array_equal(
        unroll(prob, w0, batches=batches, key=KEY).trainable, unroll(prob, w0, ADV, batches, key=KEY).trainable
    )
    step = jit_meta_value_and_grad(prob, schedule=SCHEDULE)
    res, ref = step(w0, batches, tamper, KEY), meta_value_and_grad(prob, w0, batches, tamper, adversary=ADV, key=KEY,
                                                                  schedule=SCHEDULE)  # fmt: skip
    np.testing.assert_allclose(res.grads, ref.grads, rtol=1e-6)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-6)
    assert res.hyper_grads is None and bool(res.aux.is_finite)
    hp = {k: jnp.asarray(v) for k, v in ADV.hyperparams().items()}
    with_hp = step(w0, batches, tamper, KEY, hp)  # hyper-gradients through the same front door
    assert abs(float(with_hp.hyper_grads["learning_rate"])) > 1e-3
    np.testing.assert_allclose(with_hp.grads, ref.grads, rtol=1e-6)

    with pytest.raises(TypeError, match="third argument is the adversary"):
        unroll(prob, w0, batches, key=KEY)
    with pytest.raises(TypeError, match="no adversary"):
        jit_meta_value_and_grad(full_parameter_problem(_attack2, _tamper2))
    lora_adv = Adversary("sgd", lr=0.1, steps=3, lora=LoraSpec(rank=2))
    with pytest.raises(ValueError, match="built for an attack with lora=None"):
        unroll(prob, w0, lora_adv, batches, key=KEY)
    with pytest.raises(ValueError, match="LoRA adversary"):
        full_parameter_problem(_attack2, adversary=lora_adv)


def test_batches_of_another_length_than_adversary_steps_are_refused():
    """A warmup schedule makes the step count matter: 4 batches for a 3-step adversary used to run a 4-step
    schedule silently; now every front door says so. `unroll` still runs a prefix (2 of 3 steps)."""
    w0, batches, tamper = _data()
    adv = Adversary("sgd", lr=0.2, steps=3, schedule=Schedule("linear_warmup", warmup_steps=2))
    prob = model_attack_problem(adv, _attack2, _tamper2)
    four = jnp.concatenate([batches, batches[:1]])
    for run in (
        lambda b: meta_value_and_grad(prob, w0, b, tamper, adversary=adv, key=KEY),
        lambda b: jit_meta_value_and_grad(prob)(w0, b, tamper, KEY),
        lambda b: unroll(prob, w0, batches=b, key=KEY),
    ):
        with pytest.raises(ValueError, match=r"have 4 steps \(their leading axis\) but the adversary runs steps=3"):
            run(four)
    with pytest.raises(ValueError, match=r"have 2 steps .* steps=3"):
        meta_value_and_grad(prob, w0, batches[:2], tamper, adversary=adv, key=KEY)
    prefix = unroll(prob, w0, batches=batches[:2], key=KEY).trainable  # steps at lr 0 then 0.1 (warmup of 2)
    w1 = w0 - 0.0 * jax.grad(_attack2)(w0, batches[0])
    np.testing.assert_allclose(prefix, w1 - 0.1 * jax.grad(_attack2)(w1, batches[1]), rtol=1e-6)


def _diverging_case():
    """Three adversaries on one vmapped group; the second one's batches hold a NaN, so its meta-gradient is NaN."""
    w0, batches, tamper = _data()
    advs = (Adversary("sgd", lr=0.1, steps=3), Adversary("sgd", lr=0.2, steps=3), Adversary("sgd", lr=0.3, steps=3))
    stacked = jnp.stack([batches, batches.at[1, 0].set(jnp.nan), batches])
    return full_parameter_problem(_attack2, _tamper2), w0, advs, stacked, tamper


def test_zeroed_meta_gradients_are_counted_and_warned_about_in_eager_use():
    prob, w0, advs, stacked, tamper = _diverging_case()
    group = AdversaryGroup(advs)
    call = functools.partial(vmap_meta_value_and_grad, prob, w0, group, stacked, tamper, key=KEY, schedule=SCHEDULE)
    with pytest.warns(RuntimeWarning, match=r"vmap_meta_value_and_grad: 1 of 3 meta-gradients were non-finite"):
        res = call(reduce="none")
    assert res.aux.is_finite.tolist() == [True, False, True]
    assert float(jnp.sum(~res.aux.is_finite)) == 1
    assert np.all(np.asarray(res.grads[1]) == 0.0) and np.all(np.isfinite(res.grads))
    assert float(jnp.min(jnp.abs(res.grads[0]))) > 0.0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "keep" says nothing and hides nothing
        kept = call(reduce="none", on_nonfinite="keep")
        traced = jax.jit(lambda w: call(reduce="mean"))(w0)  # inside jit: silent, the count is in aux
    assert np.isnan(kept.grads[1]).any() and kept.aux.is_finite.tolist() == [True, False, True]
    np.testing.assert_allclose(traced.grads, (res.grads[0] + res.grads[2]) / 2, rtol=1e-6)

    with pytest.warns(RuntimeWarning, match=r"grouped_meta_value_and_grad: 1 of 4 meta-gradients"):
        grouped = grouped_meta_value_and_grad(
            prob, w0, group_adversaries(advs + (Adversary("adam", lr=0.1, steps=3),)),
            [stacked, stacked[:1]], tamper, key=KEY, schedule=SCHEDULE,
        )  # fmt: skip
    assert int(grouped.nonfinite_count) == 1 and float(grouped.finite_count) == 3


def test_the_jitted_front_door_warns_when_it_zeroes():
    prob, w0, advs, stacked, tamper = _diverging_case()
    step = jit_meta_value_and_grad(prob, adversary=advs[1], schedule=SCHEDULE)
    with pytest.warns(RuntimeWarning, match=r"jit_meta_value_and_grad: 1 of 1 meta-gradients .* zeros"):
        res = step(w0, stacked[1], tamper, KEY)
    assert not bool(res.aux.is_finite) and np.asarray(res.grads).tolist() == [0.0, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = step(w0, stacked[0], tamper, KEY)
    assert bool(ok.aux.is_finite) and float(jnp.linalg.norm(ok.grads)) > 0.1


def _readme_tour() -> str:
    """The README's "The primitive in Python" code block, verbatim."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The primitive in Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_python_tour_of_the_primitive():
    """The README snippet, executed verbatim, then checked against plain `jax.grad` through `unroll`."""
    tour: dict = {}
    exec(_readme_tour(), tour)  # noqa: S102 - our own README's example
    out, problem, tamper, ids, params = (tour[k] for k in ("out", "problem", "tamper", "ids", "params"))

    weights = TamperSchedule(every=2).weights(4)  # exp(0.0625 (j - 4)) at j = 2, 4
    assert weights.round(4).tolist() == [0.8825, 1.0]
    assert bool(out.aux.is_finite) and out.aux.tamper_losses.shape == (2,)
    # the attack moves the weights: the tamper loss after step 4 is not the one after step 2 (f32 noise ~1e-6)
    assert abs(float(out.aux.tamper_losses[1] - out.aux.tamper_losses[0])) > 1e-4

    # checked by forward mode through a plain `unroll`: its value, and its derivative along the gradient's own
    # direction, which must be the gradient's norm (central differences cannot check this: Adam's update is
    # g / (|g| + eps), so tiny gradient entries make the attack far too curved for them in float32)
    record = lambda defended, w: tamper(w, ids[-1])
    by_hand = lambda p: jnp.dot(weights, unroll(problem, p, batches=ids, key=KEY, record_at=(2, 4),
                                                record_fn=record).records)  # fmt: skip
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(out.grads)))
    direction = jax.tree.map(lambda g: g / norm, out.grads)
    value, slope = jax.jit(lambda p, d: jax.jvp(by_hand, (p,), (d,)))(params, direction)
    np.testing.assert_allclose(float(out.value), float(value), rtol=1e-5)
    assert float(norm) > 0.05
    np.testing.assert_allclose(float(slope), float(norm), rtol=1e-4)


def test_plain_meta_value_and_grad_takes_the_problems_adversary_and_warns_when_it_zeroes():
    import warnings

    import jax
    import jax.numpy as jnp

    from jaxtar.attacks import Adversary
    from jaxtar.attacks.unroll import full_parameter_problem
    from jaxtar.meta import meta_value_and_grad

    adv = Adversary("sgd", lr=0.25, steps=1)
    prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b), adversary=adv)
    res = meta_value_and_grad(prob, jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(2), key=jax.random.key(0))
    assert res.grads.tolist() == [0.5, 0.5]  # w1 = w0 - 0.5 (w0 - 1): d sum(w1) / d w0 = 0.5
    bad = full_parameter_problem(
        lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(jnp.sqrt(w - b)), adversary=adv
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = meta_value_and_grad(bad, jnp.zeros(2), jnp.ones((1, 2)), jnp.full(2, 2.0), key=jax.random.key(0))
    assert res.grads.tolist() == [0.0, 0.0] and not bool(res.aux.is_finite)
    assert any("meta_value_and_grad" in str(w.message) and "non-finite" in str(w.message) for w in caught)
