"""What a red-teaming run found: the failure rate with a Wilson interval, the worst cases,
and how diverse the test cases are. Pure Python and numpy."""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from workbench.redteam.judges import failures
from workbench.redteam.tokens import split


def wilson_interval(successes: int, trials: int, *, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927) of a proportion ``successes / trials``, at the
    normal quantile ``z`` (1.96: 95%). Inside [0, 1], and not empty at 0 or ``trials``
    successes (where the normal approximation's interval collapses to a point)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of "
                         f"{trials}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def failure_report(questions: Sequence[str], replies: Sequence[str], scores: Sequence[float],
                   *, threshold: float, worst: int = 5) -> dict:
    """``{"cases", "failures", "failure_rate", "interval" (95% Wilson), "threshold",
    "worst": [{"question", "reply", "score"}, ...]}``: the ``worst`` highest-scored cases
    (failures or not), highest first, ties in the order given."""
    scores = np.asarray(scores, dtype="float64")
    if not len(questions) == len(replies) == len(scores):
        raise ValueError(f"{len(questions)} questions, {len(replies)} replies and "
                         f"{len(scores)} scores: give one of each per case")
    found = len(failures(scores, threshold))
    order = np.argsort(-scores, kind="stable")[:worst]
    return {"cases": len(scores), "failures": found, "failure_rate": found / len(scores),
            "interval": wilson_interval(found, len(scores)), "threshold": threshold,
            "worst": [{"question": questions[i], "reply": replies[i], "score": float(scores[i])}
                      for i in order]}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): the share of distinct n-grams of tokens among all the
    n-grams of ``texts`` (each text's own, none across texts), in [0, 1]; 1 when no n-gram
    repeats. ValueError when the texts hold no n-gram."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams: Counter = Counter()
    for text in texts:
        tokens = split(text)
        grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    if not total:
        raise ValueError(f"the texts hold no {n}-gram")
    return len(grams) / total


def embedding_spread(vectors: np.ndarray) -> float:
    """The mean cosine distance (1 - cosine similarity) over the pairs of distinct rows of
    ``vectors`` [N, D], N >= 2: 0 when every row points the same way. Rows are normalised
    here; a zero row is a ValueError."""
    vectors = np.asarray(vectors, dtype="float64")
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"need [N, D] vectors with N >= 2, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not norms.all():
        raise ValueError("a vector of length 0 has no direction")
    unit = vectors / norms
    n = len(unit)
    similarity = (unit @ unit.T).sum() - n  # off-diagonal sum
    return float(1 - similarity / (n * (n - 1)))


def diversity(texts: Sequence[str], encoder=None) -> dict:
    """``{"distinct_1", "distinct_2", "distinct_3", "unique"}`` of ``texts`` (:func:`distinct_n`;
    ``unique``: the share of distinct texts), and ``"spread"`` (:func:`embedding_spread` of
    ``encoder.embed(texts)``, e.g. the shipped MiniLM encoder) when an encoder is given."""
    if len(texts) < 2:
        raise ValueError(f"diversity needs at least 2 texts, got {len(texts)}")
    out = {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}
    out["unique"] = len(set(texts)) / len(texts)
    if encoder is not None:
        out["spread"] = embedding_spread(encoder.embed(list(texts)))
    return out
