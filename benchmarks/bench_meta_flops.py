"""FLOP counting for the meta-gradient benchmark: matmul FLOPs read off the jaxpr, loop bodies times trip counts.

XLA's cost analysis counts a `while` body once (docs/meta-gradients.md#cost-model), and the models scan over their
stacked layers, so an unrolled copy of *our* scans still undercounts the layer loop. Counting `dot_general` FLOPs in the
jaxpr, multiplied by every enclosing `scan` length, counts the whole program, rematerialised recomputation included.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend as jex


def _dot_flops(eqn: Any) -> int:
    (lhs, rhs) = (v.aval for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs.shape[i] for i in lc)
    out = math.prod(eqn.outvars[0].aval.shape)
    return 2 * out * contract


def jaxpr_flops(jaxpr: Any) -> int:
    """2 * MACs of every dot_general / conv, scan bodies multiplied by their length, cond = max branch."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
        elif name == "while":
            raise ValueError("while loop with an unknown trip count: FLOPs undefined")
        else:
            for sub in jex.core.jaxprs_in_params(eqn.params):
                total += jaxpr_flops(sub)
    return total


def count_flops(fn: Any, *args: Any) -> int:
    """Matmul FLOPs of `fn(*args)` (one call)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
