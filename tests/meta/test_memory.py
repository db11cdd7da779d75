"""The memory planner against XLA's own numbers (compiled.memory_analysis) and its plan choices."""

from __future__ import annotations

import pytest

from jaxtar.meta import Estimator
from jaxtar.meta.memory import Workload, choose_plan, compiled_peak_bytes, predict_peak_bytes


@pytest.mark.parametrize("case, estimator, every", [("llama_exact", "exact", 1), ("llama_tar", "tar", 2)])
def test_prediction_matches_compiled_memory(request, llama, case, estimator, every):
    compiled = request.getfixturevalue(case)["compiled"]
    optimizer = request.getfixturevalue(case)["adversary"].optimizer
    work = Workload.for_llama(
        llama["config"],
        batch_size=llama["B"],
        seq_len=llama["T"],
        steps=llama["K"],
        records=llama["K"] // every,
        optimizer=optimizer,
    )
    predicted = predict_peak_bytes(work, Estimator(estimator)).total
    measured = compiled_peak_bytes(compiled)
    assert 0.5 < predicted / measured < 2.0, (predicted, measured)


def test_exact_needs_more_than_tar(llama_exact, llama_tar):
    assert compiled_peak_bytes(llama_exact["compiled"]) > compiled_peak_bytes(llama_tar["compiled"])


def test_plan_choice():
    from jaxtar.models import LlamaConfig

    cfg = LlamaConfig.smollm2_135m()
    work = Workload.for_llama(cfg, batch_size=8, seq_len=256, steps=64, records=16, adversaries=4)
    estimates = {e: predict_peak_bytes(work, Estimator(e), chunk=1).total for e in ("exact", "mixed", "remat", "tar")}
    assert estimates["exact"] > estimates["mixed"] > estimates["remat"] > estimates["tar"]
    sqrt = predict_peak_bytes(work, Estimator("remat", two_level=True), chunk=1).total
    assert sqrt < estimates["remat"]
    big = choose_plan(work, 10**14)  # everything fits: cheapest FLOPs, all adversaries at once
    assert big.estimator == Estimator("exact") and big.chunk == 4
    mid = choose_plan(work, int(estimates["remat"] / 0.85) + 1)  # only per-step remat with one adversary fits
    assert mid.estimator == Estimator("remat") and mid.chunk == 1
    assert choose_plan(work, int(estimates["tar"] * 1.5), exact=False).estimator == Estimator("tar")
    with pytest.raises(ValueError, match="no plan fits"):
        choose_plan(work, 10**6)


SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def _meta_bytes(cfg, adversary, ids, tamper, schedule, estimator) -> int:
    """XLA's allocation for the meta-gradient of a tiny Llama attacked with next-token CE (also the tamper loss)."""
    import jax

    from jaxtar.attacks.unroll import model_attack_problem
    from jaxtar.meta import meta_value_and_grad
    from jaxtar.models import create_model

    model, params = create_model(cfg, seed=0)

    def ce(p, x, lora):
        logits = model.apply(p, x, lora=lora).logits[:, :-1]
        return -jax.numpy.mean(jax.numpy.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], axis=-1))

    problem = model_attack_problem(adversary, ce, ce, model=model)
    f = lambda p: meta_value_and_grad(problem, p, ids, tamper, adversary=adversary, key=jax.random.key(0),
                                      schedule=schedule, estimator=estimator).grads  # fmt: skip
    return compiled_peak_bytes(jax.jit(f).lower(params).compile())


def _ids(cfg, k: int, b: int, t: int):
    import jax

    ids = jax.random.randint(jax.random.key(1), (k, b, t), 0, cfg.vocab_size)
    return ids, jax.random.randint(jax.random.key(2), (b, t), 0, cfg.vocab_size)


def test_remat_policies_and_two_level_against_compiled_memory():
    """Two-level remat stores fewer step inputs than per-step remat (K = 16, records every 4 steps: groups of one
    4-step segment), a dots-saving policy stores more, and the planner follows all three."""
    from jaxtar.attacks.adversary import Adversary
    from jaxtar.meta import TamperSchedule
    from jaxtar.models import LlamaConfig

    cfg = LlamaConfig.tiny(**SMALL)
    k, b, t = 16, 2, 16
    ids, tamper = _ids(cfg, k, b, t)
    adv = Adversary("sgd", lr=0.1, steps=k)  # SGD: the quickest of these second-order programs to compile
    work = Workload.for_llama(cfg, batch_size=b, seq_len=t, steps=k, records=k // 4, optimizer="sgd")
    measured, predicted = {}, {}
    for name, est in {
        "per_step": Estimator("remat"),
        "two_level": Estimator("remat", two_level=True),
        "dots": Estimator("remat", remat_policy="dots_with_no_batch_dims_saveable"),
    }.items():
        measured[name] = _meta_bytes(cfg, adv, ids, tamper, TamperSchedule.tar(every=4), est)
        predicted[name] = predict_peak_bytes(work, est).total
    carry = 4 * work.trainable_params  # a step's input: the float32 params (SGD keeps no state)
    assert measured["two_level"] < measured["per_step"] - 4 * carry, measured  # 8 step inputs fewer, at least 4
    assert measured["dots"] > measured["per_step"] + k * work.step_dot_bytes / 2, measured
    assert predicted["two_level"] < predicted["per_step"] < predicted["dots"]
    for name in measured:
        assert 0.6 < predicted[name] / measured[name] < 1.5, (name, predicted, measured)


def test_dot_sizes_default_to_fractions_of_the_activations():
    import dataclasses

    work = Workload(10**6, 10**6, 10**7, 10**7, steps=8, records=2, state_factor=2)
    given = dataclasses.replace(work, step_dot_bytes=6_500_000, step_batched_dot_bytes=2_500_000,
                                tamper_dot_bytes=4_000_000, tamper_batched_dot_bytes=1_000_000)  # fmt: skip
    dots = Estimator("remat", remat_policy="dots_saveable")
    for est in (Estimator("exact"), Estimator("truncated", truncation=3), dots):
        assert predict_peak_bytes(work, est).total == predict_peak_bytes(given, est).total
    more = dataclasses.replace(given, step_dot_bytes=7_500_000, tamper_dot_bytes=5_000_000)
    grown = predict_peak_bytes(more, Estimator("exact")).total - predict_peak_bytes(given, Estimator("exact")).total
    assert grown == 8 * 1_000_000 + 2 * 1_000_000  # K steps and m records each keep their dot outputs


def test_mixed_recomputes_its_tamper_records():
    """`mixed` keeps only inputs per step and per record: records every step cost little more than one record
    (measured 1.2x at d=64; 1.9x when the records stored their residuals), as the planner assumes."""
    from jaxtar.attacks.adversary import Adversary
    from jaxtar.meta import TamperSchedule
    from jaxtar.models import LlamaConfig

    cfg = LlamaConfig.tiny()  # d=64, vocab 256
    k, b, t = 8, 4, 32
    ids, tamper = _ids(cfg, k, b, t)
    adv = Adversary("adamw", lr=1e-3, steps=k)
    measured, predicted = {}, {}
    for records in (1, k):
        sched = TamperSchedule.tar(every=k // records)
        measured[records] = _meta_bytes(cfg, adv, ids, tamper, sched, Estimator("mixed"))
        work = Workload.for_llama(cfg, batch_size=b, seq_len=t, steps=k, records=records)
        predicted[records] = predict_peak_bytes(work, Estimator("mixed")).total
    assert measured[k] < 1.35 * measured[1], measured
    for records in measured:
        assert 0.5 < predicted[records] / measured[records] < 2.0, (predicted, measured)


def test_tar_memory_does_not_grow_with_the_attack_length():
    """TAR's estimator stores nothing per step (docs/meta-gradients.md#cost-model: the memory of a plain attack);
    remat stores each step's inputs. K = 4 -> 16 on a tiny Llama: tar grew by 1 param-size array when measured,
    remat by ~52."""
    from jaxtar.attacks.adversary import Adversary
    from jaxtar.meta import TamperSchedule
    from jaxtar.models import LlamaConfig

    cfg = LlamaConfig.tiny(**SMALL)
    param_bytes = 4 * Workload.for_llama(cfg, batch_size=2, seq_len=16, steps=4).trainable_params
    measured = {}
    for k in (4, 16):
        ids, _ = _ids(cfg, k, 2, 16)
        adv, sched = Adversary("adamw", lr=1e-3, steps=k), TamperSchedule.tar(every=4)
        for name in ("tar", "remat"):
            measured[name, k] = _meta_bytes(cfg, adv, ids, ids[0], sched, Estimator(name))
    assert measured["tar", 16] - measured["tar", 4] < 2 * param_bytes, measured
    assert measured["remat", 16] - measured["remat", 4] > 12 * 3 * param_bytes, measured  # 12 more AdamW carries
