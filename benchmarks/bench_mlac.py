"""MLAC outer steps per second: the jitted JAX step vs the same step in PyTorch (autograd create_graph), same CPU.

One outer step (jaxtar.defenses.mlac): a fresh attacker head, K differentiable Adam steps (eps_root > 0, inner
gradient clipping inside the graph) on the masked harmful CE, the calibrated harmful CE (FISTA, unrolled) recorded
at k = 0..K, outer loss = desired CE - mean_k calibrated CE, its exact second-order gradient w.r.t. the released
weights and the learned inner lr, then clipped outer Adam on both. The PyTorch version is an independent eager
implementation of exactly that computation (functional BERT, functional Adam, `torch.autograd.grad(...,
create_graph=True)` through the inner loop; torch.compile cannot do double backward). Both start from the same
weights and batches; the benchmark checks that they agree (loss and meta-gradient norm of step 0), then times each
(median of --reps after warm-up; JAX compile time reported separately).

Configs: ``tiny`` (2 layers, d = 32, T = 48, the offline preset's shape) and ``bert-tiny`` (BERT-Tiny: 2 layers,
d = 128, vocab 30522, T = 128, outer batch 20, K = 16 as in the paper; --quick: K = 4, T = 64).

    python benchmarks/bench_mlac.py --quick        # writes benchmarks/results/mlac_quick.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxtar.config import MLACConfig
from jaxtar.defenses.mlac import init_state, inner_batches, make_outer_step, prepare_model
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig

RESULTS = Path(__file__).parent / "results"


def configs(quick: bool) -> dict[str, dict]:
    tiny = dict(bert=dict(vocab_size=2000, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                          max_position_embeddings=48), seq=48, outer_batch=32, k=4)  # fmt: skip
    paper = dict(bert=dict(vocab_size=30522, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=2,
                           max_position_embeddings=512), seq=64 if quick else 128, outer_batch=20,
                 k=4 if quick else 16)  # fmt: skip
    return {"tiny": tiny, "bert-tiny": paper}


# ------------------------------------------------------------------------------------------------ torch step
def _ln(x, scale, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * scale + bias


def torch_pooled(p: dict, ids: torch.Tensor, mask: torch.Tensor, c: BertConfig) -> torch.Tensor:
    """Our BERT port's pooled output in eager torch (params in the port's layout: kernels [in, out])."""
    b, t = ids.shape
    h = p["embed"][ids] + p["type_embed"][0] + p["pos_embed"][:t]
    h = _ln(h, p["embed_norm.scale"], p["embed_norm.bias"], c.layer_norm_eps)
    keep = mask.bool()[:, None, None, :]
    for i in range(c.num_layers):
        lin = lambda x, n, i=i: x @ p[f"{n}.kernel"][i] + p[f"{n}.bias"][i]
        q, k, v = (lin(h, n).view(b, t, c.num_heads, c.head_dim).transpose(1, 2) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        h = _ln(lin(a, "attn_out") + h, p["attn_norm.scale"][i], p["attn_norm.bias"][i], c.layer_norm_eps)
        y = lin(torch.nn.functional.gelu(lin(h, "intermediate")), "ffn_out")
        h = _ln(y + h, p["ffn_norm.scale"][i], p["ffn_norm.bias"][i], c.layer_norm_eps)
    return torch.tanh(h[:, 0] @ p["pooler.kernel"] + p["pooler.bias"])


def _ce(logits, y, w=None):
    nll = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return nll.mean() if w is None else (w * nll).sum() / w.sum().clamp_min(1.0)


def torch_calibrated_ce(z: torch.Tensor, y: torch.Tensor, steps: int, bound: float = 1.0) -> torch.Tensor:
    """FISTA with adaptive restart on W in [-b, b]^{CxC}, unrolled (as jaxtar.objectives.calibration, 'unrolled')."""
    n, c = z.shape
    w_n = torch.full((n,), 1.0 / n, dtype=z.dtype)
    zd = z.detach()
    gram = (zd * w_n[:, None]).T @ zd
    eta = 1.0 / torch.clamp(0.5 * torch.minimum(gram.square().sum().sqrt(), gram.abs().sum(1).max()), min=1e-12)
    onehot = torch.nn.functional.one_hot(y, c).to(z.dtype)
    remap = extrap = torch.zeros(c, c, dtype=z.dtype)
    t = torch.ones((), dtype=z.dtype)
    for _ in range(steps):
        grad = z.T @ (w_n[:, None] * ((z @ extrap).softmax(-1) - onehot))
        new = torch.clamp(extrap - eta * grad, -bound, bound)
        restart = ((extrap - new) * (new - remap)).sum() > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        beta = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_next)
        remap, extrap, t = new, new + beta * (new - remap), t_next
    u = z @ remap
    return (torch.logsumexp(u, -1) - u.gather(-1, y[:, None])[:, 0]).mean()


class TorchMLAC:
    """The same outer step in eager PyTorch; `step()` also applies the outer / lr Adam updates."""

    def __init__(self, params: dict, cfg: MLACConfig, bc: BertConfig):
        self.cfg, self.bc = cfg, bc
        flat = {}
        for k, v in params.items():
            for kk, vv in v.items():
                if k == "layers":  # stacked per-layer params: {"query": {"kernel": [L, D, D], ...}, ...}
                    flat.update({f"{kk}.{name}": leaf for name, leaf in vv.items()})
                else:
                    flat[k if kk == "embedding" else f"{k}.{kk}"] = vv
        self.p = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in flat.items()}
        self.lr = torch.tensor(float(cfg.inner_lr), requires_grad=True)
        self.opt = torch.optim.Adam(list(self.p.values()), lr=cfg.outer_lr)
        self.lr_opt = torch.optim.Adam([self.lr], lr=cfg.inner_lr_lr)

    def loss(self, outer: dict, inner: dict, head0: torch.Tensor) -> torch.Tensor:
        cfg, bc, p = self.cfg, self.bc, self.p
        nd = cfg.num_desired
        pooled = torch_pooled(p, outer["input_ids"], outer["attention_mask"], bc)
        desired = _ce(pooled @ p["classifier.kernel"][:, :nd], outer[cfg.desired_key])
        names = [k for k in p if k != "classifier.kernel"]
        head0 = head0.detach().requires_grad_(True)
        theta = [p[k] for k in names] + [head0]

        def logits(th, batch):
            q = dict(zip(names, th[:-1]))
            return torch_pooled(q, batch["input_ids"], batch["attention_mask"], bc) @ th[-1]

        def record(th):
            return torch_calibrated_ce(logits(th, outer), outer[cfg.harmful_key], cfg.calibration_steps)

        records = [record(theta)]
        m = [torch.zeros_like(x) for x in theta]
        v = [torch.zeros_like(x) for x in theta]
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k in range(cfg.inner_steps):
            batch = {key: val[k] for key, val in inner.items()}
            inner_loss = _ce(logits(theta, batch), batch[cfg.harmful_key], batch["weight"])
            g = torch.autograd.grad(inner_loss, theta, create_graph=True, materialize_grads=True)
            norm = torch.sqrt(sum((x * x).sum() for x in g))
            scale = torch.where(norm < cfg.inner_clip_norm, torch.ones_like(norm), cfg.inner_clip_norm / norm)
            g = [x * scale for x in g]
            m = [b1 * a + (1 - b1) * x for a, x in zip(m, g)]
            v = [b2 * a + (1 - b2) * x * x for a, x in zip(v, g)]
            c1, c2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
            theta = [th - self.lr * (a / c1) / (torch.sqrt(s / c2 + cfg.inner_eps_root) + eps)
                     for th, a, s in zip(theta, m, v)]  # fmt: skip
            records.append(record(theta))
        return desired - torch.stack(records).mean()

    def step(self, outer: dict, inner: dict, head0: torch.Tensor) -> float:
        loss = self.loss(outer, inner, head0)
        self.opt.zero_grad()
        self.lr_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.p.values()), self.cfg.outer_clip_norm)
        self.lr.grad.neg_()  # the attacker's lr ascends the defence loss
        self.opt.step()
        self.lr_opt.step()
        with torch.no_grad():
            self.lr.clamp_(*self.cfg.inner_lr_bounds)
        return float(loss)


# --------------------------------------------------------------------------------------------------- harness
def _data(bc: BertConfig, n: int, seq: int, cfg: MLACConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": jnp.asarray(rng.integers(5, bc.vocab_size, (n, seq)) * mask, jnp.int32),
            "attention_mask": jnp.asarray(mask), cfg.desired_key: jnp.asarray(rng.integers(0, 28, n), jnp.int32),
            cfg.harmful_key: jnp.asarray(rng.integers(0, 2, n), jnp.int32)}  # fmt: skip


def _t(batch: dict) -> dict:
    return {k: torch.tensor(np.array(v)).long() if v.dtype != jnp.float32 else torch.tensor(np.array(v))
            for k, v in batch.items()}  # fmt: skip


def _median_time(fn, reps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench(name: str, spec: dict, reps: int) -> dict:
    cfg = MLACConfig(inner_steps=spec["k"], outer_batch_size=spec["outer_batch"], calibration_method="unrolled",
                     calibration_steps=50, outer_lr=1e-5)  # fmt: skip
    bc = BertConfig(**spec["bert"])
    model = model_for_config(bc)
    model, params = prepare_model(model, model.init(0), cfg)
    data = _data(bc, 512, spec["seq"], cfg)
    key = jax.random.key(0)
    # PyTorch inputs: the batches and heads the JAX step draws from the same keys (drawing is not timed)
    draws = []
    for i in range(reps + 2):
        k_out, k_in, k_att = jax.random.split(jax.random.fold_in(key, i), 3)
        idx = jax.random.choice(k_out, 512, (cfg.outer_batch_size,), replace=False)
        head = 0.02 * jax.random.normal(k_att, (bc.hidden_size, cfg.num_harmful))
        draws.append((_t(jax.tree.map(lambda a, idx=idx: a[idx], data)), _t(inner_batches(data, k_in, cfg)),
                      torch.as_tensor(np.asarray(head))))  # fmt: skip
    # JAX: the whole jitted outer step (batch draws, meta-gradient, both optimisers)
    step = make_outer_step(model, cfg)
    state = init_state(params, cfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t0
    box = [state, None]

    def jax_step():
        box[0], box[1] = compiled(box[0], data, jax.random.fold_in(key, int(box[0].step)))
        jax.block_until_ready(box[1]["loss"])

    jax_step()  # warm-up; its metrics are the agreement check's reference (step 0 from the same weights)
    first = box[1]
    tm = TorchMLAC(params, cfg, bc)
    loss_t = tm.loss(*draws[0])
    grads_t = torch.autograd.grad(loss_t, list(tm.p.values()) + [tm.lr])
    check = {"loss_jax": float(first["loss"]), "loss_torch": float(loss_t),
             "grad_norm_jax": float(first["grad_norm"]),
             "grad_norm_torch": float(torch.sqrt(sum((g * g).sum() for g in grads_t[:-1])))}  # fmt: skip
    check["grad_norm_rel_err"] = abs(check["grad_norm_jax"] - check["grad_norm_torch"]) / check["grad_norm_jax"]
    jax_s, jax_all = _median_time(jax_step, reps)
    it = iter(draws[1:])
    torch_step = lambda: tm.step(*next(it))
    torch_step()  # warm-up
    torch_s, torch_all = _median_time(torch_step, reps)
    return {"config": name, "K": cfg.inner_steps, "seq": spec["seq"], "outer_batch": cfg.outer_batch_size,
            "inner_batch": max(cfg.inner_batch_sizes), "hidden": bc.hidden_size, "layers": bc.num_layers,
            "vocab": bc.vocab_size, "jax_compile_s": compile_s, "jax_step_s": jax_s, "torch_step_s": torch_s,
            "jax_steps_per_s": 1 / jax_s, "torch_steps_per_s": 1 / torch_s, "speedup": torch_s / jax_s,
            "jax_times": jax_all, "torch_times": torch_all, "check": check}  # fmt: skip


def _loads(values) -> str:
    return ", ".join(f"{x:.1f}" for x in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 4 and T = 64 for the BERT-Tiny shape")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    load_before = os.getloadavg()
    for name, spec in configs(args.quick).items():
        if args.configs and name not in args.configs:
            continue
        print(f"== {name}", flush=True)
        row = bench(name, spec, args.reps)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_times")}, indent=1), flush=True)
        rows.append(row)
    meta = {"device": jax.devices()[0].device_kind, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "torch": torch.__version__,
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "quick": args.quick,
            "reps": args.reps, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    stem = "mlac_quick" if args.quick else "mlac"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# MLAC outer step: JAX vs PyTorch ({'quick, ' if args.quick else ''}{meta['date']})", "",
             f"CPU: {meta['cpu_count']} cores, load average before / after: {_loads(load_before)} / "
             f"{_loads(meta['load_average_after'])}"
             " (shared machine: absolute times are noisy, the ratio is measured side by side).", "",
             "| config | K | T | batch outer/inner | JAX compile s | JAX steps/s | PyTorch steps/s | JAX / PyTorch | "
             "loss JAX / torch | meta-grad norm JAX / torch |", "|---|---|---|---|---|---|---|---|---|---|"
             ]  # fmt: skip
    for r in rows:
        c = r["check"]
        lines.append(f"| {r['config']} | {r['K']} | {r['seq']} | {r['outer_batch']}/{r['inner_batch']} | "
                     f"{r['jax_compile_s']:.1f} | {r['jax_steps_per_s']:.2f} | {r['torch_steps_per_s']:.2f} | "
                     f"{r['speedup']:.1f}x | {c['loss_jax']:.5f} / {c['loss_torch']:.5f} | "
                     f"{c['grad_norm_jax']:.5g} / {c['grad_norm_torch']:.5g} |")  # fmt: skip
    lines += [
        "",
        "Median of the timed steps after one warm-up step; exact second-order meta-gradient in both "
        "(PyTorch: autograd.grad(create_graph=True), eager), calibrated CE unrolled (50 FISTA steps) in both.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
