"""MLAC's calibrated cross-entropy: the attacker's loss after the best box-constrained re-map of its logits.

A defence that maximises the attacker's plain cross-entropy is fooled by an attacker that is *confidently wrong*
(it predicts the flipped label): its CE is huge, yet its logits carry all the harmful information. MLAC
(Henderson et al. 2023) scores the attacker after the best linear re-map of its logits instead::

    calibrated_ce(Z, y) = min over W in [-b, b]^{C x C} of CE(Z @ W, y)        (b = 1 in the paper)

The problem is convex in W (CE of a linear map) and tiny (C x C). It is solved by accelerated projected
gradient descent (FISTA with adaptive restart) from W = 0 with step 1 / L, where L = ||Z^T Z|| / (2 N) bounds
the Hessian because softmax curvature is at most 1/2. Starting from W = 0 (all logits equal) means the
calibrated CE never exceeds log C, the loss of an attacker with no information.

Three ways to differentiate, all pure JAX:

- ``"unrolled"``: back-propagate through every solver step (also supports forward mode).
- ``"implicit"``: a ``jax.custom_vjp`` on the solution W*: implicit differentiation of the projected-gradient
  fixed point ``W = clip(W - eta * grad_W CE, -b, b)``; the linear system on the coordinates that are not pinned
  to the box is solved with a Hermitian pseudo-inverse of the (tiny) Hessian. Reverse mode only.
- ``"envelope"``: stop the gradient at W*; by Danskin's theorem the gradient of the *optimal value* is the
  partial gradient at W*, so this is exact for the value and the cheapest (W* itself gets no gradient).

Weights (an optional per-example mask) are treated as constants by every method.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

METHODS: tuple[str, ...] = ("implicit", "unrolled", "envelope")


def remapped_cross_entropy(remap_cc: Array, logits_nc: Array, labels_n: Array, weights_n: Array | None = None) -> Array:
    """Weighted mean cross-entropy of the re-mapped logits ``logits_nc @ remap_cc``.

    Args:
      remap_cc: the re-map W, [C, C].
      logits_nc: attacker logits Z, [N, C].
      labels_n: integer labels in [0, C), [N].
      weights_n: optional non-negative example weights (e.g. a padding mask), [N]; default all ones.

    Returns:
      A scalar: sum_i w_i CE((Z W)_i, y_i) / sum_i w_i.

    Example:
      >>> z = jnp.array([[2.0, -2.0]]); y = jnp.array([1])
      >>> flip = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> bool(remapped_cross_entropy(flip, z, y) < remapped_cross_entropy(jnp.eye(2), z, y))
      True
    """
    u_nc = logits_nc @ remap_cc
    nll_n = jax.nn.logsumexp(u_nc, axis=-1) - jnp.take_along_axis(u_nc, labels_n[:, None], axis=-1)[:, 0]
    w_n = _unit_weights(weights_n, logits_nc)
    return jnp.sum(w_n * nll_n)


def solve_calibration(
    logits_nc: Array,
    labels_n: Array,
    weights_n: Array | None = None,
    *,
    method: str = "implicit",
    num_steps: int = 200,
    bound: float = 1.0,
) -> Array:
    """The optimal re-map W* = argmin over W in [-bound, bound]^{C x C} of CE(logits @ W, labels).

    Args:
      logits_nc: attacker logits, [N, C].
      labels_n: integer labels, [N].
      weights_n: optional example weights, [N] (constants for differentiation).
      method: ``"implicit"`` (custom VJP of the fixed point), ``"unrolled"`` (through the solver steps) or
        ``"envelope"`` (W* without gradient).
      num_steps: accelerated projected-gradient iterations (100 reach float32 precision for C = 2 unless the
        data are nearly separable).
      bound: half-width b of the box.

    Returns:
      W*, [C, C], float32 (float64 for float64 logits).

    Example:
      >>> z = jnp.array([[3.0, -3.0], [-3.0, 3.0]]); y = jnp.array([1, 0])   # confidently wrong
      >>> w = solve_calibration(z, y)
      >>> bool(w[0, 1] > w[0, 0] and w[1, 0] > w[1, 1])   # the re-map flips the prediction back
      True
    """
    logits_nc, labels_n = jnp.asarray(logits_nc), jnp.asarray(labels_n)
    _check(logits_nc, labels_n, weights_n, method, num_steps, bound)
    logits_nc = logits_nc.astype(jnp.promote_types(logits_nc.dtype, jnp.float32))  # bf16 logits: solve in f32
    if method == "unrolled":
        return _solve(logits_nc, labels_n, weights_n, num_steps, bound)
    if method == "envelope":
        return lax.stop_gradient(_solve(logits_nc, labels_n, weights_n, num_steps, bound))
    return _solve_implicit(logits_nc, labels_n, _unit_weights(weights_n, logits_nc), num_steps, bound)


def calibrated_cross_entropy(
    logits_nc: Array,
    labels_n: Array,
    weights_n: Array | None = None,
    *,
    method: str = "implicit",
    num_steps: int = 200,
    bound: float = 1.0,
) -> Array:
    """MLAC's calibrated CE: min over W in [-bound, bound]^{C x C} of CE(logits @ W, labels), differentiably.

    Always <= log C (W = 0) and <= the plain CE (W = I, for bound >= 1). A confidently wrong attacker gets a
    *low* value (W flips it back), so a defence maximising this value must really remove the information.

    Args:
      logits_nc: attacker logits, [N, C].
      labels_n: integer labels, [N].
      weights_n: optional example weights, [N] (constants for differentiation).
      method: ``"implicit"``, ``"unrolled"`` or ``"envelope"``; all give the same value and, at convergence,
        the same gradient with respect to the logits.
      num_steps: solver iterations.
      bound: half-width of the box (1.0 in MLAC).

    Returns:
      The scalar calibrated cross-entropy.

    Example:
      >>> z = jnp.array([[4.0, -4.0], [-4.0, 4.0]]); y = jnp.array([1, 0])
      >>> bool(calibrated_cross_entropy(z, y) < 0.01)   # plain CE would be about 8
      True
      >>> g = jax.grad(calibrated_cross_entropy)(z, y)   # [2, 2] gradient for the outer loss
    """
    remap_cc = solve_calibration(logits_nc, labels_n, weights_n, method=method, num_steps=num_steps, bound=bound)
    logits_nc = jnp.asarray(logits_nc)
    logits_nc = logits_nc.astype(jnp.promote_types(logits_nc.dtype, jnp.float32))
    return remapped_cross_entropy(remap_cc, logits_nc, jnp.asarray(labels_n), weights_n)


# ----------------------------------------------------------------------------------------------- private


def _check(logits: Array, labels: Array, weights: Array | None, method: str, num_steps: int, bound: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not (isinstance(bound, int | float) and 0.0 < bound < float("inf")):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [N] = {logits.shape[:1]}, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if weights is not None and weights.shape != logits.shape[:1]:
        raise ValueError(f"weights must be [N] = {logits.shape[:1]}, got shape {weights.shape}")


def _unit_weights(weights_n: Array | None, logits_nc: Array) -> Array:
    """Weights normalised to sum to one (uniform when None); treated as constants."""
    if weights_n is None:
        n = logits_nc.shape[0]
        return jnp.full((n,), 1.0 / n, logits_nc.dtype)
    w_n = lax.stop_gradient(weights_n.astype(logits_nc.dtype))
    return w_n / jnp.maximum(jnp.sum(w_n), jnp.finfo(logits_nc.dtype).tiny)


def _step_size(logits_nc: Array, w_n: Array) -> Array:
    """1 / L, L = ||sum_i w_i z_i z_i^T|| / 2 >= a Lipschitz constant of grad_W CE (treated as a constant).

    The norm is min(Frobenius, max row sum), both upper bounds of lambda_max for a PSD matrix (no eigh: it is
    slow to compile and this only sets the step).
    """
    z = lax.stop_gradient(logits_nc)
    gram_cc = (z * w_n[:, None]).T @ z
    norm = jnp.minimum(jnp.sqrt(jnp.sum(gram_cc * gram_cc)), jnp.max(jnp.sum(jnp.abs(gram_cc), axis=1)))
    return 1.0 / jnp.maximum(0.5 * norm, 1e-12)


def _grad_remap(remap_cc: Array, logits_nc: Array, labels_n: Array, w_n: Array) -> Array:
    """grad_W of remapped_cross_entropy: Z^T diag(w) (softmax(Z W) - onehot(y))."""
    p_nc = jax.nn.softmax(logits_nc @ remap_cc, axis=-1)
    resid_nc = p_nc - jax.nn.one_hot(labels_n, p_nc.shape[-1], dtype=p_nc.dtype)
    return logits_nc.T @ (w_n[:, None] * resid_nc)


def _solve(logits_nc: Array, labels_n: Array, weights_n: Array | None, num_steps: int, bound: float) -> Array:
    """FISTA with gradient-based adaptive restart on the box, from W = 0."""
    w_n = _unit_weights(weights_n, logits_nc)
    eta = _step_size(logits_nc, w_n)
    c = logits_nc.shape[1]
    zero = jnp.zeros((c, c), logits_nc.dtype)

    def step(_, carry):
        remap, extrap, t = carry
        new = jnp.clip(extrap - eta * _grad_remap(extrap, logits_nc, labels_n, w_n), -bound, bound)
        restart = jnp.sum((extrap - new) * (new - remap)) > 0  # momentum points uphill: drop it
        t = jnp.where(restart, 1.0, t)
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        beta = jnp.where(restart, 0.0, (t - 1.0) / t_next)
        return new, new + beta * (new - remap), t_next

    one = jnp.ones((), logits_nc.dtype)
    remap, _, _ = lax.fori_loop(0, num_steps, step, (zero, zero, one))
    return remap


def _hessian(remap_cc: Array, logits_nc: Array, w_n: Array) -> Array:
    """d^2 CE / dW_ab dW_cd = sum_i w_i z_ia z_ic (diag p_i - p_i p_i^T)_bd, flattened to [C*C, C*C]."""
    p_nc = jax.nn.softmax(logits_nc @ remap_cc, axis=-1)
    s_ncc = jax.vmap(jnp.diag)(p_nc) - p_nc[:, :, None] * p_nc[:, None, :]
    h = jnp.einsum("n,na,nc,nbd->abcd", w_n, logits_nc, logits_nc, s_ncc)
    c = remap_cc.shape[0]
    return h.reshape(c * c, c * c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _solve_implicit(logits_nc: Array, labels_n: Array, w_n: Array, num_steps: int, bound: float) -> Array:
    return _solve(logits_nc, labels_n, w_n, num_steps, bound)


def _solve_implicit_fwd(logits_nc, labels_n, w_n, num_steps, bound):
    remap_cc = _solve(logits_nc, labels_n, w_n, num_steps, bound)
    return remap_cc, (remap_cc, logits_nc, labels_n, w_n)


def _solve_implicit_bwd(num_steps, bound, res, g_cc):
    # Fixed point W = clip(W - eta G(W, Z)). With D the mask of coordinates not pinned to the box, the
    # tangent map is (I - D (I - eta H)) dW = -eta D dG/dZ dZ. Its transpose solve reduces to
    # H_FF r_F = g_F on the free coordinates (eta cancels), and the cotangent of Z is -(dG/dZ)^T r.
    # H is singular along W -> W + a 1^T (softmax shift invariance, so W* is not unique there): the
    # pseudo-inverse picks the minimum-norm solution. Shift-invariant read-outs of W* (the calibrated CE,
    # softmax(Z' W*)) get the same gradient whichever solution is picked; the tests compare with unrolling.
    del num_steps
    remap_cc, logits_nc, labels_n, w_n = res
    grad_cc = _grad_remap(remap_cc, logits_nc, labels_n, w_n)
    eta = _step_size(logits_nc, w_n)
    free = (jnp.abs(remap_cc - eta * grad_cc) < bound).reshape(-1)
    hess = jnp.where(free[:, None] & free[None, :], _hessian(remap_cc, logits_nc, w_n), 0.0)
    r = jnp.linalg.pinv(hess, hermitian=True) @ jnp.where(free, g_cc.reshape(-1), 0.0)
    _, vjp = jax.vjp(lambda z: _grad_remap(remap_cc, z, labels_n, w_n), logits_nc)
    (cot_logits,) = vjp(-r.reshape(remap_cc.shape))
    return cot_logits, None, None


_solve_implicit.defvjp(_solve_implicit_fwd, _solve_implicit_bwd)
