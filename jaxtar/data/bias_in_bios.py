"""Bias in Bios for MLAC: the Hugging Face loader, pronoun scrubbing, the val1/val2 split, an offline stand-in.

Every example has ``hard_text`` (a biography without its first sentence), ``profession`` (28 classes, the
desired task) and ``gender`` (0 male, 1 female: the harmful task). As in MLAC, all published splits are pooled
and re-split 85 / 5 / 10 (train / validation / test) by seed, and the 5 % validation is halved into ``val1``
(the attacker's training data) and ``val2`` (the attacker's test data).

``synthetic_bias_in_bios`` generates an offline world with the same fields and split logic for tests and the
offline preset: profession is signalled by topical words, gender by first names, spouse and parent words
(which survive pronoun scrubbing) and by a per-profession gender imbalance. It is a test fixture, not a
benchmark. The word tokenizer and the encodings are `jaxtar.data.bios_tokens`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from jaxtar.errors import DataSourceError

if TYPE_CHECKING:  # heavy imports stay lazy: importing jaxtar.data must not pull in datasets/transformers
    import datasets

BIAS_IN_BIOS_REPO = "LabHC/bias_in_bios"
# Latest commit seen on the dataset's main branch ("Update README.md", 2023-09-07; the card lists the
# train/test/dev splits with hard_text/profession/gender). Found through public mirrors, not verified here.
BIAS_IN_BIOS_REVISION = "052f01de644dba841176e0449528b41f27d94a61"
PROFESSIONS: tuple[str, ...] = (
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist", "dietitian",
    "dj", "filmmaker", "interior_designer", "journalist", "model", "nurse", "painter", "paralegal", "pastor",
    "personal_trainer", "photographer", "physician", "poet", "professor", "psychologist", "rapper",
    "software_engineer", "surgeon", "teacher", "yoga_teacher",
)  # fmt: skip
GENDERS: tuple[str, ...] = ("male", "female")
SPLITS: tuple[str, ...] = ("train", "val1", "val2", "test")


class DatasetUnavailableError(DataSourceError):
    """The Hugging Face dataset could not be loaded (offline, not cached, or a bad revision)."""


# ------------------------------------------------------------------------------------------- scrubbing
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_PRONOUN_RE = re.compile(
    r"\b(he|she|him|her|his|hers|himself|herself)\b(?:(['\u2019])(s|d|ll|ve|re)\b)?", re.IGNORECASE
)
_HONORIFIC_RE = re.compile(r"\b(?:Mr|Mrs|Ms|MR|MRS)\b")  # case-sensitive: "ms" / "MS" (degree) stay
_NEXT_TOKEN_RE = re.compile(r"\s*([A-Za-z]+|\S|$)")
# Words after "her" (or "his") that mark it as an object / standalone pronoun, not a determiner.
_NOT_A_NOUN = frozenset(
    _words(
        "and or but nor to in on at with for from by as about into onto that the a an this these those up out off "
        "back down over again because when while if so than through after before during since until his her "
        "their its my your our how what why who whom which where is was has had will would can could"
    )
)
_SIMPLE = {
    "he": "they",
    "she": "they",
    "him": "them",
    "hers": "theirs",
    "himself": "themselves",
    "herself": "themselves",
}


def _match_case(source: str, word: str) -> str:
    if len(source) > 1 and source.isupper():
        return word.upper()
    return word[0].upper() + word[1:] if source[0].isupper() else word


def _replace_pronoun(match: re.Match[str]) -> str:
    source, apostrophe, suffix = match.group(1), match.group(2), match.group(3)
    lower = source.lower()
    following = _NEXT_TOKEN_RE.match(match.string, match.end()).group(1)
    if lower in _SIMPLE:
        word = _SIMPLE[lower]
    else:  # "her" is object or possessive; "his" is possessive determiner or standalone
        standalone = not following.isalpha() or following.lower() in _NOT_A_NOUN
        word = ("them" if standalone else "their") if lower == "her" else ("theirs" if standalone else "their")
    out = _match_case(source, word)
    if apostrophe is None:
        return out
    if lower in ("he", "she") and suffix.lower() == "s":  # he's -> they're, he's been -> they've been
        nxt = _NEXT_TOKEN_RE.match(match.string, match.end()).group(1).lower()
        suffix = "ve" if nxt in ("been", "got") else "re"
        suffix = suffix.upper() if source.isupper() and len(source) > 1 else suffix
    return f"{out}{apostrophe}{suffix}"


def scrub_pronouns(text: str) -> str:
    """Replace gendered pronouns and honorifics by neutral ones, preserving case and word boundaries.

    he/she -> they, him -> them, his -> their/theirs, her -> their/them (by the next word), hers -> theirs,
    himself/herself -> themselves, he's/she's -> they're (they've before "been"/"got"), he'd -> they'd,
    Mr/Mrs/Ms -> Mx. Verb agreement is left alone ("they works").

    Example:
      >>> scrub_pronouns("She thanked her mentor. Ask Mrs. Lee about her; he's kind to himself.")
      "They thanked their mentor. Ask Mx. Lee about them; they're kind to themselves."
    """
    text = _PRONOUN_RE.sub(_replace_pronoun, text)
    return _HONORIFIC_RE.sub(lambda m: "MX" if m.group(0).isupper() else "Mx", text)


# --------------------------------------------------------------------------------------------- splits
def split_indices(
    num_examples: int, seed: int, fractions: tuple[float, float, float] = (0.85, 0.05, 0.10)
) -> dict[str, np.ndarray]:
    """Deterministic train / val1 / val2 / test indices: a seeded permutation cut 85 / 5 / 10, val halved.

    Example:
      >>> {k: len(v) for k, v in split_indices(8000, seed=0).items()}
      {'train': 6800, 'val1': 200, 'val2': 200, 'test': 800}
    """
    if num_examples < 4:
        raise ValueError(f"need at least 4 examples to split, got {num_examples}")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(num_examples)
    n_val = max(2, round(num_examples * fractions[1]))
    n_test = max(1, round(num_examples * fractions[2]))
    n_train = num_examples - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{num_examples} examples leave no training data with fractions {fractions}")
    cuts = np.cumsum([n_train, n_val - n_val // 2, n_val // 2])
    return dict(zip(SPLITS, np.split(perm, cuts), strict=True))


def _split_and_scrub(pooled: datasets.Dataset, seed: int, scrub: bool) -> datasets.DatasetDict:
    import datasets

    parts = {name: pooled.select(idx) for name, idx in split_indices(len(pooled), seed).items()}
    out = datasets.DatasetDict(parts)
    if scrub:
        out = out.map(
            lambda batch: {"hard_text": [scrub_pronouns(t) for t in batch["hard_text"]]},
            batched=True,
            desc="scrubbing pronouns",
        )
    return out


# ------------------------------------------------------------------------------------ Hugging Face data
def load_bias_in_bios(
    *,
    seed: int = 0,
    scrub: bool = True,
    max_examples: int | None = None,
    revision: str = BIAS_IN_BIOS_REVISION,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load ``LabHC/bias_in_bios`` (pinned revision), pool its splits and re-split into train/val1/val2/test.

    Args:
      seed: seed of the re-split (and of the subsample when ``max_examples`` is set).
      scrub: apply ``scrub_pronouns`` to ``hard_text``.
      max_examples: keep a seeded random subset of this size before splitting (None keeps all ~396k).
      revision: dataset commit.
      cache_dir: Hugging Face datasets cache directory.

    Returns:
      A ``datasets.DatasetDict`` with splits train/val1/val2/test and columns hard_text, profession, gender.

    Raises:
      DatasetUnavailableError: offline without a cached copy, or the revision/splits are not as expected.

    Example:
      >>> bios = load_bias_in_bios(max_examples=20_000)  # doctest: +SKIP
      >>> {name: len(split) for name, split in bios.items()}  # doctest: +SKIP
      {'train': 17000, 'val1': 500, 'val2': 500, 'test': 2000}
    """
    import datasets

    try:
        raw = datasets.load_dataset(BIAS_IN_BIOS_REPO, revision=revision, cache_dir=cache_dir)
    except Exception as err:  # offline, DNS, missing cache, bad revision: all end here with one message
        raise DatasetUnavailableError(
            f"could not load the Hugging Face dataset '{BIAS_IN_BIOS_REPO}' at revision {revision!r} "
            f"({type(err).__name__}: {err}). It needs internet access or a copy in the datasets cache; "
            "offline, use jaxtar.data.bias_in_bios.synthetic_bias_in_bios() instead."
        ) from err
    missing = {"train", "dev", "test"} - set(raw)
    if missing:
        raise DatasetUnavailableError(f"'{BIAS_IN_BIOS_REPO}' lacks the splits {sorted(missing)}: got {list(raw)}")
    columns = ["hard_text", "profession", "gender"]
    pooled = datasets.concatenate_datasets([raw[s].select_columns(columns) for s in ("train", "dev", "test")])
    if max_examples is not None:
        if max_examples < 4:
            raise ValueError(f"max_examples must be >= 4, got {max_examples}")
        keep = np.random.default_rng([seed, 1]).permutation(len(pooled))[:max_examples]
        pooled = pooled.select(np.sort(keep))
    return _split_and_scrub(pooled, seed, scrub)


# -------------------------------------------------------------------------------- offline stand-in
_TOPICS = (  # five topical words per profession, in label order
    "tax audit ledger bookkeeping payroll", "buildings blueprints urban facades housing",
    "litigation court lawsuits counsel trials", "spine adjustments posture vertebrae wellness",
    "standup jokes laughs comedy sketches", "symphony scores orchestra melodies concertos",
    "teeth dental oral cavities orthodontics", "nutrition diets meals weight eating",
    "turntables mixes club beats remixes", "documentary films directing cinema screenplay",
    "interiors decor furniture spaces fabrics", "reporting newspaper stories editor news",
    "runway fashion photoshoots agency catwalk", "patients hospital ward nursing bedside",
    "canvas oil paintings gallery brushwork", "legal filings documents attorneys paperwork",
    "church congregation ministry sermons faith", "fitness workouts gym strength conditioning",
    "photographs camera portraits lens weddings", "medicine clinic diagnosis internal residency",
    "poems poetry verse collections chapbook", "university research students lectures faculty",
    "therapy cognitive mental counseling behavior", "hiphop rap mixtape lyrics album",
    "software code python systems backend", "surgery operating surgical procedures trauma",
    "classroom school grade pupils curriculum", "yoga meditation poses breath mindfulness",
)  # fmt: skip
_TOPIC_WORDS = tuple(tuple(t.split()) for t in _TOPICS)
_FEMALE_NAMES = _words(
    "Mary Jennifer Linda Susan Karen Lisa Emily Sarah Jessica Laura Anna Rachel Megan Julia Hannah Olivia Sophia "
    "Grace Claire Nora Alice Helen Maria Emma"
)
_MALE_NAMES = _words(
    "James John Robert Michael David William Richard Thomas Daniel Matthew Mark Paul Steven Andrew Joshua Kevin "
    "Brian George Edward Peter Henry Samuel Oliver Lucas"
)
_UNISEX_NAMES = _words("Alex Jordan Taylor Morgan Casey Jamie")
_SURNAMES = _words(
    "Smith Johnson Brown Garcia Miller Davis Wilson Lee Clark Lewis Walker Young King Wright Scott Green Baker Adams "
    "Nelson Hill"
)
_CITIES = _words("Boston Denver Austin Seattle Chicago Portland Atlanta Toronto London Dublin")
_HOBBIES = _words("hiking cooking chess gardening cycling reading travel running")
# Sentence slots: {S} subject (a name or pronoun), {P}/{p} pronoun, {O} object, {D}/{d} determiner,
# {R} reflexive, {k0} {k1} {k2} topical words, {c} city, {h} hobby, {y} years. Openers name the subject.
_OPENERS = (
    "{S} specializes in {k0} and {k1} .", "{S} has worked on {k0} for {y} years .",
    "{S} is known for {d} work on {k0} and {k1} .",
)  # fmt: skip
_SENTENCES = (
    "{D} work focuses on {k0} , {k1} and {k2} .", "Colleagues describe {O} as dedicated to {k1} .",
    "{P} considers {R} an expert in {k2} .", "{P} studied in {c} before turning to {k2} .",
    "{P} has written widely about {k1} .", "In {d} free time {p} enjoys {h} .",
    "Clients value {d} approach to {k2} .",
)  # fmt: skip
_PRONOUNS = {  # gender -> subject, object, determiner, reflexive, honorific, spouse, other spouse, parent
    0: ("he", "him", "his", "himself", "Mr.", "wife", "husband", "father"),
    1: ("she", "her", "her", "herself", "Ms.", "husband", "wife", "mother"),
}


def _synthetic_texts(rng: np.random.Generator, profession: np.ndarray, gender: np.ndarray) -> list[str]:
    """Biographies for the given labels; all randomness is drawn up front in bulk (fast and seeded)."""
    n = len(profession)
    unisex, first_u, unisex_i = rng.random(n) < 0.15, rng.random(n), rng.integers(len(_UNISEX_NAMES), size=n)
    last_i, city_i, hobby_i = (rng.integers(len(k), size=n) for k in (_SURNAMES, _CITIES, _HOBBIES))
    years = rng.integers(3, 30, size=n)
    borrow, borrowed_from = rng.random((n, 3)) < 0.15, rng.integers(len(PROFESSIONS), size=(n, 3))
    word_i = rng.integers(5, size=(n, 3))
    subject_kind = rng.choice(4, size=n, p=[0.45, 0.3, 0.1, 0.15])  # full name, first name, honorific, pronoun
    opener_i, middle_i = rng.integers(len(_OPENERS), size=n), np.argsort(rng.random((n, len(_SENTENCES))))[:, :2]
    has_partner, partner_kind = rng.random(n) < 0.4, rng.choice(3, size=n, p=[0.8, 0.1, 0.1])
    has_kids, kids = rng.random(n) < 0.25, rng.integers(2, size=n)
    texts = []
    for i in range(n):
        g, p = int(gender[i]), int(profession[i])
        subj, obj, det, refl, hon, spouse, other_spouse, parent = _PRONOUNS[g]
        names = _FEMALE_NAMES if g else _MALE_NAMES
        first = _UNISEX_NAMES[unisex_i[i]] if unisex[i] else names[int(first_u[i] * len(names))]
        last = _SURNAMES[last_i[i]]
        subject = (f"{first} {last}", first, f"{hon} {last}", subj.capitalize())[subject_kind[i]]
        topics = [_TOPIC_WORDS[borrowed_from[i, j] if borrow[i, j] else p][word_i[i, j]] for j in range(3)]
        body = [_OPENERS[opener_i[i]], *(_SENTENCES[j] for j in middle_i[i])]
        if has_partner[i]:
            body.append(f"{{P}} lives in {{c}} with {{d}} {(spouse, other_spouse, 'partner')[partner_kind[i]]} .")
        if has_kids[i]:
            body.append(f"{{P}} is a proud {parent} of {('two', 'three')[kids[i]]} .")
        slots = {"S": subject, "P": subj.capitalize(), "p": subj, "O": obj, "D": det.capitalize(), "d": det,
                 "R": refl, "k0": topics[0], "k1": topics[1], "k2": topics[2], "c": _CITIES[city_i[i]],
                 "h": _HOBBIES[hobby_i[i]], "y": int(years[i])}  # fmt: skip
        texts.append(" ".join(s.format(**slots) for s in body))
    return texts


def synthetic_bias_in_bios(num_examples: int = 8000, *, seed: int = 0, scrub: bool = True) -> datasets.DatasetDict:
    """An offline Bias-in-Bios stand-in with the same fields and split logic (deterministic by seed).

    Profession frequencies follow the real data's shares tempered by a square root; each profession has its
    own female share in [0.2, 0.8]. The default 8000 examples give val1 = val2 = 200 (the largest attacker n).

    Example:
      >>> bios = synthetic_bias_in_bios(2000, seed=0)
      >>> sorted(bios), bios["train"].column_names
      (['test', 'train', 'val1', 'val2'], ['hard_text', 'profession', 'gender'])
    """
    import datasets

    if num_examples < 40:
        raise ValueError(f"num_examples must be >= 40, got {num_examples}")
    shares = np.sqrt(_REAL_SHARES) / np.sqrt(_REAL_SHARES).sum()
    female_share = np.random.default_rng(1234).uniform(0.2, 0.8, len(PROFESSIONS))  # a fixed world
    rng = np.random.default_rng(seed)
    profession = rng.choice(len(PROFESSIONS), size=num_examples, p=shares)
    gender = (rng.random(num_examples) < female_share[profession]).astype(np.int64)
    texts = _synthetic_texts(rng, profession, gender)
    if scrub:
        texts = [scrub_pronouns(t) for t in texts]
    features = datasets.Features(
        hard_text=datasets.Value("string"), profession=datasets.Value("int64"), gender=datasets.Value("int64")
    )
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"hard_text": [texts[i] for i in idx], "profession": profession[idx], "gender": gender[idx]},
                features=features,
            )
            for name, idx in split_indices(num_examples, seed).items()
        }
    )


# Shares (%) of the 28 professions in LabHC/bias_in_bios, from its dataset card.
_REAL_SHARES = np.array([1.42, 2.55, 8.22, 0.67, 0.71, 1.41, 3.68, 1.0, 0.38, 1.77, 0.37, 5.03, 1.89, 4.78, 1.95,
                         0.45, 0.64, 0.36, 6.13, 10.35, 1.77, 29.8, 4.64, 0.35, 1.74, 3.43, 4.09, 0.42])  # fmt: skip
