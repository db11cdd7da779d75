"""Names the JAX side defines, written here once so that reading a config never imports JAX.

``tests/config/test_config_sections.py`` checks each against its source (`jaxtar.meta.ESTIMATORS`,
`jaxtar.objectives.calibration.METHODS`, `jaxtar.models.layers.ATTENTION_IMPLS`).

Example:
    >>> "tar" in ESTIMATOR_KINDS and "implicit" in CALIBRATION_METHODS
    True
"""

from __future__ import annotations

ESTIMATOR_KINDS = ("exact", "remat", "mixed", "truncated", "first_order", "tar")  # = jaxtar.meta.ESTIMATORS
CALIBRATION_METHODS = ("implicit", "unrolled", "envelope")  # = jaxtar.objectives.calibration.METHODS
ATTENTION_IMPLS = ("reference", "xla", "cudnn")  # = jaxtar.models.layers.ATTENTION_IMPLS
