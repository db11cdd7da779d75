"""Checkpoints and run folders: exact round trips into abstract targets, retention, crash leftovers, refusals."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.checkpoint import Checkpointer, RunDirError, open_run_dir, write_json_atomic


def _state(seed: int):
    rng = np.random.default_rng(seed)
    params = {"embed": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "layers": {"w": jnp.arange(6.0)}}
    opt = optax.contrib.schedule_free_adamw(1e-2, warmup_steps=2)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(seed + 1):  # a state with non-trivial moments and counters
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state}


def test_round_trip_is_exact_into_an_abstract_target(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    for step in range(4):
        ckpt.save(step, _state(step), {"phase": "tar", "step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3  # older steps are deleted
    want = _state(3)
    target = jax.eval_shape(lambda: _state(0))  # shapes and dtypes only, NamedTuples included
    got, meta = ckpt.restore(3, target)
    assert meta == {"phase": "tar", "step": 3} and ckpt.restore_meta(2)["step"] == 2
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt.save(3, _state(0), {"phase": "other"})  # an existing step is never overwritten
    ckpt.wait()
    assert ckpt.restore_meta(3)["phase"] == "tar"
    ckpt.close()


def test_an_unfinished_save_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, _state(0), {"step": 1})
    ckpt.close()
    partial = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234567"  # what a kill -9 mid-save leaves behind
    partial.mkdir()
    (partial / "junk").write_text("half written")
    again = Checkpointer(tmp_path / "ckpt")
    assert again.all_steps() == [1] and again.latest_step() == 1
    again.close()


def test_a_checkpoint_of_other_shapes_or_tree_is_refused_by_name(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(1, {"w": jnp.zeros(2), "b": jnp.ones(3)}, {})
    for target in ({"w": jnp.zeros(3), "b": jnp.ones(3)}, {"w": jnp.zeros(2)}):
        with pytest.raises(RunDirError, match="does not hold this run's state"):
            ckpt.restore(1, target)
    ckpt.close()


def test_run_folder_rules(tmp_path):
    path = tmp_path / "run"
    identity = {"method": "tar", "config": {"lr": 1e-3, "lrs": (1, 2)}}
    run = open_run_dir(path, identity)
    assert not run.resumed and json.loads((path / "run.json").read_text())["config"]["lrs"] == [1, 2]
    assert run.checkpoint_dir == path / "checkpoints" and run.model_dir == path / "model"
    run.close()
    with pytest.raises(RunDirError, match="already holds this run; pass --resume"):
        open_run_dir(path, identity)
    with open_run_dir(path, identity, resume=True) as again:
        assert again.resumed
    stored = (path / "run.json").read_bytes()
    with pytest.raises(RunDirError, match=r"holds another run \(config.lr: 0.001 != 0.002\)"):
        open_run_dir(path, {"method": "tar", "config": {"lr": 2e-3, "lrs": (1, 2)}}, resume=True)
    assert (path / "run.json").read_bytes() == stored
    (path / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="is not valid JSON"):
        open_run_dir(path, identity, resume=True)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("1")
    with pytest.raises(RunDirError, match="not empty and holds no jaxtar run"):
        open_run_dir(foreign, identity)
    assert [p.name for p in foreign.iterdir()] == ["x"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunDirError, match="is a file"):
        open_run_dir(tmp_path / "afile", identity)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not open_run_dir(empty, identity).resumed  # an empty folder is fine


def test_json_is_written_atomically(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
    write_json_atomic(tmp_path / "a.json", {"x": 3})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary files left
