"""Adversary suites for red teaming: named suites and files, shrinking paper-scale suites, seeds and names.

A suite is the engine's (`jaxtar.attacks.SUITES`: the TAR red team, Qi et al. 2024, ...), ``toy`` (a held-out red
team at toy-world scale), or a .json / .yaml file listing adversary dicts in ``dataclasses.asdict`` form.

Example:
    >>> suite = adapt_suite(load_suite("redteam-bio"), steps=40, batch_size=16, lr_scale=50.0)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtar.attacks import SUITES, Adversary, LoraSpec, Schedule, get_suite


def toy_suite() -> tuple[Adversary, ...]:
    """A held-out red team at toy-world scale: other optimisers and learning rates, LoRA, a Qi-style warmup + cosine
    attack, retain->forget and benign retain-data fine-tuning (40 steps, batch 16)."""
    kw = dict(steps=40, batch_size=16)
    return (
        Adversary("adamw", lr=1e-3, weight_decay=0.01, name="toy-adamw-1e-3", **kw),
        Adversary("sgd_nesterov", lr=3e-2, name="toy-nesterov-3e-2", **kw),
        Adversary("adamw", lr=3e-3, lora=LoraSpec(rank=8, alpha=16.0), name="toy-lora-adamw-3e-3", **kw),
        Adversary("adamw", lr=2e-3, schedule=Schedule("warmup_cosine", warmup_steps=5), name="toy-qi-cosine", **kw),
        Adversary("adamw", lr=1e-3, data="retain_to_forget", switch_step=20, name="toy-r2f-adamw-1e-3", **kw),
        Adversary("adamw", lr=1e-3, data="retain", name="toy-benign-retain", **kw),
    )


LOCAL_SUITES = {"toy": toy_suite}


def adversary_from_dict(d: Mapping[str, Any]) -> Adversary:
    """An `Adversary` from a dict (``dataclasses.asdict`` form; ``schedule`` / ``lora`` as nested dicts)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(Adversary)}
    if set(d) - known:
        raise ValueError(f"unknown adversary field(s) {sorted(set(d) - known)}; fields: {sorted(known)}")
    if isinstance(d.get("schedule"), Mapping):
        d["schedule"] = Schedule(**d["schedule"])
    if isinstance(d.get("lora"), Mapping):
        lora = dict(d["lora"])
        if "targets" in lora:
            lora["targets"] = tuple(lora["targets"])
        d["lora"] = LoraSpec(**lora)
    return Adversary(**d)


def load_suite(name_or_path: str | os.PathLike) -> tuple[Adversary, ...]:
    """A named suite (the engine's `SUITES`, or ``toy``) or a .json / .yaml file listing adversary dicts.

    Example:
        >>> len(load_suite("toy"))
        6
    """
    name = str(name_or_path)
    if name in SUITES:
        return get_suite(name)
    if name in LOCAL_SUITES:
        return LOCAL_SUITES[name]()
    path = Path(name)
    if path.suffix in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"suite file {path} does not exist")
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            import yaml

            raw = yaml.safe_load(path.read_text())
        raw = raw.get("adversaries") if isinstance(raw, dict) else raw
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"suite file {path} must hold a non-empty list of adversaries (or {{adversaries: [...]}})")
        return tuple(adversary_from_dict(a) for a in raw)
    raise ValueError(
        f"unknown adversary suite {name!r}; known: {sorted(SUITES) + sorted(LOCAL_SUITES)}, or a .json/.yaml file"
    )


def _scaled_schedule(s: Schedule, f: float, steps: int) -> Schedule:
    warmup = min(round(s.warmup_steps * f), steps - 1) if s.warmup_steps else 0
    if s.kind == "linear_warmup":
        warmup = max(warmup, 1)
    decay = None if s.decay_steps is None else min(max(round(s.decay_steps * f), warmup + 1), steps)
    cycle = None if s.cycle_steps is None else max(round(s.cycle_steps * f), warmup + 1)
    return dataclasses.replace(s, warmup_steps=warmup, decay_steps=decay, cycle_steps=cycle)


def adapt_suite(
    adversaries: Sequence[Adversary],
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    lr_scale: float = 1.0,
) -> tuple[Adversary, ...]:
    """A paper-scale suite shrunk for a small model: new step count (warmup, decay, cycle and switch points scale
    with it), batch size, and learning rates multiplied by ``lr_scale``.

    Example:
        >>> adapt_suite(load_suite("qi2024"), steps=20)[0].schedule.warmup_steps
        2
    """
    out = []
    for a in adversaries:
        s = a.steps if steps is None else steps
        f = s / a.steps
        switch = None if a.switch_step is None else min(round(a.switch_step * f), s)
        out.append(dataclasses.replace(a, steps=s, batch_size=batch_size or a.batch_size, lr=a.lr * lr_scale,
                                       schedule=_scaled_schedule(a.schedule, f, s), switch_step=switch))  # fmt: skip
    return tuple(out)


def name_adversaries(adversaries: Sequence[Adversary], seeds: Sequence[int] | None) -> tuple[Adversary, ...]:
    """Unique names (``<optimizer>-<lr>-<data>`` for unnamed ones); with ``seeds``, each distinct spec once per seed.

    Example:
        >>> [(a.name, a.seed) for a in name_adversaries([Adversary("sgd", lr=0.1)], seeds=(0, 1))]
        [('sgd-0.1-forget', 0), ('sgd-0.1-forget', 1)]
    """
    if seeds is not None:
        unique = list(dict.fromkeys(dataclasses.replace(a, seed=0) for a in adversaries))
        adversaries = [dataclasses.replace(a, seed=int(s)) for a in unique for s in seeds]
    specs: dict[str, Adversary] = {}
    out = []
    for a in adversaries:
        name = a.name or f"{a.optimizer}-{a.lr:g}" + ("-lora" if a.lora else "") + f"-{a.data}"
        base, n = name, 2
        while name in specs and dataclasses.replace(specs[name], seed=0) != dataclasses.replace(a, seed=0, name=name):
            name, n = f"{base}#{n}", n + 1
        specs.setdefault(name, dataclasses.replace(a, name=name))
        out.append(dataclasses.replace(a, name=name))
    return tuple(out)
