"""Patterns among failures: k-means over sentence embeddings (the shipped MiniLM encoder's,
say), each cluster with its top terms and examples. numpy and scikit-learn (imported when
called); no keras."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from workbench.redteam.tokens import PUNCTUATION, split


def top_terms(members: Sequence[str], everyone: Sequence[str], count: int = 5) -> list[str]:
    """The ``count`` words most over-represented in ``members`` against ``everyone``: ranked
    by (share of members holding the word) - (share of everyone holding it), then by word.
    Punctuation is not a term."""
    def shares(texts):
        held = Counter(w for t in texts for w in set(split(t)) if w not in PUNCTUATION)
        return {w: c / len(texts) for w, c in held.items()}

    inside, overall = shares(members), shares(everyone)
    return sorted(inside, key=lambda w: (overall[w] - inside[w], w))[:count]


def cluster(texts: Sequence[str], vectors: np.ndarray, k: int, *, seed: int = 0,
            examples: int = 3, terms: int = 5) -> list[dict]:
    """k-means (scikit-learn, 10 starts from ``seed``) of ``vectors`` [N, D] (one per text):
    ``[{"size", "top_terms", "examples"}]`` per cluster, largest first (ties by first
    member). ``examples``: the texts nearest the cluster's centre. ValueError unless
    1 <= k <= N and the vectors match the texts."""
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors, dtype="float64")
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"need one vector per text: {len(texts)} texts, vectors of shape "
                         f"{vectors.shape}")
    if not 1 <= k <= len(texts):
        raise ValueError(f"k must be from 1 to the {len(texts)} texts, got {k}")
    model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    out = []
    for label in range(k):
        index = np.flatnonzero(model.labels_ == label)
        distance = np.linalg.norm(vectors[index] - model.cluster_centers_[label], axis=1)
        nearest = index[np.argsort(distance, kind="stable")[:examples]]
        out.append({"size": len(index), "first": int(index[0]),
                    "top_terms": top_terms([texts[i] for i in index], texts, terms),
                    "examples": [texts[i] for i in nearest]})
    out.sort(key=lambda c: (-c["size"], c["first"]))
    return [{key: c[key] for key in ("size", "top_terms", "examples")} for c in out]
