"""A shard index names files inside its model folder only, judged by the NAME as written (relative, no '..'); the
files it names may be symlinks to anywhere, as in the Hugging Face cache (snapshots/<rev>/* -> ../../blobs/<hash>)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxtar.errors import CheckpointError, JaxtarError, exit_code
from jaxtar.models import LlamaConfig, create_model, from_pretrained, save_pretrained

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    model, params = create_model(LlamaConfig.tiny(), seed=3)
    folder = save_pretrained(model, params, tmp_path_factory.mktemp("shards") / "tiny", max_shard_bytes=100_000)
    assert len(list(folder.glob("model-*.safetensors"))) >= 3
    return folder, params


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _first_shard(folder: Path) -> str:
    return sorted(p.name for p in folder.glob("model-*.safetensors"))[0]


@pytest.mark.parametrize(
    "name",
    ["../outside/stolen.safetensors", "sub/../../outside/stolen.safetensors", "ABSOLUTE", "./../outside/x",
     "C:\\outside\\stolen.safetensors", "", "a\0b.safetensors", "sub/../FIRST"],
    ids=["dotdot", "nested-dotdot", "absolute", "dot-dotdot", "windows", "empty", "nul", "dotdot-back-inside"],
)  # fmt: skip
def test_index_naming_a_file_outside_the_folder_is_refused(sharded, tmp_path, name):
    """Every name that leaves the folder lexically is refused before any file is opened, even when the file it
    names exists and holds exactly the right tensors, and even when '..' would come back inside."""
    src, _ = sharded
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    first = _first_shard(folder)
    (tmp_path / "outside").mkdir()
    stolen = tmp_path / "outside" / "stolen.safetensors"
    shutil.copy(folder / first, stolen)
    (folder / "sub").mkdir()
    name = {"ABSOLUTE": str(stolen), "sub/../FIRST": f"sub/../{first}"}.get(name, name)
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: (name if v == first else v) for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder") as err:
        from_pretrained(folder)
    assert isinstance(err.value, JaxtarError) and exit_code(err.value) == 2
    assert repr(name) in str(err.value)


def _hf_cache_layout(src: Path, root: Path) -> Path:
    """src's files as the Hugging Face cache stores them: blobs named by content hash, a snapshot of symlinks."""
    blobs, snapshot = root / "blobs", root / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, blobs / digest)
        os.symlink(Path("..") / ".." / "blobs" / digest, snapshot / path.name)
    return snapshot


def test_hf_cache_symlinked_shards_and_index_load(sharded, tmp_path):
    """Index, config and every shard are relative symlinks out of the snapshot folder ('../../blobs/<hash>'):
    the names are inside the folder, so the load follows the links and gives the saved weights bit for bit."""
    src, params = sharded
    snapshot = _hf_cache_layout(src, tmp_path / "models--org--tiny")
    assert all(p.is_symlink() for p in snapshot.iterdir())
    assert os.readlink(snapshot / INDEX).startswith("../../blobs/")
    model, loaded = from_pretrained(snapshot)
    assert model.config == LlamaConfig.tiny()
    assert _leaves_equal(loaded, params)


def test_shard_in_a_symlinked_subfolder_loads(sharded, tmp_path):
    """A name with a sub-folder ('weights/model-...') is inside the folder even when 'weights' links elsewhere."""
    src, params = sharded
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    elsewhere = tmp_path / "disk2"
    elsewhere.mkdir()
    first = _first_shard(folder)
    shutil.move(folder / first, elsewhere / first)
    os.symlink(elsewhere, folder / "weights")
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: (f"weights/{first}" if v == first else v) for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))
    _, loaded = from_pretrained(folder)
    assert _leaves_equal(loaded, params)
