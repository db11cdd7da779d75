"""PyTorch eager references for the meta-gradient benchmark (same config, same shapes, same CPU).

* `plain`: K steps of torch.optim.AdamW on next-token CE (SDPA attention) - the baseline the ratios use.
* `tar_fo`: the official TAR-style outer step's meta-gradient: snapshot the weights, K AdamW steps, at every s-th
  step `autograd.grad` of the tamper loss at the adapted weights accumulated with TAR's weights, restore.
* `exact`: the exact meta-gradient: our own functional Adam in torch tensors, `autograd.grad(create_graph=True)`
  through every step, eager attention (the CPU SDPA kernel has no double backward); torch.compile cannot do double
  backward, so eager is the honest comparison (docs/meta-gradients.md#numerics).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import transformers


def build_model(cfg: Any, attn: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised HF Llama with our config's shapes."""
    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
    )
    model = transformers.LlamaForCausalLM(hf_cfg).to(torch.float32)
    model.config._attn_implementation = attn
    return model.eval()


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


def _neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.exp() * logp).sum(-1).mean()


class TorchMeta:
    """The three PyTorch workloads on one model."""

    def __init__(self, cfg: Any, ids: np.ndarray, tamper_ids: np.ndarray, lr: float = 1e-3, every: int = 4):
        self.sdpa = build_model(cfg, "sdpa")
        self.eager = build_model(cfg, "eager")
        self.ids = torch.as_tensor(np.array(ids), dtype=torch.long)
        self.tamper = torch.as_tensor(np.array(tamper_ids), dtype=torch.long)
        self.lr, self.every = lr, every

    def plain(self, steps: int) -> float:
        model = self.sdpa
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.01)
        loss = None
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = _ce(model(self.ids[k]).logits, self.ids[k])
            loss.backward()
            opt.step()
        return float(loss.detach())

    def tar_fo(self, steps: int) -> list[torch.Tensor]:
        model = self.sdpa
        params = list(model.parameters())
        snapshot = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        acc = [torch.zeros_like(p) for p in params]
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            _ce(model(self.ids[k]).logits, self.ids[k]).backward()
            opt.step()
            if (k + 1) % self.every == 0:
                w = math.exp(0.0625 * (k - (steps - 1)))
                grads = torch.autograd.grad(_neg_entropy(model(self.tamper).logits), params)
                for a, g in zip(acc, grads):
                    a.add_(g, alpha=w)
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)
        return acc

    def exact(self, steps: int, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> list[torch.Tensor]:
        model = self.eager
        names = [n for n, _ in model.named_parameters()]
        theta0 = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        theta = list(theta0)
        m = [torch.zeros_like(p) for p in theta]
        v = [torch.zeros_like(p) for p in theta]
        total = torch.zeros(())

        def logits(ps, x):
            return torch.func.functional_call(model, dict(zip(names, ps)), (x,)).logits

        for k in range(steps):
            grads = torch.autograd.grad(_ce(logits(theta, self.ids[k]), self.ids[k]), theta, create_graph=True)
            c1, c2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
            new = []
            for i, (p, g) in enumerate(zip(theta, grads)):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                u = (m[i] / c1) / (torch.sqrt(v[i] / c2 + 1e-16) + eps)
                new.append(p - self.lr * (u + 0.01 * p))
            theta = new
            if (k + 1) % self.every == 0:
                total = total + math.exp(0.0625 * (k - (steps - 1))) * _neg_entropy(logits(theta, self.tamper))
        return list(torch.autograd.grad(total, theta0))
