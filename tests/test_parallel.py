"""Mesh / sharding helpers, and the same jitted meta-step on 8 simulated CPU devices vs one device."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jaxtar.parallel import (
    batch_sharding,
    batch_shardings,
    fsdp_spec,
    initialize_distributed,
    make_mesh,
    param_shardings,
    shard,
    tree_bytes,
)


def test_fsdp_rule():
    assert fsdp_spec((2, 64, 128), 4) == P(None, None, "fsdp")  # largest divisible dim, never the layer axis
    assert fsdp_spec((2, 64, 10), 4) == P(None, "fsdp")
    assert fsdp_spec((256, 64), 4) == P("fsdp")
    assert fsdp_spec((10, 10), 4) == P()  # too small
    assert fsdp_spec((3, 3, 333, 333), 4, min_size=1) == P()  # nothing divisible
    assert fsdp_spec((4096,), 1) == P()


def test_single_device_mesh_helpers():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "adversary") and mesh.size == 1
    with pytest.raises(ValueError, match="exceeds"):
        make_mesh(data=len(jax.devices()) + 1)
    with pytest.raises(ValueError, match=">= 1"):
        make_mesh(fsdp=0)
    tree = {"w": jnp.ones((8, 4)), "ids": jnp.zeros((2, 3, 8), jnp.int32)}
    placed = shard(tree, param_shardings(tree, mesh))
    assert placed["w"].sharding.spec == P()
    assert batch_sharding(mesh, ndim=4, batch_axis=2, adversary_axis=0).spec == P(
        "adversary", None, ("data", "fsdp"), None
    )
    assert batch_shardings(tree, mesh, batch_axis=1)["ids"].spec == P(None, ("data", "fsdp"), None)
    assert tree_bytes(tree) == 8 * 4 * 4 + 2 * 3 * 8 * 4
    assert initialize_distributed() is False


_SCRIPT = textwrap.dedent(
    """
    import json, os
    # 8 simulated devices, on top of the suite's quick-compile flags (the numbers are compared at 1e-9)
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)  # float64: the two programs sum in different orders
    from jaxtar.attacks import Adversary, full_parameter_problem
    from jaxtar.meta import AdversaryGroup, Estimator, TamperSchedule, vmap_meta_value_and_grad
    from jaxtar.parallel import batch_shardings, make_mesh, param_shardings, replicated, shard

    assert len(jax.devices()) == 8
    loss = lambda w, b: jnp.mean((jnp.tanh(b[0] @ w["w1"]) @ w["w2"] - b[1]) ** 2)
    tamper = lambda w, b: jnp.mean(jnp.sin(jnp.tanh(b[0] @ w["w1"]) @ w["w2"]) * b[1])
    problem = full_parameter_problem(loss, tamper)
    group = AdversaryGroup((Adversary("adamw", lr=0.05, steps=3), Adversary("adamw", lr=0.1, steps=3, seed=1)))
    k = jax.random.split(jax.random.key(0), 6)
    f64 = lambda key, shape: jax.random.normal(key, shape, jnp.float64)
    params = {"w1": f64(k[0], (8, 32)) / 3, "w2": f64(k[1], (32, 4)) / 6}
    batches = (f64(k[2], (2, 3, 4, 8)), f64(k[3], (2, 3, 4, 4)))
    tb = (f64(k[4], (4, 8)), f64(k[5], (4, 4)))
    outer = optax.adam(1e-2)

    def make_step(mesh):
        def step(p, s, b, t):
            res = vmap_meta_value_and_grad(problem, p, group, b, t, key=k[0], schedule=TamperSchedule.tar(every=1),
                                           estimator=Estimator("exact"), mesh=mesh)
            u, s = outer.update(res.grads, s, p)
            return optax.apply_updates(p, u), s, res.value, res.grads
        return step

    ref = jax.jit(make_step(None))(params, outer.init(params), batches, tb)

    mesh = make_mesh(data=2, fsdp=2, adversary=2)
    p_sh = param_shardings(params, mesh, min_size=64)
    state = outer.init(params)
    s_sh = param_shardings(state, mesh, min_size=64)
    args = (shard(params, p_sh), shard(state, s_sh), shard(batches, batch_shardings(batches, mesh, 2, 0)),
            shard(tb, batch_shardings(tb, mesh, 0)))
    step = jax.jit(make_step(mesh), out_shardings=(p_sh, s_sh, replicated(mesh), p_sh))
    hlo = step.lower(*args).compile().as_text()
    out = step(*args)
    err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
    # per-adversary results from batches split only along (data, fsdp): the adversary axis is split by the
    # meta-gradient's own sharding constraint (without it the outputs come back replicated)
    per_adv = jax.jit(lambda p, b, t: vmap_meta_value_and_grad(problem, p, group, b, t, key=k[0], reduce="none",
                      schedule=TamperSchedule.tar(every=1), estimator=Estimator("exact"), mesh=mesh))
    pa = per_adv(params, shard(batches, batch_shardings(batches, mesh, 2)), tb)
    print(json.dumps(dict(
        err=err,
        devices=len(out[0]["w1"].sharding.device_set),
        w1_spec=str(out[0]["w1"].sharding.spec),
        mu_spec=str(out[1][0].mu["w1"].sharding.spec),
        collectives=sum(hlo.count(c) for c in ("all-reduce", "all-gather", "reduce-scatter")),
        adversary_axes=[(tuple(x.sharding.spec) or (None,))[0]
                        for x in (pa.value, pa.grads["w1"], pa.aux.attack_losses)],
        adversary_err=max(float(jnp.max(jnp.abs(pa.value - ref[2]) / jnp.abs(ref[2]))),
                          float(jnp.max(jnp.abs(jnp.mean(pa.grads["w1"], 0) - ref[3]["w1"]))
                                / jnp.max(jnp.abs(ref[3]["w1"])))),
    )))
    """
)


def test_eight_devices_equal_one_device(run_on_devices):
    out = run_on_devices(_SCRIPT)
    assert out["err"] < 1e-9  # float64 (in float32 the reduction order alone gives ~1e-5 through Adam)
    assert out["devices"] == 8
    assert "fsdp" in out["w1_spec"] and "fsdp" in out["mu_spec"]  # params and optimiser state stay sharded
    assert out["collectives"] > 0
    assert out["adversary_axes"] == ["adversary"] * 3, out["adversary_axes"]
    assert out["adversary_err"] < 1e-12
