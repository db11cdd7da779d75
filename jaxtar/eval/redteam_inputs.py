"""What red teaming runs on: the attack data and eval set (`RedTeamData`) and the models to attack (model specs).

`RedTeamData` bundles the attack text by role (``forget``, ``retain``, ``ood``, ...) with the `EvalSet` scored before
and after each attack: the offline toy world (`RedTeamData.toy`) or the Hub datasets of a domain
(`RedTeamData.from_sources`, docs/datasets.md). ``ood`` is out-of-distribution *hazardous* text of the forget domain
(the toy world's unseen phrasings of its pathogen facts); ``retain_instruct`` is benign instruction data (bio:
magpie-bio-filtered, which the official TAR code mixes into its retain set and which jaxtar used to load, wrongly, as
``ood``). A model spec is an HF folder (or ``.gguf`` file), ``(model, params)`` or ``(model, params, tokenizer)``;
`check_models` refuses a bad one before any compute, `load_model` loads one.

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

NO_PUBLIC_OOD = (
    "'ood' is out-of-distribution hazardous text of the forget domain; no public copy of the TAR paper's "
    "out-of-distribution forget set is known (the official code ships no loader for one), so give a local file "
    "with a 'text' column (--local ood=PATH) or leave the ood adversaries out (--only)"
)
# Extra words for red_team's "the suite needs data role(s) ..." error.
ROLE_HINTS = {"ood": NO_PUBLIC_OOD}
# The local-only spec of the 'ood' role: one 'text' column.
OOD_SPEC_FIELDS = ("text",)


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
        sources: where each role's text came from (dataset name or local path), recorded in results.json.
    """

    eval_set: EvalSet
    texts: Mapping[str, Sequence[str]]
    tokenizer: Any = None
    max_length: int = 64
    pack: bool = False
    name: str = "custom"
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

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
        sources = {"forget": "toy:forget", "retain": "toy:retain", "ood": "toy:ood (unseen phrasings of forget facts)"}
        return cls(eval_set, texts, world.tokenizer, MAX_LENGTH, pack=False, name=f"toy-{seed}", sources=sources)

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
        """The datasets of docs/datasets.md: WMDP (forget), MMLU 5-shot without the domain's subjects (retain), pile-bio
        / CTFtime attack text; bio also camel-bio (``forget_alt``) and magpie-bio-filtered (``retain_instruct``: benign
        instruction data, part of the official retain set). ``local_paths`` maps a role (forget_mcq, retain_mcq, shots,
        forget, retain, forget_alt, retain_instruct, ood) to a local copy. ``ood`` (out-of-distribution hazardous text)
        has no public default and is loaded only from a local file with a ``text`` column. The cyber retain text is
        pile-bio-retain (an assumption: benign text).

        Raises:
            DataSourceError: ``ood`` given a Magpie-style file (a ``conversations`` column): that is the benign
                retain_instruct data, which older jaxtar versions loaded as ``ood``.
        """
        from jaxtar.data.sources import DatasetSpec, load_mcq, load_texts

        presets = {
            "bio": dict(forget_mcq="wmdp-bio", forget="pile-bio-forget", retain="pile-bio-retain",
                        forget_alt="camel-bio", retain_instruct="magpie-bio-filtered"),
            "cyber": dict(forget_mcq="wmdp-cyber", forget="ctftime", retain="pile-bio-retain"),
        }  # fmt: skip
        if domain not in presets:
            raise ValueError(f"domain must be one of {sorted(presets)}, got {domain!r}")
        sources = {**presets[domain], "retain_mcq": "mmlu", "shots": "mmlu-dev"}
        local = dict(local_paths or {})
        unknown = set(local) - set(sources) - {"ood"}
        if unknown:
            raise ValueError(f"local_paths roles {sorted(unknown)} unknown; roles: {sorted(set(sources) | {'ood'})}")
        if "ood" in local:
            _refuse_magpie_as_ood(local["ood"])
            sources["ood"] = DatasetSpec(f"ood:{local['ood']}", "", "", "train", "text", fields=OOD_SPEC_FIELDS)
        kw = lambda role: dict(local_path=local.get(role), limit=limit)
        roles = ("forget", "retain", "ood", "forget_alt", "retain_instruct")
        texts = {r: load_texts(sources[r], **kw(r)) for r in roles if r in sources}
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
        names = {r: str(local.get(r) or getattr(sources[r], "name", sources[r])) for r in texts}
        return cls(eval_set, texts, None, max_length, pack=True, name=domain, sources=names)


def _refuse_magpie_as_ood(path: str | os.PathLike) -> None:
    """Refuses a Magpie-style file (a ``conversations`` column) as the ``ood`` role, with the fix in the message."""
    from jaxtar.data.sources import DatasetSpec, DataSourceError, load_source

    spec = DatasetSpec("ood", "", "", "train", "text", fields=OOD_SPEC_FIELDS)
    try:
        load_source(spec, local_path=path, limit=1)
    except DataSourceError as err:
        if "'conversations'" in str(err):
            raise DataSourceError(
                f"local 'ood' file {str(path)!r} has Magpie's 'conversations' column: that is magpie-bio-filtered, "
                "benign instruction data that the official TAR code mixes into its *retain* set (older jaxtar "
                "versions loaded it as 'ood' by mistake). Pass it as retain_instruct=PATH; 'ood' is "
                "out-of-distribution hazardous text of the forget domain, a file with a 'text' column."
            ) from None
        raise


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
