"""The six estimators against finite differences, against each other, and against their definitions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks.adversary import Adversary
from jaxtar.attacks.optimizers import make_optimizer
from jaxtar.attacks.unroll import unroll
from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad

K = 5
KEY = jax.random.key(3)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


ESTIMATORS = {
    "exact": Estimator("exact"),
    "remat": Estimator("remat"),
    "remat_grad": Estimator("remat", remat_policy="attack_grad_saveable"),
    "sqrt": Estimator("remat", two_level=True),
    "mixed": Estimator("mixed"),
    "trunc_2": Estimator("truncated", truncation=2),
    "first_order": Estimator("first_order"),
    "tar": Estimator("tar"),
}
# MLAC-like records at k = 0..K (exercises the initial record and, with K = 5, a sqrt(K) grouping with a remainder)
SCHEDULE = TamperSchedule(every=1, include_initial=True, weighting="exponential", rate=0.3)


def _meta_fn(problem, batches, tamper, adv, est, sched):
    return jax.jit(
        lambda p, h: meta_value_and_grad(
            problem, p, batches, tamper, adversary=adv, key=KEY, schedule=sched, estimator=est, hyperparams=h
        )
    )


def _fd_check(f, params, hp, res, seed=0, h=1e-6, rtol=2e-6):
    """Central differences of the value along random directions in (params, hyper-parameters)."""
    rng = np.random.default_rng(seed)
    for _ in range(2):
        v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params)
        u = {k: jnp.asarray(abs(float(val)) * rng.normal()) for k, val in hp.items()}
        shift = lambda s, v=v, u=u: (jax.tree.map(lambda x, d: x + s * d, params, v), {k: hp[k] + s * u[k] for k in hp})
        fd = (f(*shift(h)).value - f(*shift(-h)).value) / (2 * h)
        analytic = _flat(res.grads) @ _flat(v) + _flat(res.hyper_grads) @ _flat(u)
        np.testing.assert_allclose(analytic, fd, rtol=rtol)


@pytest.fixture(scope="module")
def case(hybrid, make_hybrid_data):
    """Every estimator in float64 on one problem: Adam with L2 weight decay, K = 5."""
    with jax.enable_x64(True):
        params, batches, tamper = make_hybrid_data(K, dtype=jnp.float64)
        adv = Adversary("adam", lr=0.05, weight_decay=0.01, steps=K)
        hp = {k: jnp.asarray(v, jnp.float64) for k, v in adv.hyperparams().items()}
        fns = {name: _meta_fn(hybrid, batches, tamper, adv, est, SCHEDULE) for name, est in ESTIMATORS.items()}
        results = {name: f(params, hp) for name, f in fns.items()}
        yield dict(params=params, batches=batches, tamper=tamper, adv=adv, hp=hp, fns=fns, results=results)


def test_exact_matches_float64_finite_differences_adam(case):
    with jax.enable_x64(True):
        _fd_check(case["fns"]["exact"], case["params"], case["hp"], case["results"]["exact"])


@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum"])
def test_exact_matches_float64_finite_differences(hybrid, make_hybrid_data, kind):
    with jax.enable_x64(True):
        params, batches, tamper = make_hybrid_data(4, seed=2, dtype=jnp.float64)
        adv = Adversary(kind, lr=0.05, weight_decay=0.01, clip_norm=0.5 if kind == "sgd" else None, steps=4)
        hp = {k: jnp.asarray(v, jnp.float64) for k, v in adv.hyperparams().items()}
        f = _meta_fn(hybrid, batches, tamper, adv, Estimator("exact"), TamperSchedule.tar(every=2, rate=0.5))
        res = f(params, hp)
        assert bool(res.aux.is_finite)
        _fd_check(f, params, hp, res, seed=1)
        if kind == "sgd":  # a diverging attack: flagged, gradients zeroed, never NaN in the caller's update
            bad = f(params, dict(hp, learning_rate=jnp.float64(1e300)))
            assert not bool(bad.aux.is_finite) and not np.isfinite(float(bad.value))
            assert np.all(_flat(bad.grads) == 0.0) and np.all(_flat(bad.hyper_grads) == 0.0)


@pytest.mark.parametrize("name", ["remat", "remat_grad", "sqrt", "mixed"])
def test_exact_variants_equal_exact(case, name, assert_same_meta_result):
    assert_same_meta_result(case["results"][name], case["results"]["exact"], rtol=1e-5)


def test_two_level_with_multi_step_segments_equals_exact(hybrid, case):
    """Records every 2 steps: two-level remat checkpoints groups of one 2-step segment (the last step stays
    ungrouped), and the gradient is still exact's."""
    from jaxtar.attacks.unroll import grouping, plan_runs, two_level_group

    runs = plan_runs(0, K, 2)
    assert [grouping(r, two_level_group(runs, K)) for r in runs] == [1, 0]
    with jax.enable_x64(True):
        sched = TamperSchedule.tar(every=2, rate=0.5)
        ref, res = (
            _meta_fn(hybrid, case["batches"], case["tamper"], case["adv"], est, sched)(case["params"], case["hp"])
            for est in (Estimator("exact"), Estimator("remat", two_level=True))
        )
        np.testing.assert_allclose(res.value, ref.value, rtol=1e-12)
        assert _rel(res.grads, ref.grads) < 1e-5 and _rel(res.hyper_grads, ref.hyper_grads) < 1e-5


def test_truncation_limits_are_exact_and_first_order(hybrid, case):
    """truncated(T >= K) is the exact program and truncated(0) the first-order one (identical jaxprs)."""
    with jax.enable_x64(True):

        def jaxpr(est):
            return str(
                jax.make_jaxpr(
                    lambda p, h: meta_value_and_grad(
                        hybrid,
                        p,
                        case["batches"],
                        case["tamper"],
                        adversary=case["adv"],
                        key=KEY,
                        schedule=SCHEDULE,
                        estimator=est,
                        hyperparams=h,
                    )
                )(case["params"], case["hp"])
            )

        assert jaxpr(Estimator("truncated", truncation=K)) == jaxpr(Estimator("exact"))
        assert jaxpr(Estimator("truncated", truncation=K + 3)) == jaxpr(Estimator("exact"))
        assert jaxpr(Estimator("truncated", truncation=0)) == jaxpr(Estimator("first_order"))


def test_first_order_is_tamper_gradient_at_adapted_params(hybrid, case):
    """first_order = sum_j w_j grad tamper(adapted_j), pulled straight through to the defended params."""
    results = case["results"]
    with jax.enable_x64(True):
        params = case["params"]
        grads_at = lambda d, t: jax.grad(hybrid.tamper_loss, argnums=(0, 1))(d, t, case["tamper"])
        recs = jax.jit(
            lambda p: (
                unroll(
                    hybrid,
                    p,
                    case["adv"],
                    case["batches"],
                    key=KEY,
                    record_every=1,
                    include_initial=True,
                    record_fn=grads_at,
                ).records
            )  # fmt: skip
        )(params)
        w = SCHEDULE.weights(K)
        gd, gt = jax.tree.map(lambda x: jnp.tensordot(jnp.asarray(w, x.dtype), x, axes=1), recs)
        expected = dict(gd, w1=gd["w1"] + gt["w1"])  # the attack's w1 starts at the defended w1
    fo, tar = results["first_order"], results["tar"]
    assert _rel(fo.grads, expected) < 1e-10
    assert _rel(tar.grads, expected) < 1e-10
    np.testing.assert_allclose(tar.value, results["exact"].value, rtol=1e-12)
    assert float(jnp.abs(fo.hyper_grads["learning_rate"])) == 0.0
    # first order is a different estimator; truncation to 2 steps is neither of the two
    assert _rel(fo.grads, results["exact"].grads) > 1e-2
    assert min(_rel(results["trunc_2"].grads, r.grads) for r in (fo, results["exact"])) > 1e-3


def test_truncated_equals_its_definition(hybrid, case):
    """truncated(T): records up to step K - T pass their gradient straight to the attack's start; the last T steps
    are differentiated exactly from there, with the optimiser state at K - T a constant (a Python loop, float64)."""
    T, split = 2, K - 2
    with jax.enable_x64(True):
        params, (xs, ys), tamper, adv, hp = (case[k] for k in ("params", "batches", "tamper", "adv", "hp"))
        opt = make_optimizer(adv, K)
        w = SCHEDULE.weights(K)  # records j = 0..K
        tamper_grads = jax.grad(hybrid.tamper_loss, argnums=(0, 1))
        attack_grad = jax.grad(hybrid.attack_loss, argnums=1)
        t0, init_vjp = jax.vjp(lambda d: hybrid.attack_init(d, KEY), params)
        t, s = t0, opt.init(t0, hp)
        gd_head, gt_head = tamper_grads(params, t, tamper)
        gd_head, gt_head = (jax.tree.map(lambda g: w[0] * g, g) for g in (gd_head, gt_head))
        for k in range(split):
            t, s = opt.step(attack_grad(params, t, (xs[k], ys[k])), s, t, k, hp)
            gd, gt = tamper_grads(params, t, tamper)
            gd_head = jax.tree.map(lambda a, g, k=k: a + w[k + 1] * g, gd_head, gd)
            gt_head = jax.tree.map(lambda a, g, k=k: a + w[k + 1] * g, gt_head, gt)

        def tail(d, t):
            value, state = 0.0, s
            for k in range(split, K):
                t, state = opt.step(attack_grad(d, t, (xs[k], ys[k])), state, t, k, hp)
                value = value + w[k + 1] * hybrid.tamper_loss(d, t, tamper)
            return value

        gd_tail, gt_tail = jax.grad(tail, argnums=(0, 1))(params, t)
        (g_start,) = init_vjp(jax.tree.map(jnp.add, gt_head, gt_tail))
        expected = jax.tree.map(lambda a, b, c: a + b + c, gd_head, gd_tail, g_start)
    assert Estimator("truncated", truncation=T) == ESTIMATORS["trunc_2"]
    assert _rel(case["results"]["trunc_2"].grads, expected) < 1e-10


def test_aux_and_zero_gradients_are_finite(case):
    # feature 0 of every attack batch is 0: exact-zero gradient entries through Adam (eps_root > 0) stay finite
    results = case["results"]
    for res in results.values():
        assert bool(res.aux.is_finite)
        assert np.isfinite(_flat(res.grads)).all()
    aux = results["exact"].aux
    assert aux.attack_losses.shape == (K,) and aux.tamper_losses.shape == (K + 1,)
    np.testing.assert_allclose(aux.tamper_losses, results["tar"].aux.tamper_losses, rtol=1e-12)
    np.testing.assert_allclose(aux.attack_losses, results["mixed"].aux.attack_losses, rtol=1e-12)


def test_validation_messages(hybrid):
    params, batches, tamper = {"w": np.zeros(2)}, np.zeros((2, 3)), np.zeros(3)
    no_root = Adversary("adamw", eps_root=0.0, steps=2)
    with pytest.raises(ValueError, match="eps_root"):
        meta_value_and_grad(hybrid, params, batches, tamper, adversary=no_root, key=KEY)
    with pytest.raises(ValueError, match="tamper_loss"):
        meta_value_and_grad(dataclasses.replace(hybrid, tamper_loss=None), params, batches, tamper, adversary=no_root,
                            key=KEY, estimator=Estimator("tar"))  # fmt: skip
    with pytest.raises(ValueError, match="truncation"):
        Estimator("truncated")
    with pytest.raises(ValueError, match="two_level"):
        Estimator("exact", two_level=True)
    with pytest.raises(ValueError, match="kind"):
        Estimator("reverse")
    with pytest.raises(ValueError, match="weighting"):
        TamperSchedule(weighting="linear")


def test_tamper_schedule_weights():
    tar = TamperSchedule.tar(every=4, rate=0.0625)
    w = tar.weights(64)
    k = np.arange(3, 64, 4)  # 0-based step index after which TAR records
    np.testing.assert_allclose(w, np.exp(0.0625 * (k - 63)), rtol=1e-6)
    np.testing.assert_allclose(4.0 * w.sum(), 17.75, atol=0.01)  # docs/methods.md#tar-hyper-parameters, lambda_TR = 4
    np.testing.assert_allclose(TamperSchedule.mlac().weights(16), np.full(17, 1 / 17), rtol=1e-6)
    # an 8-step adversary inside a 12-step vmapped loop: weights relative to its own length, zero afterwards
    np.testing.assert_allclose(tar.weights(8, 12), [np.exp(-0.25), 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(TamperSchedule(every=2, weighting="final").weights(5, 8), [0, 1, 0, 0])
