"""Loading refuses bad input with clear errors and writes nothing; saving never clobbers; sharded loading."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch

from jaxtar.models import CheckpointError, LlamaConfig, create_model, from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, params = create_model(LlamaConfig.tiny(), seed=0)
    folder = save_pretrained(model, params, tmp_path_factory.mktemp("ok") / "tiny")
    return model, params, folder


def _copy_with(folder: Path, dest: Path, edit_tensors=None, edit_config=None) -> Path:
    dest.mkdir()
    config = json.loads((folder / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dest / "config.json").write_text(json.dumps(config))
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    safetensors.numpy.save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_pickle_only_folder_is_refused(saved, tmp_path):
    _, _, folder = saved
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle.*safetensors only"):
        from_pretrained(bad)


def test_missing_key_is_named(saved, tmp_path):
    bad = _copy_with(saved[2], tmp_path / "missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: \['model.layers.1.mlp.up_proj.weight'\]"):
        from_pretrained(bad)


def test_unexpected_key_is_named(saved, tmp_path):
    def add(t):
        t["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)

    with pytest.raises(CheckpointError, match="no rule accounts for.*q_norm"):
        from_pretrained(_copy_with(saved[2], tmp_path / "extra", add))


def test_wrong_shape_is_named_before_reading(saved, tmp_path):
    def reshape(t):
        t["model.layers.0.mlp.gate_proj.weight"] = np.zeros((128, 63), np.float32)

    with pytest.raises(CheckpointError, match=r"gate_proj.weight has shape \(128, 63\).*\(128, 64\)"):
        from_pretrained(_copy_with(saved[2], tmp_path / "shape", reshape))


def test_unknown_model_type_and_remote_code_are_refused(saved, tmp_path):
    bad = _copy_with(saved[2], tmp_path / "falcon", edit_config=lambda c: c.update(model_type="falcon"))
    with pytest.raises(CheckpointError, match="unsupported model_type 'falcon'.*llama"):
        from_pretrained(bad)
    remote = _copy_with(saved[2], tmp_path / "remote", edit_config=lambda c: c.update(auto_map={"AutoModel": "x.Y"}))
    with pytest.raises(CheckpointError, match="never runs code"):
        from_pretrained(remote)
    feature = _copy_with(saved[2], tmp_path / "feature", edit_config=lambda c: c.update(hidden_act="gelu"))
    with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
        from_pretrained(feature)


def test_truncated_safetensors_is_refused(saved, tmp_path):
    bad = _copy_with(saved[2], tmp_path / "truncated")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_pretrained(bad)


def test_unreachable_hub_id_says_how_to_provide_it_locally():
    with pytest.raises(CheckpointError, match="could not get 'no-such-org/no-such-model'.*huggingface-cli download"):
        from_pretrained("no-such-org/no-such-model")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        from_pretrained("./does/not/exist")


def test_save_refuses_to_overwrite_and_cleans_up_after_failure(saved, tmp_path):
    model, params, _ = saved
    target = tmp_path / "out"
    target.mkdir()
    (target / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_pretrained(model, params, target)
    assert sorted(p.name for p in target.iterdir()) == ["results.json"]

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(model, params, tmp_path / "new", tokenizer=BrokenTokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder, no temp folder


def test_loading_with_dtype_casts_every_leaf(saved):
    import jax.numpy as jnp

    _, params, folder = saved
    _, bf16 = from_pretrained(folder, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=1e-2, atol=1e-3),
        bf16,
        params,
    )


SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxtar.models import from_pretrained
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(8), ("fsdp",))

    def fsdp(path, shape):  # shard the largest axis that 8 divides, replicate the rest
        axes = [i for i in np.argsort(shape)[::-1] if shape[i] % 8 == 0]
        spec = [None] * len(shape)
        if axes:
            spec[axes[0]] = "fsdp"
        return NamedSharding(mesh, P(*spec))

    model, params = from_pretrained(sys.argv[1], sharding=fsdp)
    kernel = params["layers"]["gate_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    ids = jnp.asarray(np.load(sys.argv[2]))
    np.save(sys.argv[3], np.asarray(jax.jit(lambda p, i: model.apply(p, i).logits)(params, ids)))
    """
)


def test_sharded_loading_over_8_cpu_devices_gives_same_logits(saved, tmp_path):
    model, params, folder = saved
    ids = np.random.default_rng(0).integers(0, 256, (2, 10))
    np.save(tmp_path / "ids.npy", ids)
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy")],
        env=env,
        check=True,
        timeout=300,
    )
    expected = np.asarray(model.apply(params, ids).logits)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)
