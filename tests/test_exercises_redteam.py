"""Notebook 06's checks pass on the notebook's answers (read from its master) and on the
package's own, each known mistake fails naming itself and no other mistake, and the grader's
reference switch-off covers what the answers could call instead of writing them."""

from __future__ import annotations

from pathlib import Path

import jupytext
import numpy as np
import pytest

from workbench.exercises import nb06_redteam as checks
from workbench.exercises import run_checks
from workbench.exercises.registry import exercises_for, get_exercise

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_redteam.py"


def _notebook_answers() -> dict:
    """The notebook's own answers: its exercise cells, run with the names they import."""
    namespace = {"np": np}
    for cell in jupytext.read(NOTEBOOK).cells:
        if "exercise" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    return namespace


ANSWERS = _notebook_answers()


def _failures(name, fn):
    return [r for r in run_checks(name, fn) if not r.passed]


@pytest.mark.parametrize("name, fn", [
    ("failing_cases", ANSWERS["failing_cases"]), ("failing_cases", checks.reference_failing_cases),
    ("finetuning_set", ANSWERS["finetuning_set"]),
    ("finetuning_set", checks.reference_finetuning_set)])
def test_the_answers_pass_every_check(name, fn):
    assert _failures(name, fn) == []


MISTAKES = [("failing_cases", message, wrong) for message, wrong in checks.FAILING_MISTAKES] + [
    ("finetuning_set", message, wrong) for message, wrong in checks.FINETUNING_MISTAKES]


@pytest.mark.parametrize("name, message, wrong", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_fails_naming_itself(name, message, wrong):
    failed = _failures(name, wrong)
    assert failed, "a known mistake passed every check"
    others = {m for n, m, _ in MISTAKES if n == name} - {message}
    for result in failed:
        assert message in result.message, (result.check, result.message)
        assert not any(other in result.message for other in others), result.message


def test_a_hard_coded_answer_and_a_wrong_type_fail_with_what_to_return():
    def notebook_answer(judge, questions, replies, *, threshold):
        return [0, 1]  # what the notebook's first round might have shown

    def scores_not_indices(judge, questions, replies, *, threshold):
        return list(judge.score(questions, replies))

    def mask(judge, questions, replies, *, threshold):
        return [bool(s > threshold) for s in judge.score(questions, replies)]

    assert _failures("failing_cases", notebook_answer)
    for wrong in (scores_not_indices, mask):
        failed = _failures("failing_cases", wrong)
        assert failed and all("indices" in r.message for r in failed), failed
    nothing = _failures("finetuning_set", lambda questions, scores, *, threshold, safe_reply: None)
    assert nothing and all("returned None" in r.message for r in nothing)


def test_a_filter_that_scores_one_case_per_call_is_told_to_batch():
    def one_by_one(judge, questions, replies, *, threshold):
        return [i for i, (q, r) in enumerate(zip(questions, replies))
                if judge.score([q], [r])[0] > threshold]

    failed = _failures("failing_cases", one_by_one)
    assert [r.check for r in failed] == ["judges each reply with its question, in one call "
                                         "per batch"]
    assert "in one call" in failed[0].message


def test_a_set_that_changes_its_input_is_caught():
    def pops(questions, scores, *, threshold, safe_reply):
        kept = checks.reference_finetuning_set(questions, scores, threshold=threshold,
                                               safe_reply=safe_reply)
        questions.clear()
        return kept

    failed = _failures("finetuning_set", pops)
    assert failed and all("changed the questions" in r.message for r in failed)


def test_the_grader_switches_off_the_package_functions_an_answer_could_call():
    assert get_exercise("failing_cases").references == ("workbench.redteam.judges.failures",)
    assert get_exercise("finetuning_set").references == (
        "workbench.redteam.finetune.adversarial_set",)
    assert [e.name for e in exercises_for("06_redteam")] == [
        "failing_cases", "finetuning_set"]


def test_the_word_judge_scores_the_reply_by_its_last_word():
    judge = checks.WordJudge()
    scores = judge.score(["do you like soup?", "and tea?"], ["you clown.", "i like the garden"])
    assert scores.tolist() == [0.9, 0.0] and judge.calls == 1
    with pytest.raises(ValueError, match="questions but"):
        judge.score(["a?"], [])


def test_the_word_judges_calls_come_back_from_the_learners_kernel():
    """Under the grader the learner's function runs in its kernel on a copy of the judge; the
    transport sends the copy's call count back, so the one-call check sees it."""
    from workbench.exercises.transport import apply_changes, changes, snapshot, tracked

    mine, kernels = checks.WordJudge(), checks.WordJudge()
    before = [snapshot(obj) for obj in tracked(((kernels,), {}))]
    kernels.score(["a?"], ["you clown."])
    found = [changes(obj, old) for obj, old in zip(tracked(((kernels,), {})), before)]
    for obj, change in zip(tracked(((mine,), {})), found):
        apply_changes(obj, change)
    assert mine.calls == 1
