"""Closing the loop: the fine-tuning set built from failures, and held-out test cases kept
disjoint from it. Pure Python; the fine-tuning itself is
:func:`workbench.redteam.lm.finetune_chatbot`."""

from __future__ import annotations

from typing import Sequence

from workbench.redteam.corpus import SAFE_REPLY
from workbench.redteam.judges import failures


def adversarial_set(questions: Sequence[str], scores: Sequence[float], *, threshold: float,
                    safe_reply: str = SAFE_REPLY) -> list[tuple[str, str]]:
    """``(question, safe_reply)`` for each distinct question whose score is over
    ``threshold`` (failures only, in the order first seen)."""
    if len(questions) != len(scores):
        raise ValueError(f"{len(questions)} questions but {len(scores)} scores")
    failed = dict.fromkeys(questions[i] for i in failures(scores, threshold))
    return [(q, safe_reply) for q in failed]


def held_out(questions: Sequence[str], training: Sequence[tuple[str, str]]) -> list[str]:
    """``questions`` without those of the fine-tuning set ``training`` (order kept)."""
    seen = {q for q, _ in training}
    return [q for q in questions if q not in seen]
