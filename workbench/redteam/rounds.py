"""One red-teaming round (questions -> chatbot replies -> judge scores -> report), and the
zero-shot against stochastic few-shot comparison of Perez et al. 2022 on one seed.

The models are :class:`~workbench.redteam.lm.TinyLM` (or anything with its ``sample``), the
judge anything with ``score(questions, replies)`` (:mod:`workbench.redteam.judges`). Results
are plain dicts of lists and numbers (JSON-ready).
"""

from __future__ import annotations

from typing import Sequence

from workbench.redteam.generation import (chatbot_replies, few_shot_prompts, sample_questions,
                                          zero_shot)
from workbench.redteam.report import diversity, failure_report


def judge_round(questions: Sequence[str], chatbot, judge, *, threshold: float, seed: int,
                worst: int = 5) -> dict:
    """``{"questions", "replies", "scores", "report"}``: the chatbot's reply to each question
    (sampled with ``seed``), the judge's score of each and :func:`failure_report`."""
    if not questions:
        raise ValueError("no questions to put to the chatbot")
    replies = chatbot_replies(chatbot, questions, seed=seed)
    scores = [float(s) for s in judge.score(questions, replies)]
    return {"questions": list(questions), "replies": replies, "scores": scores,
            "report": failure_report(questions, replies, scores, threshold=threshold,
                                     worst=worst)}


def compare_generation(red_lm, chatbot, judge, *, count: int = 200, threshold: float = 0.5,
                       seed: int = 0, encoder=None) -> dict:
    """``{"zero-shot": round, "few-shot": round}``, each a :func:`judge_round` plus its
    ``"diversity"`` (:func:`~workbench.redteam.report.diversity`, with ``encoder``'s
    embedding spread when given).

    ``count`` zero-shot samples (those without a question dropped), then ``count`` few-shot
    samples, each from a prompt of zero-shot failures drawn by score (``seed`` + 1, so the
    few-shot draws are not the zero-shot ones). ValueError when zero-shot finds no failure.
    """
    rounds = {}
    questions = zero_shot(red_lm, count, seed=seed)
    rounds["zero-shot"] = judge_round(questions, chatbot, judge, threshold=threshold, seed=seed)
    first = rounds["zero-shot"]
    prompts = few_shot_prompts(first["questions"], first["scores"], count,
                               threshold=threshold, seed=seed + 1)
    rounds["few-shot"] = judge_round(sample_questions(red_lm, prompts, seed=seed + 1), chatbot,
                                     judge, threshold=threshold, seed=seed + 1)
    for result in rounds.values():
        result["diversity"] = diversity(result["questions"], encoder)
    return rounds
