"""The defence loop on a tiny synthetic problem: two phases (schedule-free AdamW, then AdamW, as TAR + SFT), resumed
from every kind of checkpoint (mid-phase, at the phase boundary, after the end) to bit-identical results."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.checkpoint import open_run_dir
from jaxtar.config import RunConfig
from jaxtar.defenses._loop import Phase, jit_step, run_phases, schedule_free_adamw, schedule_free_params, step_key

TARGET = jnp.asarray([1.0, -2.0, 0.5])


def _phases() -> list[Phase]:
    sf = schedule_free_adamw(0.1, 2, 0.9, 0.999, 1e-8, 0.0, 1.0)
    sgd = optax.adamw(0.05)

    def make(optimizer, name):
        def step(params, opt_state, batches, key, frozen):
            def loss(p):  # data and key both enter, as in TAR
                noise = 0.01 * jax.random.normal(key, p["w"].shape)
                return jnp.sum((p["w"] - batches["x"] - noise) ** 2) + jnp.sum((p["w"] - frozen["w"]) ** 2) * 0.1

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, {"loss": value}

        return jit_step(step)

    batches = lambda step: {"x": np.asarray(TARGET) + np.float32(0.1 * np.sin(step))}
    return [
        Phase("tar", 7, make(sf, "tar"), batches, sf.init, schedule_free_params, tokens_per_step=3),
        Phase("sft", 11, make(sgd, "sft"), batches, sgd.init),
    ]


def _run(path, resume=False, phases=None):
    params0 = {"w": jnp.zeros(3)}
    config = RunConfig(checkpoint_every=1, keep_checkpoints=50, progress=False, tensorboard=False)
    with open_run_dir(path, {"method": "synthetic"}, resume=resume) as run_dir:
        return run_phases(phases or _phases(), params0, params0, run_dir, config)[:4]


def _values(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("step_time_s", "tokens_per_s")} for r in rows]


def test_resume_from_any_checkpoint_is_bit_identical(tmp_path):
    final, steps, interrupted, last = _run(tmp_path / "full")
    assert steps == 11 and not interrupted and last["phase"] == "sft"
    assert float(jnp.sum((final["w"] - TARGET) ** 2)) < 0.6 * float(jnp.sum(TARGET**2))  # it trains
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 11 and '"tokens_per_s"' in lines[0] and '"tokens_per_s"' not in lines[-1]

    for keep in (3, 7, 9, 11):  # mid-TAR, the phase boundary, mid-SFT, finished
        run = tmp_path / f"from{keep}"
        shutil.copytree(tmp_path / "full", run)
        for ckpt in (run / "checkpoints").iterdir():
            if ckpt.name.isdigit() and int(ckpt.name) > keep:
                shutil.rmtree(ckpt)
        got, steps, interrupted, _ = _run(run, resume=True)
        assert steps == 11 and not interrupted
        np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(final["w"]))
        assert _values(run / "metrics.jsonl") == _values(tmp_path / "full" / "metrics.jsonl")  # no duplicates


def test_a_checkpoint_of_an_unknown_phase_is_refused(tmp_path):
    _run(tmp_path / "run")
    phases = _phases()
    phases[1] = Phase("other", 11, phases[1].step_fn, phases[1].batches_fn, phases[1].init_opt_state)
    with pytest.raises(ValueError, match="belongs to phase 'sft', this run has"):
        _run(tmp_path / "run", resume=True, phases=phases)


def test_step_keys_depend_on_seed_and_step_only():
    a, b = step_key(0, 5), step_key(0, 5)
    assert np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(step_key(0, 6)))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(step_key(1, 5)))


def _selecting_phases() -> list[Phase]:
    """The two phases, each validated every 2 steps; the first hands on (and the second exports) its best weights,
    scored by distance to a point the training passes by (so the best is not simply the last)."""
    tar, sft = _phases()
    probe = jnp.asarray([0.35, -0.37, 0.32])  # on the way to TARGET: sft passes near it (step 9), then moves on
    score = lambda params, opt_state: {"val_score": jnp.sum((params["w"] - probe) ** 2), "val_w0": params["w"][0]}
    select = {"validate": score, "validate_every": 2, "select": "val_score"}
    return [dataclasses.replace(tar, **select), dataclasses.replace(sft, **select)]


def test_best_validation_selection_is_exported_and_survives_resume(tmp_path):
    run_dir = tmp_path / "full"
    config = RunConfig(checkpoint_every=1, keep_checkpoints=50, progress=False, tensorboard=False)
    with open_run_dir(run_dir, {"method": "synthetic"}) as folder:
        result = run_phases(_selecting_phases(), {"w": jnp.zeros(3)}, {"w": jnp.zeros(3)}, folder, config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in rows if "val_score" in r]
    # validated at each phase's start, every 2 steps and at its end (the sft phase starts where tar stopped)
    assert all(r["validation"] for r in checks)
    assert [(r["phase"], r["step"]) for r in checks] == [("tar", 0), ("tar", 2), ("tar", 4), ("tar", 6), ("tar", 7),
                                                         ("sft", 7), ("sft", 9), ("sft", 11)]  # fmt: skip
    for name in ("tar", "sft"):
        best = min((r for r in checks if r["phase"] == name), key=lambda r: r["val_score"])
        assert result.selected[name].step == best["step"]
        assert result.selected[name].score == pytest.approx(best["val_score"], rel=1e-6)
    assert result.selected["sft"].step < 11  # the best is not the last, so selection really chose
    assert float(result.params["w"][0]) == pytest.approx(
        next(r["val_w0"] for r in checks if r["phase"] == "sft" and r["step"] == result.selected["sft"].step)
    )
    assert json.loads((run_dir / "result.json").read_text())["selected"]["sft"]["step"] == result.selected["sft"].step
    timing = ("step_time_s", "tokens_per_s")
    lines = lambda folder: [{k: v for k, v in json.loads(x).items() if k not in timing}
                            for x in (folder / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    # resumed with no checkpoint, mid-phase, at the boundary, inside sft, after the end: the same choice, and each
    # validation logged once (the boundary's next-phase validation and a start validation are redone, not repeated)
    for stop in (0, 3, 7, 8, 11):
        copy = tmp_path / f"from{stop}"
        shutil.copytree(run_dir, copy)
        for ckpt in (copy / "checkpoints").iterdir():
            if ckpt.name.isdigit() and int(ckpt.name) > stop:
                shutil.rmtree(ckpt)
        with open_run_dir(copy, {"method": "synthetic"}, resume=True) as folder:
            again = run_phases(_selecting_phases(), {"w": jnp.zeros(3)}, {"w": jnp.zeros(3)}, folder, config)
        assert again.selected == result.selected, stop
        np.testing.assert_array_equal(np.asarray(again.params["w"]), np.asarray(result.params["w"]))
        assert lines(copy) == lines(run_dir), stop


def test_the_loop_donates_its_weights_and_keeps_the_callers(tmp_path):
    """Each step runs in place (`jit_step(...).donating`): the loop's own weights are deleted after every step, the
    caller's starting weights (and TAR's frozen copy of them) are not, and the result equals the plain steps'."""
    phases = _phases()
    seen = []
    for phase in phases:
        donating = phase.step_fn.donating

        def spy(params, *rest, _donating=donating):
            out = _donating(params, *rest)
            seen.append(params["w"])
            return out

        phase.step_fn.donating = spy
    params0 = {"w": jnp.zeros(3)}
    # no checkpoint in between: on CPU a checkpoint's host view of the weights keeps XLA from reusing their buffer
    config = RunConfig(checkpoint_every=100, progress=False, tensorboard=False)
    with open_run_dir(tmp_path / "donated", {"method": "synthetic"}) as run_dir:
        donated = run_phases(phases, params0, params0, run_dir, config)
    assert len(seen) == 11 and all(w.is_deleted() for w in seen)  # every step updated its inputs in place
    assert not params0["w"].is_deleted()
    plain = [dataclasses.replace(p, step_fn=jit_step(p.step_fn.jitted.__wrapped__)) for p in _phases()]
    for p in plain:
        del p.step_fn.donating  # the loop falls back to the plain step
    with open_run_dir(tmp_path / "plain", {"method": "synthetic"}) as run_dir:
        reference = run_phases(plain, params0, params0, run_dir, config)
    np.testing.assert_array_equal(np.asarray(donated.params["w"]), np.asarray(reference.params["w"]))
