"""Meta-gradient coverage beyond test_estimators.py.

* The `exact` estimator against float64 central finite differences (value, defended params and every
  hyper-parameter) for the inner optimisers those tests do not differentiate through: adamw, sgd_nesterov (with
  gradient clipping), adadelta, schedule-free adamw and lion; `remat` and `mixed` equal `exact` for each of them.
* A LoRA attack on the tiny Llama (`model_attack_problem`): exact = remat = mixed in float32, the frozen base weights
  get a meta-gradient through the attack, and the exact meta-gradient matches float64 finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks.adversary import Adversary, LoraSpec
from jaxtar.attacks.unroll import model_attack_problem
from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad
from jaxtar.models.functional import cast_params

KEY = jax.random.key(3)
K = 3
SCHEDULE = TamperSchedule.tar(every=1, rate=0.3)  # a record after every step: every step's weights enter the value

# XLA:CPU spends ~10 s compiling one second-order Llama meta-gradient; without LLVM optimisation and the new fusion
# emitters it takes ~2 s. The HLO program (the math under test) is the same, only code generation differs, and every
# comparison below is between functions compiled alike. Falls back to the defaults if an XLA lacks these options.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _compile(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=FAST_COMPILE)
    except jax.errors.JaxRuntimeError:  # pragma: no cover - an XLA version without these options
        return lowered.compile()


def _meta_fn(problem, batches, tamper, adv, est, params, hp=None, sched=SCHEDULE):
    """Compiled meta_value_and_grad as a function of (params, hp), or of params alone when hp is None."""
    kw = dict(adversary=adv, key=KEY, schedule=sched, estimator=est)
    if hp is None:
        return _compile(lambda p: meta_value_and_grad(problem, p, batches, tamper, **kw), params)
    return _compile(lambda p, h: meta_value_and_grad(problem, p, batches, tamper, hyperparams=h, **kw), params, hp)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _shift(tree, direction, s):
    return jax.tree.map(lambda x, d: x + s * d, tree, direction)


def _fd_check_params(f, params, hp, grads, seed, n=2, h=1e-6, rtol=1e-7):
    """Central differences of the value along random directions of the defended params (hyper-parameters fixed)."""
    rng = np.random.default_rng(seed)
    args = (lambda p: (p, hp)) if hp is not None else (lambda p: (p,))
    for _ in range(n):
        v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
        fd = (float(f(*args(_shift(params, v, h))).value) - float(f(*args(_shift(params, v, -h))).value)) / (2 * h)
        analytic = float(_flat(grads) @ _flat(v))
        assert abs(analytic) > 1e-2  # a direction the value really depends on
        np.testing.assert_allclose(analytic, fd, rtol=rtol)


def _fd_check_hyper(f, params, hp, hyper_grads, h=1e-5, rtol=1e-6, atol=3e-11):
    """Central differences along each hyper-parameter separately, step h * |value|: compares |value| * d value / d hp.

    `atol` is ~3x the float64 round-off of these differences (|value| ~ 0.3): it checks eps = 1e-8 (scaled
    derivative ~2e-8) to ~0.2 % and eps_root = 1e-12 (~1e-10) to ~25 %; every other one to `rtol`."""
    for name, val in hp.items():
        step = h * float(val)
        up, down = dict(hp, **{name: val + step}), dict(hp, **{name: val - step})
        fd = (float(f(params, up).value) - float(f(params, down).value)) / (2 * h)
        np.testing.assert_allclose(float(hyper_grads[name]) * float(val), fd, rtol=rtol, atol=atol, err_msg=name)


# ---------------------------------------------------------------------------------------------- inner optimisers
# weight_decay > 0 everywhere so that its path is differentiated too (a zero hyper-parameter would not be perturbed).
# Adam family: eps_root > 0 (sqrt has an infinite derivative at 0; feature 0 of every batch has exactly zero
# gradients).
OPTIMISERS = {
    "adamw": dict(lr=0.05, weight_decay=0.1, eps=1e-8, eps_root=1e-12),
    # ||attack gradient|| ~ 2 at the start: clip_norm = 1 clips (asserted: d value / d clip_norm != 0)
    "sgd_nesterov": dict(lr=0.1, weight_decay=0.01, momentum=0.8, clip_norm=1.0),
    # eps = 1e-3, not 1e-8: Adadelta's first update is ~sqrt(eps / (1 - rho)) * sign(g), so a tiny eps would make the
    # updates, and every derivative through them, negligible next to the identity path of w1
    "adadelta": dict(lr=1.0, weight_decay=0.01, rho=0.9, eps=1e-3),
    "schedule_free_adamw": dict(lr=0.05, weight_decay=0.01, b1=0.9, eps=1e-8, eps_root=1e-12),
    # Lion's update is -lr * (sign(b1 m + (1 - b1) g) + wd w). sign() has zero derivative almost everywhere, but the
    # value is NOT piecewise constant in the defended params: the attacked w1 starts at the defended w1
    # (d w_k / d w_0 = (1 - lr wd)^k I), the frozen b1 / w2 enter both losses directly, and lr and wd scale the
    # update smoothly. Away from the measure-zero set where a sign argument crosses 0 (the arguments here are O(0.1),
    # or exactly 0 for feature 0 whatever the params; the steps are 1e-6) the value is smooth, so finite differences
    # are meaningful. d / d b1 and d / d b2 are exactly 0 (they act only inside sign()), asserted below; the exact
    # meta-gradient also equals remat's and mixed's (test_remat_and_mixed_equal_exact).
    "lion": dict(lr=0.02, weight_decay=0.1, b1=0.9, b2=0.99),
}


@pytest.fixture(scope="module", params=list(OPTIMISERS))
def opt_case(request, hybrid, make_hybrid_data):
    """One optimiser on the hybrid problem in float64, K = 3: data, hyper-parameters and the compiled estimators."""
    kind = request.param
    with jax.enable_x64(True):
        params, batches, tamper = make_hybrid_data(K, seed=2, dtype=jnp.float64)
        adv = Adversary(kind, steps=K, **OPTIMISERS[kind])
        hp = {k: jnp.asarray(v, jnp.float64) for k, v in adv.hyperparams().items()}
        fns = {
            est: _meta_fn(hybrid, batches, tamper, adv, Estimator(est), params, hp)
            for est in ("exact", "remat", "mixed")
        }
        results = {est: f(params, hp) for est, f in fns.items()}
    return dict(kind=kind, params=params, hp=hp, fns=fns, results=results)


def test_exact_matches_float64_finite_differences(opt_case):
    params, hp, res = opt_case["params"], opt_case["hp"], opt_case["results"]["exact"]
    assert bool(res.aux.is_finite)
    assert res.aux.attack_losses.shape == (K,) and res.aux.tamper_losses.shape == (K,)
    with jax.enable_x64(True):
        f = opt_case["fns"]["exact"]
        np.testing.assert_allclose(f(params, hp).value, res.value, rtol=0)  # deterministic
        _fd_check_params(f, params, hp, res.grads, seed=1)
        _fd_check_hyper(f, params, hp, res.hyper_grads)
    assert abs(float(res.hyper_grads["learning_rate"])) > 1e-2
    if "clip_norm" in hp:  # clipping is active and differentiated
        assert abs(float(res.hyper_grads["clip_norm"])) > 1e-3
    if opt_case["kind"] == "lion":
        assert float(res.hyper_grads["b1"]) == 0.0 and float(res.hyper_grads["b2"]) == 0.0


@pytest.mark.parametrize("est", ["remat", "mixed"])
def test_remat_and_mixed_equal_exact(opt_case, est, assert_same_meta_result):
    assert_same_meta_result(opt_case["results"][est], opt_case["results"]["exact"], rtol=1e-10)


# ---------------------------------------------------------------------------------------------- LoRA on tiny Llama
LORA_K = 2
LORA = LoraSpec(rank=2, alpha=4.0, dropout=0.0, targets=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
LORA_ADV = Adversary("sgd", lr=1.0, weight_decay=0.01, steps=LORA_K, lora=LORA)
LORA_SCHEDULE = TamperSchedule.tar(every=1, rate=0.5)


def _lora_fn(llama, est, params):
    problem = model_attack_problem(LORA_ADV, llama["attack_ce"], llama["neg_entropy"], model=llama["model"])
    batches = llama["ids"][:LORA_K]
    return _meta_fn(problem, batches, llama["tamper_ids"], LORA_ADV, est, params, sched=LORA_SCHEDULE)


@pytest.fixture(scope="module")
def lora_f32(llama):
    names = ("exact", "remat", "mixed", "first_order")
    return {name: _lora_fn(llama, Estimator(name), llama["params"])(llama["params"]) for name in names}


@pytest.mark.parametrize("est", ["remat", "mixed"])
def test_lora_exact_variants_agree_float32(lora_f32, est):
    ref, res = lora_f32["exact"], lora_f32[est]
    assert res.value.dtype == jnp.float32
    assert bool(res.aux.is_finite) and bool(ref.aux.is_finite)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-6)
    assert _rel(res.grads, ref.grads) < 1e-5


def test_lora_meta_gradient_reaches_frozen_base_weights(lora_f32):
    exact, fo = lora_f32["exact"], lora_f32["first_order"]
    layers = exact.grads["layers"]
    for target in LORA.targets:  # every adapted (frozen) projection gets a non-zero meta-gradient
        assert float(jnp.max(jnp.abs(layers[target]["kernel"]))) > 0.0
    # first_order keeps only the direct d tamper / d defended at the attacked adapters (LoRA's init does not depend
    # on the defended values); the path through the attack (defended -> attack gradients -> adapters) is a large
    # part of the exact meta-gradient (measured: 35 % of its largest entry)
    assert _rel(exact.grads, fo.grads) > 0.05
    assert float(exact.aux.attack_losses[-1]) < float(exact.aux.attack_losses[0])  # the adapters did train


def test_lora_exact_matches_float64_finite_differences(llama):
    # the model computes in its params' dtype (float64 stays float64 through norms, softmax and logits); the adapters
    # are drawn in that dtype too, so this is a different (equally valid) attack from the float32 one above
    with jax.enable_x64(True):
        params = cast_params(llama["params"], jnp.float64)
        f = _lora_fn(llama, Estimator("exact"), params)
        res = f(params)
        assert res.value.dtype == jnp.float64 and bool(res.aux.is_finite)
        # rtol: round-off ~1e-8 and truncation ~2e-8 (measured: 1.8e-8 at h = 1e-6, 2.4e-6 at h = 1e-5)
        _fd_check_params(f, params, None, res.grads, seed=4, n=1, rtol=1e-6)
