"""Atomic file writes: a temporary file in the same folder renamed into place, so a killed writer leaves the previous
file (or none), never half of one. No JAX here: the config package writes with them too."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to a temporary file in the same folder and renames it into place: a killed writer leaves the
    previous file (or none), never half of one.

    Example:
        >>> import tempfile
        >>> write_text_atomic(tempfile.mkdtemp() + "/a.md", "# hi").read_text()
        '# hi'
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes JSON to a temporary file in the same folder and renames it into place.

    Example:
        >>> import tempfile
        >>> write_json_atomic(tempfile.mkdtemp() + "/a.json", {"x": 1}).read_text().strip()
        '{\\n  "x": 1\\n}'
    """
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
