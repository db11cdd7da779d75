"""What red teaming runs on: the attack data and eval set (`RedTeamData`) and the models to attack (model specs).

`RedTeamData` bundles the attack text by role (``forget``, ``retain``, ``ood``, ...) with the `EvalSet` scored
before and after each attack: the offline toy world (`RedTeamData.toy`) or the REFERENCE §1.5 datasets of a domain
(`RedTeamData.from_sources`). A model spec is an HF folder (or ``.gguf`` file), ``(model, params)`` or
``(model, params, tokenizer)``; `check_models` refuses a bad one before any compute, `load_model` loads one.

Example:
    >>> data = RedTeamData.toy(mcq_limit=40)
    >>> sorted(data.texts), len(data.eval_set.forget_mcq)
    (['forget', 'ood', 'retain'], 40)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtar.data.batching import pack_texts, tokenize_texts
from jaxtar.eval.mcq import EvalSet
from jaxtar.models import Model, from_pretrained, load_tokenizer

ModelSpec = Any  # an HF folder (str / Path), (model, params) or (model, params, tokenizer)


@dataclasses.dataclass(frozen=True, eq=False)
class RedTeamData:
    """What the attacks train on and what is scored.

    Args:
        eval_set: forget / retain questions and loss-probe text.
        texts: attack data by role (``forget``, ``retain``, ``ood``, ...); ``<a>_to_<b>`` adversaries use two roles.
        tokenizer: tokenizer for in-memory models given without one.
        max_length: tokens per attack sequence.
        pack: pack texts into full rows (real corpora) instead of one padded row per text (the toy world).
        name: a label for reports.
    """

    eval_set: EvalSet
    texts: Mapping[str, Sequence[str]]
    tokenizer: Any = None
    max_length: int = 64
    pack: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        empty = [role for role, t in self.texts.items() if not t]
        if empty:
            raise ValueError(f"RedTeamData: no attack text for role(s) {empty}")
        if self.max_length < 2:
            raise ValueError(f"RedTeamData.max_length must be >= 2, got {self.max_length}")
        object.__setattr__(self, "_arrays", {})

    def arrays(self, tokenizer: Any) -> dict[str, dict[str, np.ndarray]]:
        """Attack data tokenised for ``tokenizer`` (cached)."""
        if id(tokenizer) not in self._arrays:
            fn = pack_texts if self.pack else tokenize_texts
            rows = {role: fn(tokenizer, list(t), self.max_length) for role, t in self.texts.items()}
            self._arrays[id(tokenizer)] = (tokenizer, rows)
        return self._arrays[id(tokenizer)][1]

    @classmethod
    def toy(
        cls, seed: int = 0, *, mcq_limit: int | None = None, probe_every: int = 10, world: Any = None
    ) -> RedTeamData:
        """The offline toy world: every ``probe_every``-th text is held out for the loss probes.

        Example:
            >>> data = RedTeamData.toy(mcq_limit=40)
            >>> sorted(data.texts)
            ['forget', 'ood', 'retain']
        """
        from jaxtar.toy import MAX_LENGTH, toy_world

        world = toy_world(seed) if world is None else world
        probe = lambda t: [x for i, x in enumerate(t) if i % probe_every == 0]
        train = lambda t: [x for i, x in enumerate(t) if i % probe_every != 0]
        subset = lambda items: _spread(items, mcq_limit)
        eval_set = EvalSet(
            subset(world.forget_mcq),
            subset(world.retain_mcq),
            forget_probe=probe(world.forget_texts),
            retain_probe=probe(world.retain_texts),
            probe_length=MAX_LENGTH,
        )
        texts = {"forget": train(world.forget_texts), "retain": train(world.retain_texts),
                 "ood": list(world.ood_forget_texts)}  # fmt: skip
        return cls(eval_set, texts, world.tokenizer, MAX_LENGTH, pack=False, name=f"toy-{seed}")

    @classmethod
    def from_sources(
        cls,
        domain: str = "bio",
        *,
        local_paths: Mapping[str, str] | None = None,
        limit: int | None = None,
        mcq_limit: int | None = None,
        shots: int = 5,
        max_length: int = 256,
        probe_every: int = 10,
    ) -> RedTeamData:
        """REFERENCE §1.5 data: WMDP (forget), MMLU 5-shot without the domain's subjects (retain), pile-bio /
        CTFtime attack text. ``local_paths`` maps a role (forget_mcq, retain_mcq, shots, forget, retain, ood,
        forget_alt) to a local copy. The cyber retain text is pile-bio-retain (an assumption: benign text).
        """
        from jaxtar.data.sources import load_mcq, load_texts

        presets = {
            "bio": dict(forget_mcq="wmdp-bio", forget="pile-bio-forget", retain="pile-bio-retain",
                        ood="magpie-bio-filtered", forget_alt="camel-bio"),
            "cyber": dict(forget_mcq="wmdp-cyber", forget="ctftime", retain="pile-bio-retain"),
        }  # fmt: skip
        if domain not in presets:
            raise ValueError(f"domain must be one of {sorted(presets)}, got {domain!r}")
        sources = {**presets[domain], "retain_mcq": "mmlu", "shots": "mmlu-dev"}
        local = dict(local_paths or {})
        unknown = set(local) - set(sources)
        if unknown:
            raise ValueError(f"local_paths roles {sorted(unknown)} unknown; roles: {sorted(sources)}")
        kw = lambda role: dict(local_path=local.get(role), limit=limit)
        texts = {r: load_texts(sources[r], **kw(r)) for r in ("forget", "retain", "ood", "forget_alt") if r in sources}
        probes = {r: [x for i, x in enumerate(texts[r]) if i % probe_every == 0] for r in ("forget", "retain")}
        for r in ("forget", "retain"):
            texts[r] = [x for i, x in enumerate(texts[r]) if i % probe_every != 0]
        eval_set = EvalSet(
            _spread(load_mcq(sources["forget_mcq"], local_path=local.get("forget_mcq")), mcq_limit),
            _spread(load_mcq(sources["retain_mcq"], local_path=local.get("retain_mcq")), mcq_limit),
            forget_probe=probes["forget"],
            retain_probe=probes["retain"],
            shots=shots,
            shot_pool=load_mcq(sources["shots"], local_path=local.get("shots")) if shots else (),
            exclude_subjects=domain,
            probe_length=max_length,
        )
        return cls(eval_set, texts, None, max_length, pack=True, name=domain)


def _spread(items: Sequence[Any], limit: int | None) -> tuple:
    """At most ``limit`` items, evenly spaced (deterministic)."""
    items = tuple(items)
    if limit is None or limit >= len(items):
        return items
    return tuple(items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int))


def check_models(models: Mapping[str, ModelSpec]) -> None:
    """Fails fast (before any compute) on a missing model folder or a malformed model spec.

    Example:
        >>> check_models({"base": "no/such/folder"})
        Traceback (most recent call last):
        ...
        FileNotFoundError: model 'base': no/such/folder is not a model folder (no config.json)
    """
    if not models:
        raise ValueError("no models to evaluate")
    for name, spec in models.items():
        if isinstance(spec, (str, os.PathLike)):
            path = Path(spec)
            if path.suffix != ".gguf" and not (path / "config.json").is_file():
                raise FileNotFoundError(f"model {name!r}: {path} is not a model folder (no config.json)")
            if path.suffix == ".gguf" and not path.is_file():
                raise FileNotFoundError(f"model {name!r}: {path} does not exist")
        elif not (isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[0], Model)):
            raise TypeError(f"model {name!r} must be a folder, (model, params) or (model, params, tokenizer)")


def load_model(name: str, spec: ModelSpec, default_tokenizer: Any) -> tuple[Model, Any, Any]:
    """``(model, params, tokenizer)`` of one model spec; ``default_tokenizer`` where the spec brings none."""
    if isinstance(spec, (str, os.PathLike)):
        model, params = from_pretrained(spec)
        try:
            tokenizer = load_tokenizer(spec)
        except Exception:  # noqa: BLE001 - fall back to the data's tokenizer
            tokenizer = default_tokenizer
    else:
        model, params = spec[:2]
        tokenizer = spec[2] if len(spec) == 3 else default_tokenizer
    if tokenizer is None:
        raise ValueError(f"model {name!r} has no tokenizer: save one with it or set RedTeamData.tokenizer")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"model {name!r}: its tokenizer has {len(tokenizer)} tokens, the model only {vocab}")
    return model, params, tokenizer
