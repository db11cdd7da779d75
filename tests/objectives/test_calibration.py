"""Calibrated cross-entropy: optimum vs scipy L-BFGS-B (float64), gradients vs finite differences, solvers agree."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxtar.objectives.calibration import (
    METHODS,
    calibrated_cross_entropy,
    solve_calibration,
)

try:  # multi-threaded BLAS makes tiny L-BFGS-B solves ~20x slower on a busy machine
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = contextlib.nullcontext


# ------------------------------------------------------------------ independent float64 reference (numpy + scipy)
def _np_ce_and_grad(w_flat, z, y, wt):
    c = z.shape[1]
    u = z @ w_flat.reshape(c, c)
    u_max = u.max(axis=1, keepdims=True)
    lse = np.log(np.exp(u - u_max).sum(axis=1)) + u_max[:, 0]
    p = np.exp(u - lse[:, None])
    p[np.arange(len(y)), y] -= 1.0
    wt = wt / wt.sum()
    return float(np.sum(wt * (lse - u[np.arange(len(y)), y]))), (z.T @ (wt[:, None] * p)).ravel()


def _scipy_calibrated(z, y, wt=None, bound=1.0, x0=None, return_x=False):
    z = np.asarray(z, np.float64)
    wt = np.ones(len(y)) if wt is None else np.asarray(wt, np.float64)
    c = z.shape[1]
    with threadpool_limits(1):
        res = scipy.optimize.minimize(
            _np_ce_and_grad,
            np.zeros(c * c) if x0 is None else x0,
            args=(z, np.asarray(y), wt),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-bound, bound)] * (c * c),
            options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 20000, "maxcor": 30},
        )
    return (res.fun, res.x) if return_x else res.fun


def _problems(seed, num, n, c):
    rng = np.random.default_rng(seed)
    scales = rng.choice([0.3, 1.0, 3.0], size=(num, 1, 1))
    z = rng.normal(size=(num, n, c)) * scales + rng.normal(size=(num, 1, c))
    y = rng.integers(0, c, size=(num, n))
    return z.astype(np.float32), y.astype(np.int32)


@functools.cache
def _batched_value():
    return jax.jit(jax.vmap(calibrated_cross_entropy))


@functools.cache
def _method_grads(methods):
    """One compiled function: the value gradient by each method (keeps the number of compilations low)."""

    def grads(z, y):
        return jnp.stack(
            [jax.grad(functools.partial(calibrated_cross_entropy, method=m, num_steps=400))(z, y) for m in methods]
        )

    return jax.jit(grads)


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("c", [2, 3])
def test_optimum_matches_scipy_lbfgsb(c):
    num, n = 6, 16
    z, y = _problems(seed=c, num=num, n=n, c=c)
    weights = np.ones((num, n), np.float32)
    weights[0, ::3] = 0.0  # problem 0 is masked: equivalent to dropping those examples
    got = np.asarray(_batched_value()(jnp.asarray(z), jnp.asarray(y), jnp.asarray(weights)))
    want = np.array([_scipy_calibrated(z[i], y[i], weights[i]) for i in range(num)])
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-5)
    keep = weights[0] > 0
    np.testing.assert_allclose(want[0], _scipy_calibrated(z[0][keep], y[0][keep]), atol=1e-9)
    # Sanity of the problem itself: W = 0 and W = I are feasible, so the optimum is below both.
    plain = np.array(
        [_np_ce_and_grad(np.eye(c).ravel(), z[i].astype(np.float64), y[i], weights[i])[0] for i in range(num)]
    )
    assert np.all(want <= np.log(c) + 1e-9) and np.all(want <= plain + 1e-9)
    assert np.all(want < np.minimum(plain, np.log(c)) - 1e-4)  # calibration actually moves something


@pytest.mark.parametrize(("c", "methods"), [(2, METHODS), (3, ("implicit",))])
def test_value_gradient_matches_float64_finite_differences(c, methods):
    z, y = _problems(seed=10 + c, num=1, n=8, c=c)
    z, y = z[0].astype(np.float64), y[0]
    h = 1e-4
    _, x0 = _scipy_calibrated(z, y, return_x=True)
    fd = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (_scipy_calibrated(zp, y, x0=x0) - _scipy_calibrated(zm, y, x0=x0)) / (2 * h)
    assert np.abs(fd).max() > 1e-2  # a non-trivial gradient
    with jax.enable_x64(True):
        grads = np.asarray(_method_grads(methods)(jnp.asarray(z), jnp.asarray(y)))
    for method, grad in zip(methods, grads, strict=True):
        np.testing.assert_allclose(grad, fd, rtol=0, atol=2e-6, err_msg=method)


def test_implicit_and_unrolled_solution_jacobians_agree():
    """d W* / d logits through a shift-invariant read-out (W* is unique only up to W + a 1^T).

    The C = 3 problem has coordinates pinned to the box and a fully free row, so both the masked linear solve
    and the singular (shift-invariant) directions are exercised.
    """
    c, seed = 3, 14
    rng = np.random.default_rng(seed)
    z, y = _problems(seed=seed, num=1, n=12, c=c)
    z_new, r = rng.normal(size=(5, c)), rng.normal(size=(5, c))
    with jax.enable_x64(True):

        @jax.jit
        def grads(logits, labels):
            def readout(lg, method):
                remap = solve_calibration(lg, labels, method=method, num_steps=1500)
                return jnp.sum(r * jax.nn.log_softmax(z_new @ remap)), remap

            g_imp, remap = jax.grad(readout, has_aux=True)(logits, "implicit")
            return remap, g_imp, jax.grad(readout, has_aux=True)(logits, "unrolled")[0]

        remap, g_imp, g_unr = map(np.asarray, grads(jnp.asarray(z[0], jnp.float64) * 2.0, jnp.asarray(y[0])))
    assert np.abs(g_imp).max() > 1e-2
    np.testing.assert_allclose(g_imp, g_unr, rtol=1e-6, atol=1e-8)
    pinned = np.isclose(np.abs(remap), 1.0, atol=1e-9)
    assert pinned.sum() >= 2 and (~pinned).all(axis=1).any()  # pinned coordinates and a fully free row


def test_confidently_wrong_attacker_is_caught():
    """A label-flipping attacker has huge plain CE (negated CE would reward the defence) but ~0 calibrated CE."""
    y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])
    onehot = np.eye(2)[np.asarray(y)]
    flipped = 6.0 * (1.0 - 2.0 * onehot)  # confidently predicts the other label
    chance = np.zeros((8, 2))

    @jax.jit
    def calibrated(z):
        return jax.value_and_grad(calibrated_cross_entropy)(z, y), solve_calibration(z, y)

    (calib_flip, grad_flip), remap_flip = calibrated(jnp.asarray(flipped, jnp.float32))
    (calib_chance, _), _ = calibrated(jnp.asarray(chance, jnp.float32))
    plain_flip = _np_ce_and_grad(np.eye(2).ravel(), flipped, np.asarray(y), np.ones(8))[0]
    plain_chance = _np_ce_and_grad(np.eye(2).ravel(), chance, np.asarray(y), np.ones(8))[0]
    # Plain negated CE: the defence loss -CE is *lower* (better) for the flipped attacker than for chance.
    assert plain_flip > 11.0 and -plain_flip < -plain_chance
    # Calibrated: the flipped attacker is recognised as fully informed (W flips it back) ...
    assert float(calib_flip) < 1e-4
    np.testing.assert_allclose(float(calib_chance), np.log(2.0), rtol=1e-6)
    # ... so the calibrated defence loss prefers the chance-level attacker by a wide margin.
    assert -float(calib_chance) < -float(calib_flip) - 0.6
    remap = np.asarray(remap_flip)
    assert remap[0, 1] > remap[0, 0] and remap[1, 0] > remap[1, 1]  # W is a flip
    assert np.all(np.argmax(flipped @ remap, axis=1) == np.asarray(y))
    assert np.all(np.isfinite(np.asarray(grad_flip)))


def test_rejects_bad_arguments():
    z, y = jnp.zeros((4, 2)), jnp.zeros((4,), jnp.int32)
    with pytest.raises(ValueError, match="method must be one of"):
        calibrated_cross_entropy(z, y, method="newton")
    with pytest.raises(ValueError, match="labels must be"):
        calibrated_cross_entropy(z, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="labels must be integers"):
        calibrated_cross_entropy(z, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="num_steps"):
        calibrated_cross_entropy(z, y, num_steps=0)
    with pytest.raises(ValueError, match="bound"):
        calibrated_cross_entropy(z, y, bound=-1.0)
