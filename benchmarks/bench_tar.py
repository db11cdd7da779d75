"""TAR outer steps/s and tokens/s: jaxtar's jitted step vs a PyTorch implementation of the official loop, same
config, same device, side by side; with A adversaries per outer step (vmapped in JAX, looped in PyTorch).

The PyTorch side follows the TAR outer step of docs/methods.md#tar-outer-loop with transformers' LlamaForCausalLM and
torch optimizers: snapshot the weights, K inner AdamW steps (fresh state) with the first-order tamper gradient
accumulated every s steps, restore, retain gradient (CE + hidden-state distance to the frozen base, via
``torch.func.functional_call`` on the snapshot of the starting weights), schedule-free AdamW outer step (the
``schedulefree`` package the official code uses).

Achieved GFLOP/s use the same analytic FLOP count for both (6 N per token for forward+backward, 2 N for forward,
attention scores included) and are set against the machine's fp32 matmul rate measured in the same run. Timings are
medians over interleaved repeats (JAX step, PyTorch step, ...) after compilation / warm-up; each timed call follows an
untimed call of the same step, as in a training loop (with huge pages on, a jitted step's first call right after
PyTorch's was 1.3-1.7x slower at the SmolLM2 shape; see `bench_machine.second_call_seconds`). Not a test.

    python benchmarks/bench_tar.py --quick    # a few minutes on 2 CPU cores
    python benchmarks/bench_tar.py            # full: the 30-layer SmolLM2 shape, K = 8

Like bench_meta.py it restarts itself with glibc's huge-page tunable (`jaxtar.commands._hugepages`;
``--no-hugepages`` turns that off) and honours ``taskset``: PyTorch's thread counts are 1 and the cores this
process may run on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxtar.commands import _hugepages as hugepages  # noqa: E402  (stdlib only: restarts before jax and torch load)

if __name__ == "__main__" and "--no-hugepages" not in sys.argv[1:]:
    hugepages.reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from bench_machine import second_call_seconds, usable_cores  # noqa: E402

from jaxtar.checkpoint import write_text_atomic  # noqa: E402
from jaxtar.config import TarConfig  # noqa: E402
from jaxtar.defenses import make_tar_step, train_suite  # noqa: E402
from jaxtar.models import LlamaConfig, create_model, save_pretrained  # noqa: E402

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: LlamaConfig
    length: int
    tar: TarConfig
    repeats: int


def _toy_model() -> LlamaConfig:
    from jaxtar.toy import toy_model_config, toy_world

    return toy_model_config(toy_world(0).tokenizer)


def _tar(k: int, s: int, a: int, b: int, chunk: int | None = None) -> TarConfig:
    return TarConfig(inner_steps=k, tamper_every=s, adversaries_per_step=a, adversary_batch_size=b,
                     tamper_batch_size=b, retain_batch_size=b, setting="cyber", lr=1e-4, warmup_steps=0,
                     adversary_lrs=(1e-4, 2e-4), adversary_chunk_size=chunk)  # fmt: skip


def cases(quick: bool) -> list[Case]:
    toy, smol = _toy_model(), LlamaConfig.smollm2_135m()
    if quick:
        smol4 = dataclasses.replace(smol, num_layers=4)
        return [
            Case("toy, A=1", toy, 48, _tar(8, 4, 1, 16), 5),
            Case("toy, A=4", toy, 48, _tar(8, 4, 4, 16), 3),
            Case("toy, A=4 one at a time (chunk 1)", toy, 48, _tar(8, 4, 4, 16, chunk=1), 3),
            Case("SmolLM2 shape (4 of 30 layers), A=1", smol4, 32, _tar(2, 1, 1, 2), 3),
            Case("SmolLM2 shape (4 of 30 layers), A=2", smol4, 32, _tar(2, 1, 2, 2), 3),
            Case("same, A=2 one at a time (chunk 1)", smol4, 32, _tar(2, 1, 2, 2, chunk=1), 3),
        ]
    return [
        Case("toy, A=1", toy, 48, _tar(16, 4, 1, 16), 7),
        Case("toy, A=4", toy, 48, _tar(16, 4, 4, 16), 5),
        Case("SmolLM2-135M shape, A=1", smol, 64, _tar(8, 4, 1, 4), 3),
        Case("SmolLM2-135M shape, A=2", smol, 64, _tar(8, 4, 2, 4), 3),
        Case("same, A=2 one at a time (chunk 1)", smol, 64, _tar(8, 4, 2, 4, chunk=1), 3),
    ]


def flops_per_token(c: LlamaConfig, length: int) -> float:
    """Forward FLOPs per token: projections, MLP, attention scores and values (full T x T), LM head."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    per_layer = 2 * (c.hidden_size * (q + 2 * kv) + q * c.hidden_size) + 6 * c.hidden_size * c.intermediate_size
    per_layer += 4 * length * q
    return c.num_layers * per_layer + 2 * c.hidden_size * c.vocab_size


def step_flops(case: Case) -> tuple[float, int]:
    """(FLOPs, token positions) of one outer step: A x (K attack + K/s tamper fwd+bwd), retain fwd+bwd, base fwd."""
    t = case.tar
    f = flops_per_token(case.model, case.length)
    per_adv_rows = t.inner_steps * t.adversary_batch_size + (t.inner_steps // t.tamper_every) * t.tamper_batch_size
    rows_fb = t.adversaries_per_step * per_adv_rows + t.retain_batch_size
    tokens = (rows_fb + t.retain_batch_size) * case.length
    return 3 * f * rows_fb * case.length + f * t.retain_batch_size * case.length, tokens


def _batches(case: Case, seed: int = 0) -> dict:
    t, c, n = case.tar, case.model, case.length
    rng = np.random.default_rng(seed)

    def rows(*lead):
        ids = rng.integers(4, c.vocab_size, (*lead, n)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[..., n - n // 4 :] = 0  # some padding, as in real batches
        return {"input_ids": ids, "attention_mask": mask, "loss_mask": mask.copy()}

    suite = train_suite(t)
    advs = [suite[i % len(suite)] for i in range(t.adversaries_per_step)]
    hyper = {k: np.asarray([a.hyperparams()[k] for a in advs], np.float32) for k in advs[0].hyperparams()}
    return {
        "adversary": rows(t.adversaries_per_step, t.inner_steps, t.adversary_batch_size),
        "tamper": rows(t.tamper_batch_size),
        "retain": rows(t.retain_batch_size),
        "hyperparams": hyper,
    }


class TorchTar:
    """The official TAR outer step in PyTorch (first order, K inner AdamW steps, restore, retain, outer step)."""

    def __init__(self, model, tar: TarConfig):
        import schedulefree

        self.model, self.tar = model, tar
        self.params = [p for p in model.parameters()]
        self.base = {n: p.detach().clone() for n, p in model.named_parameters()}  # the frozen starting weights
        self.outer = schedulefree.AdamWScheduleFree(
            self.params,
            lr=tar.lr,
            betas=(tar.b1, tar.b2),
            eps=tar.eps,
            weight_decay=tar.weight_decay,
            warmup_steps=tar.warmup_steps,
        )
        self.outer.train()

    @staticmethod
    def _ce(logits, ids, mask):
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].float()
        return (nll * m).sum() / m.sum()

    def step(self, b: dict) -> None:
        t, model, params = self.tar, self.model, self.params
        to = lambda rows: {k: torch.from_numpy(np.asarray(v)).long() for k, v in rows.items()}
        tamper, retain = to(b["tamper"]), to(b["retain"])
        theta0 = [p.detach().clone() for p in params]  # snapshot
        g_tr = [torch.zeros_like(p) for p in params]
        a_count = t.adversaries_per_step
        for a in range(a_count):
            inner = torch.optim.AdamW(params, lr=float(b["hyperparams"]["learning_rate"][a]), betas=(0.9, 0.999),
                                      eps=1e-8, weight_decay=0.01)  # fmt: skip
            for k in range(t.inner_steps):
                rows = {key: torch.from_numpy(np.asarray(v[a, k])).long() for key, v in b["adversary"].items()}
                inner.zero_grad(set_to_none=True)
                logits = model(rows["input_ids"], attention_mask=rows["attention_mask"]).logits
                self._ce(logits, rows["input_ids"], rows["loss_mask"]).backward()
                inner.step()
                if (k + 1) % t.tamper_every == 0:
                    w = math.exp(t.tamper_rate * (k - (t.inner_steps - 1)))
                    logits = model(tamper["input_ids"], attention_mask=tamper["attention_mask"]).logits.float()
                    logp = torch.log_softmax(logits, -1)
                    m = tamper["attention_mask"].float()
                    loss = ((logp.exp() * logp).sum(-1) * m).sum() / m.sum()  # negative entropy
                    for acc, g in zip(g_tr, torch.autograd.grad(loss, params), strict=True):
                        acc.add_(g, alpha=t.lambda_tr * w / a_count)
            with torch.no_grad():  # restore
                for p, p0 in zip(params, theta0, strict=True):
                    p.copy_(p0)
        self.outer.zero_grad(set_to_none=True)
        out = model(retain["input_ids"], attention_mask=retain["attention_mask"], output_hidden_states=True)
        with torch.no_grad():
            kwargs = {"attention_mask": retain["attention_mask"], "output_hidden_states": True}
            base = torch.func.functional_call(model, self.base, (retain["input_ids"],), kwargs)
        m = retain["attention_mask"].float()
        dist = [((h - h0).norm(dim=-1) * m).sum() / m.sum() for h, h0 in zip(out.hidden_states, base.hidden_states)]
        loss = self._ce(out.logits, retain["input_ids"], retain["loss_mask"]) + sum(dist) / len(dist)
        loss.backward()
        with torch.no_grad():
            for p, acc in zip(params, g_tr, strict=True):
                p.grad.mul_(t.lambda_retain).add_(acc)
        self.outer.step()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 matmul rate in each framework (the compute ceiling)."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    t = torch.ones(n, n)
    jt = statistics.median(_time(lambda: mm(a).block_until_ready()) for _ in range(repeats))
    tt = statistics.median(_time(lambda: t @ t) for _ in range(repeats))
    return {"jax": 2 * n**3 / jt / 1e9, "torch": 2 * n**3 / tt / 1e9}


def bench(case: Case) -> dict:
    model, params = create_model(case.model, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, params, Path(tmp) / "m")
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    torch_model.train()
    step, optimizer = make_tar_step(model, case.tar, train_suite(case.tar)[0])
    batches = _batches(case)
    key = jax.random.key(0)
    p, s = params, optimizer.init(params)
    start = time.perf_counter()
    p, s, _ = jax.block_until_ready(step(p, s, batches, key, params))  # compiles
    compile_s = time.perf_counter() - start
    torch_tar = TorchTar(torch_model, case.tar)
    torch_tar.step(batches)  # warm-up (allocator, autograd graph caches)
    state = {"p": p, "s": s}

    def jax_step():
        state["p"], state["s"], metrics = step(state["p"], state["s"], batches, key, params)
        jax.block_until_ready((state["p"], metrics))

    # PyTorch at 1 thread and at all cores, the faster kept (OpenMP spin-waiting makes multi-threaded eager torch
    # collapse on an oversubscribed CPU; XLA's CPU runtime does not spin)
    jt, tt = [], {n: [] for n in sorted({1, usable_cores()})}
    for _ in range(case.repeats):  # interleaved: background load hits both alike
        jt.append(second_call_seconds(jax_step))
        for threads, times in tt.items():
            torch.set_num_threads(threads)
            times.append(second_call_seconds(lambda: torch_tar.step(batches)))
    flops, tokens = step_flops(case)
    threads = min(tt, key=lambda n: statistics.median(tt[n]))
    j, t = statistics.median(jt), statistics.median(tt[threads])
    return {
        "case": case.name, "layers": case.model.num_layers, "hidden": case.model.hidden_size, "length": case.length,
        "K": case.tar.inner_steps, "s": case.tar.tamper_every, "A": case.tar.adversaries_per_step,
        "batch": case.tar.adversary_batch_size, "compile_s": compile_s, "jax_step_s": j, "torch_step_s": t,
        "jax_steps_per_s": 1 / j, "torch_steps_per_s": 1 / t, "jax_tok_s": tokens / j, "torch_tok_s": tokens / t,
        "torch_threads": threads, "speedup": t / j,
        "gflop_per_step": flops / 1e9, "jax_gflops": flops / j / 1e9, "torch_gflops": flops / t / 1e9,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (a few minutes on 2 cores)")
    parser.add_argument("--no-hugepages", action="store_true", help="do not restart with glibc's huge-page tunable")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where results go (default {RESULTS})")
    args = parser.parse_args()  # --no-hugepages is read before the imports, where the restart happens
    cores = usable_cores()
    torch.set_num_threads(cores)
    machine = platform.processor() or platform.machine()
    device = f"{jax.devices()[0].device_kind} ({machine}, {cores} of {os.cpu_count()} cores)"
    report = {"device": device, "jax": jax.__version__, "torch": torch.__version__, "hugepages": hugepages.status(),
              "rows": []}  # fmt: skip
    report["matmul_gflops"] = matmul_gflops()
    for case in cases(args.quick):
        row = bench(case)
        torch.set_num_threads(cores)
        row["matmul_gflops"] = matmul_gflops()  # right after the case: the load it ran under varies on a shared CPU
        report["rows"].append(row)
        print(f"{case.name}: JAX {row['jax_steps_per_s']:.3g} steps/s, PyTorch {row['torch_steps_per_s']:.3g} "
              f"steps/s ({row['speedup']:.2f}x), compile {row['compile_s']:.0f} s", flush=True)  # fmt: skip
    mm = report["matmul_gflops"]
    per_case = ", ".join(f"{r['matmul_gflops']['jax']:.0f}/{r['matmul_gflops']['torch']:.0f}" for r in report["rows"])
    lines = [
        f"Device: {device}; jax {jax.__version__}, torch {torch.__version__}. TAR outer step (first order, K inner "
        "AdamW steps, tamper every s, retain + representation, schedule-free AdamW); medians of interleaved repeats; "
        f"PyTorch: the faster of 1 thread and {cores}; {report['hugepages']}; load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        f"Matmul rate (1024^3 fp32, this run): JAX {mm['jax']:.0f} GFLOP/s, PyTorch {mm['torch']:.0f} GFLOP/s at the "
        f"start; JAX/PyTorch after each case {per_case}. The % columns use the rate measured after the row's case.",
        "",
        "| case | L x d, T | K / s / A, batch | JAX steps/s | PyTorch steps/s | ratio | JAX tok/s | PyTorch tok/s "
        "| JAX GFLOP/s (% of matmul) | PyTorch GFLOP/s (% of matmul) | JAX compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['case']} | {r['layers']} x {r['hidden']}, {r['length']} | {r['K']} / {r['s']} / {r['A']}, "
            f"{r['batch']} | {r['jax_steps_per_s']:.3g} | {r['torch_steps_per_s']:.3g} | {r['speedup']:.2f}x | "
            f"{r['jax_tok_s']:.0f} | {r['torch_tok_s']:.0f} | {r['jax_gflops']:.1f} "
            f"({100 * r['jax_gflops'] / r['matmul_gflops']['jax']:.0f} %) | {r['torch_gflops']:.1f} "
            f"({100 * r['torch_gflops'] / r['matmul_gflops']['torch']:.0f} %) | {r['compile_s']:.0f} |"
        )
    lines += ["", "ratio = PyTorch step time / JAX step time (> 1: JAX faster). A > 1: JAX vmaps the adversaries "
              "(or, with chunk 1, runs them one after another inside the jitted step), PyTorch loops over them (as the "
              "official code would)."]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    for name, text in ((f"tar{suffix}.json", json.dumps(report, indent=2) + "\n"), (f"tar{suffix}.md", table + "\n")):
        write_text_atomic(args.out_dir / name, text)  # a killed run leaves the previous results intact
    print(f"wrote {args.out_dir}/tar{suffix}.{{json,md}}")


if __name__ == "__main__":
    main()
