"""The memory planner against XLA's own numbers (compiled.memory_analysis) and its plan choices."""

from __future__ import annotations

import pytest

from jaxtar.meta.estimators import Estimator
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
