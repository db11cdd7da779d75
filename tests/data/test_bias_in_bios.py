"""Bias in Bios: scrubbing, the seeded 85/5/10 split, the offline stand-in, tokenisation, the offline error."""

import contextlib
import re
from collections import Counter

import numpy as np
import pytest

from jaxtar.data import bias_in_bios as bib
from jaxtar.data.bias_in_bios import (
    BIAS_IN_BIOS_REPO,
    PROFESSIONS,
    DatasetUnavailableError,
    load_bias_in_bios,
    scrub_pronouns,
    split_indices,
    synthetic_bias_in_bios,
)
from jaxtar.data.bios_tokens import build_word_tokenizer, count_words, encode_bios, encode_bios_lazily, word_tokenizer

try:  # multi-threaded BLAS is slower than one thread for these small matrices on a busy machine
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = contextlib.nullcontext

GENDERED = {"he", "she", "him", "her", "his", "hers", "himself", "herself", "mr", "mrs", "ms"}


@pytest.fixture(scope="module")
def bios():
    return synthetic_bias_in_bios(8000, seed=0)


@pytest.fixture(scope="module")
def tokenizer(bios):
    return build_word_tokenizer(bios["train"]["hard_text"])


@pytest.fixture(scope="module")
def arrays(bios, tokenizer):
    """Fixed-length arrays of val1, val2 and the first 2000 training examples (enough for the tests)."""
    splits = {"train": bios["train"].select(range(2000)), "val1": bios["val1"], "val2": bios["val2"]}
    return {name: encode_bios(split, tokenizer, max_length=64) for name, split in splits.items()}


# ------------------------------------------------------------------------------------------ scrubbing
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("He said she would call him.", "They said they would call them."),
        ("She thanked her mentor and her.", "They thanked their mentor and them."),
        ("The award is his. His work is hers.", "The award is theirs. Their work is theirs."),
        ("HE prides HIMSELF; she trusts herself", "THEY prides THEMSELVES; they trusts themselves"),
        ("Ask Mrs. Lee, Mr Hill, Ms. Ray or MRS. KING.", "Ask Mx. Lee, Mx Hill, Mx. Ray or MX. KING."),
        ("he's kind; she's been here; he'll go", "they're kind; they've been here; they'll go"),
        ("she'd stay, HE'S sure", "they'd stay, THEY'RE sure"),
        ("She told her that", "They told them that"),
        ("gave her the prize , praised her .", "gave them the prize , praised them ."),
        # word boundaries: nothing inside longer words, and no all-caps MS (a degree) or lower-case ms
        ("The hero hesitated; others shelter there. Hershey, Sheffield, THEME, helium.",
         "The hero hesitated; others shelter there. Hershey, Sheffield, THEME, helium."),
        ("MS in chemistry, 5 ms latency, Mrsa Msft", "MS in chemistry, 5 ms latency, Mrsa Msft"),
    ],
)  # fmt: skip
def test_scrub_pronouns_examples(text, want):
    assert scrub_pronouns(text) == want
    assert scrub_pronouns(want) == want  # idempotent


# ------------------------------------------------------------------------------------------------ split
def test_split_indices_sizes_disjoint_deterministic():
    parts = split_indices(8000, seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 6800, "val1": 200, "val2": 200, "test": 800}
    joined = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(joined), np.arange(8000))  # a partition
    again = split_indices(8000, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_indices(8000, seed=4)
    assert not np.array_equal(parts["val1"], other["val1"])
    odd = split_indices(1001, seed=0)
    assert [len(odd[k]) for k in ("train", "val1", "val2", "test")] == [851, 25, 25, 100]
    with pytest.raises(ValueError, match="summing to 1"):
        split_indices(100, seed=0, fractions=(0.8, 0.1, 0.2))


# --------------------------------------------------------------------------------------- the stand-in
def test_synthetic_fields_scrubbing_determinism(bios):
    assert list(bios) == ["train", "val1", "val2", "test"]
    assert {k: len(v) for k, v in bios.items()} == {"train": 6800, "val1": 200, "val2": 200, "test": 800}
    train = bios["train"]
    assert train.column_names == ["hard_text", "profession", "gender"]
    prof, gender = np.asarray(train["profession"]), np.asarray(train["gender"])
    assert prof.min() >= 0 and prof.max() < len(PROFESSIONS) == 28 and len(np.unique(prof)) == 28
    assert set(np.unique(gender)) == {0, 1} and 0.35 < gender.mean() < 0.65
    words = {w.strip(".,;").lower() for t in train["hard_text"] for w in t.split()}
    assert not words & GENDERED  # scrubbed
    raw = synthetic_bias_in_bios(400, seed=0, scrub=False)
    raw_words = {w.lower() for t in raw["train"]["hard_text"] for w in t.split()}
    assert {"he", "she", "his", "her", "herself", "himself"} <= raw_words  # ... and there was something to scrub
    small = synthetic_bias_in_bios(400, seed=0)
    assert small["val2"]["hard_text"] == synthetic_bias_in_bios(400, seed=0)["val2"]["hard_text"]
    assert small["val2"]["hard_text"] != synthetic_bias_in_bios(400, seed=1)["val2"]["hard_text"]
    assert [scrub_pronouns(t) for t in raw["test"]["hard_text"]] == small["test"]["hard_text"]


def test_tokenizer_and_fixed_length_arrays(bios, tokenizer, arrays):
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert ids == [0, 1, 2, 3, 4] and tokenizer.pad_token_id == 0 and tokenizer.mask_token_id == 4
    enc = tokenizer("They specialize in zzzunknownzzz")["input_ids"]
    assert enc[0] == 2 and enc[-1] == 3 and enc[-2] == 1 and len(enc) == 6
    assert build_word_tokenizer(bios["train"]["hard_text"]).get_vocab() == tokenizer.get_vocab()  # deterministic
    a = arrays["val1"]
    assert a["input_ids"].shape == a["attention_mask"].shape == (200, 64)
    assert {a[k].dtype for k in a} == {np.dtype(np.int32)}
    lengths = a["attention_mask"].sum(axis=1)
    rows = np.arange(200)
    assert np.all(a["input_ids"][:, 0] == 2) and np.all(a["input_ids"][rows, lengths - 1] == 3)
    assert np.all((a["input_ids"] == 0) == (a["attention_mask"] == 0))  # padding exactly where masked
    assert np.all(a["attention_mask"][:, :-1] >= a["attention_mask"][:, 1:])  # right padding
    np.testing.assert_array_equal(a["gender"], bios["val1"]["gender"])
    np.testing.assert_array_equal(a["profession"], bios["val1"]["profession"])
    text = bios["val1"][0]["hard_text"]
    decoded = tokenizer.decode(a["input_ids"][0][: lengths[0]], skip_special_tokens=True)
    assert decoded.split() == re.findall(r"\w+|[^\w\s]", text.lower())  # all words known: a round trip
    assert max(arrays[k]["attention_mask"].sum(axis=1).max() for k in arrays) < 64  # nothing truncated at 64


def _bag_of_words(a, vocab_size):
    x = np.zeros((len(a["input_ids"]), vocab_size))
    np.put_along_axis(x, a["input_ids"].astype(np.int64), 1.0, axis=1)
    x[:, :5] = 0.0
    x[:, 0] = 1.0  # bias feature in the [PAD] column
    return x


def _softmax_regression(x, y, num_classes, steps, lr=2.0, l2=1e-3):
    w = np.zeros((x.shape[1], num_classes))
    onehot = np.eye(num_classes)[y]
    for _ in range(steps):
        z = x @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= lr * (x.T @ (p - onehot) / len(y) + l2 * w)
    return w


def test_word_counts_of_shares_fit_the_same_tokenizer(bios, tokenizer):
    """The tokenizer fitted on counts taken over three shares of the texts and added up is the one fitted on all
    of them (what each process of a distributed MLAC run does with its share), min_frequency applied after."""
    texts = bios["train"]["hard_text"]
    shares = [count_words(texts[i::3]) for i in range(3)]
    assert sum(shares, Counter()) == count_words(texts)
    assert word_tokenizer(sum(shares, Counter())).get_vocab() == tokenizer.get_vocab()
    frequent = word_tokenizer(sum(shares, Counter()), min_frequency=100).get_vocab()
    want = {w for w, c in count_words(texts).items() if c >= 100}
    assert set(frequent) == want | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"} and 10 < len(want) < 300


def test_lazy_encoding_equals_the_arrays_and_tokenises_only_what_is_read(bios, tokenizer, arrays):
    lazy = encode_bios_lazily(bios["val1"], tokenizer, max_length=64)
    table = lazy["input_ids"].tables[0]
    assert table.made == 1  # row 0, to learn the columns
    for k in ("profession", "gender"):
        np.testing.assert_array_equal(lazy[k], arrays["val1"][k])
    part = lazy["input_ids"].view(np.array([7, 3, 7]))
    np.testing.assert_array_equal(np.asarray(part), arrays["val1"]["input_ids"][[7, 3, 7]])
    assert table.made == 3  # rows 0, 3 and 7
    for k in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(np.asarray(lazy[k]), arrays["val1"][k])
    assert table.made == len(bios["val1"])


def test_stand_in_is_learnable_by_logistic_regression(tokenizer, arrays):
    """Both tasks are clearly above chance on val2; the gender attacker needs only val1 (200 examples)."""
    x = {k: _bag_of_words(arrays[k], len(tokenizer)) for k in ("train", "val1", "val2")}
    val2 = arrays["val2"]

    def accuracy(task, train_split, n, num_classes, steps):
        y = arrays[train_split][task][:n]
        w = _softmax_regression(x[train_split][:n], y, num_classes, steps)
        majority = np.mean(val2[task] == np.bincount(y).argmax())
        return np.mean(np.argmax(x["val2"] @ w, axis=1) == val2[task]), majority

    with threadpool_limits(1):
        prof_acc, prof_major = accuracy("profession", "train", 2000, 28, steps=150)
        gender_attack, gender_major = accuracy("gender", "val1", 200, 2, steps=300)
    assert prof_acc >= 0.85 and prof_major < 0.2  # measured 0.94
    assert gender_attack >= 0.72 and gender_major < 0.56  # measured 0.81


# -------------------------------------------------------------------------------------- the HF loader
def test_hf_loader_pools_resplits_and_scrubs(monkeypatch):
    import datasets

    def fake_bios(n, offset):
        return datasets.Dataset.from_dict(
            {
                "hard_text": [f"She is bio {offset + i} , her work ." for i in range(n)],
                "profession": [(offset + i) % 28 for i in range(n)],
                "gender": [1] * n,
                "extra": [0] * n,
            }
        )

    calls = {}

    def fake_load_dataset(repo, revision=None, cache_dir=None):
        calls.update(repo=repo, revision=revision)
        return datasets.DatasetDict(train=fake_bios(150, 0), dev=fake_bios(20, 150), test=fake_bios(30, 170))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = load_bias_in_bios(seed=5)
    assert calls == {"repo": BIAS_IN_BIOS_REPO, "revision": bib.BIAS_IN_BIOS_REVISION}
    assert {k: len(v) for k, v in out.items()} == {"train": 170, "val1": 5, "val2": 5, "test": 20}
    assert out["train"].column_names == ["hard_text", "profession", "gender"]
    ids = sorted(int(t.split()[3]) for split in out.values() for t in split["hard_text"])
    assert ids == list(range(200))  # all three published splits pooled, each example once
    assert out["val1"][0]["hard_text"].startswith("They is bio") and " their work" in out["val1"][0]["hard_text"]
    for split in out.values():  # labels travel with their text
        assert all(p == int(t.split()[3]) % 28 for t, p in zip(split["hard_text"], split["profession"], strict=True))
    again = load_bias_in_bios(seed=5)
    assert again["val2"]["hard_text"] == out["val2"]["hard_text"]
    sub = load_bias_in_bios(seed=5, max_examples=100, scrub=False)
    assert sum(len(v) for v in sub.values()) == 100 and sub["train"][0]["hard_text"].startswith("She")


def test_hf_loader_offline_error_names_the_dataset(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying DNS
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError, match=r"'LabHC/bias_in_bios'.*synthetic_bias_in_bios"):
        load_bias_in_bios(cache_dir="/nonexistent/jaxtar-test-cache")
