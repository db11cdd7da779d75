"""Multiple-choice items (WMDP / MMLU style) and their prompts: the lettered question a model answers with the
logit of one answer letter.

Example:
    >>> item = MCQItem("2 + 2 = ?", ("3", "4", "5", "6"), answer=1, subject="arithmetic")
    >>> print(build_mcq_prompt(item))
    The following are multiple choice questions (with answers) about arithmetic.
    <BLANKLINE>
    2 + 2 = ?
    A. 3
    B. 4
    C. 5
    D. 6
    Answer:
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from typing import Any

MCQ_LETTERS = string.ascii_uppercase


@dataclasses.dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question (WMDP / MMLU style).

    Attributes:
        question: the question text.
        choices: 2..26 answer options.
        answer: index of the correct option.
        subject: e.g. ``"college_biology"`` (used in the prompt header and for subject exclusion).
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"MCQItem.question must be a non-empty string, got {self.question!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if not 2 <= len(self.choices) <= len(MCQ_LETTERS):
            raise ValueError(f"MCQItem needs 2..26 choices, got {len(self.choices)}: {self.question[:60]!r}")
        if not all(isinstance(c, str) for c in self.choices):
            raise ValueError(f"MCQItem choices must be strings, got {self.choices!r}")
        if (
            isinstance(self.answer, bool)
            or not isinstance(self.answer, int)
            or not 0 <= self.answer < len(self.choices)
        ):
            raise ValueError(f"MCQItem.answer must be an int in [0, {len(self.choices)}), got {self.answer!r}")

    @property
    def answer_letter(self) -> str:
        """The letter of the correct option (``"A"`` for index 0)."""
        return MCQ_LETTERS[self.answer]


def format_mcq_item(item: MCQItem, include_answer: bool = False) -> str:
    """``question``, lettered choices and ``Answer:`` (plus `` X\\n\\n`` for a solved few-shot example).

    Example:
        >>> format_mcq_item(MCQItem("q?", ("a", "b"), 1), include_answer=True)
        'q?\\nA. a\\nB. b\\nAnswer: B\\n\\n'
    """
    lines = [item.question.strip()] + [f"{MCQ_LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {item.answer_letter}\n\n" if include_answer else text


def letter_token_ids(tokenizer: Any, num_choices: int = 4) -> tuple[int, ...]:
    """Token ids of the answer letters: ``" A"`` when every spaced letter is one token, else ``"A"``.

    Raises:
        ValueError: neither form is a single known token for every letter (the message shows the encodings).

    Example:
        >>> from jaxtar.toy import toy_world
        >>> len(letter_token_ids(toy_world().tokenizer))
        4
    """
    letters = MCQ_LETTERS[:num_choices]
    unk = getattr(tokenizer, "unk_token_id", None)
    tried = {}
    for prefix in (" ", ""):
        ids = [list(tokenizer.encode(prefix + c, add_special_tokens=False)) for c in letters]
        tried[prefix] = ids
        flat = [i[0] for i in ids if len(i) == 1 and i[0] != unk]
        if len(flat) == len(letters) and len(set(flat)) == len(letters):
            return tuple(int(i) for i in flat)
    raise ValueError(
        "multiple-choice scoring needs every answer letter to be a single token, with or without a leading space; "
        f"this tokenizer encodes {dict(zip(letters, tried[' ']))} (spaced) and {dict(zip(letters, tried['']))}"
    )


def build_mcq_prompt(item: MCQItem, shots: Sequence[MCQItem] = (), subject: str | None = None) -> str:
    """A k-shot WMDP/MMLU prompt ending in ``Answer:``; the scorer compares letter logits at the last position.

    Args:
        item: the question to ask.
        shots: solved examples placed before it (MMLU: 5 from the ``dev`` split of the same subject).
        subject: header subject; defaults to ``item.subject`` (underscores become spaces). Empty: no header.

    Example:
        >>> shot = MCQItem("1 + 1 = ?", ("2", "3"), 0)
        >>> build_mcq_prompt(MCQItem("2 + 1 = ?", ("3", "4"), 0), shots=[shot], subject="")
        '1 + 1 = ?\\nA. 2\\nB. 3\\nAnswer: A\\n\\n2 + 1 = ?\\nA. 3\\nB. 4\\nAnswer:'
    """
    subject = item.subject if subject is None else subject
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    body = "".join(format_mcq_item(s, include_answer=True) for s in shots) + format_mcq_item(item)
    return (header if subject else "") + body
