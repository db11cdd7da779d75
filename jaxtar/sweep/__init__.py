"""Defence sweeps (``jaxtar sweep``): train every variant of a grid (or of an Optuna study) on several seeds, red-team
each one, and rank them by how long they hold against the attacks (docs/sweep.md).

- `jaxtar.config.sweep`: the grid file (`load_sweep`), checked without JAX.
- `jaxtar.sweep.grid`: the grid expanded into named variants and variant x seed jobs (`plan_sweep`); Optuna trials.
- `jaxtar.sweep.job`: one job: train (or resume), red-team, its results row.
- `jaxtar.sweep.runner`: the folder, resume, several jobs at once, the study (`run_sweep`).
- `jaxtar.sweep.report`: results.md / results.json and the plots.

Example:
    >>> from jaxtar.sweep import load_sweep, plan_sweep
    >>> plan = plan_sweep(load_sweep("toy-smoke"), "runs/smoke")
    >>> [v.name for v in plan.variants]
    ['base', 'random-mapping', 'published', 'two-adversaries']
    >>> result = run_sweep(load_sweep("toy-smoke"), "runs/smoke")  # doctest: +SKIP
"""

from jaxtar.config.sweep import SweepConfig, load_sweep, shipped_sweeps
from jaxtar.sweep.grid import Job, SweepPlan, Variant, expand_variants, grid_points, plan_sweep
from jaxtar.sweep.runner import SweepResult, read_rows, run_sweep

__all__ = [
    "Job",
    "SweepConfig",
    "SweepPlan",
    "SweepResult",
    "Variant",
    "expand_variants",
    "grid_points",
    "load_sweep",
    "plan_sweep",
    "read_rows",
    "run_sweep",
    "shipped_sweeps",
]
