"""TAR's switches towards the official code (docs/faithfulness.md): the representation loss's frozen anchor
(``tar.retain_anchor``: start, base via the export's provenance, or a model), the tamper-loss data held out from
several sources (``data.tamper_roles``), and which schedule-free iterate is handed on and exported
(``tar.export_iterate``)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from jaxtar.config import load_config
from jaxtar.data.examples import Examples
from jaxtar.defenses import TarData, _inputs, build_tar_phases, load_model, run_random_mapping, run_tar, train_suite
from jaxtar.defenses._inputs import checkpoint_sha256
from jaxtar.defenses._steps import schedule_free_adamw
from jaxtar.defenses.provenance import PROVENANCE_FILE
from jaxtar.errors import InputError


def _config(tar_overrides, tmp_path, name, **overrides):
    return load_config("toy", {**tar_overrides, "run.output_dir": str(tmp_path / name), "tar.outer_steps": 1,
                               "random_mapping.steps": 1, "random_mapping.warmup_steps": 0, "random_mapping.lr": 1e-2,
                               "random_mapping.forget_batch_size": 8,
                               "random_mapping.retain_batch_size": 8, **overrides})  # fmt: skip


def _first_metrics(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_retain_anchor_base_is_the_model_the_random_mapped_export_started_from(tar_overrides, toy_base_dir, tmp_path):
    rm = run_random_mapping(_config(tar_overrides, tmp_path, "rm"))
    record = json.loads((rm.model_dir / PROVENANCE_FILE).read_text())
    assert record["method"] == "random_mapping"
    assert record["started_from"] == str(toy_base_dir.resolve())
    assert record["started_from_sha256"] == checkpoint_sha256(toy_base_dir)

    start = run_tar(_config(tar_overrides, tmp_path, "start", **{"model.path": str(rm.model_dir)}))
    base = run_tar(_config(tar_overrides, tmp_path, "base", **{"model.path": str(rm.model_dir),
                                                                "tar.retain_anchor": "base"}))  # fmt: skip
    # Step 1's retain loss is taken at the starting weights: zero distance to themselves, not to the original.
    assert _first_metrics(start.output_dir)["representation"] < 1e-5
    assert _first_metrics(base.output_dir)["representation"] > 1e-2
    identity = json.loads((base.output_dir / "run.json").read_text())["inputs"]
    assert identity["anchor_sha256"] == checkpoint_sha256(toy_base_dir)  # a resume with another anchor is refused
    assert "anchor_sha256" not in json.loads((start.output_dir / "run.json").read_text())["inputs"]
    # A path names the same anchor as `base` did: the same first-step metrics.
    named = {"model.path": str(rm.model_dir), "tar.retain_anchor": str(toy_base_dir)}
    by_path = run_tar(_config(tar_overrides, tmp_path, "path", **named))
    assert _first_metrics(by_path.output_dir)["representation"] == pytest.approx(
        _first_metrics(base.output_dir)["representation"], rel=1e-6
    )


def test_retain_anchor_refuses_a_model_without_provenance_or_of_another_shape(tar_overrides, tmp_path):
    with pytest.raises(InputError, match=PROVENANCE_FILE):
        run_tar(_config(tar_overrides, tmp_path, "a", **{"tar.retain_anchor": "base"}))
    with pytest.raises(InputError, match="same architecture"):
        run_tar(_config(tar_overrides, tmp_path, "b", **{"tar.retain_anchor": "toy"}))  # the shipped, larger model
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before the run folder


@pytest.fixture(scope="module")
def loaded(tar_overrides):
    config = load_config("toy", tar_overrides)
    return load_model(config.model)


@pytest.mark.parametrize("iterate", ["x", "y"])
def test_export_iterate_hands_on_the_average_or_the_gradient_point(tar_overrides, loaded, iterate):
    config = load_config("toy", {**tar_overrides, "tar.export_iterate": iterate})
    model, params, tokenizer = loaded
    phase = build_tar_phases(config, model, params, tokenizer)[0][0]
    opt_state = phase.init_opt_state(params)
    grads = jax.tree.map(lambda x: 0.01 * np.ones_like(x), params)
    optimizer = schedule_free_adamw(1e-2, 0, 0.9, 0.999, 1e-8, 0.0, None)  # TAR's outer optimiser
    for _ in range(3):  # stepped by hand: y and x drift apart
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    exported = phase.export_params(params, opt_state)
    x = optax.contrib.schedule_free_eval_params(opt_state[1], params)
    same_as = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(np.array_equal(u, v)), a, b)))
    assert same_as(exported, params if iterate == "y" else x)
    assert not same_as(params, x)  # so the two choices really differ


def test_tamper_data_is_held_out_from_every_tamper_role(tar_overrides, loaded):
    model, params, tokenizer = loaded
    config = load_config("toy", {**tar_overrides, "tar.setting": "bio", "data.forget_alt": "toy:forget_alt",
                                 "data.tamper_roles": ["forget", "forget_alt"]})  # fmt: skip
    one = load_config("toy", {**tar_overrides, "tar.setting": "bio", "data.forget_alt": "toy:forget_alt"})
    both, forget_only = (TarData(c, tokenizer, train_suite(c.tar)) for c in (config, one))
    rows = lambda stream: {tuple(r) for r in stream.rows["input_ids"]}
    tamper, alt = rows(both.streams["tamper"]), rows(both.streams["forget_alt"])
    assert rows(forget_only.streams["tamper"]) < tamper  # the forget share, plus camel-bio's (here the toy alt)
    held_alt = tamper - rows(forget_only.streams["tamper"])
    assert held_alt and not held_alt & alt and not tamper & rows(both.streams["forget"])  # never trained on
    assert alt | held_alt == rows(forget_only.streams["forget_alt"])  # every alt row on exactly one side
    assert len(held_alt) == pytest.approx(0.2 * len(alt | held_alt), abs=1)


def test_a_tar_run_reads_only_the_rows_its_batches_use_from_a_file(tmp_path, tar_overrides, loaded, monkeypatch):
    """The retain role from a file of 3000 rows: building the run's data reads 2 of them per use (one to check the
    kind, one to learn the tokenised columns); a step's batches read at most their own rows. The forget role is a
    tamper role: its held-out split reads all its texts (the toy world's, in memory)."""
    from jaxtar.toy import toy_world

    retain = toy_world(0).retain_texts
    path = tmp_path / "retain.jsonl"
    path.write_text(
        "".join(json.dumps({"txt_chunk": retain[i % len(retain)], "label": False}) + "\n" for i in range(3000))
    )
    config = load_config("toy", {**tar_overrides, "data.retain": f"pile-bio-retain@{path}"})
    opened: dict[str, list[Examples]] = {}
    real = _inputs.role_examples

    def recording(source, data, kind="text"):
        examples = real(source, data, kind)
        opened.setdefault(source.split("@")[0], []).append(examples)
        return examples

    monkeypatch.setattr(_inputs, "role_examples", recording)
    data = TarData(config, loaded[2], train_suite(config.tar))
    from_file = opened["pile-bio-retain"]
    assert len(from_file) >= 1 and all(len(e) == 3000 for e in from_file)
    assert [e.reads for e in from_file] == [2] * len(from_file)
    batches = data.batches(0)
    tar = config.tar
    uses = tar.retain_batch_size + tar.adversaries_per_step * tar.inner_steps * tar.adversary_batch_size
    read = sum(e.reads for e in from_file) - 2 * len(from_file)
    assert 0 < read <= uses, (read, uses)
    assert np.asarray(batches["retain"]["input_ids"]).shape[0] == tar.retain_batch_size
    assert opened["toy:forget"][0].reads >= len(toy_world(0).forget_texts)  # the split read the tamper role


def test_tamper_roles_must_be_set(tar_overrides, loaded):
    model, params, tokenizer = loaded
    config = load_config("toy", {**tar_overrides, "data.tamper_roles": ["forget", "forget_alt"]})
    with pytest.raises(InputError, match="data.forget_alt"):
        TarData(config, tokenizer, train_suite(config.tar))


def test_official_presets_differ_from_ours_only_in_the_parity_switches():
    import yaml

    from jaxtar.config.defence import PRESET_DIR

    for setting in ("bio", "cyber"):
        ours, official = (load_config(f"llama3-8b-{setting}{s}") for s in ("", "-official"))
        changed = {
            f"{section}.{f.name}"
            for section in ("model", "data", "run", "tar", "random_mapping", "baseline")
            for f in dataclasses.fields(getattr(ours, section))
            if getattr(getattr(ours, section), f.name) != getattr(getattr(official, section), f.name)
        }
        assert changed == {"tar.retain_anchor", "tar.unmasked_losses", "tar.export_iterate"}
        assert official.tar.retain_anchor == "meta-llama/Meta-Llama-3-8B-Instruct"
        assert official.tar.unmasked_losses and official.tar.export_iterate == "y"
        assert yaml.safe_load((PRESET_DIR / f"llama3-8b-{setting}-official.yaml").read_text())  # a plain preset
    bio = load_config("llama3-8b-bio")
    assert bio.data.tamper_roles == ("forget", "forget_alt") and bio.data.heldout_fraction == 0.2
    assert bio.data.retain == "pile-bio-retain*2 + magpie-bio-filtered*1"  # 2/3 raw text, 1/3 instructions
    assert load_config("llama3-8b-cyber").data.retain == "pile-bio-retain + magpie-bio-filtered"  # all of both
