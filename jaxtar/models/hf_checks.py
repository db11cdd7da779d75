"""Checks behind ``jaxtar.models.hf``: what a checkpoint folder may claim, and how an export reaches its folder.

Reading: ``config.json`` field types, the shard index (``weight_map`` names files inside the folder only, and each
shard holds exactly the keys the index gives it), every safetensors header (each tensor's bytes lie inside its file)
and the host memory a load needs, all before any tensor is read. Writing: an export is staged in a sibling temporary
folder and renamed into place only while the target is absent or empty (``rename`` refuses a non-empty folder), so a
concurrent writer's files are never moved or deleted; ``overwrite`` replaces only a previous export.

Example:
    >>> validate_config({"model_type": "llama", "num_hidden_layers": "two"}, Path("m/config.json"))
    Traceback (most recent call last):
    jaxtar.errors.CheckpointError: m/config.json: num_hidden_layers must be an integer, got 'two'
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import struct
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from jaxtar.errors import CheckpointError, RunDirError

POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_inner",
                 "n_positions", "n_ctx", "type_vocab_size", "sliding_window", "pretraining_tp")  # fmt: skip
NON_NEGATIVE_INTS = ("num_labels",)
POSITIVE_FLOATS = ("rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
NON_NEGATIVE_FLOATS = ("initializer_range",)
BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "add_cross_attention",
         "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "classifier_bias")  # fmt: skip
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
DICTS = ("rope_scaling", "rope_parameters", "id2label", "label2id")
STRING_LISTS = ("architectures", "layer_types")
# Bytes per element of each safetensors dtype (sub-byte float types are left to the safetensors library).
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "I16": 2, "F16": 2,
            "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# Files an export writes (with the tokenizer's): the only ones ``overwrite=True`` deletes from a previous export.
EXPORT_FILES = re.compile(
    r"(config\.json|model\.safetensors|model-\d+-of-\d+\.safetensors|model\.safetensors\.index\.json"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|tokenizer\.model"
    r"|vocab\.json|vocab\.txt|merges\.txt|chat_template\.(jinja|json)|generation_config\.json"
    r"|jaxtar_provenance\.json)"
)


def validate_config(config: Any, path: Path) -> dict[str, Any]:
    """``config`` itself if it is a JSON object whose fields that the ports read have the right types.

    Raises:
        CheckpointError: naming ``path`` and the first wrongly typed field.
    """

    def bad(field: str, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field} must be {want}, got {config[field]!r}")

    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(config).__name__}")
    present = {k: v for k, v in config.items() if v is not None}
    for field, value in present.items():
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = is_int or (isinstance(value, float) and math.isfinite(value))
        if field in POSITIVE_INTS + NON_NEGATIVE_INTS and not is_int:
            raise bad(field, "an integer")
        if (field in POSITIVE_INTS and value < 1) or (field in NON_NEGATIVE_INTS and value < 0):
            raise bad(field, ">= 1" if field in POSITIVE_INTS else ">= 0")
        if field in POSITIVE_FLOATS + NON_NEGATIVE_FLOATS and not is_number:
            raise bad(field, "a finite number")
        if (field in POSITIVE_FLOATS and value <= 0) or (field in NON_NEGATIVE_FLOATS and value < 0):
            raise bad(field, "> 0" if field in POSITIVE_FLOATS else ">= 0")
        if field in BOOLS and not isinstance(value, bool):
            raise bad(field, "true or false")
        ids = value if isinstance(value, list) else [value]
        if field in TOKEN_IDS and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad(field, "an integer token id (or a list of them)")
        if field in DICTS and not isinstance(value, dict):
            raise bad(field, "an object")
        if field in STRING_LISTS and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise bad(field, "a list of strings")
        if field == "model_type" and not isinstance(value, str):
            raise bad(field, "a string")
    return config


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index, each shard a relative path inside the model folder.

    Each shard NAME is checked lexically, as written: relative, no ``..`` component, no drive or backslash. The
    files themselves may be symlinks to anywhere (the Hugging Face cache links ``snapshots/<rev>/*.safetensors`` to
    ``../../blobs/<hash>``): a name inside the folder is followed wherever it links.

    Raises:
        CheckpointError: malformed JSON, no ``weight_map`` object, or a shard named outside the folder.

    Example:
        >>> _ = Path("m").mkdir(), Path("m/model.safetensors.index.json").write_text(
        ...     '{"weight_map": {"lm_head.weight": "../other/model.safetensors"}}')
        >>> read_index(Path("m/model.safetensors.index.json"))
        Traceback (most recent call last):
        jaxtar.errors.CheckpointError: m/model.safetensors.index.json: lm_head.weight names shard '../other/...
    """
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{index} is not valid JSON: {err}") from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} has no weight_map object of tensor name -> shard file")
    for key, shard in weight_map.items():
        parts = PurePosixPath(shard).parts
        if not parts or shard.startswith(("/", "\\")) or ".." in parts or any(c in shard for c in "\\:\0"):
            raise CheckpointError(
                f"{index}: {key} names shard {shard!r}, outside the model folder; refusing it (shard names must be "
                "paths relative to the folder, without '..'; the files they name may be symlinks)"
            )
    return weight_map


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{key: (dtype, shape)}`` from a safetensors header, after checking each tensor's bytes lie inside the file.

    Raises:
        CheckpointError: naming ``path`` (and the tensor) when the header is unreadable or claims more data than
            the file holds.
    """

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {why}")

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes, shorter than a header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise corrupt(f"header of {length} bytes in a file of {size}")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise corrupt(f"header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    data_bytes = size - 8 - length
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            nbytes = math.prod(shape) * ITEMSIZE[dtype] if dtype in ITEMSIZE else None
        except (KeyError, TypeError, ValueError) as err:
            raise corrupt(f"bad header entry for {key}: {entry!r}") from err
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise corrupt(f"{key} has data offsets {[begin, end]}")
        if end > data_bytes:
            raise corrupt(f"{key} needs bytes {begin}..{end} of the data, but the file holds only {data_bytes}")
        if nbytes is not None and end - begin != nbytes:
            raise corrupt(f"{key} ({dtype}, shape {list(shape)}) needs {nbytes} bytes, its offsets span {end - begin}")
        out[key] = (dtype, shape)
    return out


def available_host_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable`` (``/proc/meminfo``), capped by a cgroup v2 limit.

    Falls back to ``SC_AVPHYS_PAGES * SC_PAGE_SIZE``; ``None`` where neither is known (then nothing is checked).
    """
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cgroup / "memory.current").read_text())
            avail = left if avail is None else min(avail, left)
    return avail


def check_host_memory(needed: int, source: str, what: str) -> None:
    """Refuses a load that needs more host memory than is available (`available_host_memory`).

    Raises:
        CheckpointError: naming ``source`` and both sizes.
    """
    avail = available_host_memory()
    if avail is not None and needed > avail:
        raise CheckpointError(
            f"{source}: loading needs {needed / 2**30:.1f} GiB of host memory ({what}), but only "
            f"{avail / 2**30:.1f} GiB is available; refusing before reading any tensor"
        )


def local_name_error(name: str) -> CheckpointError | None:
    """The error for a missing ``name`` that is clearly a local path rather than a Hub id ``owner/name``, else None.

    A name counts as local when it starts with ``.``, ``/`` or ``~``, has other than one slash, ends with a
    checkpoint suffix (``.gguf``, ``.safetensors``, ``.json``), or its first component is a folder here.
    """
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or name.endswith((".gguf", ".safetensors", ".json")):
        return CheckpointError(f"no such checkpoint folder or file: {name}")
    owner = name.split("/")[0]
    if Path(owner).is_dir():
        return CheckpointError(
            f"no such checkpoint folder or file: {name} (the folder {owner}/ exists here; Hub ids are owner/name)"
        )
    return None


def check_export_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The real folder an export to ``out_dir`` will be (a symlink is followed), if it may be written.

    Cheap, so a caller can run it before a long load; `staged_export` checks again when it commits.

    Raises:
        RunDirError: ``out_dir`` is a file, or a non-empty folder (with ``overwrite``: one that is not an export).
        CheckpointError: a parent of ``out_dir`` is a file or not writable.

    Example:
        >>> Path("notes.txt").write_text("mine")
        4
        >>> check_export_dir("notes.txt/model")
        Traceback (most recent call last):
        jaxtar.errors.CheckpointError: cannot write notes.txt/model: /.../notes.txt is not a folder
    """
    target = Path(os.path.realpath(out_dir))
    if target.exists():
        if not target.is_dir():
            raise RunDirError(f"{out_dir} exists and is not a folder; refusing to overwrite it")
        entries = sorted(os.listdir(target))
        if entries and not overwrite:
            raise RunDirError(f"{out_dir} already exists and is not empty; refusing to overwrite it")
        if entries and not is_export(target):
            raise RunDirError(
                f"{out_dir} holds files that are not a model export ({', '.join(entries[:5])}); refusing to "
                "overwrite it"
            )
        return target
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CheckpointError(f"cannot write {out_dir}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {out_dir}: {ancestor} is not writable")
    return target


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds a model export: ``config.json`` and ``model.safetensors`` or its shard index."""
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return (folder / "config.json").is_file() and weights


@contextlib.contextmanager
def staged_export(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A new temporary folder beside ``out_dir`` to write into; renamed to ``out_dir`` when the block succeeds.

    The rename only lands on an absent or empty folder, so files another writer put there meanwhile stay and this
    export is refused (`RunDirError`). With ``overwrite`` a previous export is replaced: only its own files
    (`EXPORT_FILES`) are deleted, any others move into the new export. On failure everything this export created
    (the temporary folder, parent folders it made) is removed.

    Raises:
        RunDirError: the target is taken (see `check_export_dir`), or became so while writing.
        CheckpointError: the temporary folder cannot be made (parent is a file, not writable).
    """
    target = check_export_dir(out_dir, overwrite=overwrite)
    created: list[Path] = []
    try:
        _make_parents(target.parent, created)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as err:
        _remove_dirs(created)
        raise CheckpointError(f"cannot write {out_dir}: {err}") from err
    try:
        yield tmp
        _commit(tmp, target, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise


def _make_parents(folder: Path, created: list[Path]) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def _remove_dirs(created: list[Path]) -> None:
    for path in reversed(created):  # only while empty: another writer may have started using them
        try:
            path.rmdir()
        except OSError:
            return


def _commit(tmp: Path, target: Path, out_dir: Any, overwrite: bool) -> None:
    try:
        os.rename(tmp, target)  # atomic; succeeds only onto nothing or an empty folder
        return
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise RunDirError(f"{out_dir} exists and is not a folder; refusing to overwrite it") from err
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise CheckpointError(f"cannot write {out_dir}: {err}") from err
        if not overwrite:
            raise RunDirError(
                f"{out_dir} is no longer empty: another process wrote into it during this export; its files are "
                "untouched and this export was discarded"
            ) from err
    if not is_export(target):
        raise RunDirError(f"{out_dir} now holds files that are not a model export; refusing to overwrite it")
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, old)
    except OSError as err:
        raise CheckpointError(f"cannot replace {out_dir}: {err}") from err
    try:
        os.rename(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.rename(old, target)
        where = old if old.exists() else target
        raise RunDirError(f"{out_dir} changed during this export; the previous export is at {where}") from err
    written = set(os.listdir(target))
    for name in os.listdir(old):
        path = old / name
        if (name in written or EXPORT_FILES.fullmatch(name)) and (path.is_symlink() or path.is_file()):
            path.unlink()
        elif not (target / name).exists():
            os.rename(path, target / name)  # not ours: keep it, in the same place as before
    try:
        old.rmdir()
    except OSError:
        warnings.warn(f"kept {old}: it holds files the previous export did not write", stacklevel=3)
