"""Meta-gradients on a tiny Llama against independent references: PyTorch autograd and a plain Python TAR loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from jaxtar.models import hf_state_dict, save_pretrained


def _rel_norm(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _torch_exact_meta_grad(folder, ids, tamper_ids, adv, weights):
    """The same objective in PyTorch eager: HF Llama (eager attention), our own Adam in torch tensors, double
    backward through every step with create_graph=True."""
    model = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    theta0 = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

    def logits(params, x):
        return torch.func.functional_call(model, params, (x,)).logits

    def attack_ce(params, x):
        logp = torch.log_softmax(logits(params, x)[:, :-1], dim=-1)
        return -logp.gather(-1, x[:, 1:, None]).mean()

    def neg_entropy(params, x):
        logp = torch.log_softmax(logits(params, x), dim=-1)
        return (logp.exp() * logp).sum(-1).mean()

    theta = dict(theta0)
    m = {n: torch.zeros_like(p) for n, p in theta.items()}
    v = {n: torch.zeros_like(p) for n, p in theta.items()}
    total = torch.zeros(())
    tamper = torch.as_tensor(np.asarray(tamper_ids), dtype=torch.long)
    for k in range(adv.steps):
        x = torch.as_tensor(np.asarray(ids[k]), dtype=torch.long)
        grads = torch.autograd.grad(attack_ce(theta, x), list(theta.values()), create_graph=True)
        new = {}
        for (n, p), g in zip(theta.items(), grads):
            m[n] = adv.b1 * m[n] + (1 - adv.b1) * g
            v[n] = adv.b2 * v[n] + (1 - adv.b2) * g * g
            m_hat = m[n] / (1 - adv.b1 ** (k + 1))
            v_hat = v[n] / (1 - adv.b2 ** (k + 1))
            new[n] = p - adv.lr * m_hat / (torch.sqrt(v_hat + adv.eps_root) + adv.eps)
        theta = new
        total = total + float(weights[k]) * neg_entropy(theta, tamper)
    meta = torch.autograd.grad(total, list(theta0.values()))
    return float(total), {n: g.numpy() for n, g in zip(theta0, meta)}


def test_exact_equals_pytorch_create_graph(llama, llama_exact, tmp_path):
    folder = save_pretrained(llama["model"], llama["params"], tmp_path / "tiny")
    adv, sched = llama_exact["adversary"], llama_exact["schedule"]
    value_t, grads_t = _torch_exact_meta_grad(folder, llama["ids"], llama["tamper_ids"], adv, sched.weights(adv.steps))
    res = llama_exact["result"]
    assert bool(res.aux.is_finite)
    grads_j = hf_state_dict(llama["model"], jax.tree.map(np.asarray, res.grads))
    assert set(grads_j) == set(grads_t)
    np.testing.assert_allclose(float(res.value), value_t, rtol=1e-5)
    flat_j = np.concatenate([grads_j[n].ravel() for n in sorted(grads_t)])
    flat_t = np.concatenate([grads_t[n].ravel() for n in sorted(grads_t)])
    assert _rel_norm(flat_j, flat_t) < 1e-4
    for name in grads_t:  # every tensor, not just the total
        assert _rel_norm(grads_j[name].ravel(), grads_t[name].ravel()) < 1e-3, name


def test_tar_equals_python_loop(llama, llama_tar):
    """TAR's outer step (docs/methods.md#tar-outer-loop) written as a plain loop: AdamW by hand, first-order tamper
    gradients every s-th step."""
    adv, params, ids = llama_tar["adversary"], llama["params"], llama["ids"]
    grad_attack = jax.jit(jax.grad(lambda p, x: llama["attack_ce"](p, x, None)))
    tamper_vg = jax.jit(jax.value_and_grad(lambda p: llama["neg_entropy"](p, llama["tamper_ids"], None)))
    s, big_k = llama_tar["schedule"].every, adv.steps

    @jax.jit
    def adamw(theta, m, v, g, t):  # AdamW by hand (t = number of updates so far, 1-based)
        m = jax.tree.map(lambda a, b: adv.b1 * a + (1 - adv.b1) * b, m, g)
        v = jax.tree.map(lambda a, b: adv.b2 * a + (1 - adv.b2) * b * b, v, g)
        c1, c2 = 1 - adv.b1**t, 1 - adv.b2**t
        step = lambda p, a, b: p - adv.lr * ((a / c1) / (jnp.sqrt(b / c2) + adv.eps) + adv.weight_decay * p)
        return jax.tree.map(step, theta, m, v), m, v

    theta = params
    m = jax.tree.map(jnp.zeros_like, theta)
    v = jax.tree.map(jnp.zeros_like, theta)
    value, g_tr = 0.0, jax.tree.map(jnp.zeros_like, theta)
    for k in range(big_k):
        theta, m, v = adamw(theta, m, v, grad_attack(theta, ids[k]), jnp.float32(k + 1))
        if (k + 1) % s == 0:
            w_k = np.exp(0.0625 * (k - (big_k - 1)))
            loss, g_k = tamper_vg(theta)
            value += w_k * float(loss)
            g_tr = jax.tree.map(lambda a, b, w_k=w_k: a + w_k * b, g_tr, g_k)
    res = llama_tar["result"]
    np.testing.assert_allclose(float(res.value), value, rtol=1e-5)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    assert _rel_norm(flat(res.grads), flat(g_tr)) < 1e-4  # float32, different op order
