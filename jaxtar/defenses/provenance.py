"""What a defence's export was made from: ``jaxtar_provenance.json`` beside the weights, so a later run can find the
original model (TAR's ``tar.retain_anchor: base`` anchors to the model a random-mapped export started from).

Example:
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> record = provenance("random_mapping", "/models/base", "ab12")
    >>> _ = (folder / PROVENANCE_FILE).write_text(json.dumps(record))
    >>> started_from(folder)
    '/models/base'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxtar.errors import InputError

PROVENANCE_FILE = "jaxtar_provenance.json"


def provenance(method: str, source: str | Path | None, sha256: str) -> dict[str, Any]:
    """The record an export carries: the defence, the model it started from (a path made absolute, or a Hub id;
    None for weights handed in directly) and that model's content hash."""
    import jaxtar

    if source is not None and Path(source).exists():
        source = str(Path(source).resolve())
    return {"method": method, "started_from": None if source is None else str(source),
            "started_from_sha256": sha256, "jaxtar_version": jaxtar.__version__}  # fmt: skip


def started_from(folder: str | Path) -> str:
    """The model the export in ``folder`` was made from (its ``jaxtar_provenance.json``).

    Raises:
        InputError: ``folder`` holds no provenance record, or one without a starting model.
    """
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        raise InputError(
            f"{folder} has no {PROVENANCE_FILE} (only jaxtar's exports record the model they were made from): "
            "name the original model instead (e.g. --tar.retain-anchor meta-llama/Meta-Llama-3-8B-Instruct)"
        )
    try:
        source = json.loads(path.read_text()).get("started_from")
    except (json.JSONDecodeError, AttributeError) as err:
        raise InputError(f"{path} is not a provenance record: {err}") from err
    if not isinstance(source, str) or not source:
        raise InputError(f"{path} names no starting model (its weights were handed in directly): name the model")
    return source
