"""Issue 24: exports never lose or clobber another writer's files; loading refuses shard indexes that point outside
the folder or disagree with their shards, wrongly typed configs, integer tensors for float params, NaN/inf weights
(unless allowed), loads larger than host memory, and never looks a mistyped local path up on the Hub."""

import json
import math
import os
import shutil
import struct
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxtar.errors import CheckpointError, RunDirError
from jaxtar.models import GPT2Config, LlamaConfig, create_model, from_pretrained, save_pretrained
from jaxtar.models.hf_checks import available_host_memory, read_header


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, params = create_model(LlamaConfig.tiny(), seed=0)
    folder = save_pretrained(model, params, tmp_path_factory.mktemp("ok") / "tiny")
    return model, params, folder


@pytest.fixture(scope="module")
def sharded(saved, tmp_path_factory):
    model, params, _ = saved
    return save_pretrained(model, params, tmp_path_factory.mktemp("sharded") / "tiny", max_shard_bytes=100_000)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_params(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _edit_config(folder: Path, dest: Path, edit) -> Path:
    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(edit(config)))
    return dest


def _edit_tensors(folder: Path, dest: Path, edit) -> Path:
    shutil.copytree(folder, dest)
    tensors = safetensors.numpy.load_file(dest / "model.safetensors")
    edit(tensors)
    safetensors.numpy.save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


# 1. Export safety -------------------------------------------------------------------------------------------------


class _Tokenizer:
    """Stands in for a tokenizer: writes a marker file, then runs ``hook`` (mid-export, before the commit)."""

    def __init__(self, name: str, hook=None):
        self.name, self.hook = name, hook

    def save_pretrained(self, path: str) -> None:
        (Path(path) / "tokenizer_config.json").write_text(json.dumps({"writer": self.name}))
        if self.hook is not None:
            self.hook()


def test_two_concurrent_exports_into_one_new_folder_one_wins(tmp_path):
    models = {name: create_model(LlamaConfig.tiny(), seed=seed) for name, seed in (("a", 0), ("b", 1))}
    target = tmp_path / "new"
    barrier = threading.Barrier(2, timeout=120)  # both exports are staged before either commits
    outcome: dict[str, BaseException | None] = {}

    def export(name: str) -> None:
        model, params = models[name]
        try:
            save_pretrained(model, params, target, tokenizer=_Tokenizer(name, barrier.wait))
            outcome[name] = None
        except BaseException as err:  # noqa: BLE001 - recorded for the assertions
            outcome[name] = err

    threads = [threading.Thread(target=export, args=(name,)) for name in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, err in outcome.items() if err is None]
    assert len(winners) == 1, outcome
    loser = next(err for err in outcome.values() if err is not None)
    assert isinstance(loser, RunDirError) and "no longer empty" in str(loser)
    assert json.loads((target / "tokenizer_config.json").read_text()) == {"writer": winners[0]}
    assert _same_params(from_pretrained(target)[1], models[winners[0]][1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]  # no temporary or set-aside folders


@pytest.mark.parametrize("exists", [False, True], ids=["absent", "empty"])
def test_a_file_written_into_the_target_during_export_survives(saved, tmp_path, exists):
    model, params, _ = saved
    target = tmp_path / "out"
    if exists:
        target.mkdir()

    def other_writer():
        target.mkdir(exist_ok=True)
        (target / "results.json").write_text('{"theirs": 1}')

    with pytest.raises(RunDirError, match="no longer empty"):
        save_pretrained(model, params, target, tokenizer=_Tokenizer("us", other_writer))
    assert _files(target) == {"results.json": b'{"theirs": 1}'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlink_to_an_empty_folder_is_written_through(saved, tmp_path):
    model, params, _ = saved
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    assert save_pretrained(model, params, link) == link
    assert link.is_symlink() and (tmp_path / "real" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert _same_params(from_pretrained(link)[1], params)


def test_overwrite_replaces_only_a_previous_export(saved, tmp_path):
    model, params, _ = saved
    out = save_pretrained(model, params, tmp_path / "out", max_shard_bytes=100_000)  # sharded
    (out / "notes.txt").write_text("mine")
    _, new_params = create_model(LlamaConfig.tiny(), seed=1)
    save_pretrained(model, new_params, out, overwrite=True)  # single file now
    assert sorted(_files(out)) == ["config.json", "model.safetensors", "notes.txt"]  # old shards gone, notes kept
    assert (out / "notes.txt").read_text() == "mine"
    assert _same_params(from_pretrained(out)[1], new_params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")
    with pytest.raises(RunDirError, match="not a model export"):
        save_pretrained(model, params, foreign, overwrite=True)
    assert _files(foreign) == {"results.json": b"{}"}


def test_export_below_a_file_or_failing_midway_writes_nothing(saved, tmp_path):
    model, params, _ = saved
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "model"
    with pytest.raises(CheckpointError, match=f"cannot write {out}: {tmp_path / 'afile'} is not a folder"):
        save_pretrained(model, params, out)
    assert _files(tmp_path) == {"afile": b"x"}

    def fail():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(model, params, tmp_path / "new" / "deeper" / "model", tokenizer=_Tokenizer("us", fail))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # parents it made are gone too


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_refused(saved, tmp_path):
    model, params, _ = saved
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(CheckpointError, match=f"cannot write {locked / 'model'}: {locked} is not writable"):
            save_pretrained(model, params, locked / "model")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# 2. Shard index ---------------------------------------------------------------------------------------------------


def _edit_index(sharded: Path, dest: Path, edit) -> Path:
    shutil.copytree(sharded, dest)
    index = dest / "model.safetensors.index.json"
    index.write_text(edit(json.loads(index.read_text())))
    return dest


def test_index_without_weight_map_or_malformed_is_named(sharded, tmp_path):
    bad = _edit_index(sharded, tmp_path / "nomap", lambda i: json.dumps({"metadata": i["metadata"]}))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json has no weight_map"):
        from_pretrained(bad)
    bad = _edit_index(sharded, tmp_path / "malformed", lambda i: json.dumps(i)[:-5])
    with pytest.raises(CheckpointError, match="model.safetensors.index.json is not valid JSON"):
        from_pretrained(bad)


def test_index_key_missing_from_its_shard_is_named(sharded, tmp_path):
    def move(index):
        shards = sorted(set(index["weight_map"].values()))
        key = next(k for k, v in index["weight_map"].items() if v == shards[0])
        index["weight_map"][key] = shards[1]
        return json.dumps(index)

    with pytest.raises(CheckpointError, match=r"index.json puts \S+ in \S+model-00002-of-\d+.safetensors, which"):
        from_pretrained(_edit_index(sharded, tmp_path / "moved", move))


@pytest.mark.parametrize("absolute", [False, True], ids=["dotdot", "absolute"])
def test_index_naming_a_file_outside_the_folder_is_refused(sharded, tmp_path, absolute):
    (tmp_path / "outside").mkdir()
    first = "model-00001-of-" + sorted(sharded.glob("model-*"))[-1].name.split("-of-")[1]
    secret = tmp_path / "outside" / "secret.safetensors"
    shutil.copy(sharded / first, secret)
    name = str(secret) if absolute else "../outside/secret.safetensors"

    def redirect(index):
        index["weight_map"] = {k: name if v == first else v for k, v in index["weight_map"].items()}
        return json.dumps(index)

    with pytest.raises(CheckpointError, match="outside the model folder"):
        from_pretrained(_edit_index(sharded, tmp_path / "ckpt", redirect))


def test_shard_keys_absent_from_the_index_are_refused(sharded, tmp_path):
    bad = tmp_path / "extra"
    shutil.copytree(sharded, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    tensors = safetensors.numpy.load_file(shard)
    tensors["smuggled.weight"] = np.ones(4, np.float32)
    safetensors.numpy.save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"holds \['smuggled.weight'\], not in .*index.json"):
        from_pretrained(bad)


# 3. config.json ---------------------------------------------------------------------------------------------------


def test_config_that_is_not_an_object_is_refused(saved, tmp_path):
    bad = tmp_path / "list"
    shutil.copytree(saved[2], bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json must hold a JSON object, not a list"):
        from_pretrained(bad)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", "two", "num_hidden_layers must be an integer, got 'two'"),
        ("vocab_size", 256.0, "vocab_size must be an integer"),
        ("max_position_embeddings", -1, "max_position_embeddings must be >= 1"),
        ("rms_norm_eps", "tiny", "rms_norm_eps must be a finite number"),
        ("tie_word_embeddings", "false", "tie_word_embeddings must be true or false"),
        ("eos_token_id", [2, "x"], "eos_token_id must be an integer token id"),
    ],
)
def test_wrongly_typed_config_field_is_named(saved, tmp_path, field, value, message):
    bad = _edit_config(saved[2], tmp_path / "bad", lambda c: {**c, field: value})
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        from_pretrained(bad)


def test_wrongly_typed_gpt2_config_field_is_named(tmp_path):
    model, params = create_model(GPT2Config.tiny(), seed=0)
    folder = save_pretrained(model, params, tmp_path / "gpt2")
    bad = _edit_config(folder, tmp_path / "bad", lambda c: {**c, "n_layer": 2.0})
    with pytest.raises(CheckpointError, match="config.json: n_layer must be an integer, got 2.0"):
        from_pretrained(bad)


# 4. dtype kinds and non-finite weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.bool_])
def test_integer_or_bool_tensor_for_a_float_param_is_refused(saved, tmp_path, dtype):
    key = "model.layers.0.mlp.up_proj.weight"

    def to_int(t):
        t[key] = np.ones_like(t[key], dtype=dtype)

    with pytest.raises(CheckpointError, match=f"{key} is stored as {np.dtype(dtype)}, an integer/bool type"):
        from_pretrained(_edit_tensors(saved[2], tmp_path / "int", to_int))


def test_nonfinite_weights_are_refused_unless_allowed(saved, tmp_path):
    def poison(t):
        t["model.norm.weight"][3] = np.nan
        t["model.layers.1.mlp.down_proj.weight"][0, 0] = np.inf

    bad = _edit_tensors(saved[2], tmp_path / "nan", poison)
    with pytest.raises(CheckpointError, match=r"model.norm.weight holds NaN or inf.*allow_nonfinite"):
        from_pretrained(bad)
    with pytest.warns(UserWarning, match=r"NaN or inf values in 2 tensors"):
        _, params = from_pretrained(bad, allow_nonfinite=True)
    assert np.isnan(np.asarray(params["final_norm"]["scale"])[3])


# 5. Host memory and byte ranges -----------------------------------------------------------------------------------


def test_load_larger_than_host_memory_is_refused_before_reading(tmp_path):
    avail = available_host_memory()
    if avail is None:
        pytest.skip("available host memory unknown here")
    config = LlamaConfig.tiny(tie_word_embeddings=True)
    model, params = create_model(config, seed=0)
    small = save_pretrained(model, params, tmp_path / "small")
    vocab = math.ceil(2 * avail / (config.hidden_size * 4))  # the embedding alone: twice what is available
    header, offset = {}, 0
    huge = "model.embed_tokens.weight"
    entries = sorted(read_header(small / "model.safetensors").items(), key=lambda kv: kv[0] == huge)  # huge last
    for key, (dtype, shape) in entries:
        shape = (vocab, shape[1]) if key == huge else shape
        nbytes = math.prod(shape) * 4
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**json.loads((small / "config.json").read_text()),
                                                    "vocab_size": vocab}))  # fmt: skip
    blob = json.dumps(header).encode()
    weights = folder / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", len(blob)) + blob)
    try:
        os.truncate(weights, 8 + len(blob) + offset)  # sparse: nothing is written, nothing may be read
    except OSError as err:
        pytest.skip(f"no sparse file of {offset} bytes here: {err}")
    with pytest.raises(CheckpointError, match=rf"{weights}: loading needs .* GiB of host memory .* only .* GiB"):
        from_pretrained(folder)


def test_tensor_bytes_beyond_the_file_are_named(saved, tmp_path):
    bad = tmp_path / "short"
    shutil.copytree(saved[2], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable .*: \S+ needs bytes \d+\.\.\d+"):
        from_pretrained(bad)


# 6. Local paths are not Hub ids -----------------------------------------------------------------------------------


def test_missing_local_path_is_not_looked_up_on_the_hub(saved, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(name, **kwargs):
        calls.append(name)
        return str(saved[2])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match=r"no such checkpoint folder or file: runs/tar \(the folder runs/ exists"):
        from_pretrained("runs/tar")
    with pytest.raises(CheckpointError, match="no such checkpoint folder or file: models/tiny.gguf"):
        from_pretrained("models/tiny.gguf")
    assert calls == []
    model, _ = from_pretrained("owner/name")  # a genuine Hub id still goes to the Hub (here: a stand-in)
    assert calls == ["owner/name"] and model.config == saved[0].config
