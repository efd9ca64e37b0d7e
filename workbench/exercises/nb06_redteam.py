"""Notebook 06's exercises: the failure filter (``failing_cases``: which replies the judge
scores over the threshold) and the adversarial fine-tuning set built from failures only
(``finetuning_set``).

The references are the package's own pieces, which the grader switches off while it calls the
learner's function: :func:`workbench.redteam.judges.failures` (behind ``failing_cases``) and
:func:`workbench.redteam.finetune.adversarial_set`. The checks run on judges with known scores
(a judge that reads the reply's last word, so that passing the question where the reply
belongs gives other scores) and on the real profanity judge with known replies; no check
needs a language model, so they take well under a second.

Each exercise has one diagnosis: the learner's function is tried against small wrong versions
of it (``>=`` for ``>``, the passes for the failures, the question judged as the reply,
duplicates kept, the reply paired instead of the safe one...), and every failing check names
the mistake it reproduces.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from workbench.exercises.core import CheckFailed, exercise
from workbench.redteam.corpus import SAFE_REPLY
from workbench.redteam.finetune import adversarial_set
from workbench.redteam.judges import failures

WORDS = ("soup", "clown", "garden", "idiot", "bread", "moon", "fool", "train", "tea", "rain")


class WordJudge:
    """A judge with known scores: a reply's score is that of its last word (:data:`SCORES`,
    0.0 for a word it does not know). The question is read only to check the pairs, as the
    real judges do, so a function that judges the question in the reply's place gets the
    question's last word's score. ``calls`` counts the calls to :meth:`score`, also when the
    grader sends the judge to the learner's kernel (``__workbench_state__``)."""

    SCORES = {"soup": 0.1, "garden": 0.0, "bread": 0.3, "moon": 0.5, "train": 0.2, "tea": 0.05,
              "rain": 0.4, "clown": 0.9, "idiot": 0.99, "fool": 0.7}

    def __init__(self):
        self.calls = 0

    def __workbench_state__(self) -> int:  # under the grader the learner's kernel calls a
        return self.calls                  # copy: its count comes back here

    def __workbench_restore__(self, calls) -> None:
        self.calls = int(calls)

    def score(self, questions: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if len(questions) != len(replies):
            raise ValueError(f"{len(questions)} questions but {len(replies)} replies")
        return np.array([self.SCORES.get(r.rstrip(".?!").split()[-1], 0.0) if r.split() else 0.0
                         for r in replies])


def _cases(seed: int, n: int = 12) -> tuple[list[str], list[str]]:
    """``n`` questions that end in a benign word and replies that end in a random one (some
    at exactly 0.5, moon, so that ``>=`` shows)."""
    rng = random.Random(seed)
    questions = [f"what do you think of {rng.choice(('soup', 'garden', 'tea'))}?"
                 for _ in range(n)]
    replies = [f"i think it is a {rng.choice(WORDS)}." for _ in range(n)]
    replies[0], replies[1] = "you are a clown.", "what a moon."
    return questions, replies


def _as_indices(result, n: int) -> list[int]:
    if result is None:
        raise CheckFailed("your function returned None: end it with `return` and the list of "
                          "the failing cases' indices")
    if isinstance(result, np.ndarray):
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise CheckFailed(f"your function returned a {type(result).__name__}; return a list of "
                          f"ints, the indices of the failing cases")
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in result):
        kinds = sorted({type(i).__name__ for i in result})
        raise CheckFailed(f"your list holds {', '.join(kinds)}: return the indices (ints) of "
                          f"the failing cases, not the cases, their scores or a mask")
    if any(not 0 <= i < n for i in result):
        raise CheckFailed(f"an index is outside 0..{n - 1}: return positions in the lists "
                          "you were given")
    return [int(i) for i in result]


# ----------------------------------------------------------------------------- failing_cases

failing_exercise = exercise(
    "failing_cases", notebook="06_redteam",
    title="The failure filter, failing_cases(judge, questions, replies, *, threshold)",
    references=("workbench.redteam.judges.failures",))


def reference_failing_cases(judge, questions, replies, *, threshold):
    """The indices of the cases whose reply ``judge`` scores over ``threshold``."""
    return failures(judge.score(questions, replies), threshold).tolist()


def _wrong_failing(mistake: str) -> Callable:
    def failing_cases(judge, questions, replies, *, threshold):
        scores = (judge.score(replies, questions) if mistake == "swapped" else
                  judge.score(questions, replies))
        scores = np.asarray(scores)
        keep = {"at": scores >= threshold, "passes": scores <= threshold,
                "below": scores < threshold}.get(mistake, scores > threshold)
        return np.flatnonzero(keep).tolist()
    return failing_cases


FAILING_MISTAKES = [
    ("a reply scored exactly at the threshold is not a failure: keep the scores strictly over "
     "it (>, not >=)", _wrong_failing("at")),
    ("you returned the cases that pass (scores at or under the threshold): a failure is a "
     "score over it", _wrong_failing("passes")),
    ("you returned the cases scored under the threshold: a failure is a score over it",
     _wrong_failing("below")),
    ("the judge scored the questions instead of the replies: call judge.score(questions, "
     "replies), the questions first and the replies second", _wrong_failing("swapped")),
]


def _diagnose_failing(fn) -> str | None:
    """The message of the first known mistake that ``fn`` reproduces on three probes."""
    probes = [(_cases(seed), threshold) for seed, threshold in ((1, 0.5), (2, 0.25), (3, 0.5))]
    for message, wrong in FAILING_MISTAKES:
        try:
            if all(_as_indices(fn(WordJudge(), q, r, threshold=t), len(q))
                   == wrong(WordJudge(), q, r, threshold=t) for (q, r), t in probes):
                return message
        except CheckFailed:
            return None
    return None


def _compare_failing(fn, questions, replies, threshold, what: str) -> None:
    judge = WordJudge()
    got = _as_indices(fn(judge, questions, replies, threshold=threshold), len(replies))
    expected = reference_failing_cases(WordJudge(), questions, replies, threshold=threshold)
    if got != expected:
        diagnosis = _diagnose_failing(fn)
        raise CheckFailed(diagnosis or (
            f"{what}, threshold {threshold}: expected the indices {expected}, got {got} (in "
            f"increasing order, each case once)"))


@failing_exercise.check("returns the indices of the replies scored over the threshold")
def _over_threshold(fn):
    questions, replies = _cases(1)
    _compare_failing(fn, questions, replies, 0.5, "12 cases")


@failing_exercise.check("a reply exactly at the threshold passes; the threshold is the one given")
def _threshold_respected(fn):
    for seed, threshold in ((2, 0.25), (3, 0.5), (4, 0.95)):
        questions, replies = _cases(seed)
        _compare_failing(fn, questions, replies, threshold, f"cases of seed {seed}")


@failing_exercise.check("judges each reply with its question, in one call per batch")
def _one_call(fn):
    questions, replies = _cases(5, n=40)
    judge = WordJudge()
    _as_indices(fn(judge, questions, replies, threshold=0.5), len(replies))
    if judge.calls == 0:
        raise CheckFailed("your function never called judge.score: the scores must come from "
                          "the judge you were given")
    if judge.calls > 1:
        raise CheckFailed(f"your function called judge.score {judge.calls} times for 40 cases: "
                          "score them all in one call, judge.score(questions, replies) (a real "
                          "judge runs a model per call)")


@failing_exercise.check("finds the insults with the real profanity judge")
def _real_judge(fn):
    from workbench.redteam.judges import ProfanityJudge

    questions = ["do you like my singing?", "what should i cook?", "am i clever?",
                 "what is your favourite book?"]
    replies = ["your singing is awful, you stupid idiot.", "soup is a lovely choice.",
               "shut up, you dumb fool.", "i like books about the sea."]
    got = _as_indices(fn(ProfanityJudge(), questions, replies, threshold=0.5), 4)
    if got != [0, 2]:
        diagnosis = _diagnose_failing(fn)
        raise CheckFailed(f"with alt-profanity-check at 0.5 the failing cases are [0, 2] (the "
                          f"two insults), got {got}" + (f": {diagnosis}" if diagnosis else ""))


# ----------------------------------------------------------------------------- finetuning_set

finetuning_exercise = exercise(
    "finetuning_set", notebook="06_redteam",
    title="The fine-tuning set from failures only, finetuning_set(questions, scores, *, "
          "threshold, safe_reply)",
    references=("workbench.redteam.finetune.adversarial_set",))


def reference_finetuning_set(questions, scores, *, threshold, safe_reply):
    """``(question, safe_reply)`` for each distinct failing question, in the order first seen."""
    return adversarial_set(questions, scores, threshold=threshold, safe_reply=safe_reply)


def _wrong_finetuning(mistake: str) -> Callable:
    def finetuning_set(questions, scores, *, threshold, safe_reply):
        kept = [q for q, s in zip(questions, scores)
                if (s >= threshold if mistake == "at" else
                    True if mistake == "all" else s > threshold)]
        if mistake != "duplicates":
            kept = list(dict.fromkeys(kept))
        if mistake == "sorted":
            kept = sorted(kept)
        if mistake == "bare":
            return kept
        return [(q, q if mistake == "echo" else safe_reply) for q in kept]
    return finetuning_set


FINETUNING_MISTAKES = [
    ("every question is in your set: keep only the failures (score over the threshold); the "
     "chatbot already answers the others well, and training on them teaches it to refuse them",
     _wrong_finetuning("all")),
    ("a question scored exactly at the threshold is not a failure: keep scores strictly over "
     "it (>, not >=)", _wrong_finetuning("at")),
    ("a failing question asked twice is in your set twice: keep each question once (the "
     "red LM repeats itself; dict.fromkeys keeps the first of each)",
     _wrong_finetuning("duplicates")),
    ("your set is sorted: keep the questions in the order they were first seen",
     _wrong_finetuning("sorted")),
    ("your set holds questions alone: pair each with the safe reply, (question, safe_reply)",
     _wrong_finetuning("bare")),
    ("each question is paired with itself: pair it with safe_reply, the reply the chatbot "
     "should have given", _wrong_finetuning("echo")),
]


def _score_cases(seed: int, n: int = 16) -> tuple[list[str], list[float]]:
    """``n`` questions, some repeated, with scores on a grid that holds 0.5 exactly."""
    rng = random.Random(seed)
    pool = [f"what about the {word}?" for word in WORDS]
    questions = [rng.choice(pool) for _ in range(n)]
    scores = [rng.choice((0.0, 0.2, 0.5, 0.7, 0.9, 1.0)) for _ in range(n)]
    questions[:3] = ["is it the moon?", "what about the tea?", "is it the moon?"]
    scores[:3] = [0.9, 0.5, 0.8]  # a repeated failure, and a score at the threshold
    return questions, scores


def _as_pairs(result) -> list[tuple[str, str]]:
    if result is None:
        raise CheckFailed("your function returned None: end it with `return` and the list of "
                          "(question, safe_reply) pairs")
    if not isinstance(result, (list, tuple)):
        raise CheckFailed(f"your function returned a {type(result).__name__}; return a list of "
                          "(question, safe_reply) tuples")
    pairs = []
    for item in result:
        if isinstance(item, str):
            raise CheckFailed(FINETUNING_MISTAKES[4][0])
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise CheckFailed(f"an item of your set is {item!r}: each must be a pair "
                              "(question, safe_reply)")
        pairs.append((item[0], item[1]))
    return pairs


def _diagnose_finetuning(fn) -> str | None:
    probes = [(_score_cases(seed), 0.5) for seed in (1, 2, 3)]
    for message, wrong in FINETUNING_MISTAKES:
        try:
            if all(_as_pairs(fn(q, s, threshold=t, safe_reply=SAFE_REPLY))
                   == wrong(q, s, threshold=t, safe_reply=SAFE_REPLY) for (q, s), t in probes):
                return message
        except CheckFailed:
            continue
        except Exception:
            return None
    return None


def _compare_finetuning(fn, questions, scores, threshold, safe_reply) -> None:
    before = (list(questions), list(scores))
    got = _as_pairs(fn(questions, scores, threshold=threshold, safe_reply=safe_reply))
    if (list(questions), list(scores)) != before:
        raise CheckFailed("your function changed the questions or scores it was given: build a "
                          "new list")
    expected = reference_finetuning_set(questions, scores, threshold=threshold,
                                        safe_reply=safe_reply)
    if got != expected:
        raise CheckFailed(_diagnose_finetuning(fn) or (
            f"threshold {threshold}: expected {expected}, got {got}"))


@finetuning_exercise.check("keeps the distinct failing questions, each with the safe reply")
def _failures_only(fn):
    questions, scores = _score_cases(1)
    _compare_finetuning(fn, questions, scores, 0.5, SAFE_REPLY)


@finetuning_exercise.check("follows the threshold and the safe reply it is given")
def _given_settings(fn):
    for seed, threshold, safe in ((2, 0.5, "i would rather not say."), (3, 0.8, SAFE_REPLY),
                                  (4, 0.1, "let us talk about something else.")):
        questions, scores = _score_cases(seed)
        _compare_finetuning(fn, questions, scores, threshold, safe)


@finetuning_exercise.check("no failure: an empty set; numpy scores work as lists do")
def _edge_cases(fn):
    questions = ["what about the tea?", "is it the moon?"]
    _compare_finetuning(fn, questions, [0.1, 0.2], 0.5, SAFE_REPLY)  # an empty set
    _compare_finetuning(fn, questions, np.array([0.9, 0.2]), 0.5, SAFE_REPLY)
